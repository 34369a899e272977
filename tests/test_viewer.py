"""The panorama viewer page (mosaic/formats/viewer) and `mosaic view`.

The browser tests render a synthetic equirectangular preview whose colour encodes the azimuth
sector (north white, then seven hues every 45°) and darkens above +60° elevation, in headless
Chromium with SwiftShader WebGL, and check from the screenshots where the sector and band edges
land on screen: that is the pinhole projection of heading/elevation/FOV, the wrap at 0°/360°, and
the row/column conventions of DESIGN.md. They skip when no Chromium is installed.
"""

from __future__ import annotations

import base64
import colorsys
import html
import io
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import browser
import numpy as np
import pytest
from browser import CHROMIUM
from PIL import Image

from calib.errors import InputError
from mosaic import view
from mosaic.formats.viewer import embed_image, render_page, write_viewer
from mosaic.formats.viewer.tiles import plan_levels, tile_window, write_tiles

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

needs_chromium = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH")
SIZE = (640, 480)


def chromium(tmp_path, url, **kw):
    """The page in a SIZE window (:func:`browser.chromium`)."""
    return browser.chromium(tmp_path, url, size=SIZE, **kw)


@pytest.fixture(scope="module")
def readout_dom(tmp_path_factory):
    """The DOM of a viewer opened once with an out-of-range hash; skips when there is no WebGL."""
    if CHROMIUM is None:
        pytest.skip("no chromium on PATH")
    d = tmp_path_factory.mktemp("readout")
    Image.fromarray(sector_panorama(256)).save(d / "preview.jpg")
    write_viewer(d)
    dom = chromium(d, (d / "index.html").as_uri() + "#az=-50&el=95&fov=500")
    if re.search(r'<body class="nogl"', dom):
        pytest.skip("headless chromium has no WebGL here (SwiftShader missing)")
    return dom


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
def test_browser_heading_projection(tmp_path, out, readout_dom):
    url = (out / "index.html").as_uri()
    fov = 60.0
    cy = SIZE[1] // 2

    def drawn(shot):  # the sectors are on screen (not the blank canvas before the image is drawn)
        return len(np.unique(classify(shot[cy - 40]))) >= 2

    shot_se = chromium(tmp_path, url + f"#az=112.5&el=0&fov={fov:g}", screenshot=tmp_path / "se.png", until=drawn)
    # Just east of north, so that on row cy + 60 the 0°/360° seam crosses the screen at x = 311.0,
    # inside a 2×2 pixel quad, where texture filtering sees both sides of the wrap.
    north = 1.21
    shot_n = chromium(tmp_path, url + f"#az={north}&el=45&fov={fov:g}", screenshot=tmp_path / "n.png", until=drawn)
    assert shot_se.shape[:2] == (SIZE[1], SIZE[0])
    assert np.abs(shot_se.astype(int) - shot_n).mean() > 40     # the view follows the heading

    # Heading 112.5°, level: the centre is sector 2 (90°-135°), its edges at 90° and 135° are
    # vertical lines where the pinhole projection puts them; 60° elevation is off screen.
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


def test_browser_readout_and_hash_normalised(readout_dom):
    assert re.search(r'id="az">310\.0° NW<', readout_dom), readout_dom[-3000:]
    assert 'id="el">+90.0°<' in readout_dom and 'id="fov">120°<' in readout_dom


