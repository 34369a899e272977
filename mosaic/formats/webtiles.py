"""Web-map tiles of a site map in a Mars tile matrix set, XYZ numbering, PNG with alpha.

The tile matrix set is planetcantile's ``MarsWebMercatorSphere``: spherical (pseudo-)Mercator on
the IAU 2015 Mars sphere (R = 3 396 190 m), 256-px tiles, the quadtree of Earth's WebMercatorQuad.
Tile numbers (z, x, y) are a function of (lon, lat) alone and equal Earth's for the same lon/lat,
so any XYZ client (Leaflet, OpenLayers, QGIS "XYZ Tiles") fetches the right tiles; only distances
differ (Leaflet's scale bar must use the Mars radius: mosaic/formats/web/map.html does). EPSG:3857 is
never used: it is an Earth CRS and PROJ refuses to transform Mars coordinates into it.

Layout under ``out_dir``::

    tiles/{z}/{x}/{y}.png        the orthoimage (gray or RGB, + alpha: 0 outside the data)
    hillshade/{z}/{x}/{y}.png    shaded relief of the DEM (gray + alpha), when a DEM is given
    sigma/{z}/{x}/{y}.png        the DEM's predicted error on a colour ramp (RGB + alpha), when given

Zoom levels follow the data: the deepest level is the one whose tile pixels (in ground metres at
the map's latitude) are nearest the source GSD; the shallowest is the deepest level at which the
whole map fits in one tile's width (so 1 to 4 tiles). Deepest-level tiles are warped from the
source with ``cv2.remap`` (bilinear) through exact projections on a 17 x 17 grid per tile,
interpolated in between; each shallower level is the 2 x 2 average of the level below, read back
from its PNGs, so memory stays O(tile) beyond the source itself. Colour is premultiplied by alpha
(or the nodata mask) before any interpolation, so voids never bleed into data. Tiles with no data
are not written. 16-bit sources are stretched to 8 bits between their 0.1 and 99.9 percentiles of
valid pixels. (rasterio.warp.reproject measured 57-230 ms a tile; this path ~10 ms of CPU a tile,
PNG encoding included.)

API::

    write_tiles(source, transform=None, crs=None, out_dir=".", zooms=None, hillshade_dem=None,
                dem_transform=None, dem_crs=None, nodata=None, sigma=None) -> TileSet
    hillshade(dem, transform, nodata=None, azimuth=315, altitude=45) -> (2, h, w) uint8 gray+alpha
    sigma_colours(sigma, nodata=None) -> (4, h, w) uint8 RGBA; SIGMA_LEGEND (the ramp's stops)
    zoom_range(transform, crs, width, height) -> (zmin, zmax)
    tile_matrix_set() -> morecantile.TileMatrixSet

``source`` is an array ((bands, h, w) or (h, w); uint8/uint16 imagery whose last band is alpha when
it has 2 or 4 bands) with its ``transform`` and ``crs``, or a path to a GeoTIFF (its own transform,
CRS, alpha or nodata). ``TileSet`` gives the zooms, the lon/lat bounds and the URL templates.
"""

from __future__ import annotations

import math
import os
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mosaic.formats.geo import MARS_SPHERE_RADIUS

# rasterio and PIL are imported where they are used: every command imports this module (see
# mosaic/formats/cog.py for the cost).
from mosaic.runtime.atomic import replace_dir

TMS_ID = "MarsWebMercatorSphere"
TILE = 256


def tile_matrix_set():
    """planetcantile's ``MarsWebMercatorSphere`` (morecantile TileMatrixSet)."""
    from planetcantile import planetary_tms

    return planetary_tms.get(TMS_ID)


@dataclass
class TileSet:
    """What ``write_tiles`` produced: zooms, lon/lat bounds (W, S, E, N), layer URL templates."""

    zooms: list[int]
    bounds_lonlat: tuple[float, float, float, float]
    layers: dict[str, str] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    tms: str = TMS_ID

    @property
    def center_lonlat(self) -> tuple[float, float]:
        w, s, e, n = self.bounds_lonlat
        return (w + e) / 2.0, (s + n) / 2.0


def _rio_crs(crs) -> RioCRS:
    from rasterio.crs import CRS as RioCRS

    if isinstance(crs, RioCRS):
        return crs
    if hasattr(crs, "to_wkt"):
        return RioCRS.from_wkt(crs.to_wkt())
    return RioCRS.from_user_input(crs)


