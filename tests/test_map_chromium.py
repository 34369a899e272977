"""The Leaflet page: self-contained (no network), and in headless Chromium it loads the Mars tiles
centred on the site with a scale bar in Mars metres."""

from __future__ import annotations

import re

import numpy as np
import pytest
from browser import CHROMIUM, chromium

from mosaic.formats import geo, webmap, webtiles

SITE = geo.DEFAULT_SITE_ORIGIN
GRAY = 90


def _site_products(out):
    gsd, n = 0.1, 600
    t = geo.grid_transform(SITE, -n * gsd / 2, n * gsd / 2, gsd)
    rows, cols = np.mgrid[0:n, 0:n]
    cx, cy = ~t @ geo.origin_map(SITE)
    img = np.full((3, n, n), GRAY, np.uint8)
    disc = (cols + 0.5 - cx) ** 2 + (rows + 0.5 - cy) ** 2 < (3.0 / gsd) ** 2  # 6 m wide magenta disc
    img[0][disc], img[1][disc], img[2][disc] = 255, 0, 255
    dem = (-2570.0 + 0.02 * cols).astype(np.float32)
    ts = webtiles.write_tiles(img, t, geo.site_crs(), out, hillshade_dem=dem, threads=2)
    page = webmap.write_map(out, (SITE.lon, SITE.lat), ts.zooms,
                            [("Orthoimage", ts.layers["tiles"]), ("Hillshade", ts.layers["hillshade"], {"visible": False})],
                            title="Jezero test site", bounds_lonlat=ts.bounds_lonlat,
                            marker=((SITE.lon, SITE.lat), "site origin"))
    return ts, page


def test_page_is_self_contained(tmp_path):
    ts, page = _site_products(tmp_path)
    html = page.read_text()
    assert "__CONFIG__" not in html and "__TITLE__" not in html
    # Every script and stylesheet is local: nothing to fetch from the network.
    refs = re.findall(r'<(?:script|link)[^>]*(?:src|href)="([^"]+)"', html)
    assert refs and all(not r.startswith(("http:", "https:", "//")) for r in refs)
    for r in refs:
        assert (tmp_path / r).is_file()
    assert (tmp_path / "leaflet" / "LICENSE").is_file()
    assert (tmp_path / "leaflet" / "images" / "marker-icon.png").is_file()
    assert "R: R_MARS" in html and "3396190" in html
    assert '"url": "tiles/{z}/{x}/{y}.png"' in html


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed")
def test_chromium_shows_tiles_centred_on_the_site(tmp_path):
    out = tmp_path / "site"
    ts, page = _site_products(out)
    shot = tmp_path / "shot.png"

    def loaded(shot):  # the ortho's gray fills much of the view
        return np.all(np.abs(shot.astype(int) - GRAY) <= 2, axis=-1).mean() > 0.3

    rgb = chromium(tmp_path, page.as_uri(), size=(800, 600), screenshot=shot, budget_ms=5000,
                   until=loaded).astype(int)
    gray = np.all(np.abs(rgb - GRAY) <= 2, axis=-1)
    h, w = rgb.shape[:2]
    assert (h, w) == (600, 800)
    # The ortho's gray fills much of the view (tiles loaded) ...
    assert gray.mean() > 0.3, gray.mean()
    # ... and the magenta disc at the site sits at the centre of the screenshot.
    magenta = (rgb[..., 0] > 230) & (rgb[..., 1] < 30) & (rgb[..., 2] > 230)
    ys, xs = np.nonzero(magenta)
    assert len(xs) > 500
    assert abs(xs.mean() - w / 2) < 6 and abs(ys.mean() - h / 2) < 6, (xs.mean(), ys.mean())
    # The 6 m disc's width in screen pixels, against the zoom's Mars ground resolution.
    zoom = min(ts.zooms[-1], ts.zooms[0] + 2)
    m_per_px = 2 * np.pi * geo.MARS_SPHERE_RADIUS / (256 * 2 ** zoom) * np.cos(np.radians(SITE.lat))
    width_px = xs.max() - xs.min() + 1
    assert width_px == pytest.approx(6.0 / m_per_px, rel=0.05)
    # The scale bar measures with the Mars radius: its pixels per metre match the same resolution
    # (Leaflet's Earth default would be 1.88 times off).
    dom = chromium(tmp_path, page.as_uri(), size=(800, 600), budget_ms=5000)
    bar = re.search(r'leaflet-control-scale-line" style="width: (\d+)px;">(\d+) (m|km)<', dom)
    assert bar, "no scale bar in the rendered page"
    metres = int(bar.group(2)) * (1000 if bar.group(3) == "km" else 1)
    assert int(bar.group(1)) / metres == pytest.approx(1.0 / m_per_px, rel=0.02)
