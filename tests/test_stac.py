"""STAC item: Mars target (ssys), projection extension with the site CRS, valid GeoJSON shape."""

from __future__ import annotations

import json

import pytest

from mosaic.formats import geo, stac


def _item():
    t = geo.grid_transform(geo.DEFAULT_SITE_ORIGIN, -20.0, 20.0, 0.05)
    return stac.stac_item(
        "jezero-site-1",
        {"dem": ("dem.tif", ["data", "elevation"], stac.MEDIA_COG, "DEM"),
         "ortho": ("ortho.tif", ["data", "visual"], stac.MEDIA_COG),
         "map": ("index.html", ["overview"], stac.MEDIA_HTML)},
        bbox_lonlat=(77.45, 18.444, 77.452, 18.445),
        datetime="2021-02-18T20:55:00",
        proj_wkt2=geo.site_crs_wkt(), proj_shape=(800, 800), proj_transform=t, gsd=0.05,
        properties={"mosaic:site_origin": list(geo.DEFAULT_SITE_ORIGIN)},
    ), t


def test_item_has_mars_target_and_projection():
    item, t = _item()
    assert item["type"] == "Feature" and item["stac_version"] == "1.1.0"
    assert "https://stac-extensions.github.io/ssys/v1.1.0/schema.json" in item["stac_extensions"]
    assert any("/projection/" in u for u in item["stac_extensions"])
    p = item["properties"]
    assert p["ssys:targets"] == ["Mars"]
    assert p["proj:code"] is None
    assert "Mars (2015) - Sphere" in p["proj:wkt2"]
    assert p["proj:shape"] == [800, 800]
    assert p["proj:transform"] == [t.a, t.b, t.c, t.d, t.e, t.f]
    assert p["gsd"] == 0.05 and p["datetime"] == "2021-02-18T20:55:00Z"
    assert item["assets"]["dem"] == {"href": "dem.tif", "type": stac.MEDIA_COG, "roles": ["data", "elevation"],
                                     "title": "DEM"}
    ring = item["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and len(ring) == 5
    assert item["bbox"] == [77.45, 18.444, 77.452, 18.445]


def test_write_item_round_trips(tmp_path):
    item, _ = _item()
    p = stac.write_item(tmp_path / "item.json", item)
    assert json.loads(p.read_text()) == item


def test_bad_items_are_refused():
    with pytest.raises(ValueError, match="datetime"):
        stac.stac_item("a", {}, (0, 0, 1, 1))
    with pytest.raises(ValueError, match="bbox"):
        stac.stac_item("a", {}, (1, 0, 0, 1), datetime="2021-02-18T00:00:00Z")
    with pytest.raises(ValueError, match="id"):
        stac.stac_item("a/b", {}, (0, 0, 1, 1), datetime="2021-02-18T00:00:00Z")
