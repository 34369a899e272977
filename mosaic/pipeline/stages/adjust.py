"""Adjust: tie points from the verified matches, a bundle adjustment, and ``adjust/solution.json``.

Frames with camera models (Mars frames): a pointing correction per frame about its pivot, tie
points as direction + inverse depth (parallax modelled), a prior of ``prior_deg`` on each frame's
reported pointing (it fixes the gauge: groups of frames that share no tie point each keep their
reported pointing on average, and so their reported relative pointing).

Plain photos: a rotation per photo, focal length and k1 per photo (or per camera with
``shared_lens``), tie points as directions; with refined matches, one tie point per match. The focal length
starts from ``--hfov``/EXIF, else from the pairwise homographies (OpenCV's focalsFromHomography,
median over pairs); rotations start from a maximum spanning tree of the homographies. The largest
connected group is solved; a photo outside it is reported with ``"used": false``.

Outliers: after each solve, observations beyond ``outlier_px`` (working-resolution pixels) are
removed and the problem is solved again, until none is removed (at most 4 rounds).
"""

from __future__ import annotations

import numpy as np

from calib.errors import InputError
from calib.models import model_from_dict
from calib.rotation import matrix_to_rotvec
from mosaic.formats import solution as solution_io
from mosaic.formats.workspace import Workspace, digest
from mosaic.pipeline.stages import code_key, upstream_key
from mosaic.pipeline.stages import features as features_stage
from mosaic.pipeline.stages import matches as matches_stage
from mosaic.pipeline.stages.bundle import Bundle, Lens, PhotoCamera, Points, PosedCamera, triangulate
from mosaic.runtime import progress

CONFIG_FIELDS = ("shared_lens", "prior_deg", "loss", "loss_px", "outlier_px", "max_iterations")
OUTLIER_ROUNDS = 4
#: A frame needs this many tie-point observations to be adjusted.
MIN_OBSERVATIONS = 6
#: Convergence (cost drop in sigma units squared) of the photos' solves that only find the
#: outliers, and of their final solve: the outlier rounds need not converge tightly (boat: 97 -> 39
#: iterations), and a drop of 0.1 is a step of ~0.3 sigma.
ROUGH_CHI2, FINE_CHI2 = 1.0, 0.1
#: Relative convergence of the solves that only find the outliers (the final one: 1e-6). Rover
#: pans crept 0.002 an iteration there (syn1: 26 -> 18 iterations, the same solution).
ROUGH_TOL = 1e-4


def components(n: int, a, b) -> np.ndarray:
    """Connected components of the undirected graph on nodes 0..n-1 with edges (a[k], b[k]):
    each node's label, numbered 0, 1, ... in the order of their smallest nodes. Labels spread
    along the edges as minima, with pointer jumping, in O(log of the largest path) rounds
    (scipy.sparse.csgraph did this for a 0.14 s import)."""
    a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
    label = np.arange(n)
    while True:
        low = np.minimum(label[a], label[b])
        new = label.copy()
        np.minimum.at(new, a, low)
        np.minimum.at(new, b, low)
        new = new[new]  # jump: a node takes its label's label
        if np.array_equal(new, label):
            break
        label = new
    return np.unique(label, return_inverse=True)[1]


