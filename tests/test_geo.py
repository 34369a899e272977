"""Mars georeferencing: CRS identity, PROJ agreement, LOCAL_LEVEL round trips, site origin parsing."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pyproj import CRS, Transformer

from calib.errors import InputError
from mosaic.formats import geo


def test_geographic_crs_is_iau_mars_sphere_east_positive():
    g = geo.geographic_crs()
    assert g.to_authority() == ("IAU_2015", "49900")
    assert g.ellipsoid.semi_major_metre == geo.MARS_SPHERE_RADIUS
    assert g.ellipsoid.inverse_flattening == 0 or math.isinf(g.ellipsoid.inverse_flattening)
    assert g.axis_info[1].direction == "east"


def test_site_crs_names_mars_and_matches_the_proj_string():
    c = geo.site_crs()
    assert c.datum.name == "Mars (2015) - Sphere"
    assert c.ellipsoid.name == "Mars (2015) - Sphere"
    assert c.ellipsoid.semi_major_metre == geo.MARS_SPHERE_RADIUS
    assert "Earth" not in c.to_wkt() and "WGS" not in c.to_wkt()
    # Same numbers as the published PROJ string, point for point.
    ref = CRS.from_proj4(geo.SITE_PROJ)
    t_ref = Transformer.from_crs(ref.geodetic_crs, ref, always_xy=True)
    t_our = Transformer.from_crs(geo.geographic_crs(), c, always_xy=True)
    lon = np.array([77.45089, 77.0, 78.2, -10.0])
    lat = np.array([18.44463, 18.0, 19.1, -30.0])
    e_ref, n_ref = t_ref.transform(lon, lat)
    e_our, n_our = t_our.transform(lon, lat)
    e_np, n_np = geo.lonlat_to_map(lon, lat)
    np.testing.assert_allclose(e_our, e_ref, atol=1e-6)
    np.testing.assert_allclose(n_our, n_ref, atol=1e-6)
    np.testing.assert_allclose(e_np, e_ref, atol=1e-6)
    np.testing.assert_allclose(n_np, n_ref, atol=1e-6)
    lon2, lat2 = geo.map_to_lonlat(e_np, n_np)
    np.testing.assert_allclose(lon2, lon, atol=1e-12)
    np.testing.assert_allclose(lat2, lat, atol=1e-12)


def test_landing_site_map_coordinates():
    e, n = geo.origin_map(geo.DEFAULT_SITE_ORIGIN)
    # R * radians(lon) * cos(lat_ts), R * radians(lat), by hand.
    assert e == pytest.approx(3396190 * math.radians(77.45089) * math.cos(math.radians(18.4663)), abs=1e-6)
    assert n == pytest.approx(3396190 * math.radians(18.44463), abs=1e-6)
    assert 4.35e6 < e < 4.37e6 and 1.09e6 < n < 1.10e6


def test_local_level_round_trip_and_ground_distances():
    o = geo.DEFAULT_SITE_ORIGIN
    rng = np.random.default_rng(1)
    x, y = rng.uniform(-500, 500, 100), rng.uniform(-500, 500, 100)
    e, n = geo.local_level_to_map(x, y, o)
    x2, y2 = geo.map_to_local_level(e, n, o)
    np.testing.assert_allclose(x2, x, atol=1e-6)
    np.testing.assert_allclose(y2, y, atol=1e-6)
    # 100 m north / east on the ground: great-circle distance on the sphere between the mapped points.
    e0, n0 = geo.local_level_to_map(0.0, 0.0, o)
    assert (float(e0), float(n0)) == geo.origin_map(o)
    for dx, dy in ((100.0, 0.0), (0.0, 100.0)):
        e1, n1 = geo.local_level_to_map(dx, dy, o)
        lon1, lat1 = geo.map_to_lonlat(e1, n1)
        lam = np.radians([o.lon, float(lon1)])
        phi = np.radians([o.lat, float(lat1)])
        c = math.sin(phi[0]) * math.sin(phi[1]) + math.cos(phi[0]) * math.cos(phi[1]) * math.cos(lam[1] - lam[0])
        d = geo.MARS_SPHERE_RADIUS * math.acos(min(1.0, c))
        assert d == pytest.approx(100.0, abs=2e-4)
    assert geo.east_scale(o) == pytest.approx(0.999874, abs=2e-6)


def test_elevation_is_origin_minus_z_down():
    o = geo.DEFAULT_SITE_ORIGIN
    np.testing.assert_allclose(geo.elevation([0.0, 1.5, -2.0], o), [-2569.91, -2571.41, -2567.91])


def test_grid_transform_snaps_and_is_north_up():
    o = geo.DEFAULT_SITE_ORIGIN
    t = geo.grid_transform(o, -10.0, 20.0, 0.05)
    assert t.a == 0.05 and t.e == -0.05 and t.b == 0 and t.d == 0
    assert t.c / 0.05 == pytest.approx(round(t.c / 0.05), abs=1e-6)
    assert t.f / 0.05 == pytest.approx(round(t.f / 0.05), abs=1e-6)
    e, n = geo.local_level_to_map(20.0, -10.0, o)
    assert t.c <= e < t.c + 0.05 and t.f - 0.05 < n <= t.f
    t2 = geo.grid_transform(o, -10.0, 20.0, 0.05, snap=False)
    assert (t2.c, t2.f) == pytest.approx((float(e), float(n)))
    with pytest.raises(ValueError):
        geo.grid_transform(o, 0, 0, 0)


def test_parse_site_origin():
    assert geo.parse_site_origin("18.44463, 77.45089, -2569.91") == geo.DEFAULT_SITE_ORIGIN
    for bad in ("", "1,2", "a,b,c", "1,2,3,4", "95,0,0", "0,400,0", "nan,0,0"):
        with pytest.raises(InputError) as e:
            geo.parse_site_origin(bad, source="cfg.json")
        assert str(e.value).startswith("cfg.json: site origin")
