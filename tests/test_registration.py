"""Registration building blocks: bundle adjustment, tracks, guided matching, rotation RANSAC,
focal lengths from homographies, feature coordinates, config and solution.json."""

from __future__ import annotations

import json

import numpy as np
import pytest

from calib.errors import InputError
from calib.models import CAHVOR
from calib.rotation import azel_to_vector, matrix_to_rotvec, rotvec_to_matrix
from mosaic.formats import solution as solution_io
from mosaic.pipeline.stages.adjust import build_tracks, focals_from_homography
from mosaic.pipeline.stages.bundle import Bundle, Lens, PhotoCamera, Points, PosedCamera, triangulate
from mosaic.pipeline.stages.matches import _best_two, _segment_candidates, ratio_match, verify_rotation
from mosaic.runtime.config import StitchConfig

F = 1220.0
W = H = 1024
PIVOT = np.array([0.5, 0.3, -1.6])


def mast_camera(az, el, lever=0.15):
    a = azel_to_vector(az, el)
    east = np.cross([0, 0, 1.0], a)
    east /= np.linalg.norm(east)
    down = np.cross(a, east)
    return CAHVOR(C=PIVOT + lever * a, A=a, H=511.5 * a + F * east, V=511.5 * a + F * down, O=a,
                  R=[0, 0.01, -0.003])


def ring_scene(seed=1, noise=0.0, n_points=4000):
    """Two tiers of mast cameras around a pivot, tie points 3-200 m away, ~1 deg pointing errors."""
    rng = np.random.default_rng(seed)
    truth = [mast_camera(az, el) for el in (-5, -38) for az in np.arange(0, 360, 30)]
    az = rng.uniform(0, 360, n_points)
    el = rng.uniform(-45, 15, n_points)
    depth = np.exp(rng.uniform(np.log(3), np.log(200), n_points))
    X = PIVOT + azel_to_vector(az, el) * depth[:, None]
    of, op, oxy = [], [], []
    for i, m in enumerate(truth):
        pix = m.project(X)
        v = X - m.C
        inside = (v @ m.A) / np.linalg.norm(v, axis=1) > np.cos(np.radians(33))
        ok = inside & np.isfinite(pix).all(1) & (pix >= 0).all(1) & (pix < W - 1).all(1)
        idx = np.flatnonzero(ok)
        of += [i] * len(idx)
        op += list(idx)
        oxy.append(pix[idx] + rng.normal(0, noise, (len(idx), 2)))
    of, op, oxy = np.array(of), np.array(op), np.concatenate(oxy)
    seen = np.bincount(op, minlength=n_points) >= 2
    remap = np.cumsum(seen) - 1
    sel = seen[op]
    errors = [rotvec_to_matrix(rng.normal(0, np.radians(1) / np.sqrt(3), 3)) for _ in truth]
    return truth, errors, of[sel], remap[op[sel]], oxy[sel]


def residual_pointing_px(cams, errors):
    """Per-frame pointing error (pixels) after removing the common rotation."""
    rots = [c.rot @ e.T for c, e in zip(cams, errors)]
    mean = np.mean([matrix_to_rotvec(r) for r in rots], axis=0)
    return np.array([np.linalg.norm(matrix_to_rotvec(r) - mean) * F for r in rots])


def posed_bundle(truth, errors, of, op, oxy, prior_deg=1.0):
    cams = [PosedCamera(m.moved(e.T, PIVOT), PIVOT, np.radians(prior_deg)) for m, e in zip(truth, errors)]
    origins, dirs = np.zeros((len(of), 3)), np.zeros((len(of), 3))
    for i, c in enumerate(cams):
        m = of == i
        origins[m], dirs[m] = c.model().backproject(oxy[m])
    d, rho = triangulate(origins, dirs, op, int(op.max()) + 1, PIVOT)
    return cams, Bundle(cams, Points(d, rho, origin=PIVOT), of, op, oxy, np.ones(len(of)))


def test_bundle_recovers_pointing_with_parallax():
    truth, errors, of, op, oxy = ring_scene(noise=0.0)
    cams, bundle = posed_bundle(truth, errors, of, op, oxy)
    before = residual_pointing_px([PosedCamera(None, PIVOT, 1.0) for _ in cams], errors)
    info = bundle.solve(50)
    r = bundle.residuals()[0]
    assert np.sqrt(np.mean(np.sum(r**2, 1))) < 0.01
    err = residual_pointing_px(cams, errors)
    assert np.median(before) > 10          # ~1 degree is ~20 px
    assert err.max() < 0.3, err
    assert info["iterations"] < 30