def build_tracks(frame_ids, n_keypoints, pair_matches):
    """Tracks from pairwise matches: connected components of the keypoint graph.

    ``pair_matches`` is [(frame index a, frame index b, ia, ib)]. A component holding two
    keypoints of one frame is ambiguous and dropped. Returns (obs_frame, obs_kp, obs_point).
    """
    offsets = np.concatenate([[0], np.cumsum(n_keypoints)])
    ea, eb = [], []
    for a, b, ia, ib in pair_matches:
        ea.append(offsets[a] + ia)
        eb.append(offsets[b] + ib)
    if not ea:
        z = np.zeros(0, int)
        return z, z, z
    ea, eb = np.concatenate(ea), np.concatenate(eb)
    label = components(int(offsets[-1]), ea, eb)
    nodes = np.unique(np.concatenate([ea, eb]))
    frame = np.searchsorted(offsets, nodes, side="right") - 1
    comp = label[nodes]
    # Drop components with two keypoints in one frame.
    key = comp.astype(np.int64) * (len(frame_ids) + 1) + frame
    uniq, counts = np.unique(key, return_counts=True)
    bad_comp = np.unique(uniq[counts > 1] // (len(frame_ids) + 1))
    keep = ~np.isin(comp, bad_comp)
    nodes, frame, comp = nodes[keep], frame[keep], comp[keep]
    _, point = np.unique(comp, return_inverse=True)
    return frame, nodes - offsets[frame], point


def _rms(r):
    return float(np.sqrt(np.mean(np.sum(r * r, axis=1)))) if len(r) else float("nan")


def _solve_robust(bundle: Bundle, config, rough_chi2=0.0, fine_chi2=0.0) -> dict:
    """Solve, remove outliers, solve again until none; then a final solve to ``fine_chi2``.
    The chi-square stopping rules are for photos, whose focal lengths make GN creep; a Mars pan's
    gauge is held only by the pointing priors, a direction too weak for them (a 0.03 degree shift
    of a MER group costs 0.001), so it converges on the relative rule."""
    info = bundle.solve(config.max_iterations, tol=ROUGH_TOL, chi2_tol=rough_chi2)
    removed = 0
    for _ in range(OUTLIER_ROUNDS):
        k = bundle.remove_outliers(config.outlier_px)
        removed += k
        if k == 0:
            break
        info = bundle.solve(config.max_iterations, tol=ROUGH_TOL, chi2_tol=rough_chi2)
    info = bundle.solve(config.max_iterations, chi2_tol=fine_chi2)
    return {"cost": info["cost"], "iterations": bundle.iterations, "outliers_removed": removed}


def _largest_group(n, edges):
    if not edges:
        return np.arange(n) == 0 if n else np.zeros(0, bool)
    a = np.array([e[0] for e in edges])
    b = np.array([e[1] for e in edges])
    label = components(n, a, b)
    counts = np.bincount(label)
    # Largest group; among equals, the one holding the first frame (deterministic).
    best = min(range(len(counts)), key=lambda c: (-counts[c], int(np.flatnonzero(label == c)[0])))
    return label == best


def focals_from_homography(h):
    """(f0, f1) or None each: the focal lengths of the two views that a homography between
    centred pixel coordinates implies for a rotating camera (Szeliski and Shum 1997; the formulas
    of OpenCV's ``detail::focalsFromHomography``)."""
    h = np.asarray(h, float).ravel()

    def pick(d1, d2, v1, v2):
        v1, v2 = max(v1, v2), min(v1, v2)
        if v1 > 0 and v2 > 0:
            return float(np.sqrt(v1 if abs(d1) > abs(d2) else v2))
        return float(np.sqrt(v1)) if v1 > 0 else None

    with np.errstate(divide="ignore", invalid="ignore"):
        d1, d2 = h[6] * h[7], (h[7] - h[6]) * (h[7] + h[6])
        f1 = pick(d1, d2, -(h[0] * h[1] + h[3] * h[4]) / d1,
                  (h[0] ** 2 + h[3] ** 2 - h[1] ** 2 - h[4] ** 2) / d2)
        d1, d2 = h[0] * h[3] + h[1] * h[4], h[0] ** 2 + h[1] ** 2 - h[3] ** 2 - h[4] ** 2
        f0 = pick(d1, d2, -h[2] * h[5] / d1, (h[5] ** 2 - h[2] ** 2) / d2)
    return (f0 if f0 and np.isfinite(f0) else None), (f1 if f1 and np.isfinite(f1) else None)


def _photo_focals(recs, homographies, idx):
    """Initial focal length per photo: hfov when known, else the median homography estimate."""
    est = []
    for a, b, h in homographies:
        if not (idx[a] and idx[b]):
            continue
        ta = np.array([[1, 0, (recs[a]["width"] - 1) / 2], [0, 1, (recs[a]["height"] - 1) / 2], [0, 0, 1.0]])
        tb = np.array([[1, 0, (recs[b]["width"] - 1) / 2], [0, 1, (recs[b]["height"] - 1) / 2], [0, 0, 1.0]])
        hc = np.linalg.inv(tb) @ h @ ta
        f0, f1 = focals_from_homography(hc / hc[2, 2])
        if f0 and f1:
            est.append(np.sqrt(f0 * f1))
    fallback = float(np.median(est)) if est else None
    out = []
    for r in recs:
        if r.get("hfov"):
            out.append((r["width"] / 2.0) / np.tan(np.radians(r["hfov"]) / 2))
        elif fallback is not None:
            out.append(fallback)
        else:
            out.append(float(r["width"] + r["height"]))  # OpenCV's last resort
    return np.array(out), len(est)


#: A level camera looking north: image x east, image y down (columns: camera axes in LOCAL_LEVEL).
NORTH_LEVEL = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])