def _ground_pixel_m(transform, crs, width, height) -> tuple[float, float]:
    """Source pixel size in ground metres at the centre, and the centre latitude."""
    import rasterio
    import rasterio.warp

    cx, cy = transform @ (width / 2.0, height / 2.0)
    dx, dy = transform @ (width / 2.0 + 1.0, height / 2.0 + 1.0)
    g = tile_matrix_set().rasterio_geographic_crs
    lons, lats = rasterio.warp.transform(_rio_crs(crs), g, [cx, dx, cx], [cy, cy, dy])
    lat = math.radians(lats[0])
    r = MARS_SPHERE_RADIUS
    ex = r * math.cos(lat) * math.radians(lons[1] - lons[0])
    ey = r * math.radians(lats[2] - lats[0])
    return float(min(abs(ex), abs(ey)) or max(abs(ex), abs(ey))), float(lats[0])


def zoom_range(transform, crs, width: int, height: int) -> tuple[int, int]:
    """(zmin, zmax) for a raster: zmax matches the GSD, zmin fits the map in one tile width."""
    tms = tile_matrix_set()
    gsd, lat = _ground_pixel_m(transform, crs, width, height)
    res0 = tms.matrix(0).cellSize * math.cos(math.radians(lat))  # ground metres per pixel at z0
    zmax = int(round(math.log2(res0 / gsd)))
    zmax = max(0, min(tms.maxzoom, zmax))
    extent = max(width, height) * gsd
    zmin = int(math.floor(math.log2(res0 * TILE / extent))) if extent > 0 else zmax
    return max(0, min(zmin, zmax)), zmax


def _read_source(source, transform, crs, nodata):
    """Return (bands (b, h, w), alpha-or-None (h, w) uint8, transform, crs) from an array or a path."""
    import rasterio

    if isinstance(source, (str, os.PathLike)):
        with rasterio.open(source) as ds:
            data = ds.read()
            transform, crs = ds.transform, ds.crs
            ci = [c.name for c in ds.colorinterp]
            if ci and ci[-1] == "alpha":
                return data[:-1], _alpha8(data[-1]), transform, crs
            if nodata is not None:  # an explicit value overrides the file's own mask
                return data, np.where(np.all(data == nodata, axis=0), 0, 255).astype(np.uint8), transform, crs
            mask = ds.dataset_mask()  # nodata, alpha or internal mask; all 255 when none
            return data, (None if mask.all() else mask), transform, crs
    a = np.asarray(source)
    if a.ndim == 2:
        a = a[None]
    if transform is None or crs is None:
        raise ValueError("an array source needs its transform and crs")
    if a.shape[0] in (2, 4):
        return a[:-1], _alpha8(a[-1]), transform, crs
    if nodata is not None:
        return a, np.where(np.all(a == nodata, axis=0), 0, 255).astype(np.uint8), transform, crs
    return a, None, transform, crs


