"""Stereo geometry: rectification of real Perseverance models, triangulation, pairing, gridding."""

from __future__ import annotations

import numpy as np
import pytest

from calib.meta import FrameMeta
from calib.models import CAHV
from calib.rotation import axis_angle
from mosaic.terrain import fuse as fusemod
from mosaic.terrain import grid as gridmod
from mosaic.terrain.rectify import rectify_image, rectify_pair, remap_maps, to_rectified
from mosaic.terrain.stereo_pairs import find_pairs, side
from mosaic.terrain.triangulate import triangulate

BASELINE = 0.424


def _axes(model):
    hc, vc, hs, vs = model.intrinsics()
    return (model.H - hc * model.A) / hs, (model.V - vc * model.A) / vs


def partner(model, toe_in_deg=0.0, sign=+1):
    """The other Navcam: moved 42.4 cm along H (sign +1: build a right from a left), toed in."""
    h, v = _axes(model)
    turned = model.moved(axis_angle(v, -sign * np.radians(toe_in_deg)))
    return turned.moved(np.eye(3), translation=sign * BASELINE * h)


def _real_frames(realdata):
    from calib.labels import discover

    frames = discover([realdata / "m20-navcam-mru-tiles", realdata / "m20-pds4-label"])
    assert len(frames) == 3
    return frames


def _points_in_view(model, w, h, n, rng, near=2.0, far=50.0):
    pix = rng.uniform([0, 0], [w - 1, h - 1], (n, 2))
    o, d = model.backproject(pix)
    return o + d * rng.uniform(near, far, n)[:, None]


@pytest.mark.parametrize("toe_in", [0.0, 1.15])
def test_real_models_rectify_to_epipolar_rows(realdata, toe_in):
    """Points at 2-50 m seen through both original models land on the same rectified row."""
    rng = np.random.default_rng(1)
    for f in _real_frames(realdata):
        m = f.model
        if "RIGHT" in f.instrument:
            left, right = partner(m, toe_in, sign=-1), m
        else:
            left, right = m, partner(m, toe_in)
        size = (f.width, f.height)
        rp = rectify_pair(left, right, size, size)
        # Shared A, H, V; centres untouched; H along the baseline.
        assert np.allclose(rp.left.A, rp.right.A) and np.allclose(rp.left.H, rp.right.H)
        assert np.allclose(rp.left.V, rp.right.V)
        assert np.allclose(rp.left.C, left.C) and np.allclose(rp.right.C, right.C)
        h, _ = _axes(rp.left)
        assert abs(h @ (right.C - left.C)) == pytest.approx(BASELINE, abs=1e-9)
        # The image normal is the mean boresight, less its baseline component (which must go:
        # rows are epipolar only when A is perpendicular to the baseline).
        b = left.boresight(*size) + right.boresight(*size)
        b -= (b @ h) * h
        assert rp.left.A @ (b / np.linalg.norm(b)) == pytest.approx(1.0, abs=1e-12)

        pts = _points_in_view(left, *size, 3000, rng)
        pl, pr = left.project(pts), right.project(pts)
        seen = np.all(np.isfinite(pl) & np.isfinite(pr), 1)
        seen &= np.all((pr >= 0) & (pr <= np.array(size) - 1), 1)
        assert seen.sum() > 500
        ql = to_rectified(left, rp.left, pl[seen])
        qr = to_rectified(right, rp.right, pr[seen])
        vertical = np.abs(ql[:, 1] - qr[:, 1])
        assert vertical.max() < 0.5
        assert np.median(vertical) < 0.01
        assert np.all(ql[:, 0] - qr[:, 0] > 0)  # positive disparity, left to right


