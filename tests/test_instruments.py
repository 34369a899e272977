"""Nominal Navcam / Mastcam-Z models: optics against the published figures, stereo geometry,
subframe and downsampling algebra, the instrument registry."""

from __future__ import annotations

import numpy as np
import pytest

from calib.errors import InputError
from calib.instruments import (
    INSTRUMENTS,
    MCZ_ZOOM_STOPS_MM,
    NAVCAM_SOURCE_MODEL,
    instrument,
    stereo_partner,
)
from calib.models import CAHVOR, CAHVORE

POSES = [(0.0, 0.0), (35.0, -20.0), (-120.0, 10.0), (179.0, -60.0)]


def _angle_deg(u, v):
    return float(np.degrees(np.arccos(np.clip(u @ v / np.linalg.norm(u) / np.linalg.norm(v), -1, 1))))


def test_navcam_field_of_view_and_pixel_scale():
    nav = instrument("NAVCAM_LEFT")
    m = nav.model(0.0, 0.0)
    assert isinstance(m, CAHVORE) and (m.T, m.P) == (2, 0.0)
    assert (nav.width, nav.height) == (5120, 3840)
    h, v = m.fov(nav.width, nav.height)
    assert h == pytest.approx(96.5, abs=0.2)
    assert v == pytest.approx(73.1, abs=0.2)
    assert m.angular_pixel() == pytest.approx(0.33e-3, abs=0.01e-3)


def test_navcam_home_is_the_real_model_reposed():
    """Re-posing is rigid: a point fixed to the real camera projects to the same pixel in the
    nominal home model, and the axis is RNAV +x with H along +y."""
    home = instrument("NAVCAM_LEFT").home_model()
    src = NAVCAM_SOURCE_MODEL
    assert np.allclose(home.A, [1, 0, 0], atol=1e-12)
    hp = home.H - (home.H @ home.A) * home.A
    assert _angle_deg(hp, np.array([0.0, 1.0, 0.0])) < 1e-9
    assert np.allclose(home.intrinsics(), src.intrinsics(), rtol=1e-12)
    assert np.array_equal(home.R, src.R) and np.array_equal(home.E, src.E)
    rng = np.random.default_rng(1)
    pix = rng.uniform([0, 0], [5119, 3839], size=(50, 2))
    o, d = src.backproject(pix)
    pts_src = o + rng.uniform(1, 50, size=(50, 1)) * d
    # The rotation that carries the source camera's frame onto the home one.
    def basis(m):
        h = m.H - (m.H @ m.A) * m.A
        h /= np.linalg.norm(h)
        return np.column_stack([h, np.cross(m.A, h), m.A])
    rot = basis(home) @ basis(src).T
    pts_home = (pts_src - src.C) @ rot.T + home.C
    assert np.abs(home.project(pts_home) - pix).max() < 1e-6


@pytest.mark.parametrize("zoom, hfov, vfov, ifov_urad", [(26.0, 25.6, 19.2, 283.0), (110.0, 6.2, 4.6, 67.4)])
def test_mastcam_z_optics(zoom, hfov, vfov, ifov_urad):
    mcz = instrument("MCZ_LEFT")
    m = mcz.model(0.0, 0.0, zoom_mm=zoom)
    assert isinstance(m, CAHVOR) and not isinstance(m, CAHVORE)
    assert (mcz.width, mcz.height) == (1600, 1200)
    h, v = m.fov(mcz.width, mcz.height)
    assert h == pytest.approx(hfov, abs=0.3)
    assert v == pytest.approx(vfov, abs=0.3)
    assert m.angular_pixel() * 1e6 == pytest.approx(ifov_urad, rel=0.02)


def test_mastcam_z_zoom_stops_and_range():
    mcz = instrument("MCZ_RIGHT")
    fovs = [mcz.model(0, 0, zoom_mm=z).fov(mcz.width, mcz.height)[0] for z in MCZ_ZOOM_STOPS_MM]
    assert all(a > b for a, b in zip(fovs, fovs[1:]))
    assert mcz.model(0, 0).fov(1600, 1200) == mcz.model(0, 0, zoom_mm=26).fov(1600, 1200)
    for bad in (20.0, 111.0):
        with pytest.raises(InputError, match="zoom"):
            mcz.model(0, 0, zoom_mm=bad)
    with pytest.raises(InputError, match="fixed focal length"):
        instrument("NAVCAM_LEFT").model(0, 0, zoom_mm=34)


