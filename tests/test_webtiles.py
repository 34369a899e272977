"""XYZ tiles in the Mars tile matrix set: zooms from the GSD, tile numbers from lon/lat, alpha,
pyramid levels, hillshade, sources given as arrays or GeoTIFFs."""

from __future__ import annotations

import hashlib
import math

import morecantile
import numpy as np
import pytest
from PIL import Image
from pyproj import CRS, Transformer

from mosaic.formats import geo, webtiles
from mosaic.formats.cog import write_cog

MAGENTA = (255, 0, 255)
SITE = geo.DEFAULT_SITE_ORIGIN
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def _site_ortho(gsd=0.1, n=600, void_cols=100):
    """Gray ortho centred on the site with a magenta disc (r = 4 m) at the origin, voids at the west."""
    t = geo.grid_transform(SITE, -n * gsd / 2, n * gsd / 2, gsd)
    rows, cols = np.mgrid[0:n, 0:n]
    cx, cy = ~t @ geo.origin_map(SITE)
    img = np.zeros((4, n, n), np.uint8)
    img[:3] = 90
    img[3] = 255
    disc = (cols + 0.5 - cx) ** 2 + (rows + 0.5 - cy) ** 2 < (4.0 / gsd) ** 2
    for b, v in enumerate(MAGENTA):
        img[b][disc] = v
    img[:, :, :void_cols] = 0
    return img, t


def _pixel_in_tile(tms, tile, lon, lat):
    b = tms.xy_bounds(tile)
    to = Transformer.from_crs(CRS.from_wkt(tms.rasterio_geographic_crs.to_wkt()),
                              CRS.from_wkt(tms.rasterio_crs.to_wkt()), always_xy=True)
    x, y = to.transform(lon, lat)
    return int((x - b.left) / (b.right - b.left) * 256), int((b.top - y) / (b.top - b.bottom) * 256)


