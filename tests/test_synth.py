"""mosaic synth: determinism, read-back, overlaps, truth relations and ray-cast geometry."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from PIL import Image

from calib.instruments import instrument
from calib.labels import discover
from calib.mast import mast_pivot
from calib.meta import LOCAL_LEVEL
from calib.models import model_from_dict
from calib.overlap import overlap_matrix
from calib.rotation import matrix_to_rotvec, rotvec_to_matrix
from mosaic.cli import main
from mosaic.synth import render, scenes
from mosaic.synth.raycast import intersect
from mosaic.synth.terrain import jezero_floor
from mosaic.synth.writer import plan_frames, synthesise

SCALE = 64  # 80 x 60 Navcam frames: the geometry is exact at any scale, and it is fast


@pytest.fixture(scope="module")
def scene360(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth") / "a"
    synthesise(out, "navcam-360", seed=3, scale=SCALE, jobs=2)
    return out


def _files(d):
    return {p.relative_to(d).as_posix(): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def test_same_arguments_same_bytes_and_seeds_differ(scene360, tmp_path):
    # One process instead of two: the bytes must not depend on how frames are farmed out.
    synthesise(tmp_path / "b", "navcam-360", seed=3, scale=SCALE, jobs=1)
    a, b = _files(scene360), _files(tmp_path / "b")
    assert a.keys() == b.keys()
    assert len([k for k in a if k.endswith(".png")]) == 10
    assert all(a[k] == b[k] for k in a), [k for k in a if a[k] != b[k]]
    synthesise(tmp_path / "c", "navcam-360", seed=4, scale=SCALE, jobs=2)
    pngs_a = sorted(k for k in a if k.endswith(".png"))
    c = _files(tmp_path / "c")
    pngs_c = sorted(k for k in c if k.endswith(".png"))
    assert len(pngs_c) == len(pngs_a)
    for ka, kc in zip(pngs_a, pngs_c):
        ia = np.asarray(Image.open(scene360 / ka), dtype=float)
        ic = np.asarray(Image.open(tmp_path / "c" / kc), dtype=float)
        assert np.abs(ia - ic).mean() > 2.0


def test_frames_read_back_with_reported_models(scene360):
    metas = discover(scene360)
    truth = json.loads((scene360 / "truth" / "solution.json").read_text())
    assert [m.id for m in metas] == sorted(f["id"] for f in truth["frames"])
    params = json.loads((scene360 / "scene.json").read_text())
    for m in metas:
        img = np.asarray(Image.open(m.image))
        assert img.shape == (m.height, m.width) == (3840 // SCALE, 5120 // SCALE)
        assert m.instrument == "NAVCAM_LEFT" and m.downsample == SCALE and m.subframe == (1, 1, 5120, 3840)
        fp = next(f for f in params["frames"] if f["id"] == m.id)
        # The record carries the nominal model at the reported mast angles, unperturbed.
        nominal = instrument("NAVCAM_LEFT").model(fp["mast_az"], fp["mast_el"], downsample=SCALE)
        assert np.allclose(m.model.A, nominal.A, atol=1e-8) and np.allclose(m.model.C, nominal.C, atol=1e-8)
        assert np.allclose(m.rover_position, params["rover"]["position_site"], atol=1e-8)
        assert 40 < img.mean() < 220 and img.std() > 5
    assert main(["-q", "info", str(scene360), "--json"]) == 0


def test_truth_is_the_reported_model_turned_about_the_mast_pivot(scene360):
    metas = {m.id: m for m in discover(scene360)}
    truth = json.loads((scene360 / "truth" / "solution.json").read_text())
    params = {f["id"]: f for f in json.loads((scene360 / "scene.json").read_text())["frames"]}
    for f in truth["frames"]:
        assert f["frame"] == LOCAL_LEVEL and f["used"] is True
        true_ll = model_from_dict(f["model"])
        meta = metas[f["id"]]
        rep_ll = meta.model_local_level()
        r_att = meta.rover_to_local_level()
        # In RNAV: true = reported turned by the injected rotation about the pivot.
        true_rnav = true_ll.transformed(r_att.T, np.zeros(3))
        w = np.array(params[f["id"]]["pointing_error_rotvec_rnav"])
        expect = meta.model.moved(rotvec_to_matrix(w), pivot=mast_pivot())
        assert np.allclose(true_rnav.A, expect.A, atol=1e-9) and np.allclose(true_rnav.C, expect.C, atol=1e-9)
        angle = np.degrees(np.linalg.norm(matrix_to_rotvec(true_ll.to_opencv()[1].T @ rep_ll.to_opencv()[1])))
        assert 0.5 - 1e-9 <= angle <= 1.0 + 1e-9
        assert angle == pytest.approx(params[f["id"]]["pointing_error_deg"], abs=1e-7)


def test_predicted_overlaps_match_the_truth(scene360):
    metas = discover(scene360)
    truth = {f["id"]: f for f in json.loads((scene360 / "truth" / "solution.json").read_text())["frames"]}
    true_metas = [m.with_(model=model_from_dict(truth[m.id]["model"]), model_frame=LOCAL_LEVEL) for m in metas]
    pred = overlap_matrix(metas)
    meas = overlap_matrix(true_metas)
    # 0.5-1 degree pointing errors move a 96-degree footprint edge by ~1 %: overlaps agree to a few %.
    assert np.abs(pred - meas).max() < 0.06
    assert ((pred > 0.1) == (meas > 0.1)).all()
    # Every frame overlaps its two tier neighbours and at least one frame of the other tier.
    sym = np.maximum(meas, meas.T)
    tier_of = {f["id"]: f["tier"] for f in json.loads((scene360 / "scene.json").read_text())["frames"]}
    tiers = np.array([tier_of[m.id] for m in metas])
    for i in range(len(metas)):
        same = [j for j in range(len(metas)) if j != i and tiers[j] == tiers[i] and sym[i, j] > 0.15]
        other = [j for j in range(len(metas)) if tiers[j] != tiers[i] and sym[i, j] > 0.15]
        assert len(same) == 2 and len(other) >= 1


def _marker_terrain(seed, marker_xy, sigma):
    """The scene's terrain with a Gaussian bright spot painted on the near layer's albedo."""
    t = jezero_floor(seed)
    near = t.layers[2]
    xs = near.x0 + near.cell * np.arange(near.shape[0])
    ys = near.y0 + near.cell * np.arange(near.shape[1])
    r2 = (xs[:, None] - marker_xy[0]) ** 2 + (ys[None, :] - marker_xy[1]) ** 2
    spot = np.exp(-r2 / (2 * sigma**2))
    layers = [t.layers[0], t.layers[1], dataclasses.replace(near, albedo=(near.albedo * (1 + 3 * spot)).astype(np.float32))]
    return dataclasses.replace(t, layers=layers), t


def _spot_centroid_predicted(model, terrain, centre, sigma):
    """Where the model says the spot's image centroid is: the surface around the spot projected
    point by point, each weighted by the spot's albedo and the image area it covers (the spot is
    a few cm wide on a slanted surface, so its centroid is not the projection of its centre)."""
    step = sigma / 25
    g = np.arange(-4 * sigma, 4 * sigma + step / 2, step)
    gx, gy = np.meshgrid(centre[0] + g, centre[1] + g, indexing="ij")
    pts = np.stack([gx, gy, terrain.site_z(gx.ravel(), gy.ravel()).reshape(gx.shape)], -1)
    pix = model.project(pts.reshape(-1, 3)).reshape(gx.shape + (2,))
    du = np.gradient(pix, axis=0)
    dv = np.gradient(pix, axis=1)
    area = np.abs(du[..., 0] * dv[..., 1] - du[..., 1] * dv[..., 0])
    w = np.exp(-((gx - centre[0]) ** 2 + (gy - centre[1]) ** 2) / (2 * sigma**2)) * area
    return (pix * w[..., None]).sum((0, 1)) / w.sum()


def test_a_terrain_point_lands_where_the_models_say_at_two_downsample_factors():
    seed, sigma = 5, 0.03
    base = jezero_floor(seed)
    rover = base.rover_position()
    az, el = 20.0, -35.0
    # Aim at the ground point the ray of a full-resolution pixel hits (RNAV = SITE here).
    full = instrument("NAVCAM_LEFT").model(az, el).transformed(np.eye(3), rover)
    o, d = full.backproject([[2200.0, 2300.0]])
    t = intersect(base, o, d)
    hit = o[0] + t[0] * d[0]
    terrain, _ = _marker_terrain(seed, hit[:2], sigma=sigma)
    # A 640 x 640 full-resolution window around the spot, delivered at two downsample factors.
    sub = (1881, 1981, 640, 640)
    for ds in (4, 8):
        model = instrument("NAVCAM_LEFT").model(az, el, downsample=ds, subframe=sub).transformed(np.eye(3), rover)
        w, h = 640 // ds, 640 // ds
        with_spot, _ = render.radiance(terrain, model, w, h)
        without, _ = render.radiance(base, model, w, h)
        # The spot alone, shading divided out: the same hit points with and without the spot.
        diff = with_spot / without - 1.0
        assert diff.min() > -1e-9 and diff.max() > 0.1
        yy, xx = np.mgrid[0:h, 0:w]
        centroid = np.array([(diff * xx).sum(), (diff * yy).sum()]) / diff.sum()
        predicted = _spot_centroid_predicted(model, terrain, hit[:2], sigma)
        # The spot's centre itself projects to the same full-resolution pixel in both grids.
        assert np.allclose(model.project(hit)[0] * ds + [1880, 1980], [2200.0, 2300.0], atol=1e-6)
        assert np.abs(centroid - predicted).max() < 0.5, (ds, centroid, predicted)


def test_tiles_share_the_full_frame_geometry():
    plans = plan_frames("navcam-360", seed=1, scale=2, tiles=True)
    assert len(plans) == 10 * 4
    subs = {p.subframe for p in plans}
    assert subs == {(1, 1, 2576, 1936), (2545, 1, 2576, 1936), (1, 1905, 2576, 1936), (2545, 1905, 2576, 1936)}
    inst = instrument("NAVCAM_LEFT")
    full = inst.model(10.0, -30.0, downsample=2)
    tile = inst.model(10.0, -30.0, downsample=2, subframe=(2545, 1905, 2576, 1936))
    assert inst.product_size(2, (2545, 1905, 2576, 1936)) == (1288, 968)
    _, d_full = full.backproject([[1272 + 10.0, 952 + 20.0]])
    _, d_tile = tile.backproject([[10.0, 20.0]])
    assert np.allclose(d_full, d_tile, atol=1e-12)
    sensor = render.Sensor(5120, 3840, (2545, 1905, 2576, 1936), 2)
    assert sensor.full_pixels(0, 0) == (2544.5, 1904.5)


def test_scene_definitions():
    shots = scenes.scene_shots("navcam-stereo")
    assert [s.instrument for s in shots[:2]] == ["NAVCAM_LEFT", "NAVCAM_RIGHT"] and len(shots) == 10
    mcz = scenes.scene_shots("mastcamz-pan", zoom_mm=63)
    assert {s.tier for s in mcz} == {0, 1, 2} and all(s.zoom_mm == 63 for s in mcz)
    # More zoom, more frames over the same 100 degrees.
    assert len(mcz) > len(scenes.scene_shots("mastcamz-pan", zoom_mm=34))


def test_bad_arguments_exit_2(tmp_path, capsys):
    assert main(["synth", str(tmp_path / "x"), "--scene", "mastcamz-pan", "--zoom", "200"]) == 2
    assert "zoom" in capsys.readouterr().err
    assert main(["synth", str(tmp_path / "x"), "--scene", "navcam-360", "--scale", "0"]) == 2
    with pytest.raises(SystemExit) as e:
        main(["synth", str(tmp_path / "x"), "--scene", "no-such-scene"])
    assert e.value.code == 2


def test_terrain_sky_and_occlusion():
    t = jezero_floor(2)
    rover = t.rover_position()
    cam = rover + np.array([0.0, 0.0, -2.0])
    # Straight up escapes, straight down hits the ground 2 m below, a level ray far away meets the rim.
    o = np.repeat(cam[None], 3, 0)
    d = np.array([[0.0, 0.0, -1.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    hits = intersect(t, o, d)
    assert np.isnan(hits[0])
    assert hits[1] == pytest.approx(2.0, abs=1e-3)
    assert 50 < hits[2] < 4000
    # The first surface wins: the hit point lies on the surface and nothing is above the ray before it.
    p = o[2] + hits[2] * d[2]
    assert abs(-p[2] - t.height(p[:1], p[1:2])[0]) < 1e-3
    ts = np.linspace(1, hits[2] * 0.999, 20000)
    q = o[2] + ts[:, None] * d[2]
    assert (-q[:, 2] > t.height(q[:, 0], q[:, 1])).all()


def test_mastcamz_pan_reads_back_with_its_zoom(tmp_path):
    synthesise(tmp_path / "m", "mastcamz-pan", seed=2, scale=16, zoom_mm=63, jobs=2)
    metas = discover(tmp_path / "m")
    assert len(metas) == len(scenes.scene_shots("mastcamz-pan", zoom_mm=63))
    for m in metas:
        assert m.instrument == "MCZ_LEFT" and m.model.type == "CAHVOR" and (m.width, m.height) == (100, 75)
        h, v = m.model.fov(m.width, m.height)
        assert h == pytest.approx(np.degrees(2 * np.arctan(800 * 0.0074 / 63)), abs=0.2)
    pred = overlap_matrix(metas)
    truth = {f["id"]: f for f in json.loads((tmp_path / "m" / "truth" / "solution.json").read_text())["frames"]}
    meas = overlap_matrix([m.with_(model=model_from_dict(truth[m.id]["model"]), model_frame=LOCAL_LEVEL) for m in metas])
    # Narrow frames: two frames each off by up to 1 degree move a shared edge by up to 2 degrees,
    # 25 % of the 8.1-degree frame height.
    assert np.abs(pred - meas).max() < 0.3
    assert ((np.maximum(pred, pred.T) > 0.1).sum(1) >= 2).all()


def test_stereo_partners_share_the_mast_error_and_clock():
    plans = plan_frames("navcam-stereo", seed=1, scale=8)
    assert len(plans) == 10
    for left, right in zip(plans[0::2], plans[1::2]):
        assert (left.shot.instrument, right.shot.instrument) == ("NAVCAM_LEFT", "NAVCAM_RIGHT")
        assert np.array_equal(left.error_rot, right.error_rot) and left.sclk == right.sclk
        assert left.imageid[3:] == right.imageid[3:]
    assert len({p.sclk for p in plans}) == 5
    assert len({tuple(p.error_rotvec) for p in plans}) == 5


def test_tiles_render_the_full_frame_pixels(tmp_path, monkeypatch):
    terrain = jezero_floor(1)
    rover = terrain.rover_position()
    inst = instrument("NAVCAM_LEFT")
    full = inst.model(100.0, -30.0, downsample=16).transformed(np.eye(3), rover)
    tile = inst.model(100.0, -30.0, downsample=16, subframe=(2561, 1921, 2560, 1920)).transformed(np.eye(3), rover)
    rad_full, _ = render.radiance(terrain, full, 320, 240)
    rad_tile, _ = render.radiance(terrain, tile, 160, 120)
    assert np.allclose(rad_tile, rad_full[120:, 160:], atol=1e-6)
    # End to end with small tiles (2 x 2 per frame at scale 16): records carry their subframes.
    orig = scenes.navcam_tiles

    def small(w, h, s):
        return orig(w, h, s, tile_w=168, tile_h=128, step_w=160, step_h=120)

    monkeypatch.setattr(scenes, "navcam_tiles", small)
    synthesise(tmp_path / "t", "navcam-stereo", seed=1, scale=16, tiles=True, jobs=2)
    metas = discover(tmp_path / "t")
    assert len(metas) == 40
    assert {m.subframe for m in metas} == set(small(5120, 3840, 16))
    for m in metas:
        x0, y0, w, h = m.subframe
        assert (m.width, m.height) == (w // 16, h // 16) == (168, 128)
        assert np.asarray(Image.open(m.image)).shape == (128, 168)


def test_cast_shadows_fall_away_from_the_sun():
    from mosaic.synth.raycast import in_shadow
    from mosaic.synth.terrain import Layer, Terrain

    def flat(name, cell, n):
        z = np.zeros((n, n), np.float32)
        return Layer(name, -cell * (n // 2), -cell * (n // 2), cell, z, np.ones_like(z))

    far, mid, near = flat("far", 8.0, 64), flat("mid", 0.05, 400), flat("near", 0.02, 200)
    xs = mid.x0 + mid.cell * np.arange(400)
    r = np.hypot(xs[:, None] - 5.0, xs[None, :] - 0.0)
    mid.height[:] = np.where(r < 0.5, 1.0, 0.0)  # a 1 m tall, 1 m wide column 5 m north
    terrain = Terrain([far, mid, near], (0.0, 0.0), seed=0, sun_azel=(0.0, 30.0))  # sun due north
    sun = terrain.sun_vector()
    # South of the column (its shadow reaches 1/tan(30) = 1.7 m), north of it, and far to the side.
    pts = np.array([[4.0, 0.0, 0.0], [3.0, 0.0, 0.0], [6.0, 0.0, 0.0], [4.0, 3.0, 0.0], [2.5, 0.0, 0.0]])
    assert in_shadow(terrain, pts, sun).tolist() == [True, True, False, False, False]