def test_mastcam_z_distortion_is_small():
    m = instrument("MCZ_LEFT").model(0, 0, zoom_mm=26)
    corners = np.array([[0, 0], [1599, 0], [0, 1199], [1599, 1199]], float)
    _, d = m.backproject(corners)
    lin = m.linear().project(m.C + d)
    shift = np.linalg.norm(lin - corners, axis=1)
    assert 0.01 < shift.max() < 2.0  # present but sub-pixel-to-pixel, as stated in the module


@pytest.mark.parametrize("name, baseline", [("NAVCAM_LEFT", 0.424), ("MCZ_LEFT", 0.244)])
def test_stereo_baseline_at_any_pointing(name, baseline):
    left = instrument(name)
    right = instrument(left.partner)
    for az, el in POSES:
        ml, mr = left.model(az, el), right.model(az, el)
        b = mr.C - ml.C
        assert np.linalg.norm(b) == pytest.approx(baseline, abs=1e-9)
        # The baseline runs along the left camera's H direction (right), across the pointing.
        hp = ml.H - (ml.H @ ml.A) * ml.A
        assert _angle_deg(b, hp) < (1.2 if name.startswith("MCZ") else 1e-6)


def test_mastcam_z_toe_in():
    for zoom in (26.0, 63.0, 110.0):
        for az, el in POSES:
            ml = instrument("MCZ_LEFT").model(az, el, zoom_mm=zoom)
            mr = instrument("MCZ_RIGHT").model(az, el, zoom_mm=zoom)
            assert _angle_deg(ml.A, mr.A) == pytest.approx(2.3, abs=1e-6)
            # Toe-in, not toe-out: the axes converge in front of the pair.
            b = mr.C - ml.C
            assert ml.A @ b > 0 > mr.A @ b


def test_registry_and_partners():
    assert set(INSTRUMENTS) == {"NAVCAM_LEFT", "NAVCAM_RIGHT", "MCZ_LEFT", "MCZ_RIGHT"}
    for name in INSTRUMENTS:
        assert stereo_partner(stereo_partner(name)) == name
        assert stereo_partner(name) != name
    assert instrument(" navcam_left ").name == "NAVCAM_LEFT"
    with pytest.raises(InputError, match="unknown instrument"):
        instrument("HAZCAM_LEFT")


@pytest.mark.parametrize("name, downsample, subframe", [
    ("NAVCAM_RIGHT", 2, (2545, 1, 2576, 1936)),
    ("NAVCAM_LEFT", 1, (1273, 953, 1296, 976)),
    ("NAVCAM_LEFT", 4, None),
    ("MCZ_LEFT", 2, (401, 301, 800, 600)),
])
def test_subframe_and_downsample_follow_the_model_algebra(name, downsample, subframe):
    ins = instrument(name)
    full = ins.model(40.0, -25.0)
    tile = ins.model(40.0, -25.0, downsample=downsample, subframe=subframe)
    x0, y0 = (1, 1) if subframe is None else subframe[:2]
    rng = np.random.default_rng(7)
    pix_full = rng.uniform([0, 0], [ins.width - 1, ins.height - 1], size=(40, 2))
    o, d = full.backproject(pix_full)
    pts = o + rng.uniform(2, 80, size=(40, 1)) * d
    expect = (pix_full - [x0 - 1, y0 - 1]) / downsample
    assert np.abs(tile.project(pts) - expect).max() < 1e-6
    # and back: the tile pixel's ray is the full pixel's ray
    _, d_tile = tile.backproject(expect)
    assert np.abs(d_tile - d).max() < 1e-9
    w, h = ins.product_size(downsample, subframe)
    sw, sh = (ins.width, ins.height) if subframe is None else subframe[2:]
    assert (w, h) == (sw // downsample, sh // downsample)


def test_bad_products_are_input_errors():
    nav = instrument("NAVCAM_LEFT")
    for sub in [(0, 1, 100, 100), (5000, 1, 200, 100), (1, 1, 5120, 3841), ("a", 1, 2, 3), (1, 2)]:
        with pytest.raises(InputError, match="subframe"):
            nav.model(0, 0, subframe=sub)
    for ds in (0, 1.5, -2, "two", None):
        with pytest.raises(InputError, match="downsample"):
            nav.model(0, 0, downsample=ds)
