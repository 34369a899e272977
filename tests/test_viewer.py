"""The panorama viewer page (mosaic/viewer) and `mosaic view`.

The browser tests render a synthetic equirectangular preview whose colour encodes the azimuth
sector (north white, then seven hues every 45°) and darkens above +60° elevation, in headless
Chromium with SwiftShader WebGL, and check from the screenshots where the sector and band edges
land on screen: that is the pinhole projection of heading/elevation/FOV, the wrap at 0°/360°, and
the row/column conventions of DESIGN.md. They skip when no Chromium is installed.
"""

from __future__ import annotations

import base64
import colorsys
import io
import os
import re
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from calib.errors import InputError
from mosaic import view
from mosaic.viewer import embed_image, render_page, write_viewer

REPO = Path(__file__).resolve().parents[1]

# Sector k covers azimuth [45k, 45k + 45): north (sector 0) white, the others distinct hues.
SECTOR_RGB = np.array([[255, 255, 255]] + [[round(c * 255) for c in colorsys.hsv_to_rgb(k / 7, 1, 1)]
                                           for k in range(7)], dtype=np.uint8)
CAP_EL = 60.0   # elevation above this (only up: a flipped image must show) is a third as bright
PALETTE = np.concatenate([SECTOR_RGB, SECTOR_RGB // 3]).astype(float)   # class k + 8 = dark sector k


def sector_panorama(width=1024):
    """Equirect RGB (width × width/2) following the DESIGN.md pixel-centre conventions."""
    h = width // 2
    az = 360.0 * (np.arange(width) + 0.5) / width
    el = 90.0 - 180.0 * (np.arange(h) + 0.5) / h
    img = np.repeat(SECTOR_RGB[(az // 45).astype(int)][None], h, axis=0)
    img[el > CAP_EL] //= 3
    return img


def classify(rgb):
    """Index into PALETTE of the nearest colour, per pixel (JPEG and filtering blur the edges)."""
    d = ((rgb[..., None, :3].astype(float) - PALETTE) ** 2).sum(-1)
    return d.argmin(-1)


@pytest.fixture
def out(tmp_path):
    Image.fromarray(sector_panorama()).save(tmp_path / "preview.jpg", quality=92)
    write_viewer(tmp_path, title="Synthetic <sectors>", meta={"frames": 3, "note": "</script>x"})
    return tmp_path


# ---- the page ----------------------------------------------------------------------------------

def test_page_is_self_contained(out):
    page = (out / "index.html").read_text()
    assert "<title>Synthetic &lt;sectors&gt;</title>" in page
    # Nothing is fetched: no external script, stylesheet or image, the preview is inline.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
    assert "http://" not in page and "https://" not in page
    cfg = _config(page)
    assert cfg["width"] == 1024 and cfg["height"] == 512
    jpeg = base64.b64decode(cfg["preview"].split(",", 1)[1])
    assert jpeg == (out / "preview.jpg").read_bytes()      # a fitting JPEG goes in byte for byte
    # Metadata text cannot close the script element that carries it.
    assert cfg["meta"] == {"frames": "3", "note": "</script>x"}
    assert page.count("</script>") == 2
    assert oct((out / "index.html").stat().st_mode & 0o777) == oct(0o644)


def _config(page):
    import json

    m = re.search(r'<script type="application/json" id="config">(.*?)</script>', page, re.S)
    return json.loads(m.group(1))


def test_embed_downscales_and_blackens_transparent(tmp_path):
    rgba = np.zeros((300, 600, 4), np.uint8)
    rgba[:, :300] = (200, 100, 50, 255)         # covered west half... any colour, opaque
    rgba[:, 300:] = (255, 255, 255, 0)          # uncovered: transparent, must come out black
    Image.fromarray(rgba).save(tmp_path / "p.png")
    uri, w, h = embed_image(tmp_path / "p.png", max_width=256)
    assert (w, h) == (256, 128)
    assert uri.startswith("data:image/jpeg;base64,")
    im = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert im.shape == (128, 256, 3)
    assert np.abs(im[64, 60].astype(int) - (200, 100, 50)).max() < 12
    assert im[64, 200].max() < 12


def test_embed_16bit_gray(tmp_path):
    a = np.full((50, 100), 65535, np.uint16)
    a[:, 50:] = 0
    Image.fromarray(a).save(tmp_path / "g.png")
    uri, w, h = embed_image(tmp_path / "g.png")
    im = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))))
    assert (w, h) == (100, 50) and im[25, 10].min() > 240 and im[25, 90].max() < 15


def test_write_viewer_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="preview.jpg"):
        write_viewer(tmp_path)
    Image.new("RGB", (300, 200)).save(tmp_path / "preview.jpg")
    with pytest.raises(InputError, match=r"preview\.jpg: 300x200 is not an equirectangular"):
        write_viewer(tmp_path)
    (tmp_path / "junk.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(InputError, match="junk.jpg: not a readable image"):
        write_viewer(tmp_path, preview_name="junk.jpg")
    with pytest.raises(InputError, match="not a directory"):
        write_viewer(tmp_path / "nope")
    assert not (tmp_path / "index.html").exists()


def test_render_page_escapes_title():
    page = render_page({"title": "x", "meta": {}, "preview": ""}, "a & <b>")
    assert "<title>a &amp; &lt;b&gt;</title>" in page and "{{" not in page


# ---- in a browser ------------------------------------------------------------------------------

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome"))
                 if p), None)
needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH")
SIZE = (640, 480)


def chromium(tmp_path, url, *, screenshot=None, extra=()):
    """Run headless Chromium on ``url``; return the PNG as an array, or the DOM text."""
    args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu",
            "--use-angle=swiftshader", "--enable-unsafe-swiftshader", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--hide-scrollbars", f"--user-data-dir={tmp_path / 'chromium-profile'}",
            f"--window-size={SIZE[0]},{SIZE[1]}", "--force-device-scale-factor=1",
            "--virtual-time-budget=3000", *extra]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    r = subprocess.run([*args, url], capture_output=True, text=True, timeout=90)
    assert r.returncode == 0, r.stderr[-2000:]
    if screenshot:
        return np.asarray(Image.open(screenshot).convert("RGB"))
    return r.stdout


def _skip_without_webgl(tmp_path, out):
    dom = chromium(tmp_path, (out / "index.html").as_uri() + "#az=0")
    if 'class="nogl"' in dom:
        pytest.skip("headless chromium has no WebGL here (SwiftShader missing)")


def screen_column(az, heading, fov):
    """Screen x (pixel edges, 0..W) where azimuth ``az`` on the horizon is seen, elevation 0."""
    cx = SIZE[0] / 2
    d = (az - heading + 180) % 360 - 180
    return cx + np.tan(np.radians(d)) / np.tan(np.radians(fov / 2)) * cx


def pixel_azel(heading, pitch, fov):
    """Azimuth and elevation (degrees, (H, W)) seen at each screen pixel centre: a pinhole camera
    with horizontal FOV ``fov`` looking at (heading, pitch), in LOCAL_LEVEL north/east/up."""
    w, h = SIZE
    tx = np.tan(np.radians(fov / 2))
    sx = ((np.arange(w) + 0.5) / w * 2 - 1) * tx
    sy = (1 - (np.arange(h) + 0.5) / h * 2) * tx * h / w
    a, e = np.radians(heading), np.radians(pitch)
    fwd = np.array([np.cos(e) * np.cos(a), np.cos(e) * np.sin(a), np.sin(e)])
    right = np.array([-np.sin(a), np.cos(a), 0.0])
    up = np.array([-np.sin(e) * np.cos(a), -np.sin(e) * np.sin(a), np.cos(e)])   # (N, E, U) is left-handed
    ray = fwd + sx[None, :, None] * right + sy[:, None, None] * up
    az = np.degrees(np.arctan2(ray[..., 1], ray[..., 0])) % 360
    el = np.degrees(np.arcsin(ray[..., 2] / np.linalg.norm(ray, axis=-1)))
    return az, el