def _alpha8(alpha: np.ndarray) -> np.ndarray:
    if alpha.dtype == np.uint8:
        return alpha
    top = np.iinfo(alpha.dtype).max if np.issubdtype(alpha.dtype, np.integer) else 1.0
    return np.clip(np.round(alpha.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)


def _to8(bands: np.ndarray, alpha) -> np.ndarray:
    if bands.dtype == np.uint8:
        return bands
    valid = bands[:, alpha > 0] if alpha is not None else bands.reshape(bands.shape[0], -1)
    if valid.size == 0:
        return np.zeros(bands.shape, np.uint8)
    lo, hi = np.percentile(valid, [0.1, 99.9])
    scale = 255.0 / max(float(hi - lo), 1e-12)
    return np.clip((bands.astype(np.float32) - lo) * scale, 0, 255).astype(np.uint8)


def hillshade(dem: np.ndarray, transform, nodata=None, azimuth: float = 315.0, altitude: float = 45.0,
              z_factor: float = 1.0) -> np.ndarray:
    """Shaded relief (Horn's gradient, as gdaldem): (2, h, w) uint8, gray and alpha (0 on voids).

    Light from ``azimuth`` (degrees clockwise from north) at ``altitude`` degrees. Pixel sizes are
    the transform's (map metres; the eqc site map's easting scale differs from ground metres by
    1.3e-4 at Jezero, invisible in shading).
    """
    z = np.asarray(dem, dtype=np.float32)
    void = ~np.isfinite(z)
    if nodata is not None:
        void |= z == nodata
    if void.all():
        return np.zeros((2,) + z.shape, np.uint8)
    fill = np.where(void, np.nanmean(np.where(void, np.nan, z)), z)
    p = np.pad(fill, 1, mode="edge")
    # Horn (1981) 3x3 gradients; rows go south, so dz/dy(north) = -d/drow.
    dzdx = ((p[:-2, 2:] + 2 * p[1:-1, 2:] + p[2:, 2:]) - (p[:-2, :-2] + 2 * p[1:-1, :-2] + p[2:, :-2])) / (8 * abs(transform.a))
    dzdy = ((p[:-2, :-2] + 2 * p[:-2, 1:-1] + p[:-2, 2:]) - (p[2:, :-2] + 2 * p[2:, 1:-1] + p[2:, 2:])) / (8 * abs(transform.e))
    dzdx, dzdy = dzdx * z_factor, dzdy * z_factor
    slope = np.arctan(np.hypot(dzdx, dzdy))
    aspect = np.arctan2(-dzdx, -dzdy)  # direction of steepest descent, clockwise from north
    az, alt = math.radians(azimuth), math.radians(altitude)
    shade = math.sin(alt) * np.cos(slope) + math.cos(alt) * np.sin(slope) * np.cos(az - aspect)
    gray = np.clip(np.round(255 * shade), 1, 255).astype(np.uint8)
    alpha = np.where(void, 0, 255).astype(np.uint8)
    gray[void] = 0
    return np.stack([gray, alpha])


#: The sigma ramp: (metres, RGB) stops, logarithmic in between; below the first and above the last
#: the end colours hold. Blue = centimetre-good, yellow = a decimetre, red = half a metre.
SIGMA_STOPS = ((0.005, (43, 90, 200)), (0.02, (40, 170, 160)), (0.1, (245, 215, 60)), (0.5, (205, 40, 35)))
#: The same, for the map's legend: {"title", "stops": [[css colour, label], ...]}.
SIGMA_LEGEND = {"title": "DEM 1-sigma error",
                "stops": [[f"rgb{c}", f"{100 * m:g} cm"] for m, c in SIGMA_STOPS]}


def sigma_colours(sigma: np.ndarray, nodata=None) -> np.ndarray:
    """RGBA (4, h, w) uint8 of a sigma raster on ``SIGMA_STOPS`` (alpha 0 on voids)."""
    s = np.asarray(sigma, np.float64)
    void = ~np.isfinite(s) | (s <= 0)
    if nodata is not None:
        void |= s == nodata
    x = np.log(np.clip(np.where(void, SIGMA_STOPS[0][0], s), SIGMA_STOPS[0][0], SIGMA_STOPS[-1][0]))
    knots = np.log([m for m, _ in SIGMA_STOPS])
    rgb = np.stack([np.interp(x, knots, [c[k] for _, c in SIGMA_STOPS]) for k in range(3)])
    out = np.zeros((4,) + s.shape, np.uint8)
    out[:3] = np.where(void, 0, np.round(rgb)).astype(np.uint8)
    out[3] = np.where(void, 0, 255)
    return out


def _tile_png(path: Path, tile: np.ndarray) -> None:
    """Write a (bands, 256, 256) uint8 gray+alpha or RGBA tile."""
    from PIL import Image

    mode = {2: "LA", 4: "RGBA"}[tile.shape[0]]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.ascontiguousarray(np.moveaxis(tile, 0, -1)), mode).save(path, compress_level=3)