def _orthonormal(m):
    m = m / np.cbrt(np.linalg.det(m))
    u, _, vt = np.linalg.svd(m)
    r = u @ vt
    return r if np.linalg.det(r) > 0 else -r


def _photo_rotations(recs, focals, homographies, group, inliers):
    """Initial camera rotations from a maximum spanning tree of the pairwise homographies."""
    n = len(recs)
    ks = [np.array([[f, 0, (r["width"] - 1) / 2], [0, f, (r["height"] - 1) / 2], [0, 0, 1.0]])
          for f, r in zip(focals, recs)]
    rel = {}
    for (a, b, h), w in zip(homographies, inliers):
        if group[a] and group[b]:
            r_ab = _orthonormal(np.linalg.inv(ks[b]) @ h @ ks[a])
            rel[(a, b)] = (w, r_ab)
    members = np.flatnonzero(group)
    degree = {m: sum(w for (a, b), (w, _) in rel.items() if m in (a, b)) for m in members}
    root = min(members, key=lambda m: (-degree[m], m))
    rots = {root: NORTH_LEVEL.copy()}
    # Prim's algorithm on inlier counts: strongest links first, deterministic tie-breaks.
    while len(rots) < len(members):
        best = None
        for (a, b), (w, r_ab) in rel.items():
            if (a in rots) != (b in rots):
                cand = (-w, min(a, b), max(a, b))
                if best is None or cand < best[0]:
                    best = (cand, a, b, r_ab)
        if best is None:
            break
        _, a, b, r_ab = best
        if a in rots:
            rots[b] = rots[a] @ r_ab.T
        else:
            rots[a] = rots[b] @ r_ab
    return [rots.get(i) for i in range(n)], root


