"""Cropped equirectangular panoramas (plain photos cover a small part of the sphere): a window of
the contract's full-sphere grid, with the same pixels as the full render and a transform that
places it."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from calib.rotation import azel_to_vector
from mosaic.render import render_panorama
from mosaic.render import truthworld as tw
from mosaic.render.projections import Equirectangular, EquirectWindow, covered_window

RES = 0.25  # full grid 1440 x 720


def test_window_across_north_and_at_a_pole():
    full = Equirectangular(1440)
    az = np.array([350.0, 355.0, 5.0, 20.0])
    win = covered_window(full, azel_to_vector(az, np.array([-5.0, 10.0, 0.0, 5.0])), margin=0)
    assert isinstance(win, EquirectWindow)
    assert win.x0 % 1440 == 1400 and win.width == 120  # 350 deg .. 20 deg, across north
    assert win.y0 == 320 and win.y0 + win.height == 380
    assert win.transform[0] % 360 == pytest.approx(350.0) and win.transform[3] == pytest.approx(10.0)
    # The window's pixels are the full grid's pixels.
    assert np.allclose(win.pixel_to_dir(50, 7), full.pixel_to_dir(50 + 1400 - 1440, 7 + 320))
    # A pole in view: the window runs to it, all round.
    polar = covered_window(full, azel_to_vector(az, np.full(4, 60.0)), poles=(True, False), margin=0)
    assert polar.y0 == 0 and polar.width == 1440


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    world = tw.world(900, seed=5)
    focal = 100 / np.tan(np.radians(24))
    specs = [{"model": tw.pointing_model(az, 0.0, 200, 150, focal), "width": 200, "height": 150, "gain": g}
             for az, g in ((345.0, 1.0), (10.0, 0.9), (35.0, 1.1))]
    return tw.write_frames(tmp_path_factory.mktemp("crop"), world, specs)


def test_cropped_render_is_the_full_renders_window(photos, tmp_path):
    full = render_panorama(photos, tmp_path / "full", resolution=RES)
    crop = render_panorama(photos, tmp_path / "crop", resolution=RES, crop=True)
    assert (full["width"], full["height"]) == (1440, 720)
    assert crop["width"] <= 480 and crop["height"] <= 240
    with rasterio.open(tmp_path / "crop" / "panorama.tif") as ds:
        t, c = ds.transform, ds.read()
    # Same pixel size as the contract grid, the corner on its pixel edges.
    assert t.a == pytest.approx(RES) and t.e == pytest.approx(-RES)
    x0, y0 = round(t.c / RES), round((90 - t.f) / RES)
    assert t.c == pytest.approx(x0 * RES) and (x0 + c.shape[2]) % 1440 < x0 % 1440  # across north
    with rasterio.open(tmp_path / "full" / "panorama.tif") as ds:
        f = ds.read()
    cols = (np.arange(c.shape[2]) + x0) % 1440
    ref = f[:, y0:y0 + c.shape[1]][:, :, cols]
    both = (ref[-1] == 255) & (c[-1] == 255)
    assert both.sum() > 0.9 * (c[-1] == 255).sum()
    diff = np.abs(ref[:-1].astype(int) - c[:-1].astype(int))[:, both]
    assert np.percentile(diff, 99) <= 2 and diff.mean() < 0.5


def test_viewer_places_a_cropped_panorama_on_the_sphere(photos, tmp_path):
    import base64
    import io
    import re

    from PIL import Image

    from mosaic.formats.viewer import write_viewer

    render_panorama(photos, tmp_path, resolution=RES, crop=True)
    page = write_viewer(tmp_path).read_text()
    uri = re.search(r'"preview":"data:image/jpeg;base64,([^"]+)"', page).group(1)
    im = np.asarray(Image.open(io.BytesIO(base64.b64decode(uri))).convert("L"))
    assert im.shape[1] == 2 * im.shape[0]
    # Content sits where the frames look (azimuth 321..59 deg, elevation +-20), black elsewhere.
    h, w = im.shape
    col = lambda az: int(az / 360 * w)  # noqa: E731
    assert im[h // 2, col(10)] > 20 and im[h // 2, col(340)] > 20
    assert im[h // 2, col(180)] == 0 and im[h // 8, col(10)] == 0