def _premultiply(colour: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """(h, w, bands+1) uint8, colour multiplied by alpha: averaging it never pulls voids' colour in."""
    pm = (colour.astype(np.uint16) * alpha + 127) // 255
    return np.ascontiguousarray(np.concatenate([np.moveaxis(pm.astype(np.uint8), 0, -1), alpha[..., None]], axis=-1))


def _unpremultiply(pm: np.ndarray) -> np.ndarray:
    """(h, w, bands+1) premultiplied (any numeric dtype) -> (bands+1, h, w) uint8 straight alpha."""
    out = np.clip(np.round(pm), 0, 255).astype(np.uint8) if pm.dtype != np.uint8 else pm.copy()
    a = out[..., -1]
    partial = (a > 0) & (a < 255)  # opaque pixels are already straight; voids are 0
    if partial.any():
        ap = pm[partial][:, -1:].astype(np.float32)
        out[partial, :-1] = np.clip(np.round(pm[partial][:, :-1] * (255.0 / ap)), 0, 255).astype(np.uint8)
    return np.moveaxis(out, -1, 0)


#: Exact projections on a NODES x NODES grid per tile, bilinear in between (GDAL's approximate
#: transformer idea): between two cylindrical projections of one sphere the mapping is linear in x
#: and smooth in y, and the interpolation error is below 1e-4 px at z >= 10 (tested).
NODES = 17


def _tile_maps(tms, tile, to_src, inv_transform) -> tuple[np.ndarray, np.ndarray]:
    """cv2.remap maps: source (col, row) of every pixel centre of ``tile`` (OpenCV centre convention)."""
    b = tms.xy_bounds(tile)
    p = np.linspace(0.5, TILE - 0.5, NODES)
    gx, gy = np.meshgrid(b.left + p * (b.right - b.left) / TILE, b.top - p * (b.top - b.bottom) / TILE)
    e, n = to_src.transform(gx, gy)
    col, row = inv_transform @ (np.asarray(e), np.asarray(n))
    return _interp_nodes(np.asarray(col) - 0.5), _interp_nodes(np.asarray(row) - 0.5)


def _node_index() -> tuple[np.ndarray, np.ndarray]:
    """For every pixel centre of a tile: the node before it and its linear weight towards the next."""
    f = np.arange(TILE) * (NODES - 1) / (TILE - 1)
    i0 = np.minimum(f.astype(int), NODES - 2)
    return i0, f - i0


_I0, _W = _node_index()


def _interp_nodes(g: np.ndarray) -> np.ndarray:
    # Bilinear interpolation is separable: rows, then columns. Gathers, not BLAS: a threaded
    # BLAS took 12 ms here for what costs 0.1 ms on one core.
    rows = g[_I0] * (1 - _W)[:, None] + g[_I0 + 1] * _W[:, None]
    return (rows[:, _I0] * (1 - _W) + rows[:, _I0 + 1] * _W).astype(np.float32)


def _render_layer(bands8: np.ndarray, alpha, transform, crs, folder: Path, zooms: list[int],
                  bounds_lonlat, threads: int) -> int:
    """Warp one layer into the deepest zoom's tiles, then build shallower zooms by 2x2 premultiplied
    averaging of the written children. Returns the number of tiles written."""
    import cv2
    from PIL import Image
    from pyproj import CRS, Transformer

    tms = tile_matrix_set()
    h, w = bands8.shape[1:]
    if alpha is None:
        alpha = np.full((h, w), 255, np.uint8)
    src = _premultiply(bands8, alpha)
    to_src = Transformer.from_crs(CRS.from_wkt(tms.rasterio_crs.to_wkt()), CRS.from_wkt(_rio_crs(crs).to_wkt()),
                                  always_xy=True)
    inv = ~transform
    zmax = max(zooms)
    west, south, east, north = bounds_lonlat

    def path(t):
        return folder / str(t.z) / str(t.x) / f"{t.y}.png"

    def deepest(tile) -> int:
        mx, my = _tile_maps(tms, tile, to_src, inv)
        pm = cv2.remap(src, mx, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        if pm.ndim == 2:
            pm = pm[..., None]
        if not pm[..., -1].any():
            return 0
        _tile_png(path(tile), _unpremultiply(pm))
        return 1

    def parent(tile) -> int:
        nb = src.shape[-1]
        canvas = np.zeros((2 * TILE, 2 * TILE, nb), np.uint16)
        any_child = False
        for dy in (0, 1):
            for dx in (0, 1):
                p = folder / str(tile.z + 1) / str(2 * tile.x + dx) / f"{2 * tile.y + dy}.png"
                if not p.exists():
                    continue
                any_child = True
                with Image.open(p) as im:
                    straight = np.asarray(im).reshape(TILE, TILE, nb)
                block = canvas[dy * TILE:(dy + 1) * TILE, dx * TILE:(dx + 1) * TILE]
                block[...] = straight
                block[..., :-1] = (block[..., :-1] * block[..., -1:] + 127) // 255  # premultiply
        if not any_child:
            return 0
        pm = (canvas[0::2, 0::2] + canvas[1::2, 0::2] + canvas[0::2, 1::2] + canvas[1::2, 1::2] + 2) // 4
        if not pm[..., -1].any():
            return 0
        _tile_png(path(tile), _unpremultiply(pm.astype(np.uint8)))
        return 1

    written = 0
    with ThreadPoolExecutor(max(1, threads)) as ex:
        for z in sorted(zooms, reverse=True):
            # A level right above a rendered one is averaged from it; others are warped directly.
            work = parent if z + 1 in zooms else deepest
            written += sum(ex.map(work, list(tms.tiles(west, south, east, north, [z]))))
    return written


def write_tiles(source, transform=None, crs=None, out_dir=".", zooms=None, hillshade_dem=None,
                dem_transform=None, dem_crs=None, nodata=None, dem_nodata=None, threads: int | None = None,
                sigma=None) -> TileSet:
    """Write ``out_dir/tiles/{z}/{x}/{y}.png`` (and ``out_dir/hillshade/...`` from a DEM, and
    ``out_dir/sigma/...`` from a sigma raster).

    ``hillshade_dem`` is an array on the ortho's grid (or ``dem_transform``/``dem_crs``) or a
    GeoTIFF path; ``sigma`` a GeoTIFF path of the DEM's sigma (``dem_sigma.tif``). Each layer folder is built beside its target and renamed into place, so a failed
    run leaves the previous tiles intact. Returns the zooms, the lon/lat bounds and URL templates.
    """
    import rasterio

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    threads = threads or os.cpu_count() or 1
    bands, alpha, transform, crs = _read_source(source, transform, crs, nodata)
    if crs is None or transform is None:
        raise ValueError(f"{source if isinstance(source, (str, os.PathLike)) else 'array'}: tiles need a "
                         "georeferenced map (transform and CRS); a panorama has none")
    if bands.shape[0] not in (1, 3):
        raise ValueError(f"tiles need 1 or 3 colour bands (+ alpha), got {bands.shape[0]}")
    bands8 = _to8(bands, alpha)
    h, w = bands8.shape[1:]
    if zooms is None:
        zmin, zmax = zoom_range(transform, crs, w, h)
        zooms = list(range(zmin, zmax + 1))
    zooms = sorted(int(z) for z in zooms)
    bounds = _lonlat_bounds(transform, crs, (h, w))
    layers = [("tiles", bands8, alpha, transform, crs)]
    if hillshade_dem is not None:
        if isinstance(hillshade_dem, (str, os.PathLike)):
            with rasterio.open(hillshade_dem) as ds:
                dem, dt, dc, dn = ds.read(1), ds.transform, ds.crs, ds.nodata
        else:
            dem, dt, dc, dn = np.asarray(hillshade_dem), dem_transform or transform, dem_crs or crs, dem_nodata
        hs = hillshade(dem, dt, nodata=dn)
        layers.append(("hillshade", hs[:1], hs[1], dt, dc))
    if sigma is not None:
        with rasterio.open(sigma) as ds:
            rgba = sigma_colours(ds.read(1), ds.nodata)
            layers.append(("sigma", rgba[:3], rgba[3], ds.transform, ds.crs))
    result = TileSet(zooms=zooms, bounds_lonlat=tuple(float(v) for v in bounds))
    for name, b8, al, tr, cr in layers:
        final = out_dir / name
        staging = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=out_dir))
        try:
            result.counts[name] = _render_layer(b8, al, tr, cr, staging, zooms, _lonlat_bounds(tr, cr, b8.shape[1:]), threads)
            replace_dir(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        result.layers[name] = f"{name}/{{z}}/{{x}}/{{y}}.png"
    return result


def _lonlat_bounds(transform, crs, shape_hw) -> tuple[float, float, float, float]:
    from rasterio.warp import transform_bounds

    h, w = shape_hw
    left, top = transform @ (0, 0)
    right, bottom = transform @ (w, h)
    return transform_bounds(_rio_crs(crs), tile_matrix_set().rasterio_geographic_crs, min(left, right),
                            min(top, bottom), max(left, right), max(top, bottom), densify_pts=21)


