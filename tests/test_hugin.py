"""panorama.pto: Hugin's nona must put every pixel where our camera models say (within 2 px)."""

from __future__ import annotations

import shutil
import subprocess

import cv2
import numpy as np
import pytest

from calib.models import CAHVOR, CAHVORE
from calib.rotation import axis_angle, vector_to_azel
from mosaic.formats.hugin import fit_lens, hugin_project, write_pto

# A real Perseverance Navcam left model (sol 670, full frame), and a real MER Navcam CAHVOR model.
NAVCAM = CAHVORE(
    C=(0.950849, 0.349753, -1.89429), A=(0.824195, 0.0290508, 0.565575), H=(2041.2, 3032.24, 1457.62),
    V=(-71.0941, 9.0217, 3538), O=(0.824089, 0.0304646, 0.565654), R=(0.000001736, 0.0501396, -0.0171254),
    E=(-0.000000008, 0.00000001, -0.000000029), T=2, P=0.0,
)
MER = CAHVOR(
    C=(0.442604, -0.0611635, -1.25106), A=(0.93995, -0.338133, 0.0464979), H=(884.72, 981.763, 24.1472),
    V=(418.579, -152.039, 1245.75), O=(0.946551, -0.315595, 0.0666419), R=(0.00096, -0.002183, 0.018547),
)


def _dots(width, height, nx=7, ny=5):
    xs, ys = np.meshgrid(np.linspace(40, width - 41, nx), np.linspace(40, height - 41, ny))
    pts = np.stack([xs.ravel(), ys.ravel()], 1)
    img = np.zeros((height, width, 3), np.uint8) + 30
    for x, y in pts:
        cv2.circle(img, (int(round(x)), int(round(y))), 2, (255, 255, 255), -1, lineType=cv2.LINE_AA)
    return img, np.round(pts)


@pytest.mark.parametrize("model,size", [(NAVCAM.scale(8), (640, 480)), (MER.moved(axis_angle((0, 0, 1), 2.0)), (1024, 1024))])
def test_fit_reproduces_model(model, size):
    w, h = size
    lens = fit_lens(model, w, h)
    assert lens.rms_px < 0.3
    xs, ys = np.meshgrid(np.linspace(0, w - 1, 9), np.linspace(0, h - 1, 9))
    pix = np.stack([xs.ravel(), ys.ravel()], 1)
    _, d = model.backproject(pix)
    assert np.abs(hugin_project(d, lens, w, h) - pix).max() < 1.0


@pytest.mark.skipif(shutil.which("nona") is None, reason="hugin-tools (nona) not installed")
def test_nona_renders_our_geometry(tmp_path):
    frames, expected = [], []
    W, H = 2400, 1200  # 0.15 deg/px, about the frames' own pixel size
    for k, (model, (w, h)) in enumerate([
        (NAVCAM.scale(8), (640, 480)),
        (NAVCAM.scale(8).moved(axis_angle((0.1, 0.2, 1.0), 1.9), pivot=(0, 0, 0)), (640, 480)),
    ]):
        img, pts = _dots(w, h)
        p = tmp_path / f"f{k}.png"
        cv2.imwrite(str(p), img)
        frames.append({"image": str(p), "width": w, "height": h, "model": model})
        _, d = model.backproject(pts)
        az, el = vector_to_azel(d)
        expected.append(np.stack([az / 360 * W - 0.5, (90 - el) / 180 * H - 0.5], 1))
    write_pto(tmp_path / "panorama.pto", frames, W, H)
    subprocess.run(["nona", "-m", "TIFF_m", "-o", str(tmp_path / "out"), str(tmp_path / "panorama.pto")],
                   check=True, capture_output=True)
    for k, exp in enumerate(expected):
        out = cv2.imread(str(tmp_path / f"out{k:04d}.tif"), cv2.IMREAD_UNCHANGED)
        bright = (out[..., 0] > 120).astype(np.uint8)
        n, _, _, cents = cv2.connectedComponentsWithStats(bright)
        cents = cents[1:]
        dist = np.linalg.norm(exp[:, None, :] - cents[None, :, :], axis=2).min(axis=1)
        assert n - 1 >= len(exp)
        assert dist.max() < 2.0, dist


@pytest.mark.skipif(shutil.which("nona") is None, reason="hugin-tools (nona) not installed")
def test_nona_renders_a_cropped_window(tmp_path):
    """A cropped panorama (a window of the full-sphere grid, across north here) exports as a turned,
    cropped Hugin canvas that nona renders pixel for pixel onto the window."""
    W, H = 2400, 1200
    model = NAVCAM.scale(8).moved(axis_angle((0, 0, 1), np.radians(-20)), pivot=(0, 0, 0))  # looks across north
    img, pts = _dots(640, 480)
    cv2.imwrite(str(tmp_path / "f0.png"), img)
    _, d = model.backproject(pts)
    az, el = vector_to_azel(d)
    az = np.where(az > 180, az - 360, az)  # the window straddles azimuth 0
    exp = np.stack([az / 360 * W - 0.5, (90 - el) / 180 * H - 0.5], 1)
    x0, y0 = int(exp[:, 0].min()) - 60, int(exp[:, 1].min()) - 60
    w, h = int(exp[:, 0].max()) + 60 - x0, int(exp[:, 1].max()) + 60 - y0
    write_pto(tmp_path / "p.pto", [{"image": str(tmp_path / "f0.png"), "width": 640, "height": 480, "model": model}],
              W, H, window=(x0, y0, w, h))
    subprocess.run(["nona", "-m", "TIFF", "-o", str(tmp_path / "out"), str(tmp_path / "p.pto")],
                   check=True, capture_output=True)
    out = cv2.imread(str(tmp_path / "out.tif"), cv2.IMREAD_UNCHANGED)
    assert out.shape[:2] == (h, w)
    n, _, _, cents = cv2.connectedComponentsWithStats((out[..., 0] > 120).astype(np.uint8))
    dist = np.linalg.norm((exp - [x0, y0])[:, None, :] - cents[None, 1:, :], axis=2).min(axis=1)
    assert dist.max() < 2.0, dist