def run(ws: Workspace, config, client=None) -> dict:
    key = digest("adjust", code_key(__name__), code_key("mosaic.pipeline.stages.bundle"), upstream_key(ws, "matches"),
                 config.key_of(*CONFIG_FIELDS))
    if ws.stage_done("adjust", key):
        return ws.stage_report("adjust")
    recs = ws.read_json("ingest", "frames.json")["frames"]
    summary = ws.read_json("matches", "summary.json")["pairs"]
    index = {r["id"]: i for i, r in enumerate(recs)}
    feats = [features_stage.load(ws, r["id"]) for r in recs]
    n_kp = [len(f["xy"]) for f in feats]
    scale = np.array([float(f["scale"][0]) if len(f["scale"]) else 1.0 for f in feats])
    verified = [s for s in summary if s["inliers"] > 0]
    pair_matches, homographies, h_inliers = [], [], []
    for s in verified:
        m = matches_stage.load(ws, s["a"], s["b"])
        a, b = index[s["a"]], index[s["b"]]
        pair_matches.append((a, b, m["ia"].astype(int), m["ib"].astype(int)) + ((m["xb"],) if "xb" in m else ()))
        if "homography" in m:
            homographies.append((a, b, m["homography"]))
            h_inliers.append(len(m["ia"]))
    if pair_matches and all(len(pm) == 5 for pm in pair_matches):
        # Refined matches are as precise as the patches they were refined on.
        scale = np.array([float(f["patch_scale"][0]) if "patch_scale" in f else s for f, s in zip(feats, scale)])
    tried = {i: 0 for i in range(len(recs))}
    for s in summary:
        tried[index[s["a"]]] += 1
        tried[index[s["b"]]] += 1

    with progress.stage("adjust", 1) as bar:
        posed = np.array([r["model"] is not None for r in recs])
        if posed.all():
            entries, stats = _adjust_posed(recs, feats, scale, pair_matches, tried, config)
        elif not posed.any():
            entries, stats = _adjust_photos(recs, feats, scale, pair_matches, homographies, h_inliers, tried, config)
        else:
            raise InputError(recs[int(np.argmin(posed))]["path"],
                             "plain photos (no camera model) cannot be stitched together with rover frames")
        bar.advance()
    stats["pairs"] = len(verified)
    stats["pairs_tried"] = len(summary)
    solution_io.write(ws.path("adjust", "solution.json"), entries, stats)
    report = {k: stats[k] for k in ("frames", "frames_used", "pairs", "tie_points", "observations", "rms_px",
                                    "iterations", "outliers_removed")}
    ws.mark_done("adjust", key, report)
    return report