# Same-origin (served) harness: drives the viewer in an iframe with synthetic input events and
# writes the readout and URL hash after each step into its own DOM for --dump-dom.
HARNESS = """<!DOCTYPE html><html><body>
<iframe id="f" src="index.html#az=100&el=0&fov=60" style="width:640px;height:480px;border:0"></iframe>
<pre id="log"></pre>
<script>
var f = document.getElementById("f");
f.onload = function () {
  var w = f.contentWindow, d = f.contentDocument, c = d.getElementById("view"), out = [];
  function rec(name) {
    out.push([name, d.getElementById("az").textContent, d.getElementById("el").textContent,
              d.getElementById("fov").textContent, w.location.hash].join(" | "));
  }
  function ptr(type, id, x, y) {
    c.dispatchEvent(new w.PointerEvent(type, {pointerId: id, clientX: x, clientY: y, bubbles: true}));
  }
  var steps = [
    ["start", function () {}],
    ["drag", function () { ptr("pointerdown", 1, 300, 200); ptr("pointermove", 1, 400, 250); ptr("pointerup", 1, 400, 250); }],
    ["wheel", function () { c.dispatchEvent(new w.WheelEvent("wheel", {deltaY: 100, deltaMode: 0, cancelable: true})); }],
    ["right", function () { w.dispatchEvent(new w.KeyboardEvent("keydown", {key: "ArrowRight"})); }],
    ["down", function () { w.dispatchEvent(new w.KeyboardEvent("keydown", {key: "ArrowDown"})); }],
    ["pinch", function () { ptr("pointerdown", 1, 200, 240); ptr("pointerdown", 2, 440, 240);
                            ptr("pointermove", 2, 560, 240); ptr("pointerup", 2, 560, 240); ptr("pointerup", 1, 200, 240); }],
    ["hash", function () { w.location.hash = "#az=350&el=-20&fov=30"; }]
  ];
  // After each input, wait past the viewer's 150 ms hash throttle, then record.
  var i = 0;
  (function next() {
    if (i === steps.length) { document.getElementById("log").textContent = out.join("\\n"); return; }
    var step = steps[i++];
    step[1]();
    setTimeout(function () { rec(step[0]); next(); }, 300);
  })();
};
</script></body></html>
"""


def test_browser_interaction_updates_view_and_hash(tmp_path, out, readout_dom):
    (out / "harness.html").write_text(HARNESS)
    with view.serving(out) as base:
        dom = chromium(tmp_path, base + "harness.html", budget_ms=6000)
    log = html.unescape(re.search(r'<pre id="log">(.*?)</pre>', dom, re.S).group(1)).strip().splitlines()
    got, shown = {}, {}
    for line in log:
        name, az, el, fov, h = (x.strip() for x in line.split("|"))
        shown[name] = (az, el, fov)
        q = dict(kv.split("=") for kv in h.lstrip("#").split("&"))
        got[name] = (float(q["az"]), float(q["el"]), float(q["fov"]))
    assert got["start"] == (100.0, 0.0, 60.0) and shown["start"] == ("100.0° E", "+0.0°", "60°")
    # Drag 100 px right and 50 px down at 60° over 640 px: the scene follows the pointer, and the
    # hash (one decimal) and the readout follow the view.
    assert got["drag"] == pytest.approx((100 - 100 * 60 / 640, 50 * 60 / 640, 60), abs=0.051)
    assert shown["drag"] == ("90.6° E", "+4.7°", "60°")
    fov = 60 * np.exp(100 * 0.0015)                                      # wheel down zooms out
    assert got["wheel"][2] == pytest.approx(fov, abs=0.051)
    assert got["right"][0] == pytest.approx(got["wheel"][0] + fov / 12, abs=0.11)
    assert got["down"][1] == pytest.approx(got["right"][1] - fov / 12, abs=0.11)
    assert got["pinch"][2] == pytest.approx(fov * 240 / 360, abs=0.11)  # fingers apart: zoom in
    assert got["hash"] == (350.0, -20.0, 30.0)                           # a new hash moves the view
    assert shown["hash"] == ("350.0° N", "-20.0°", "30°")


@needs_chromium
def test_browser_without_webgl_shows_flat_image(tmp_path, out):
    dom = chromium(tmp_path, (out / "index.html").as_uri(), extra=["--disable-3d-apis"])
    assert re.search(r'<body class="nogl"', dom)
    assert re.search(r'<img id="flat"[^>]* src="data:image/jpeg;base64,', dom)
    assert "WebGL is unavailable" in dom


