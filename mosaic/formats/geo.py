"""Mars georeferencing: the site map CRS, the site origin and LOCAL_LEVEL <-> map <-> lon/lat.

Conventions (DESIGN.md, REFERENCE.md §5):

- Geographic: ``IAU_2015:49900``, planetocentric latitude, east-positive longitude, on the IAU 2015
  Mars sphere (R = 3 396 190 m). Never an Earth datum, never EPSG:3857.
- Site maps: ``+proj=eqc +lat_ts=18.4663 +lon_0=0 +R=3396190 +units=m``, the projection of the
  published rover localisation, built on that sphere so GDAL/QGIS show "Mars (2015) - Sphere"
  (a bare PROJ string would read back as an unnamed datum). Easting = R·lon·cos(lat_ts),
  northing = R·lat (angles in radians).
- LOCAL_LEVEL: origin at the site origin, +x north, +y east, +z down (metres).

LOCAL_LEVEL -> map: a local-level metre north is exactly a metre of northing (eqc keeps meridian
distances). A metre east on the sphere at latitude φ spans ``k = cos(lat_ts)/cos(φ)`` metres of
easting; at the landing site (φ = 18.44463°) k = 0.999874, i.e. 1.3e-4 from 1 (1.3 cm per 100 m).
We apply k at the origin's latitude, so the map is the site's tangent plane scaled exactly as PROJ
scales it there; across ±1 km the residual change of k is below 1e-7 (0.1 mm). Heights are
``elevation = origin elevation − z_down``: the tangent plane departs from the sphere by
d²/(2R), 1.5 mm at 100 m and 15 cm at 1 km from the origin, which we neglect, as the published
localisation does (it also neglects that the site lies 2.6 km below the reference sphere, a
7.6e-4 scale between ground metres and map metres).

API::

    MARS_SPHERE_RADIUS, LAT_TS, DEFAULT_SITE_ORIGIN, SiteOrigin(lat, lon, elev)
    site_crs() -> pyproj.CRS            geographic_crs() -> pyproj.CRS
    parse_site_origin("LAT,LON,ELEV") -> SiteOrigin          (InputError on bad text)
    lonlat_to_map(lon, lat) -> (easting, northing)     map_to_lonlat(easting, northing) -> (lon, lat)
    local_level_to_map(x_north, y_east, origin) -> (easting, northing)
    map_to_local_level(easting, northing, origin) -> (x_north, y_east)
    elevation(z_down, origin) -> metres       grid_transform(origin, y_min_east, x_max_north, gsd) -> Affine
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numpy as np
from affine import Affine

from calib.errors import InputError

#: IAU 2015 Mars sphere (the semi-major axis used as a sphere), metres.
MARS_SPHERE_RADIUS = 3396190.0
#: True-scale latitude of the rover localisation's equidistant cylindrical projection, degrees.
LAT_TS = 18.4663
SITE_PROJ = f"+proj=eqc +lat_ts={LAT_TS} +lon_0=0 +R={MARS_SPHERE_RADIUS:.0f} +units=m +no_defs"
GEOGRAPHIC_CODE = "IAU_2015:49900"


class SiteOrigin(NamedTuple):
    """The LOCAL_LEVEL origin: planetocentric latitude, east longitude (degrees), elevation (m)."""

    lat: float
    lon: float
    elev: float


#: The landing site, first localisation (REFERENCE.md §5).
DEFAULT_SITE_ORIGIN = SiteOrigin(18.44463, 77.45089, -2569.91)


@functools.lru_cache(maxsize=None)
def geographic_crs():
    """``IAU_2015:49900``: Mars sphere, planetocentric, east-positive longitude."""
    from pyproj import CRS

    return CRS(GEOGRAPHIC_CODE)


@functools.lru_cache(maxsize=None)
def site_crs():
    """The site map CRS: equidistant cylindrical (lat_ts 18.4663) on the named IAU 2015 Mars sphere.

    Its PROJ string is ``SITE_PROJ``; ``site_crs().to_wkt()`` is what rasterio/GDAL should store.
    """
    from pyproj.crs import ProjectedCRS
    from pyproj.crs.coordinate_operation import EquidistantCylindricalConversion

    conv = EquidistantCylindricalConversion(latitude_first_parallel=LAT_TS, longitude_natural_origin=0.0)
    return ProjectedCRS(conversion=conv, geodetic_crs=geographic_crs(),
                        name=f"Mars (2015) - Sphere / Equidistant Cylindrical, lat_ts {LAT_TS}")


def site_crs_wkt() -> str:
    """WKT2 of ``site_crs()``, for rasterio (``crs=site_crs_wkt()``) and STAC ``proj:wkt2``."""
    return site_crs().to_wkt()


def parse_site_origin(text: str, source: str | None = None) -> SiteOrigin:
    """Parse ``"LAT,LON,ELEV"`` (degrees north, degrees east, metres); InputError on bad text."""
    parts = [p.strip() for p in str(text).split(",")]
    if len(parts) != 3:
        raise InputError(source, f"site origin {text!r} must be LAT,LON,ELEV", field="site origin")
    try:
        lat, lon, elev = (float(p) for p in parts)
    except ValueError:
        raise InputError(source, f"site origin {text!r} is not three numbers", field="site origin") from None
    if not all(math.isfinite(v) for v in (lat, lon, elev)):
        raise InputError(source, f"site origin {text!r} is not finite", field="site origin")
    if not -90.0 <= lat <= 90.0:
        raise InputError(source, f"site origin latitude {lat} outside [-90, 90]", field="site origin")
    if not -180.0 <= lon <= 360.0:
        raise InputError(source, f"site origin longitude {lon} outside [-180, 360]", field="site origin")
    return SiteOrigin(lat, lon, elev)


def _cos_ts() -> float:
    return math.cos(math.radians(LAT_TS))


def lonlat_to_map(lon, lat):
    """(lon, lat) degrees -> (easting, northing) metres in ``site_crs()``; vectorised."""
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    return MARS_SPHERE_RADIUS * np.radians(lon) * _cos_ts(), MARS_SPHERE_RADIUS * np.radians(lat)


def map_to_lonlat(easting, northing):
    """(easting, northing) metres in ``site_crs()`` -> (lon, lat) degrees; vectorised."""
    e, n = np.asarray(easting, dtype=float), np.asarray(northing, dtype=float)
    return np.degrees(e / (MARS_SPHERE_RADIUS * _cos_ts())), np.degrees(n / MARS_SPHERE_RADIUS)


def east_scale(origin: SiteOrigin = DEFAULT_SITE_ORIGIN) -> float:
    """Metres of easting per ground metre east at the origin: cos(lat_ts) / cos(lat)."""
    return _cos_ts() / math.cos(math.radians(origin.lat))


def origin_map(origin: SiteOrigin = DEFAULT_SITE_ORIGIN) -> tuple[float, float]:
    """The origin's (easting, northing)."""
    e, n = lonlat_to_map(origin.lon, origin.lat)
    return float(e), float(n)