def test_bundle_robust_to_outliers():
    truth, errors, of, op, oxy = ring_scene(seed=2, noise=0.2)
    rng = np.random.default_rng(0)
    bad = rng.choice(len(oxy), len(oxy) // 50, replace=False)
    oxy = oxy.copy()
    oxy[bad] += rng.uniform(20, 60, (len(bad), 2)) * rng.choice([-1, 1], (len(bad), 2))
    cams, bundle = posed_bundle(truth, errors, of, op, oxy)
    bundle.solve(50)
    removed = bundle.remove_outliers(3.0)
    bundle.solve(50)
    assert removed >= len(bad) * 0.9
    r = bundle.residuals()[0][bundle.keep]
    assert np.sqrt(np.mean(np.sum(r**2, 1))) < 0.4
    assert np.median(residual_pointing_px(cams, errors)) < 1.0


def test_bundle_jacobians_match_finite_differences():
    truth, errors, of, op, oxy = ring_scene(seed=3, n_points=600)
    cams, bundle = posed_bundle(truth, errors, of, op, oxy)
    r, jc, jp = bundle.residuals(True)
    eps = 1e-7
    for k in range(3):
        saved = bundle._state()
        d = np.zeros(3)
        d[k] = eps
        cams[4].update(d)
        num = (bundle.residuals()[0] - r) / eps
        bundle._restore(saved)
        m = bundle.f == 4
        assert np.abs(num[m] - jc[m][:, :, k]).max() < 1e-3 * np.abs(jc[m][:, :, k]).max()
    for k in range(3):
        saved = bundle._state()
        d = np.zeros((len(bundle.points.dirs), 3))
        d[:, k] = eps
        bundle.points.update(d)
        num = (bundle.residuals()[0] - r) / eps
        bundle._restore(saved)
        assert np.abs(num - jp[:, :, k]).max() < 1e-3 * np.abs(jp[:, :, k]).max()


def photo_scene(seed=5, f_true=900.0, w=1200, h=800, k1=-0.05):
    """Three photos of a pan (true cameras, shared lens) and the observations of directions
    seen by at least two of them."""
    rng = np.random.default_rng(seed)
    rots = [rotvec_to_matrix([0, 0, np.radians(a)]) @ np.array([[0, 0, 1.0], [1, 0, 0], [0, 1, 0]])
            for a in (0, 25, 50)]
    lens = Lens(f_true)
    lens.k1 = k1
    true = [PhotoCamera(r, lens, w, h, 1.0) for r in rots]
    dirs = azel_to_vector(rng.uniform(-20, 70, 3000), rng.uniform(-15, 15, 3000))
    of, op, oxy = [], [], []
    for i, c in enumerate(true):
        pix = c.model().project(dirs)
        ok = np.isfinite(pix).all(1) & (pix >= 0).all(1) & (pix[:, 0] < w) & (pix[:, 1] < h)
        of += [i] * ok.sum()
        op += list(np.flatnonzero(ok))
        oxy.append(pix[ok])
    of, op, oxy = np.array(of), np.array(op), np.concatenate(oxy)
    seen = np.bincount(op, minlength=len(dirs)) >= 2
    sel = seen[op]
    return rots, dirs[seen], of[sel], (np.cumsum(seen) - 1)[op[sel]], oxy[sel]


def photo_bundle(rots, of, op, oxy, focal=1000.0, w=1200, h=800, seed=5):
    rng = np.random.default_rng(seed)
    start_lens = Lens(focal)
    cams = [PhotoCamera(rotvec_to_matrix(rng.normal(0, 0.02, 3)) @ r if i else r, start_lens, w, h,
                        1e-6 if i == 0 else np.pi) for i, r in enumerate(rots)]
    start = np.zeros((op.max() + 1, 3))
    for i, c in enumerate(cams):
        m = of == i
        np.add.at(start, op[m], c.model().backproject(oxy[m])[1])
    start /= np.linalg.norm(start, axis=1, keepdims=True)
    return cams, start_lens, Bundle(cams, Points(start, None), of, op, oxy, np.ones(len(of)))


def test_photo_bundle_recovers_focal_and_rotation():
    rots, _, of, op, oxy = photo_scene()
    cams, start_lens, bundle = photo_bundle(rots, of, op, oxy)
    bundle.solve(100)
    r = bundle.residuals()[0]
    assert np.sqrt(np.mean(np.sum(r**2, 1))) < 0.01
    assert abs(start_lens.focal - 900.0) < 0.5
    assert abs(start_lens.k1 + 0.05) < 1e-3


def test_photo_residuals_are_the_cahvor_model():
    """The photos' closed-form projection (all observations at once) is the CAHVOR model that
    solution.json records for each photo."""
    rots, _, of, op, oxy = photo_scene()
    cams, lens, bundle = photo_bundle(rots, of, op, oxy)
    lens.k1 = 0.03
    r = bundle.residuals()[0]
    for i, c in enumerate(cams):
        m = bundle.f == i
        pix = c.model().project(bundle.points.dirs[bundle.p[m]])
        assert np.abs(r[m] + bundle.xy[m] - pix).max() < 1e-9


def test_photo_jacobians_match_finite_differences():
    rots, _, of, op, oxy = photo_scene(seed=6)
    cams, lens, bundle = photo_bundle(rots, of, op, oxy, seed=6)
    lens.k1 = 0.02
    r, jc, jp = bundle.residuals(True)
    eps = 1e-7
    for k in range(5):  # rotation of photo 1, then its lens: log f and k1
        saved = bundle._state()
        d = np.zeros(bundle.n_params)
        d[bundle.index[1][k]] = eps
        bundle._update(d, np.zeros((len(bundle.points.dirs), 2)))
        num = (bundle.residuals()[0] - r) / eps
        bundle._restore(saved)
        m = bundle.f == 1
        assert np.abs(num[m] - jc[m][:, :, k]).max() < 1e-3 * np.abs(jc[m][:, :, k]).max()
    for k in range(2):
        saved = bundle._state()
        d = np.zeros((len(bundle.points.dirs), 2))
        d[:, k] = eps
        bundle.points.update(d)
        num = (bundle.residuals()[0] - r) / eps
        bundle._restore(saved)
        assert np.abs(num - jp[:, :, k]).max() < 1e-3 * np.abs(jp[:, :, k]).max()


@pytest.mark.parametrize("kind", ["posed", "photos"])
def test_schur_step_is_the_dense_gauss_newton_step(kind):
    """The step from the Schur complement (assembled by camera pairs, points eliminated) equals
    the one from the full dense normal equations."""
    if kind == "posed":
        truth, errors, of, op, oxy = ring_scene(seed=4, n_points=300)
        _, bundle = posed_bundle(truth, errors, of, op, oxy)
    else:
        rots, _, of, op, oxy = photo_scene(seed=7)
        keep = np.flatnonzero(np.random.default_rng(0).random(len(of)) < 0.2)
        sel = np.isin(op, np.unique(op[keep]))
        _, ids = np.unique(op[sel], return_inverse=True)
        _, _, bundle = photo_bundle(rots, of[sel], ids, oxy[sel])
    bundle.loss_scale = 1e9  # least squares: every weight 1
    r, jc, jp = bundle.residuals(True)
    dc, dp = bundle._step(r, jc, jp, 0.0)
    n, P, b = len(r), bundle.n_params, bundle.points.b
    npnt = len(bundle.points.dirs)
    J = np.zeros((2 * n, P + npnt * b))
    rows = np.arange(n)
    for a in range(2):
        for q in range(bundle.k):
            J[2 * rows + a, bundle.index[bundle.f][:, q]] += jc[:, a, q]
        for q in range(b):
            J[2 * rows + a, P + bundle.p * b + q] = jp[:, a, q]
    H = J.T @ J
    g = J.T @ r.ravel()
    for i, cam in enumerate(bundle.cams):
        pr, pj = cam.prior()
        idx = bundle.index[i]
        H[np.ix_(idx, idx)] += pj.T @ pj
        g[idx] += pj.T @ pr
    for lens, idx in zip(bundle.lenses, bundle.lens_index):
        pr, pj = lens.prior()
        H[np.ix_(idx, idx)] += pj.T @ pj
        g[idx] += pj.T @ pr
    pr = bundle.points.prior()
    if pr is not None:
        k = P + np.arange(npnt) * b + 2
        H[k, k] += pr[1] ** 2
        g[k] += pr[1] * pr[0]
    H[np.diag_indices_from(H)] += 1e-12
    dense = np.linalg.solve(H, -g)
    assert np.allclose(dc, dense[:P], rtol=1e-6, atol=1e-9 * np.abs(dense[:P]).max())
    assert np.allclose(dp.ravel(), dense[P:], rtol=1e-6, atol=1e-9 * np.abs(dense[P:]).max())


def test_triangulate_far_and_near():
    origins = np.array([[0, 0, 0], [0.3, 0, 0], [0, 0, 0], [0.3, 0, 0.0]])
    target = np.array([0.1, 0.0, 5.0])
    d_near = target - origins[:2]
    d_near /= np.linalg.norm(d_near, axis=1, keepdims=True)
    d_far = np.array([[0, 0, 1.0], [0, 0, 1.0]])
    dirs, rho = triangulate(origins, np.vstack([d_near, d_far]), np.array([0, 0, 1, 1]), 2, np.zeros(3))
    assert abs(1 / rho[0] - np.linalg.norm(target)) < 1e-6
    assert rho[1] < 0.01


def test_build_tracks_joins_chains_and_drops_conflicts():
    # frame 0 kp 1 - frame 1 kp 2 - frame 2 kp 0: one track of three.
    # frame 0 kp 3 - frame 1 kp 4 and frame 0 kp 5 - frame 1 kp 4: kp 4 would tie two keypoints of frame 0.
    pm = [(0, 1, np.array([1, 3, 5]), np.array([2, 4, 4])), (1, 2, np.array([2]), np.array([0]))]
    f, k, p = build_tracks([0, 1, 2], [6, 6, 6], pm)
    assert sorted(zip(f.tolist(), k.tolist())) == [(0, 1), (1, 2), (2, 0)]
    assert len(set(p.tolist())) == 1


def test_rotation_ransac_with_parallax_and_outliers():
    rng = np.random.default_rng(0)
    n = 300
    d = azel_to_vector(rng.uniform(-20, 20, n), rng.uniform(-30, 10, n))
    depth = rng.uniform(2, 100, n)
    ca, cb = np.zeros(3), np.array([0.0, 0.2, 0.0])
    rot = rotvec_to_matrix(np.radians([0.3, -0.5, 0.8]))
    X = ca + d * depth[:, None]
    db = (X - cb) @ rot.T
    db /= np.linalg.norm(db, axis=1, keepdims=True)
    outl = rng.choice(n, 60, replace=False)
    db[outl] = azel_to_vector(rng.uniform(-20, 20, 60), rng.uniform(-30, 10, 60))
    mask, est = verify_rotation(d, db, rot @ (ca - cb), 0.2 / 1.0, 1e-3, np.radians(5), 300,
                                np.random.default_rng(1))
    good = np.setdiff1d(np.arange(n), outl)
    assert mask[good].mean() > 0.95
    assert mask[outl].mean() < 0.1
    assert np.degrees(np.linalg.norm(matrix_to_rotvec(est @ rot.T))) < 0.05


def test_rotation_ransac_stops_once_confident(monkeypatch):
    """With 90 % inliers the first chunk of hypotheses holds an all-inlier sample at far more than
    0.999 confidence: the other chunks are not scored. With 30 % it takes them all."""
    from mosaic.pipeline.stages import matches

    assert matches._enough(0.9, 3, 32) and not matches._enough(0.3, 3, 32) and matches._enough(1.0, 3, 1)
    rng = np.random.default_rng(2)
    n = 200
    d = azel_to_vector(rng.uniform(-20, 20, n), rng.uniform(-20, 20, n))
    rot = rotvec_to_matrix(np.radians([0.2, 0.4, -0.3]))
    scored = []
    real = matches.rotation_residuals
    monkeypatch.setattr(matches, "rotation_residuals",
                        lambda r, *a: scored.append(np.ndim(r) == 3) or real(r, *a))
    for share in (0.9, 0.3):
        db = d @ rot.T
        outl = rng.choice(n, int(n * (1 - share)), replace=False)
        db[outl] = azel_to_vector(rng.uniform(-20, 20, len(outl)), rng.uniform(-20, 20, len(outl)))
        chunks = []
        for enough in (matches._enough, lambda *a: False):  # the second: every chunk is scored
            monkeypatch.setattr(matches, "_enough", enough)
            scored.clear()
            mask, est = verify_rotation(d, db, np.zeros(3), 0.0, 1e-3, np.radians(5), 500, np.random.default_rng(3))
            assert mask[np.setdiff1d(np.arange(n), outl)].all() and not mask[outl].any()
            chunks.append(sum(scored))
        assert chunks[1] > 1 and chunks[0] == (1 if share == 0.9 else chunks[1]), chunks


def test_ratio_match_guided_and_unguided():
    rng = np.random.default_rng(0)
    da = rng.normal(size=(200, 128)).astype(np.float32)
    perm = rng.permutation(200)
    db = da[perm] + rng.normal(0, 0.05, (200, 128)).astype(np.float32)
    ia, ib = ratio_match(da, db, 0.8)
    assert len(ia) == 200 and np.all(perm[ib] == ia)
    # Guided: only the true partner and one decoy are candidates.
    decoy = (np.arange(200) + 1) % 200
    inv = np.argsort(perm)
    ca = np.repeat(np.arange(200), 2)
    cb = np.stack([inv, inv[decoy]], 1).ravel()
    ia, ib = ratio_match(da, db, 0.8, ca, cb)
    assert len(ia) == 200 and np.all(perm[ib] == ia)


def _best_two_by_lexsort(rows, dist, n):
    """The reference: a lexsort on (dist, rows); ties go to the earlier candidate."""
    order = np.lexsort((dist, rows))
    r, d = rows[order], dist[order]
    best_pos, best_d, second_d = np.full(n, -1), np.full(n, np.inf), np.full(n, np.inf)
    for k in range(len(r)):
        if k == 0 or r[k] != r[k - 1]:
            best_pos[r[k]], best_d[r[k]] = order[k], d[k]
        elif k == 1 or r[k - 2] != r[k]:
            second_d[r[k]] = d[k]
    return best_pos, best_d, second_d


@pytest.mark.parametrize("sorted_rows", [True, False])
def test_best_two_is_the_lexsort_reference(sorted_rows):
    rng = np.random.default_rng(1)
    rows = rng.integers(0, 40, 600)
    rows = np.sort(rows) if sorted_rows else rows
    dist = rng.integers(0, 6, 600).astype(np.float32)  # many ties, within and across rows
    for got, want in zip(_best_two(rows, dist, 50), _best_two_by_lexsort(rows, dist, 50)):
        np.testing.assert_array_equal(got, want)
    empty = _best_two(np.zeros(0, int), np.zeros(0, np.float32), 3)
    assert empty[0].tolist() == [-1] * 3 and np.isinf(empty[1]).all()


def test_segment_candidates_exact():
    rng = np.random.default_rng(0)
    pts = rng.uniform(0, 100, (500, 2))
    p0 = np.array([[10.0, 10.0], [50.0, 50.0]])
    p1 = np.array([[60.0, 20.0], [50.0, 50.0]])
    ci, cj = _segment_candidates(p0, p1, pts, 5.0)
    for i in range(2):
        seg = p1[i] - p0[i]
        t = np.clip(((pts - p0[i]) @ seg) / max(seg @ seg, 1e-12), 0, 1)
        dist = np.linalg.norm(pts - (p0[i] + t[:, None] * seg), axis=1)
        assert sorted(cj[ci == i].tolist()) == np.flatnonzero(dist <= 5.0).tolist()
    # Each pair once, in (i, j) order: guided matching groups the candidates by i without a sort.
    key = ci * len(pts) + cj
    assert np.all(np.diff(key) > 0)


def test_focals_from_homography():
    k = np.diag([800.0, 800.0, 1.0])
    h = k @ rotvec_to_matrix([0.05, 0.3, 0.02]) @ np.linalg.inv(k)
    f0, f1 = focals_from_homography(h)
    assert abs(f0 - 800) < 1e-6 and abs(f1 - 800) < 1e-6


def test_sift_keypoints_are_centred():
    """OpenCV's SIFT reports blobs +0.25 px off; the feature stage's correction removes it."""
    import cv2

    from mosaic.pipeline.stages import features

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:400, 0:400].astype(float)
    pts = rng.uniform(20, 380, (60, 2))
    img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.5**2)) for x, y in pts)
    img = (img / img.max() * 200 + 20).astype(np.uint8)
    kp = features._detector("sift", 1000).detect(img, None)
    raw = np.array([k.pt for k in kp])
    corrected = features.keypoint_centres(raw, "sift")
    d = np.linalg.norm(corrected[:, None] - pts[None], axis=2)
    near = d.min(1) < 1.5
    off = corrected[near] - pts[d.argmin(1)[near]]
    assert np.all(np.abs(off.mean(0)) < 0.05), off.mean(0)
    assert cv2.__version__