# ---- tile pyramid ------------------------------------------------------------------------------

def striped_panorama(width):
    """The sector panorama with 2-px black stripes across sector 2 (90°-135°): detail that only
    full resolution shows (any 4× reduction averages it to a flat half-bright band)."""
    img = sector_panorama(width).copy()
    x = np.arange(width)
    az = 360.0 * (x + 0.5) / width
    img[:, (az >= 90) & (az < 135) & ((x // 2) % 2 == 1)] = 0
    return img


def make_cog(path, rgb, alpha=None, dtype=np.uint8):
    from mosaic.formats.cog import equirect_transform, write_cog

    h, w = rgb.shape[:2]
    alpha = np.full((h, w), np.iinfo(dtype).max, dtype) if alpha is None else alpha.astype(dtype)
    arr = np.concatenate([np.moveaxis(rgb.astype(dtype), -1, 0), alpha[None]])
    return write_cog(path, arr, transform=equirect_transform(w, h), alpha=True)


def read_jpeg(path):
    return np.asarray(Image.open(path).convert("RGB")).astype(float)


def test_plan_levels_cover_the_panorama():
    assert plan_levels(4096, 2048, 512, 4096) == []
    lv = plan_levels(40000, 20000, 512, 4096)
    assert [(v["scale"], v["cols"], v["rows"]) for v in lv] == [(1, 79, 40), (2, 40, 20), (4, 20, 10), (8, 10, 5)]
    for v in lv:
        area = 0
        for r in range(v["rows"]):
            for c in range(v["cols"]):
                (x0, y0, x1, y1), (w, h) = tile_window(v, r, c, 40000, 20000, 512)
                assert 0 < x1 - x0 <= 512 * v["scale"] and w <= 512 and h <= 512
                area += (x1 - x0) * (y1 - y0)
        assert area == 40000 * 20000 and (x1, y1) == (40000, 20000)


def test_write_tiles_content_and_reuse(tmp_path):
    rng = np.random.default_rng(3)
    rgb = sector_panorama(1024).astype(float)
    rgb = np.clip(rgb * 0.8 + rng.normal(0, 1, rgb.shape) + 20, 0, 255)     # smooth: JPEG-friendly
    alpha = np.full(rgb.shape[:2], 255)
    alpha[:128, :256] = 0                      # two whole level-0 tiles uncovered
    make_cog(tmp_path / "panorama.tif", rgb, alpha)
    m = write_tiles(tmp_path, tile=128, preview_width=256)
    assert m["url"] == "tiles/{z}/{y}/{x}.jpg" and (m["width"], m["height"]) == (1024, 512)
    assert [(v["z"], v["cols"], v["rows"]) for v in m["levels"]] == [(0, 8, 4), (1, 4, 2)]
    assert m["levels"][0]["present"] == "00111111" + "1" * 24       # uncovered tiles are not written
    assert m["levels"][1]["present"] == "1" * 8
    assert not (tmp_path / "tiles/0/0/0.jpg").exists() and (tmp_path / "tiles/0/0/2.jpg").exists()
    # Level 0 is the panorama itself, level 1 its 2×2 means; uncovered pixels black.
    t = read_jpeg(tmp_path / "tiles/0/2/3.jpg")
    assert t.shape == (128, 128, 3) and np.abs(t - rgb[256:384, 384:512]).mean() < 3
    t = read_jpeg(tmp_path / "tiles/1/0/0.jpg")
    half = rgb[:256, :256].reshape(128, 2, 128, 2, 3).mean(axis=(1, 3))
    assert np.abs(t[64:, :] - half[64:, :]).mean() < 3 and t[:60, :].max() < 20
    # Current pyramid: kept as it is; new panorama: rebuilt.
    stamp = (tmp_path / "tiles/tiles.json").stat().st_mtime_ns
    assert write_tiles(tmp_path, tile=128, preview_width=256) == m
    assert (tmp_path / "tiles/tiles.json").stat().st_mtime_ns == stamp
    make_cog(tmp_path / "panorama.tif", rgb)
    assert write_tiles(tmp_path, tile=128, preview_width=256)["levels"][0]["present"] == "1" * 32
    # No wider than the preview: no pyramid, and the old one goes.
    assert write_tiles(tmp_path, tile=128, preview_width=1024) is None
    assert not (tmp_path / "tiles").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["panorama.tif"]    # no temporary left behind


def test_write_tiles_16bit_matches_preview(tmp_path):
    from mosaic.render.panorama import write_preview

    ramp = np.linspace(500, 3000, 1024)[None, :, None] * np.ones((512, 1, 3))
    make_cog(tmp_path / "panorama.tif", ramp, dtype=np.uint16)
    write_preview(tmp_path / "panorama.tif", tmp_path / "preview.jpg", 256)
    m = write_tiles(tmp_path, tile=128, preview_width=256)
    assert m["stretch_top"] == pytest.approx(3000, rel=0.01)
    prev = read_jpeg(tmp_path / "preview.jpg")
    t = read_jpeg(tmp_path / "tiles/1/1/2.jpg")            # panorama columns 512..767
    assert np.abs(t.mean(axis=(0, 2)).reshape(64, 2).mean(1) - prev[:, 128:192].mean(axis=(0, 2))).max() < 3


def test_write_tiles_bad_input(tmp_path):
    with pytest.raises(InputError, match="panorama.tif: no such panorama"):
        write_tiles(tmp_path)
    (tmp_path / "panorama.tif").write_bytes(b"II*\x00junk")
    with pytest.raises(InputError, match="panorama.tif: not a readable raster"):
        write_tiles(tmp_path)


@needs_chromium
def test_browser_tiles_over_http(tmp_path, readout_dom):
    """Served, the page zooms into full-resolution tiles, exactly placed; from disk it keeps to
    the preview (browsers refuse file:// images as WebGL textures)."""
    from mosaic.render.panorama import write_preview

    W = 2048
    make_cog(tmp_path / "panorama.tif", striped_panorama(W))
    write_preview(tmp_path / "panorama.tif", tmp_path / "preview.jpg", 512)
    write_viewer(tmp_path, tiles=write_tiles(tmp_path, tile=256, preview_width=512))
    heading, fov, y = 112.5, 10.0, SIZE[1] // 2 - 40
    view_hash = f"#az={heading}&el=0&fov={fov:g}"
    local = chromium(tmp_path, (tmp_path / "index.html").as_uri() + view_hash, screenshot=tmp_path / "file.png")
    lum_file = local[y, 200:600].mean(axis=1)
    assert lum_file.std() < 8              # the preview has no stripes left, just the half-bright band
    # Every screen pixel that looks at the middle of a 2-px stripe shows its colour.
    az, _ = pixel_azel(heading, 0, fov)
    u = az[y] / 360 * W                    # panorama column coordinate, pixel x spans [x, x + 1)
    mid = np.abs(u % 2 - 1) < 0.3
    dark = (u // 2) % 2 == 1
    assert mid.sum() > 50
    # The tiles come after the preview: CI once took the screenshot before they were drawn.
    def striped(shot):
        lum = shot[y].mean(axis=1)
        return lum[mid & dark].max() < 60 and lum[mid & ~dark].min() > 140

    with view.serving(tmp_path) as base:
        served = chromium(tmp_path, base + "index.html" + view_hash, screenshot=tmp_path / "http.png",
                          until=striped)
    assert striped(served)


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


def test_serving_port_in_use_is_input_error(out):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(InputError, match=f"cannot listen on 127.0.0.1:{port}"):
            with view.serving(out, port=port):
                pass


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
