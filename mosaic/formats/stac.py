"""A STAC Item for the site products (DEM, orthoimage, tiles, map), on Mars.

STAC 1.1.0 Item with two extensions:

- ``ssys`` (Solar System, v1.1.0): ``ssys:targets: ["Mars"]``; bbox and geometry are planetocentric
  east-positive lon/lat on Mars (IAU_2015:49900), not WGS84.
- ``projection`` (v2.0.0): ``proj:code`` is null (no EPSG or IAU code describes the site map's eqc),
  ``proj:wkt2`` carries the full CRS, ``proj:shape`` is [rows, cols] and ``proj:transform`` the
  six affine coefficients (a, b, c, d, e, f) of rasterio's Affine.

API::

    stac_item(item_id, assets, bbox_lonlat, geometry=None, datetime=..., proj_wkt2=None,
              proj_shape=None, proj_transform=None, gsd=None, properties=None) -> dict
    write_item(path, item) -> Path          (atomic JSON)
    MEDIA_COG, MEDIA_PNG, MEDIA_HTML, MEDIA_JSON

``assets`` maps a key to ``(href, roles, media_type)`` or ``(href, roles, media_type, title)``;
hrefs are written as given (relative to the item's folder keeps the product relocatable).
"""

from __future__ import annotations

import datetime as _dt
import math

from mosaic.runtime.atomic import write_json

STAC_VERSION = "1.1.0"
SSYS_SCHEMA = "https://stac-extensions.github.io/ssys/v1.1.0/schema.json"
PROJ_SCHEMA = "https://stac-extensions.github.io/projection/v2.0.0/schema.json"

MEDIA_COG = "image/tiff; application=geotiff; profile=cloud-optimized"
MEDIA_PNG = "image/png"
MEDIA_HTML = "text/html"
MEDIA_JSON = "application/json"


def _iso(when) -> str:
    if isinstance(when, str):
        parsed = _dt.datetime.fromisoformat(when.replace("Z", "+00:00"))
    elif isinstance(when, _dt.datetime):
        parsed = when
    else:
        raise ValueError(f"datetime must be an ISO 8601 string or a datetime, got {when!r}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return parsed.astimezone(_dt.timezone.utc).isoformat().replace("+00:00", "Z")


def bbox_polygon(bbox) -> dict:
    """GeoJSON Polygon of a (W, S, E, N) box, counter-clockwise."""
    w, s, e, n = (float(v) for v in bbox)
    return {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}


def stac_item(item_id: str, assets: dict, bbox_lonlat, geometry=None, datetime=None, proj_wkt2=None,
              proj_shape=None, proj_transform=None, gsd=None, properties=None) -> dict:
    """Build the Item as a plain dict (see the module docstring)."""
    if not item_id or "/" in item_id:
        raise ValueError(f"STAC item id {item_id!r} must be non-empty and contain no '/'")
    bbox = [float(v) for v in bbox_lonlat]
    if len(bbox) != 4 or not all(math.isfinite(v) for v in bbox) or bbox[0] > bbox[2] or bbox[1] > bbox[3]:
        raise ValueError(f"bbox {bbox_lonlat!r} must be finite (W, S, E, N)")
    if datetime is None:
        raise ValueError("a STAC item needs a datetime (acquisition time of its source frames)")
    props = {"datetime": _iso(datetime), "ssys:targets": ["Mars"]}
    if proj_wkt2 is not None or proj_shape is not None or proj_transform is not None:
        props["proj:code"] = None
    if proj_wkt2 is not None:
        props["proj:wkt2"] = str(proj_wkt2)
    if proj_shape is not None:
        props["proj:shape"] = [int(v) for v in proj_shape]
    if proj_transform is not None:
        coeffs = list(proj_transform)[:6]
        props["proj:transform"] = [float(v) for v in coeffs]
    if gsd is not None:
        props["gsd"] = float(gsd)
    for k, v in (properties or {}).items():
        props[k] = v
    out_assets = {}
    for key, spec in assets.items():
        href, roles, media, *title = spec
        a = {"href": str(href), "type": media, "roles": list(roles)}
        if title:
            a["title"] = title[0]
        out_assets[key] = a
    return {
        "type": "Feature",
        "stac_version": STAC_VERSION,
        "stac_extensions": [SSYS_SCHEMA, PROJ_SCHEMA],
        "id": item_id,
        "geometry": geometry if geometry is not None else bbox_polygon(bbox),
        "bbox": bbox,
        "properties": props,
        "links": [],
        "assets": out_assets,
    }


def write_item(path, item: dict):
    """Write the Item as JSON, atomically."""
    return write_json(path, item)