def expected_classes(heading, pitch, fov):
    az, el = pixel_azel(heading, pitch, fov)
    return (az // 45).astype(int) % 8 + 8 * (el > CAP_EL)


def edges(labels):
    """Positions (between samples i-1 and i, as i) where the class changes along a 1-D array."""
    return np.flatnonzero(labels[1:] != labels[:-1]) + 1


@needs_chromium
def test_browser_heading_projection(tmp_path, out):
    _skip_without_webgl(tmp_path, out)
    url = (out / "index.html").as_uri()
    fov = 60.0
    shot_se = chromium(tmp_path, url + f"#az=112.5&el=0&fov={fov:g}", screenshot=tmp_path / "se.png")
    # Just east of north, so that on row cy + 60 the 0°/360° seam crosses the screen at x = 311.0,
    # inside a 2×2 pixel quad, where texture filtering sees both sides of the wrap.
    north = 1.21
    shot_n = chromium(tmp_path, url + f"#az={north}&el=45&fov={fov:g}", screenshot=tmp_path / "n.png")
    assert shot_se.shape[:2] == (SIZE[1], SIZE[0])
    assert np.abs(shot_se.astype(int) - shot_n).mean() > 40     # the view follows the heading

    # Heading 112.5°, level: the centre is sector 2 (90°-135°), its edges at 90° and 135° are
    # vertical lines where the pinhole projection puts them; 60° elevation is off screen.
    cy = SIZE[1] // 2
    row = classify(shot_se[cy - 40])             # clear of the centre cross and the panels
    assert row[SIZE[0] // 2] == 2
    found = edges(row)
    expect = [screen_column(90, 112.5, fov), screen_column(135, 112.5, fov)]
    assert len(found) == 2, found
    np.testing.assert_allclose(found, expect, atol=2.0)
    assert row[0] == 1 and row[-1] == 3
    # Columns are vertical: the same edges 150 px lower.
    np.testing.assert_allclose(edges(classify(shot_se[cy + 100])), expect, atol=2.0)

    # Heading ~0° (the seam), pitched up 45°: west of north is sector 7, east of it the white north
    # sector with one clean edge (no column of some other colour, no blur from a coarse mip level).
    cx = SIZE[0] // 2
    want = expected_classes(north, 45, fov)
    y = cy + 60
    row = classify(shot_n[y])
    assert row[cx - 40] == 7 and row[cx + 40] == 0
    seam = edges(want[y, cx - 100: cx + 100]) + cx - 100
    assert len(seam) == 1 and seam[0] % 2 == 1          # the seam splits a 2×2 quad, as intended
    np.testing.assert_allclose(edges(row[cx - 100: cx + 100]) + cx - 100, seam, atol=1.0)
    # Up the column right of the meridian (clear of the centre cross and the heading tape): one step
    # to the dark cap at 60° elevation, where the projection puts it.
    col = classify(shot_n[40:cy - 20, cx + 20])
    found = edges(col) + 40
    assert len(found) == 1 and col[0] == 8 and col[-1] == 0, found
    np.testing.assert_allclose(found, edges(want[40:cy - 20, cx + 20]) + 40, atol=1.0)
    # And everywhere not under the overlays, the rendered view is the projection of the panorama.
    for shot, want in ((shot_se, expected_classes(112.5, 0, fov)), (shot_n, want)):
        got = classify(shot)
        region = np.s_[32:SIZE[1] - 110, 220:SIZE[0] - 10]   # right of the title panel
        assert (got[region] == want[region]).mean() > 0.99


@needs_chromium
def test_browser_readout_and_hash_normalised(tmp_path, out):
    _skip_without_webgl(tmp_path, out)
    dom = chromium(tmp_path, (out / "index.html").as_uri() + "#az=-50&el=95&fov=500")
    assert re.search(r'id="az">310\.0° NW<', dom), dom[-3000:]
    assert 'id="el">+90.0°<' in dom and 'id="fov">120°<' in dom


@needs_chromium
def test_browser_without_webgl_shows_flat_image(tmp_path, out):
    dom = chromium(tmp_path, (out / "index.html").as_uri(), extra=["--disable-3d-apis"])
    assert re.search(r'<body class="nogl"', dom)
    assert re.search(r'<img id="flat"[^>]* src="data:image/jpeg;base64,', dom)
    assert "WebGL is unavailable" in dom


# ---- mosaic view -------------------------------------------------------------------------------

def test_serving_over_http(out):
    with view.serving(out, port=0) as base:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", base)
        with urllib.request.urlopen(base + "index.html", timeout=10) as r:
            assert r.status == 200 and r.headers["Content-Type"].startswith("text/html")
            assert r.read() == (out / "index.html").read_bytes()
        with urllib.request.urlopen(base + "preview.jpg", timeout=10) as r:
            assert r.read() == (out / "preview.jpg").read_bytes()
        with pytest.raises(urllib.error.HTTPError, match="404"):
            urllib.request.urlopen(base + "missing.tif", timeout=10)
    with pytest.raises(urllib.error.URLError):          # stopped: the port no longer answers
        urllib.request.urlopen(base + "index.html", timeout=5)


def test_view_url():
    assert view.view_url("http://h:1/") == "http://h:1/index.html"
    assert view.view_url("http://h:1/", az=90, el=-5.5, fov=None) == "http://h:1/index.html#az=90&el=-5.5"


def test_prepare_writes_missing_page(tmp_path):
    with pytest.raises(InputError, match="no such output folder"):
        view.prepare(tmp_path / "nope")
    with pytest.raises(InputError, match="neither index.html nor preview.jpg"):
        view.prepare(tmp_path)
    Image.fromarray(sector_panorama(256)).save(tmp_path / "preview.jpg")
    view.prepare(tmp_path)
    assert "<canvas" in (tmp_path / "index.html").read_text()


def test_view_command_serves_until_interrupted(out):
    """The real command line: prints the URL, serves, and Ctrl-C ends it with status 0."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    # Through cli.main, with only this command registered: the test is about `view`, not about
    # whether every other command's module imports.
    main = ("import sys; from mosaic import cli; cli.COMMANDS = {'view': 'mosaic.view'}; "
            "sys.exit(cli.main(sys.argv[1:]))")
    p = subprocess.Popen([sys.executable, "-c", main, "view", str(out), "--port", "0", "--no-browser",
                          "--az", "45"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = p.stdout.readline()
        m = re.search(r"(http://127\.0\.0\.1:\d+/index\.html)#az=45", line)
        assert m, line + p.stderr.read() if p.poll() is not None else line
        with urllib.request.urlopen(m.group(1), timeout=10) as r:
            assert b"<canvas" in r.read()
        p.send_signal(signal.SIGINT)
        assert p.wait(timeout=20) == 0
        assert "stopped" in p.stdout.read()
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