def _observations(feats, pair_matches, n_frames):
    """Observations (frame, point, xy) of the tie points: tracks of keypoints; or, where every pair
    carries refined positions (photos: ``xb``, the position in b of a's keypoint), one point per
    match, seen at a's keypoint and at its refined position in b (a keypoint of b matched in two
    pairs has two refined positions, one per partner, so keypoints no longer make tracks)."""
    if pair_matches and all(len(pm) == 5 for pm in pair_matches):
        fs, xys = [], []
        for a, b, ia, ib, xb in pair_matches:
            fs.append(np.repeat([[a, b]], len(ia), axis=0))
            xys.append(np.stack([feats[a]["xy"][ia], xb], axis=1))
        f = np.concatenate(fs).ravel()
        xy = np.concatenate(xys).reshape(-1, 2)
        return f, np.repeat(np.arange(len(f) // 2), 2), xy
    pair_matches = [pm[:4] for pm in pair_matches]
    obs_f, obs_k, obs_p = build_tracks(list(range(n_frames)), [len(f["xy"]) for f in feats], pair_matches)
    xy = np.zeros((len(obs_f), 2))
    for f, m in enumerate(by_frame(obs_f, n_frames)):
        xy[m] = feats[f]["xy"][obs_k[m]]
    return obs_f, obs_p, xy


def by_frame(frame_of, n: int) -> list[np.ndarray]:
    """Indices of the observations of each frame 0..n-1, from one sort: a mask per frame would
    scan every observation once per frame, O(frames x observations)."""
    order = np.argsort(frame_of, kind="stable")
    bounds = np.searchsorted(np.asarray(frame_of)[order], np.arange(n + 1))
    return [order[bounds[k]:bounds[k + 1]] for k in range(n)]


def observation_sigma(scale):
    """Pixel uncertainty (as delivered) of keypoints found at working ``scale``: a keypoint is
    good to a fraction of its working-resolution pixel. (Weighting by keypoint size as well was
    tried on synthetic pans and changed nothing measurable.)"""
    return 1.0 / scale


def _unused_reason(tried, n_obs):
    if tried == 0:
        return "no predicted overlap with any other frame"
    if n_obs == 0:
        return f"no verified matches with any other frame ({tried} pair(s) tried)"
    return f"too few tie points ({n_obs} observations)"


def _finish(recs, bundle, cam_of, frame_scale, models_out, reasons, extra=None):
    r = bundle.residuals()[0] * bundle.sigma[:, None]
    entries, rms_all = [], []
    kept = np.flatnonzero(bundle.keep)
    of_cam = by_frame(bundle.f[kept], len(bundle.cams))
    for i, rec in enumerate(recs):
        ci = cam_of.get(i)
        if ci is None:
            entries.append(solution_io.frame_entry(rec, models_out[i], False, reason=reasons[i]))
            continue
        m = kept[of_cam[ci]]
        if len(m) < MIN_OBSERVATIONS:
            entries.append(solution_io.frame_entry(rec, models_out[i], False, n=len(m),
                                                   reason="tie points rejected as outliers"))
            continue
        rms_all.append(r[m])
        entries.append(solution_io.frame_entry(rec, bundle.cams[ci].model(), True, _rms(r[m]), len(m),
                                               **(extra(ci) if extra else {})))
    allr = np.concatenate(rms_all) if rms_all else np.zeros((0, 2))
    kept_points = np.unique(bundle.p[bundle.keep])
    stats = {"frames": len(recs), "frames_used": sum(e["used"] for e in entries), "rms_px": round(_rms(allr), 6)
             if len(allr) else None, "tie_points": int(len(kept_points)), "observations": int(bundle.keep.sum())}
    return entries, stats


def _adjust_posed(recs, feats, scale, pair_matches, tried, config):
    n = len(recs)
    models = [model_from_dict(r["model"]) for r in recs]
    obs_f, obs_p, xy = _observations(feats, pair_matches, n)
    counts = np.bincount(obs_f, minlength=n)
    solved = [i for i in range(n) if counts[i] >= MIN_OBSERVATIONS]
    cam_of = {i: k for k, i in enumerate(solved)}
    reasons = {i: _unused_reason(tried[i], int(counts[i])) for i in range(n)}
    keep = np.isin(obs_f, solved)
    obs_f, obs_p, xy = obs_f[keep], obs_p[keep], xy[keep]
    _, obs_p = np.unique(obs_p, return_inverse=True)
    cams = [PosedCamera(models[i], recs[i]["pivot"], np.radians(config.prior_deg)) for i in solved]
    fidx = np.array([cam_of[f] for f in obs_f], dtype=int)
    if len(cams) == 0 or len(obs_p) == 0:
        entries = [solution_io.frame_entry(r, models[i], False, reason=reasons[i]) for i, r in enumerate(recs)]
        return entries, {"frames": n, "frames_used": 0, "rms_px": None, "tie_points": 0, "observations": 0,
                         "iterations": 0, "outliers_removed": 0}
    origins, dirs = np.zeros((len(xy), 3)), np.zeros((len(xy), 3))
    for cam, m in zip(cams, by_frame(fidx, len(cams))):
        origins[m], dirs[m] = cam.model().backproject(xy[m])
    good = np.isfinite(dirs).all(1)
    origin = np.mean([np.asarray(recs[i]["pivot"]) for i in solved], axis=0)
    npts = int(obs_p.max()) + 1
    pdirs, rho = triangulate(origins[good], dirs[good], obs_p[good], npts, origin)
    bundle = Bundle(cams, Points(pdirs, rho, origin=origin), fidx[good], obs_p[good], xy[good],
                    observation_sigma(scale[obs_f[good]]), config.loss, config.loss_px)
    info = _solve_robust(bundle, config)

    def extra(ci):
        return {"correction_deg": round(float(np.degrees(np.linalg.norm(matrix_to_rotvec(cams[ci].rot)))), 6)}

    entries, stats = _finish(recs, bundle, cam_of, scale, models, reasons, extra)
    stats.update(iterations=info["iterations"], outliers_removed=info["outliers_removed"], mode="posed")
    return entries, stats


def _adjust_photos(recs, feats, scale, pair_matches, homographies, h_inliers, tried, config):
    n = len(recs)
    group = _largest_group(n, [(a, b) for a, b, _ in homographies])
    focals, n_est = _photo_focals(recs, homographies, group)
    rots, root = _photo_rotations(recs, focals, homographies, group, h_inliers)
    solved = [i for i in range(n) if group[i] and rots[i] is not None]
    obs_f, obs_p, xy = _observations(feats, [pm for pm in pair_matches if group[pm[0]] and group[pm[1]]], n)
    counts = np.bincount(obs_f, minlength=n)
    solved = [i for i in solved if counts[i] >= MIN_OBSERVATIONS]
    reasons = {}
    for i in range(n):
        if group[i] or counts[i] == 0:
            reasons[i] = _unused_reason(tried[i], int(counts[i]))
        else:
            reasons[i] = "not connected to the largest group of matched photos"
    cam_of = {i: k for k, i in enumerate(solved)}
    keep = np.isin(obs_f, solved)
    obs_f, obs_p, xy = obs_f[keep], obs_p[keep], xy[keep]
    if len(solved) < 2 or len(obs_p) == 0:
        entries = [solution_io.frame_entry(r, None, False, reason=reasons[i]) for i, r in enumerate(recs)]
        return entries, {"frames": n, "frames_used": 0, "rms_px": None, "tie_points": 0, "observations": 0,
                         "iterations": 0, "outliers_removed": 0, "mode": "photos"}
    _, obs_p = np.unique(obs_p, return_inverse=True)
    # A lens per photo (handheld sets also move a little between shots, and a focal length per
    # photo absorbs part of that: boat 0.78 px RMS, 1.17 px with one shared lens); with
    # ``shared_lens``, photos of (nearly: sets are often cropped by a pixel or two) one size share
    # focal length and k1. The root photo's rotation is held (the gauge).
    groups = []
    for i in solved:
        w, h = recs[i]["width"], recs[i]["height"]
        for g in groups if config.shared_lens else ():
            if abs(w - g["w"]) <= 0.01 * g["w"] and abs(h - g["h"]) <= 0.01 * g["h"]:
                g["members"].append(i)
                break
        else:
            groups.append({"w": w, "h": h, "members": [i]})
    lens_of = {}
    for g in groups:
        lens = Lens(float(np.median([focals[j] for j in g["members"]])))
        lens_of.update({j: lens for j in g["members"]})
    cams = [PhotoCamera(rots[i], lens_of[i], recs[i]["width"], recs[i]["height"],
                        rot_sigma=1e-6 if i == root else np.pi) for i in solved]
    fidx = np.array([cam_of[f] for f in obs_f], dtype=int)
    dirs = np.zeros((len(xy), 3))
    for cam, m in zip(cams, by_frame(fidx, len(cams))):
        dirs[m] = cam.model().backproject(xy[m])[1]
    npts = int(obs_p.max()) + 1
    pd = np.zeros((npts, 3))
    np.add.at(pd, obs_p, dirs)
    pd /= np.linalg.norm(pd, axis=1, keepdims=True)
    bundle = Bundle(cams, Points(pd, None), fidx, obs_p, xy, observation_sigma(scale[obs_f]),
                    config.loss, config.loss_px)
    info = _solve_robust(bundle, config, ROUGH_CHI2, FINE_CHI2)

    def extra(ci):
        c = cams[ci]
        hfov = float(np.degrees(2 * np.arctan(recs[solved[ci]]["width"] / 2 / c.focal)))
        return {"focal_px": round(c.focal, 4), "k1": round(c.k1, 6), "hfov_deg": round(hfov, 4)}

    entries, stats = _finish(recs, bundle, cam_of, scale, [None] * n, reasons, extra)
    stats.update(iterations=info["iterations"], outliers_removed=info["outliers_removed"], mode="photos",
                 focal_estimates=n_est, lenses=len(groups))
    return entries, stats