def test_config_rejects_unknown_and_bad_values(tmp_path):
    with pytest.raises(InputError, match="unknown stitch option"):
        StitchConfig.from_mapping({"hfvo": 40})
    with pytest.raises(InputError, match="feature"):
        StitchConfig(feature="surf")
    with pytest.raises(InputError, match="hfov"):
        StitchConfig(hfov=200)
    p = tmp_path / "c.toml"
    p.write_text("[stitch]\nhfov = 48.0\nfeature = 'orb'\n")
    c = StitchConfig.from_toml(p, feature="akaze")
    assert c.hfov == 48.0 and c.feature == "akaze"
    p.write_text("hfov = [")
    with pytest.raises(InputError, match="c.toml"):
        StitchConfig.from_toml(p)


def test_solution_roundtrip(tmp_path):
    m = mast_camera(10, -5)
    rec = {"id": "a", "image": "a.png", "width": W, "height": H}
    frames = [solution_io.frame_entry(rec, m, True, 0.2, 100),
              solution_io.frame_entry(dict(rec, id="b"), None, False, reason="no verified matches")]
    solution_io.write(tmp_path / "solution.json", frames, {"rms_px": 0.2, "tie_points": 50, "pairs": 1})
    raw = json.loads((tmp_path / "solution.json").read_text())
    assert raw["frames"][0]["frame"] == "LOCAL_LEVEL" and raw["frames"][1]["reason"]
    back = solution_io.read(tmp_path)
    assert back["frames"][0]["model"] == m and back["frames"][1]["model"] is None
    with pytest.raises(InputError):
        solution_io.read(tmp_path / "missing.json")