def test_remap_maps_invert_to_rectified(realdata):
    """The resampling map and the forward map agree: map(to_rectified(p)) == p to 0.01 px."""
    from calib.labels import read_image

    f = _real_frames(realdata)[0]
    size = (f.width, f.height)
    rp = rectify_pair(f.model, partner(f.model), size, size)
    mx, my, err = remap_maps(f.model, rp.left, rp.width, rp.height, size)
    assert err < 0.01
    rng = np.random.default_rng(2)
    pix = rng.uniform([50, 50], [size[0] - 50, size[1] - 50], (500, 2))
    q = to_rectified(f.model, rp.left, pix)
    inside = np.all((q >= 0) & (q < [rp.width - 1, rp.height - 1]), 1)
    qi = np.floor(q[inside]).astype(int)
    # The map is smooth at pixel scale: check at the rectified pixel nearest each point.
    back = np.stack([mx[qi[:, 1], qi[:, 0]], my[qi[:, 1], qi[:, 0]]], 1)
    exact = f.model.project(rp.left.backproject(qi.astype(float))[0] + rp.left.backproject(qi.astype(float))[1])
    assert np.abs(back - exact).max() < 0.01
    img, valid = rectify_image(read_image(f).astype(np.float32), mx, my, *size)
    assert valid.mean() > 0.3 and img[valid].std() > 1.0


def test_triangulation_recovers_points():
    c = np.array([0.9, 0.35, -1.9])
    a = np.array([0.8, 0.1, 0.6])
    a /= np.linalg.norm(a)
    h0 = np.cross([0.0, 0.0, 1.0], a)
    h0 /= np.linalg.norm(h0)
    v0 = np.cross(a, h0)
    left = CAHV(c, a, 300 * h0 + 320 * a, 300 * v0 + 240 * a)
    right = CAHV(c + BASELINE * h0, a, left.H, left.V)
    rp = rectify_pair(left, right, (640, 480), (640, 480))
    rng = np.random.default_rng(3)
    pts = _points_in_view(rp.left, rp.width, rp.height, 2000, rng, 2.0, 30.0)
    pl, pr = rp.left.project(pts), rp.right.project(pts)
    disp = np.full((rp.height, rp.width), np.nan, np.float32)
    # Snap the left pixel to the grid: move each point along its left ray so it projects there.
    xi = np.round(pl).astype(int)
    ok = np.all((xi >= 0) & (xi < [rp.width, rp.height]), 1)
    xi, pts_r = xi[ok], np.linalg.norm(pts[ok] - rp.left.C, axis=1)
    o, d = rp.left.backproject(xi.astype(float))
    snapped = o + d * pts_r[:, None]
    disp[xi[:, 1], xi[:, 0]] = xi[:, 0] - rp.right.project(snapped)[:, 0]
    got = triangulate(rp, disp, min_range=0.5, max_range=100, min_angle_deg=0.0)
    truth = {(int(x), int(y)): p for (x, y), p in zip(xi, snapped)}
    ref = np.array([truth[(int(x), int(y))] for x, y in got.pixels])
    # float32 disparities limit the range to ~r^2 * 1e-5 px / (f b).
    assert np.abs(got.xyz - ref).max() < 2e-3
    assert len(got) == len(truth)
    # The closed form is the midpoint of the rays' common perpendicular.
    from mosaic.terrain.triangulate import closest_points

    d = disp[got.pixels[:, 1].astype(int), got.pixels[:, 0].astype(int)].astype(float)
    o1, d1 = rp.left.backproject(got.pixels)
    o2, d2 = rp.right.backproject(got.pixels - np.stack([d, np.zeros_like(d)], 1))
    mid, s, t = closest_points(o1, d1, o2, d2)
    assert np.abs(mid - got.xyz).max() < 1e-6 and np.all(s > 0) and np.all(t > 0)
    cos = np.einsum("ij,ij->i", d1, d2)
    assert np.allclose(np.degrees(np.arccos(np.clip(cos, -1, 1))), got.angle_deg, atol=1e-6)
    # Range and angle limits drop what they should.
    far = triangulate(rp, disp, min_range=10.0, max_range=20.0, min_angle_deg=0.0)
    assert far.range.min() >= 10.0 and far.range.max() <= 20.0
    wide = triangulate(rp, disp, min_angle_deg=2.0)
    assert wide.angle_deg.min() >= 2.0 and len(wide) < len(got)


def _frame(ident, instrument, sclk, az, model, site=1, drive=0):
    return FrameMeta(id=ident, instrument=instrument, width=640, height=480, model=model, sclk=sclk,
                     mast_az=az, mast_el=-20.0, site=site, drive=drive)


