"""A self-contained Leaflet page for the site's XYZ tiles, opening from disk with no network.

``write_map(out_dir, center_lonlat, zooms, layers, title=...)`` fills mosaic/formats/web/map.html and copies
the vendored Leaflet 1.9.4 (mosaic/formats/web/leaflet/, BSD-2-Clause) beside it, so ``out_dir/index.html``
works over ``file://`` and behind any static web server. The page uses Leaflet's Web Mercator
arithmetic with the Mars radius (tile numbers of MarsWebMercatorSphere equal Earth's; the scale
bar reads Mars metres), shows each layer with a layer switch, a metric scale bar and the site
marker, and is centred on the given lon/lat.

Example::

    ts = write_tiles(ortho, transform, site_crs(), out, hillshade_dem=dem)
    write_map(out, ts.center_lonlat, ts.zooms, layers=[("Orthoimage", ts.layers["tiles"]),
              ("Hillshade", ts.layers["hillshade"], {"opacity": 0.5})], bounds_lonlat=ts.bounds_lonlat,
              marker=((lon, lat), "site origin"))
"""

from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

from mosaic.runtime.atomic import write_text

WEB = Path(__file__).resolve().parent / "web"


def _layer(spec) -> dict:
    if isinstance(spec, dict):
        d = dict(spec)
    else:
        name, url, *rest = spec
        d = {"name": name, "url": url, **(rest[0] if rest else {})}
    if not d.get("name") or not d.get("url"):
        raise ValueError(f"a map layer needs a name and a url template, got {spec!r}")
    return d


def write_map(out_dir, center_lonlat, zooms, layers, title: str = "Jezero mosaic", bounds_lonlat=None,
              marker=None, zoom: int | None = None) -> Path:
    """Write ``out_dir/index.html`` and ``out_dir/leaflet/``; return the page's path.

    ``layers``: (name, url template relative to out_dir[, options]) tuples or dicts with ``name``,
    ``url`` and optional ``opacity``, ``visible`` and ``legend`` ({"title", "stops": [[css colour,
    label], ...]}: a colour key shown while the layer is on). ``marker``: ((lon, lat), label) or None.
    ``zoom``: the initial zoom (default two levels below the shallowest, capped at the deepest,
    so the whole map roughly fills an 800-1000 px window).
    """
    out_dir = Path(out_dir)
    zooms = sorted(int(z) for z in zooms)
    if not zooms:
        raise ValueError("write_map needs at least one zoom level")
    lon, lat = (float(v) for v in center_lonlat)
    if bounds_lonlat is None:
        bounds_lonlat = (-180.0, -85.0511, 180.0, 85.0511)
    config = {
        "title": title,
        "center": [lon, lat],
        "zoom": int(zoom if zoom is not None else min(zooms[-1], zooms[0] + 2)),
        "minZoom": zooms[0],
        "maxZoom": zooms[-1],
        "bounds": [float(v) for v in bounds_lonlat],
        "layers": [_layer(s) for s in layers],
        "marker": None if marker is None else {"lonlat": [float(marker[0][0]), float(marker[0][1])],
                                               "label": str(marker[1])},
    }
    # JSON inside <script>: escape "</" so no value can close the script element.
    blob = json.dumps(config, indent=1).replace("</", "<\\/")
    page = (WEB / "map.html").read_text(encoding="utf-8")
    page = page.replace("__TITLE__", html.escape(title)).replace("__CONFIG__", blob)
    dest = out_dir / "leaflet"
    out_dir.mkdir(parents=True, exist_ok=True)
    shutil.copytree(WEB / "leaflet", dest, dirs_exist_ok=True)
    index = write_text(out_dir / "index.html", page)
    return index