def local_level_to_map(x_north, y_east, origin: SiteOrigin = DEFAULT_SITE_ORIGIN):
    """LOCAL_LEVEL (x north, y east) metres -> (easting, northing) metres; vectorised."""
    e0, n0 = origin_map(origin)
    return e0 + np.asarray(y_east, dtype=float) * east_scale(origin), n0 + np.asarray(x_north, dtype=float)


def map_to_local_level(easting, northing, origin: SiteOrigin = DEFAULT_SITE_ORIGIN):
    """(easting, northing) metres -> LOCAL_LEVEL (x north, y east) metres; vectorised."""
    e0, n0 = origin_map(origin)
    return np.asarray(northing, dtype=float) - n0, (np.asarray(easting, dtype=float) - e0) / east_scale(origin)


def elevation(z_down, origin: SiteOrigin = DEFAULT_SITE_ORIGIN):
    """LOCAL_LEVEL z (down) -> elevation in metres: origin elevation − z."""
    return origin.elev - np.asarray(z_down, dtype=float)


def grid_transform(origin: SiteOrigin, y_min_east: float, x_max_north: float, gsd: float,
                   snap: bool = True) -> Affine:
    """North-up Affine in ``site_crs()`` metres for a grid whose upper-left corner is at LOCAL_LEVEL
    (x = ``x_max_north``, y = ``y_min_east``) with square ``gsd``-metre cells.

    With ``snap`` the corner moves out (west and north) to a multiple of ``gsd`` in map metres, so
    grids of the same GSD from different runs or sites share pixel edges and the cell
    ``(row, col)`` centre is ``transform @ (col + 0.5, row + 0.5)``. Size the grid to cover the
    last point after snapping (the corner moves by less than one cell).
    """
    if not gsd > 0:
        raise ValueError(f"gsd must be positive, got {gsd}")
    e, n = local_level_to_map(x_max_north, y_min_east, origin)
    e, n = float(e), float(n)
    if snap:
        e = math.floor(e / gsd) * gsd
        n = math.ceil(n / gsd) * gsd
    return Affine(gsd, 0.0, e, 0.0, -gsd, n)