def test_find_pairs_by_clock_drive_and_boresight():
    from calib.instruments import instrument

    frames = []
    for i, az in enumerate((0.0, 60.0, 120.0)):
        for eye in ("LEFT", "RIGHT"):
            m = instrument(f"NAVCAM_{eye}").model(az, -20.0, downsample=8)
            frames.append(_frame(f"N{eye[0]}F_{i}", f"NAVCAM_{eye}", 1000.0 + 50 * i + (0.2 if eye == "RIGHT" else 0),
                                 az, m))
    # A right frame of another drive at the same clock must not pair.
    other = instrument("NAVCAM_RIGHT").model(0.0, -20.0, downsample=8)
    frames.append(_frame("NRF_other", "NAVCAM_RIGHT", 1000.1, 0.0, other, drive=2))
    # A lone Mastcam-Z left has no partner.
    frames.append(_frame("ZL0_x", "MCZ_LEFT", 1000.0, 0.0, instrument("MCZ_LEFT").model(0.0, -20.0)))
    pairs = find_pairs(list(reversed(frames)))
    assert [(p.left.id, p.right.id) for p in pairs] == [("NLF_0", "NRF_0"), ("NLF_1", "NRF_1"), ("NLF_2", "NRF_2")]


def test_find_pairs_picks_matching_tiles():
    """Tiles of one exposure share a clock: each left tile pairs with the right tile looking its way."""
    from calib.instruments import instrument

    frames = []
    for k, x0 in enumerate((1, 2561)):
        sub = (x0, 1, 2560, 1920)
        for eye in ("LEFT", "RIGHT"):
            m = instrument(f"NAVCAM_{eye}").model(30.0, -20.0, downsample=4, subframe=sub)
            frames.append(_frame(f"N{eye[0]}F_t{k}", f"NAVCAM_{eye}", 500.0, 30.0, m))
    pairs = find_pairs(frames)
    assert sorted((p.left.id, p.right.id) for p in pairs) == [("NLF_t0", "NRF_t0"), ("NLF_t1", "NRF_t1")]


def test_side_names():
    assert side("NAVCAM_LEFT") == ("NAVCAM", "L")
    assert side("MCZ_RIGHT") == ("MCZ", "R")
    assert side("CHEMCAM") is None


def test_bucket_puts_edge_points_in_neighbours():
    spec = gridmod.GridSpec(gridmod.Affine(0.1, 0, 0, 0, -0.1, 0), 200, 200, tile=100, halo=8)
    col = np.array([50.0, 97.0, 103.0, 150.0, 99.0, 250.0])
    row = np.array([50.0, 50.0, 50.0, 150.0, 99.0, 50.0])
    b = {t: set(i.tolist()) for t, i in gridmod.bucket(spec, col, row).items()}
    assert b[(0, 0)] == {0, 1, 2, 4}
    assert b[(0, 1)] == {1, 2, 4}
    assert b[(1, 0)] == {4}
    assert b[(1, 1)] == {3, 4}
    assert all(5 not in v for v in b.values())  # outside grid and halo


def _points(col, row, height, value=None, sigma=0.01, pair=0):
    """POINT_FIELDS rows for samples on vertical rays (error straight up: sigma in height)."""
    n = len(col)
    value = np.full(n, 0.5) if value is None else value
    return np.array([col, row, height, value, np.full(n, sigma), np.zeros(n), np.zeros(n), np.full(n, pair)],
                    np.float32)


def test_grid_tile_trimmed_weighted_mean():
    """A cell's height is the 1/sigma^2-weighted mean of its samples near their weighted median;
    its brightness likewise; its sigma is the samples' own error plus their spread."""
    spec = gridmod.GridSpec(gridmod.Affine(0.1, 0, 0, 0, -0.1, 0), 32, 32, tile=32, halo=8)
    fuse = fusemod.FuseSettings(fill=0, pointing_sigma_deg=0.0)
    # Cell (5, 5): three samples of one pair, sigma 1, 2 and 2 cm; (6, 5) holds neighbours.
    pts = _points([5.2, 5.7, 5.5, 6.5, 4.5, 5.5, 5.5], [5.5, 5.5, 5.2, 5.5, 5.5, 6.5, 4.5],
                  [1.00, 1.02, 1.01, 1.0, 1.0, 1.0, 1.0], [0.2, 0.7, 0.4, 0.5, 0.5, 0.5, 0.5])
    pts[4, :3] = [0.01, 0.02, 0.02]
    g = fusemod.grid_tile(spec, (0, 0), pts, fuse)
    w = 1.0 / (np.array([0.01, 0.02, 0.02]) ** 2 + fuse.sigma_floor ** 2)  # the floor adds in quadrature
    assert g["height"][5, 5] == pytest.approx(np.dot(w, [1.0, 1.02, 1.01]) / w.sum(), rel=1e-6)
    assert g["value"][5, 5] == pytest.approx(np.dot(w, [0.2, 0.7, 0.4]) / w.sum(), rel=1e-5)
    z = np.dot(w, [1.0, 1.02, 1.01]) / w.sum()
    spread2 = np.dot(w, (np.array([1.0, 1.02, 1.01]) - z) ** 2) / w.sum()
    assert g["sigma"][5, 5] == pytest.approx(np.sqrt(3 / w.sum() + spread2 / 3), rel=1e-4)
    assert np.isnan(g["height"][20, 20]) and not g["filled"].any()