def test_refine_matches_recovers_subpixel_positions():
    """Coarse matches (1.5 px noise) between two views related by a homography with roll and
    zoom come back to well under a delivered pixel from half-size patches; matches between
    unrelated patches are refused."""
    import cv2

    from mosaic.pipeline.stages.features import PATCH_RADIUS, sample_patches
    from mosaic.pipeline.stages.matches import refine_matches

    rng = np.random.default_rng(3)
    size = 1200
    img_a = cv2.GaussianBlur(rng.uniform(0, 255, (size, size)).astype(np.float32), (0, 0), 3.0)
    img_a = cv2.normalize(img_a, None, 0, 255, cv2.NORM_MINMAX)
    ang, zoom = np.radians(3.0), 1.05
    hmat = np.array([[zoom * np.cos(ang), -zoom * np.sin(ang), 12.3],
                     [zoom * np.sin(ang), zoom * np.cos(ang), -7.6], [2e-6, 1e-6, 1.0]])
    img_b = cv2.warpPerspective(img_a, hmat, (size, size), flags=cv2.INTER_CUBIC)
    half = [cv2.resize(i, (size // 2, size // 2), interpolation=cv2.INTER_AREA).astype(np.uint8) for i in (img_a, img_b)]
    xa = rng.uniform(150, 950, (400, 2))
    p = np.c_[xa, np.ones(len(xa))] @ hmat.T
    truth = p[:, :2] / p[:, 2:]
    coarse = truth + rng.normal(0, 1.5, truth.shape)
    s = np.array([0.5, 0.5])
    pa = sample_patches(half[0], (xa + 0.5) * s - 0.5, PATCH_RADIUS)
    pb = sample_patches(half[1], (coarse + 0.5) * s - 0.5, PATCH_RADIUS)
    fine, ok = refine_matches(pa, pb, s, s, xa, coarse, hmat)
    err = np.linalg.norm(fine - truth, axis=1)[ok]
    assert ok.mean() > 0.8
    assert np.median(np.linalg.norm(coarse - truth, axis=1)) > 1.0
    assert np.median(err) < 0.1 and np.percentile(err, 95) < 0.3, (np.median(err), np.percentile(err, 95))
    _, ok_wrong = refine_matches(pa, pb[::-1], s, s, xa, coarse[::-1], hmat)
    assert ok_wrong.mean() < 0.05