@pytest.fixture(scope="module")
def site_tiles(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiles")
    img, t = _site_ortho()
    dem = np.full(img.shape[1:], -2570.0, np.float32)
    dem[:, 300:] += np.linspace(0, 3, 300, dtype=np.float32)  # a ramp up to the east
    dem[:50, :] = -32768.0
    ts = webtiles.write_tiles(img, t, geo.site_crs(), out, hillshade_dem=dem, dem_nodata=-32768.0, threads=2)
    return out, ts, t


def test_zooms_follow_the_gsd(site_tiles):
    _, ts, _ = site_tiles
    tms = webtiles.tile_matrix_set()
    ground0 = tms.matrix(0).cellSize * math.cos(math.radians(SITE.lat))
    zmax = round(math.log2(ground0 / 0.1))
    zmin = math.floor(math.log2(ground0 * 256 / 60.0))
    assert ts.zooms == list(range(zmin, zmax + 1))
    assert (zmin, zmax) == (18, 20)


def test_site_tile_numbers_match_lonlat_and_earths_webmercator(site_tiles):
    out, ts, _ = site_tiles
    tms = webtiles.tile_matrix_set()
    assert tms.id == "MarsWebMercatorSphere"
    assert "Mars" in tms.rasterio_crs.to_wkt()
    earth = morecantile.tms.get("WebMercatorQuad")
    for z in ts.zooms:
        tile = tms.tile(SITE.lon, SITE.lat, z)
        assert tuple(tile) == tuple(earth.tile(SITE.lon, SITE.lat, z))
        png = out / "tiles" / str(z) / str(tile.x) / f"{tile.y}.png"
        assert png.is_file()
        with Image.open(png) as im:
            assert im.mode == "RGBA"
            rgba = np.asarray(im)
        px, py = _pixel_in_tile(tms, tile, SITE.lon, SITE.lat)
        assert tuple(rgba[py, px, :3]) == MAGENTA and rgba[py, px, 3] == 255, z
    w, s, e, n = ts.bounds_lonlat
    assert w < SITE.lon < e and s < SITE.lat < n


def test_only_tiles_with_data_exist_and_voids_are_transparent(site_tiles):
    out, ts, _ = site_tiles
    tms = webtiles.tile_matrix_set()
    zmax = ts.zooms[-1]
    written = {(int(p.parent.name), int(p.stem)) for p in (out / "tiles" / str(zmax)).glob("*/*.png")}
    covering = {(t.x, t.y) for t in tms.tiles(*ts.bounds_lonlat, [zmax])}
    assert written and written <= covering
    assert ts.counts["tiles"] == sum(1 for _ in (out / "tiles").rglob("*.png"))
    alphas = []
    for p in (out / "tiles" / str(zmax)).glob("*/*.png"):
        with Image.open(p) as im:
            a = np.asarray(im)[..., 3]
        alphas.append((a == 0).any())
        rgb = np.asarray(Image.open(p))[..., :3]
        # Opaque pixels are gray or magenta (or their blend at the disc edge), never darkened by voids.
        opaque = np.asarray(Image.open(p))[..., 3] == 255
        assert rgb[opaque][:, [0, 2]].min() >= 90
    assert any(alphas)  # the western void and the outside are transparent


def test_pyramid_levels_average_children(site_tiles):
    out, ts, _ = site_tiles
    tms = webtiles.tile_matrix_set()
    z = ts.zooms[0]
    tile = tms.tile(SITE.lon, SITE.lat, z)
    with Image.open(out / "tiles" / str(z) / str(tile.x) / f"{tile.y}.png") as im:
        rgba = np.asarray(im)
    px, py = _pixel_in_tile(tms, tile, SITE.lon, SITE.lat)
    assert tuple(rgba[py, px, :3]) == MAGENTA
    edge = rgba[(rgba[..., 3] > 0) & (rgba[..., 3] < 255)]
    if len(edge):  # half-covered pixels keep the data's colour (premultiplied averaging)
        assert edge[:, [0, 2]].min() >= 88


def test_hillshade_layer(site_tiles):
    out, ts, t = site_tiles
    assert ts.layers == {"tiles": "tiles/{z}/{x}/{y}.png", "hillshade": "hillshade/{z}/{x}/{y}.png"}
    pngs = list((out / "hillshade").rglob("*.png"))
    assert pngs and len(pngs) == ts.counts["hillshade"]
    with Image.open(pngs[0]) as im:
        assert im.mode == "LA"


def test_hillshade_values():
    t = geo.grid_transform(SITE, 0, 0, 1.0)
    flat = webtiles.hillshade(np.zeros((5, 5), np.float32), t)
    assert np.all(flat[0] == round(255 * math.sin(math.radians(45)))) and np.all(flat[1] == 255)
    ramp = np.tile(np.arange(8, dtype=np.float32), (8, 1))  # rises to the east at 45 degrees: faces west
    lit_west = webtiles.hillshade(ramp, t, azimuth=270.0)[0, 4, 4]
    lit_east = webtiles.hillshade(ramp, t, azimuth=90.0)[0, 4, 4]
    # Facing a 45-degree sun: full light; turned away from it by 90 degrees of incidence: dark.
    assert lit_west == 255 and lit_east == 1
    north_face = np.tile(np.arange(8, dtype=np.float32)[:, None], (1, 8))  # rows go south: rises southward
    assert webtiles.hillshade(north_face, t, azimuth=0.0)[0, 4, 4] == 255
    void = webtiles.hillshade(np.where(np.eye(6, dtype=bool), -9999.0, 1.0), t, nodata=-9999.0)
    assert np.all(void[1][np.eye(6, dtype=bool)] == 0) and np.all(void[1][~np.eye(6, dtype=bool)] == 255)


def test_node_grid_is_exact_enough():
    tms = webtiles.tile_matrix_set()
    t = geo.grid_transform(SITE, -50, 50, 0.05)
    to = Transformer.from_crs(CRS.from_wkt(tms.rasterio_crs.to_wkt()), geo.site_crs(), always_xy=True)
    for z in (15, 18, 21):
        tile = tms.tile(SITE.lon, SITE.lat, z)
        mx, my = webtiles._tile_maps(tms, tile, to, ~t)
        b = tms.xy_bounds(tile)
        p = np.arange(256) + 0.5
        gx, gy = np.meshgrid(b.left + p * (b.right - b.left) / 256, b.top - p * (b.top - b.bottom) / 256)
        e, n = to.transform(gx, gy)
        col, row = ~t @ (e, n)
        # In tile pixels (source px scaled by source/tile resolution).
        scale = 256 * t.a / (b.right - b.left) / math.cos(math.radians(SITE.lat))
        err = max(np.abs(mx - (col - 0.5)).max(), np.abs(my - (row - 0.5)).max()) * scale
        assert err < 1e-3, (z, err)


def test_geotiff_source_uint16_and_determinism(tmp_path):
    img, t = _site_ortho(gsd=0.2, n=200, void_cols=0)
    gray16 = (img[0].astype(np.uint16) * 16)
    src = write_cog(tmp_path / "ortho.tif", gray16, transform=t, crs=geo.site_crs_wkt(), nodata=0)
    a = webtiles.write_tiles(src, out_dir=tmp_path / "a", threads=1)
    b = webtiles.write_tiles(src, out_dir=tmp_path / "b", threads=2)
    assert a.zooms == b.zooms and a.counts == b.counts
    files_a = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.png"))
    files_b = sorted(p.relative_to(tmp_path / "b") for p in (tmp_path / "b").rglob("*.png"))
    assert files_a == files_b
    for rel in files_a:
        assert hashlib.md5((tmp_path / "a" / rel).read_bytes()).digest() == \
            hashlib.md5((tmp_path / "b" / rel).read_bytes()).digest()
    tile = webtiles.tile_matrix_set().tile(SITE.lon, SITE.lat, a.zooms[-1])
    with Image.open(tmp_path / "a" / "tiles" / str(tile.z) / str(tile.x) / f"{tile.y}.png") as im:
        assert im.mode == "LA"
        la = np.asarray(im)
    assert la[..., 0][la[..., 1] == 255].max() == 255  # the stretch reaches white
    assert not (tmp_path / "a" / "hillshade").exists()


def test_rerun_replaces_tiles_and_leaves_no_staging(tmp_path):
    img, t = _site_ortho(gsd=0.2, n=100, void_cols=0)
    webtiles.write_tiles(img, t, geo.site_crs(), tmp_path, threads=1)
    webtiles.write_tiles(img, t, geo.site_crs(), tmp_path, zooms=[19], threads=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiles"]
    assert sorted(p.name for p in (tmp_path / "tiles").iterdir()) == ["19"]


def test_bad_sources_are_refused(tmp_path):
    img, t = _site_ortho(gsd=0.2, n=50)
    with pytest.raises(ValueError, match="transform and crs"):
        webtiles.write_tiles(img, out_dir=tmp_path)
    pan = write_cog(tmp_path / "pan.tif", np.zeros((2, 32, 64), np.uint8), alpha=True)
    with pytest.raises(ValueError, match="georeferenced"):
        webtiles.write_tiles(pan, out_dir=tmp_path / "x")
    with pytest.raises(ValueError, match="colour bands"):
        webtiles.write_tiles(np.zeros((5, 10, 10), np.uint8), t, geo.site_crs(), tmp_path)