def test_relative_orientation_recovers_the_observable_rotation(realdata):
    """A right eye turned by 0.8 degree about the baseline and the view axis (plus a convergence
    error it cannot see) is put back to < 0.01 degree in the observable components."""
    from mosaic.terrain.relative import fit_right_rotation

    f = _real_frames(realdata)[0]
    size = (f.width, f.height)
    left = f.model
    right_true = partner(left)
    rp = rectify_pair(left, right_true, size, size)
    h, v = _axes(rp.left)
    a = rp.left.A
    turn = np.radians(0.8) * (0.6 * h + 0.8 * a) + np.radians(0.3) * v
    from calib.rotation import rotvec_to_matrix

    right_bad = right_true.moved(rotvec_to_matrix(turn))
    rng = np.random.default_rng(4)
    pts = _points_in_view(left, *size, 600, rng, 2.0, 40.0)
    pl, pr = left.project(pts), right_true.project(pts)
    seen = np.all(np.isfinite(pr) & (pr >= 0) & (pr <= np.array(size) - 1), 1)
    pl, pr = pl[seen], pr[seen]
    pr_noisy = pr + rng.normal(0, 0.3, pr.shape)
    pr_noisy[:20] += rng.uniform(-40, 40, (20, 2))  # outliers
    # The rays right_bad gives to the true pixels are those the bad eye would see.
    fit = fit_right_rotation(left, right_bad, pl, pr_noisy, h, a)
    assert fit is not None and fit.inliers >= len(pl) - 25
    fixed = right_bad.moved(fit.rotation)
    # Residual rotation between the fixed and true eye, in the observable axes.
    from calib.rotation import matrix_to_rotvec

    r = matrix_to_rotvec(_frame_of(fixed) @ _frame_of(right_true).T)
    assert abs(np.degrees(r @ h)) < 0.02 and abs(np.degrees(r @ a)) < 0.02
    # What is left out of plane is the 0.3 px noise and the unseen convergence's second-order
    # effect at this tile's corner of the field.
    assert fit.rms_after_px < min(1.5, fit.rms_before_px / 10)


def _frame_of(model):
    h, v = _axes(model)
    return np.column_stack([h, v, model.A])


def test_unrectifiable_pair_is_skipped_not_fatal(tmp_path):
    """Eyes swapped in the labels (right camera left of the left one): the pair is reported as
    skipped, the run goes on."""
    from calib.instruments import instrument
    from mosaic.formats.geo import DEFAULT_SITE_ORIGIN
    from mosaic.terrain.stereo import StereoSettings, process_pair
    from mosaic.terrain.stereo_pairs import StereoPair

    left_model = instrument("NAVCAM_RIGHT").model(0.0, -30.0, downsample=16)
    right_model = instrument("NAVCAM_LEFT").model(0.0, -30.0, downsample=16)
    pair = StereoPair(_frame("NLF_x", "NAVCAM_LEFT", 1.0, 0.0, left_model),
                      _frame("NRF_x", "NAVCAM_RIGHT", 1.0, 0.0, right_model))
    spec = gridmod.grid_spec(DEFAULT_SITE_ORIGIN, 0.0, 0.0, 5.0, 0.05)
    stats = process_pair(pair, 0, str(tmp_path), spec.to_dict(), DEFAULT_SITE_ORIGIN, StereoSettings())
    assert stats["points"] == 0 and "not to the right" in stats["skipped"]
