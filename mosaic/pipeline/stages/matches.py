"""Matches: verified keypoint correspondences per pair, one dask task each, ``matches/<a>__<b>.npz``.

Frames with camera models are matched *guided*: each keypoint's partner is looked for only within
a radius of where the models predict it (pointing uncertainty plus the largest parallax the
baseline allows), with the ratio test among those candidates and a mutual-best check. That is
what ties the real Opportunity pan at ~22 % overlap, where unguided matching drowns in
look-alike sand. Verification is on calibrated rays, not pixels: a RANSAC rotation between the
two ray bundles, where a match may deviate from the rotation along its epipolar direction (by at
most the parallax a point at ``min_depth_m`` shows) and by ``ransac_px`` across it.

Plain photos (no model) are matched unguided and verified with a homography (exact for a
rotating pinhole camera); the homographies seed the focal-length estimate in the adjust stage.
Their keypoints come from a coarse working scale, so each inlier is refined on the keypoints'
patches (``refine_matches``) and verified again at that precision; the match file then holds
``xb``, the refined position in b of each match's keypoint in a.
"""

from __future__ import annotations

import io
import zlib

import numpy as np

from calib.models import model_from_dict
from mosaic.formats.workspace import Workspace, digest, resumable
from mosaic.pipeline.stages import code_key, upstream_key
from mosaic.runtime.atomic import write_bytes

CONFIG_FIELDS = ("ratio", "ransac_px", "ransac_iterations", "min_depth_m", "min_inliers", "seed", "margin_deg")
#: Distance used to predict where a keypoint's partner lies (the far field).
FAR_M = 1000.0


def pair_name(a: str, b: str) -> str:
    return f"{a}__{b}"


def pair_rng(seed: int, a: str, b: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(a.encode()), zlib.crc32(b.encode())])


def _pair_distances(da, db, ia, ib) -> np.ndarray:
    """Descriptor distances of the candidate pairs (ia[k], ib[k])."""
    if da.dtype == np.uint8:
        return np.unpackbits(da[ia] ^ db[ib], axis=1).sum(axis=1).astype(np.float32)
    diff = da[ia] - db[ib]
    return np.sqrt(np.einsum("ij,ij->i", diff, diff))


def _best_two(rows, dist, n):
    """Per row index: best candidate position, best and second-best distance (inf if none).

    Ties go to the earlier candidate. Grouped by a stable sort on the rows alone (none when they
    come sorted, as guided matching's do) and per-group minima: a lexsort on (dist, rows) took
    0.31 of navcam_360's 1.6 CPU-s of matching.
    """
    best_pos = np.full(n, -1)
    best_d = np.full(n, np.inf)
    second_d = np.full(n, np.inf)
    if len(rows) == 0:
        return best_pos, best_d, second_d
    order = None if np.all(rows[1:] >= rows[:-1]) else np.argsort(rows, kind="stable")
    r, d = (rows, dist) if order is None else (rows[order], dist[order])
    starts = np.flatnonzero(np.r_[True, r[1:] != r[:-1]])
    group = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, len(r)]))
    lowest = np.minimum.reduceat(d, starts)
    at_min = np.flatnonzero(d == lowest[group])
    first = at_min[np.r_[True, group[at_min][1:] != group[at_min][:-1]]]
    rest = d.copy()
    rest[first] = np.inf
    ids = r[starts]
    best_pos[ids] = first if order is None else order[first]
    best_d[ids] = lowest
    second_d[ids] = np.minimum.reduceat(rest, starts)
    return best_pos, best_d, second_d


def _l2_ratio_match(da, db, ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """All-pairs ratio test and mutual check for float descriptors from one BLAS product.

    |a - b|^2 = |a|^2 + |b|^2 - 2 a.b: a 3000 x 3000 SIFT pair takes 0.13 s of one core where
    cv2.BFMatcher's knnMatch + reverse match took 0.57 s, with the same matches. Mutual best is
    tested against the column minimum (np.min along axis 0 is vectorised, argmin is not).
    """
    a = np.ascontiguousarray(da, np.float32)
    b = np.ascontiguousarray(db, np.float32)
    d2 = a @ b.T
    d2 *= -2.0
    d2 += np.einsum("ij,ij->i", a, a)[:, None]
    d2 += np.einsum("ij,ij->i", b, b)[None, :]
    rows = np.arange(len(a))
    best = d2.argmin(axis=1)
    best_d2 = d2[rows, best]
    mutual = best_d2 <= d2.min(axis=0)[best]
    d2[rows, best] = np.inf
    ok = mutual & (np.maximum(best_d2, 0.0) < ratio * ratio * d2.min(axis=1))
    return rows[ok], best[ok]


def ratio_match(da, db, ratio: float, cand_a=None, cand_b=None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of mutual best matches passing the ratio test.

    Candidates are all pairs, or only (cand_a[k], cand_b[k]) for guided matching; the ratio test
    then compares a keypoint's best and second-best partner among its own candidates.
    """
    import cv2

    if len(da) < 2 or len(db) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    if cand_a is None and da.dtype != np.uint8:
        return _l2_ratio_match(da, db, ratio)
    if cand_a is None:
        bf = cv2.BFMatcher(cv2.NORM_HAMMING)
        knn = bf.knnMatch(da, db, k=2)
        back = bf.match(db, da)
        back_best = np.full(len(db), -1)
        back_best[[m.queryIdx for m in back]] = [m.trainIdx for m in back]
        ia, ib = [], []
        for ms in knn:
            if len(ms) == 2 and ms[0].distance < ratio * ms[1].distance and back_best[ms[0].trainIdx] == ms[0].queryIdx:
                ia.append(ms[0].queryIdx)
                ib.append(ms[0].trainIdx)
        return np.array(ia, int), np.array(ib, int)
    if len(cand_a) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    dist = _pair_distances(da, db, cand_a, cand_b)
    pos_a, best_a, second_a = _best_two(cand_a, dist, len(da))
    pos_b, _, _ = _best_two(cand_b, dist, len(db))
    ia = np.flatnonzero((pos_a >= 0) & (best_a < ratio * second_a))
    k = pos_a[ia]
    ib = cand_b[k]
    # Mutual: a's best in b must have a as its best among b's candidates.
    ok = pos_b[ib] == k
    return ia[ok], ib[ok]


def _segment_candidates(p0, p1, pts, width):
    """Pairs (i, j), sorted, with pts[j] within ``width`` of the segment p0[i]-p1[i].

    Each segment is covered by discs of radius ``1.12 width`` spaced at most ``width`` apart
    (a point within ``width`` of the segment is within sqrt(1 + 1/4) width of the nearest disc
    centre, or within ``width`` of an end); one sparse KD-tree join finds their neighbours (no
    Python loop over keypoints), and the exact distance to the segment filters them. The join's
    hits, not the tree, are the cost: radius 1.5 width gave 1.8x as many (navcam_360: 3.5 M hits
    for 1.0 M candidates over 25 pairs; 1.2 -> 0.7 s).
    """
    from scipy.spatial import cKDTree

    vec = p1 - p0
    length = np.linalg.norm(vec, axis=1)
    nseg = np.maximum(1, np.ceil(length / width).astype(int))
    owner = np.repeat(np.arange(len(p0)), nseg + 1)
    # Sample k of segment i at k / nseg[i] of its length.
    first = np.concatenate([[0], np.cumsum(nseg + 1)[:-1]])
    frac = (np.arange(len(owner)) - first[owner]) / nseg[owner]
    samples = p0[owner] + frac[:, None] * vec[owner]
    hits = cKDTree(samples).sparse_distance_matrix(cKDTree(pts), 1.12 * width, output_type="ndarray")
    # Neighbouring discs overlap: each pair once, in (i, j) order, before the exact test (the
    # hits hold each pair ~3 times; a plain sort beat np.unique's hashing 3x here).
    key = owner[hits["i"]].astype(np.int64) * len(pts) + hits["j"]
    key.sort()
    key = key[np.diff(key, prepend=-1) != 0]
    ci, cj = key // len(pts), key % len(pts)
    seg = vec[ci]
    L2 = np.maximum(np.einsum("ij,ij->i", vec, vec), 1e-12)[ci]
    t = np.clip(np.einsum("ij,ij->i", pts[cj] - p0[ci], seg) / L2, 0, 1)
    d = np.linalg.norm(pts[cj] - (p0[ci] + t[:, None] * seg), axis=1)
    keep = d <= width
    return ci[keep], cj[keep]


def _kabsch(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Rotations R (M,3,3) minimising sum |R p - q|^2 over the second axis of p, q (M,K,3)."""
    h = np.einsum("mki,mkj->mij", p, q)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.einsum("mij,mjk->mik", u, vt).transpose(0, 2, 1)))
    fix = np.ones((len(h), 3))
    fix[:, 2] = d
    return np.einsum("mji,mj,mkj->mik", vt, fix, u)


def rotation_residuals(rot, da, db, baseline, max_parallax, tol):
    """Inlier mask(s) of matches under rotation(s) ``rot`` (M,3,3) or (3,3): d_b ~ R d_a, up to
    ``tol`` (radians) across the epipolar direction and [-tol, max_parallax + tol] along it."""
    pred = da @ np.swapaxes(rot, -1, -2)  # R d_a; matmul is 5x faster than the einsum here
    e = db - pred
    t = baseline[None, :] - (db @ baseline)[:, None] * db
    tn = np.linalg.norm(t, axis=1)
    if max_parallax <= 0 or not np.all(tn > 1e-9):
        return np.linalg.norm(e, axis=-1) < tol
    t = t / tn[:, None]
    # A point at finite depth on a's ray is seen from b displaced from R d_a towards a's centre,
    # i.e. along +t (``baseline`` is C_a - C_b); only that side, and only so far, is parallax.
    along = np.einsum("...ni,ni->...n", e, t)
    across = np.linalg.norm(e - along[..., None] * t, axis=-1)
    return (across < tol) & (along > -tol) & (along < max_parallax + tol)


def _epipolar_rotations(da, db, baseline, idx_sets):
    """Small rotations R (M,3,3) with d_b on the epipolar plane of (baseline, R d_a), from the
    matches ``idx_sets`` (M,K): linear in the rotation vector w, since for R = I + [w]x the
    condition n . (R d_a) = 0, n = baseline x d_b, reads (d_a x n) . w = -n . d_a. Two
    Gauss-Newton passes relinearise about the first solution."""
    rot = np.broadcast_to(np.eye(3), (len(idx_sets), 3, 3)).copy()
    a0, b0 = da[idx_sets], db[idx_sets]
    nrm = np.cross(baseline[None, None, :], b0)
    nrm /= np.maximum(np.linalg.norm(nrm, axis=2, keepdims=True), 1e-15)
    for _ in range(2):
        a = np.einsum("mij,mkj->mki", rot, a0)
        jac = np.cross(a, nrm)
        res = -np.einsum("mki,mki->mk", nrm, a)
        jtj = np.einsum("mki,mkj->mij", jac, jac) + 1e-12 * np.eye(3)
        w = np.linalg.solve(jtj, np.einsum("mki,mk->mi", jac, res)[:, :, None])[:, :, 0]
        theta = np.linalg.norm(w, axis=1)
        k = np.zeros((len(w), 3, 3))
        k[:, 0, 1], k[:, 0, 2], k[:, 1, 2] = -w[:, 2], w[:, 1], -w[:, 0]
        k = k - k.transpose(0, 2, 1)
        th = np.maximum(theta, 1e-12)[:, None, None]
        step = np.eye(3) + np.sin(th) / th * k + (1 - np.cos(th)) / th**2 * (k @ k)
        rot = step @ rot
    return rot


#: RANSAC hypotheses scored at once.
_CHUNK = 32
#: RANSAC stops scoring once an all-inlier sample has been drawn with this confidence (as the
#: photos' cv2.findHomography calls do).
RANSAC_CONFIDENCE = 0.999


def _enough(inlier_share: float, sample: int, tried: int) -> bool:
    """Whether ``tried`` hypotheses from ``sample`` matches each include an all-inlier one with
    RANSAC_CONFIDENCE, were ``inlier_share`` of the matches inliers (the best count so far)."""
    p = inlier_share ** sample
    if p >= 1.0:
        return True
    return p > 0.0 and tried >= np.log(1.0 - RANSAC_CONFIDENCE) / np.log1p(-p)


def verify_rotation(da, db, baseline, max_parallax, tol, max_angle, iterations, rng):
    """RANSAC on a rotation between two ray bundles; returns (inlier mask, R).

    Without a baseline the rotation comes from 2 matches (Kabsch). With one, a point's image
    may slide along its epipolar line with depth, so a hypothesis comes from 3 matches through
    the epipolar constraint alone (which depth does not touch), and the refit uses every inlier.
    """
    n = len(da)
    if n < 3:
        return np.zeros(n, bool), np.eye(3)
    parallax = max_parallax > 0 and np.linalg.norm(baseline) > 1e-9
    k = 3 if parallax else 2

    def hypotheses():
        """The rotations of plausible size, in the order their samples are drawn, a block of
        _CHUNK samples at a time: the samples a confident stop leaves undrawn cost nothing."""
        for b0 in range(0, iterations, _CHUNK):
            idx = np.stack([rng.choice(n, k, replace=False) for _ in range(min(_CHUNK, iterations - b0))])
            rots = _epipolar_rotations(da, db, baseline, idx) if parallax else _kabsch(da[idx], db[idx])
            angle = np.arccos(np.clip((np.trace(rots, axis1=1, axis2=2) - 1) / 2, -1, 1))
            yield rots[np.isfinite(angle) & (angle <= max_angle)]

    rot, most, scored = None, -1, 0
    pending, blocks = np.zeros((0, 3, 3)), hypotheses()
    # Scored in chunks of hypotheses: the (chunk, n, 3) temporaries stay in cache (500 at once
    # streamed ~8 MB arrays through memory, 2x slower); the first best wins, as argmax. Where
    # most matches are inliers (navcam_360: 94 %), the first chunk already holds all-inlier
    # samples by the thousand to one, and the rest only cost time (0.26 of 1.2 CPU-s).
    while True:
        for block in blocks:
            pending = np.concatenate([pending, block])
            if len(pending) >= _CHUNK:
                break
        if len(pending) == 0:
            break
        chunk, pending = pending[:_CHUNK], pending[_CHUNK:]
        counts = rotation_residuals(chunk, da, db, baseline, max_parallax, tol).sum(axis=1)
        j = int(np.argmax(counts))
        if counts[j] > most:
            rot, most = chunk[j], int(counts[j])
        scored += len(chunk)
        if _enough(most / n, k, scored):
            break
    if rot is None:
        return np.zeros(n, bool), np.eye(3)
    mask = rotation_residuals(rot, da, db, baseline, max_parallax, tol)
    for _ in range(2):
        if mask.sum() < 3:
            break
        sel = np.flatnonzero(mask)[None]
        rot = (_epipolar_rotations(da, db, baseline, sel) if parallax else _kabsch(da[sel], db[sel]))[0]
        mask = rotation_residuals(rot, da, db, baseline, max_parallax, tol)
    return mask, rot


#: Patch refinement: template half-size and search range (pixels at the patches' scale), and the
#: least normalised cross-correlation a refined match must reach.
TEMPLATE_RADIUS, SEARCH_RADIUS, MIN_NCC = 4, 3, 0.7
LK_STEPS, LK_CONVERGED, MIN_NCC_FINAL = 5, 0.02, 0.9


def _homography_jacobian(hmat, x):
    """(N,2,2) derivative of the homography's mapping at points x (N,2)."""
    p = np.c_[x, np.ones(len(x))]
    num = p @ hmat[:2].T
    w = p @ hmat[2]
    return (hmat[None, :2, :2] * w[:, None, None] - num[:, :, None] * hmat[None, None, 2, :2]) / (w * w)[:, None, None]


def _bilinear(patches, px, py):
    """Bilinear samples of (N,k,k) patches at (N,m,m) coordinates (inside the patches).

    Four gathers from the flattened patches at one computed index (three-array fancy indexing,
    and converting uint8 patches on every call, took 0.19 of budapest's 0.77 CPU-s of matching)."""
    n = len(patches)
    x0 = np.floor(px).astype(int)
    y0 = np.floor(py).astype(int)
    fx, fy = px - x0, py - y0
    k = patches.shape[1]
    x0, y0 = np.clip(x0, 0, k - 2), np.clip(y0, 0, k - 2)
    flat = np.asarray(patches, np.float32).reshape(-1)
    at = (np.arange(n)[:, None, None] * k + y0) * k + x0
    return ((1 - fy) * ((1 - fx) * flat[at] + fx * flat[at + 1])
            + fy * ((1 - fx) * flat[at + k] + fx * flat[at + k + 1]))


def refine_matches(patches_a, patches_b, scale_a, scale_b, xa, xb, hmat):
    """Sub-pixel positions in b of the keypoints xa of a (delivered pixels), and which matches
    refined well.

    Keypoints detected at a coarse working scale are good to ~1/3 of a working pixel; the patches
    (``features.PATCH_RADIUS``, at ``refine_scale``) carry the precision back. a's patch is
    resampled through the homography's local affine map onto b's pixel grid around xb (the
    photos may differ in scale and roll), then moved over b's patch by whole pixels within
    SEARCH_RADIUS; the normalised cross-correlation peak, fitted by a parabola in x and y, gives the
    offset. A match whose peak is weak (< MIN_NCC), on the search border, or whose template leaves
    a's patch, is dropped: a verified match that does not refine is not trusted at the precision
    the others have.
    """
    n = len(xa)
    R = patches_b.shape[1] // 2
    T, S = TEMPLATE_RADIUS, SEARCH_RADIUS
    if n == 0:
        return xb.copy(), np.zeros(0, bool)
    off = np.arange(-T, T + 1, dtype=float)
    ux, uy = np.meshgrid(off, off)                      # b patch pixels around its centre
    ob = np.stack([ux / scale_b[0], uy / scale_b[1]], axis=-1)  # delivered offsets in b
    jac = _homography_jacobian(hmat, xa)
    oa = np.einsum("nij,abj->nabi", np.linalg.inv(jac), ob)   # the same points, offsets in a
    ax = R + oa[..., 0] * scale_a[0]
    ay = R + oa[..., 1] * scale_a[1]
    k = patches_a.shape[1]
    inside = ((ax >= 0) & (ax <= k - 1) & (ay >= 0) & (ay <= k - 1)).all(axis=(1, 2))
    tmpl = _bilinear(patches_a, ax, ay)
    tmpl -= tmpl.mean(axis=(1, 2), keepdims=True)
    tnorm = np.sqrt((tmpl * tmpl).sum(axis=(1, 2)))
    pb = patches_b.astype(np.float32)
    ncc = np.full((n, 2 * S + 1, 2 * S + 1), -1.0)
    for j in range(-S, S + 1):
        for i in range(-S, S + 1):
            win = pb[:, R + j - T:R + j + T + 1, R + i - T:R + i + T + 1]
            win = win - win.mean(axis=(1, 2), keepdims=True)
            den = tnorm * np.sqrt((win * win).sum(axis=(1, 2)))
            with np.errstate(invalid="ignore", divide="ignore"):
                ncc[:, j + S, i + S] = np.where(den > 0, (tmpl * win).sum(axis=(1, 2)) / den, -1.0)
    flat = ncc.reshape(n, -1).argmax(axis=1)
    pj, pi = np.divmod(flat, 2 * S + 1)
    rows = np.arange(n)
    peak = ncc[rows, pj, pi]
    ok = inside & (peak >= MIN_NCC) & (pi > 0) & (pi < 2 * S) & (pj > 0) & (pj < 2 * S)
    pic, pjc = np.clip(pi, 1, 2 * S - 1), np.clip(pj, 1, 2 * S - 1)

    def vertex(lo, mid, hi):
        den = lo - 2 * mid + hi
        return np.where(den < 0, 0.5 * (lo - hi) / np.where(den < 0, den, -1.0), 0.0)

    dx = (pic - S) + vertex(ncc[rows, pjc, pic - 1], ncc[rows, pjc, pic], ncc[rows, pjc, pic + 1])
    dy = (pjc - S) + vertex(ncc[rows, pjc - 1, pic], ncc[rows, pjc, pic], ncc[rows, pjc + 1, pic])
    # The parabola is biased towards whole pixels (~0.2 px): a few Gauss-Newton (Lucas-Kanade)
    # steps on the normalised patches, b resampled at the sub-pixel offset, finish the job.
    tn = tmpl / np.where(tnorm > 0, tnorm, 1.0)[:, None, None]
    for _ in range(LK_STEPS):
        gx, gy = R + ux[None] + dx[:, None, None], R + uy[None] + dy[:, None, None]
        win = _bilinear(pb, gx, gy)
        wx = 0.5 * (_bilinear(pb, gx + 0.5, gy) - _bilinear(pb, gx - 0.5, gy)) * 2
        wy = 0.5 * (_bilinear(pb, gx, gy + 0.5) - _bilinear(pb, gx, gy - 0.5)) * 2
        mean = win.mean(axis=(1, 2), keepdims=True)
        norm = np.sqrt(((win - mean) ** 2).sum(axis=(1, 2)))[:, None, None]
        norm = np.where(norm > 0, norm, 1.0)
        res = ((win - mean) / norm - tn).reshape(n, -1)
        jx = ((wx - wx.mean(axis=(1, 2), keepdims=True)) / norm).reshape(n, -1)
        jy = ((wy - wy.mean(axis=(1, 2), keepdims=True)) / norm).reshape(n, -1)
        a11, a12, a22 = (jx * jx).sum(1), (jx * jy).sum(1), (jy * jy).sum(1)
        b1, b2 = (jx * res).sum(1), (jy * res).sum(1)
        det = a11 * a22 - a12 * a12
        det = np.where(np.abs(det) > 1e-12, det, np.inf)
        step_x, step_y = (a22 * b1 - a12 * b2) / det, (a11 * b2 - a12 * b1) / det
        dx, dy = dx - step_x, dy - step_y
        limit = S - 0.5
        ok &= (np.abs(dx) < limit) & (np.abs(dy) < limit)
        dx, dy = np.clip(dx, -limit, limit), np.clip(dy, -limit, limit)
    # Converged, and the patches agree at the end (NCC = 1 - |res|^2 / 2 for unit patches).
    ok &= (np.hypot(step_x, step_y) < LK_CONVERGED) & (1 - 0.5 * (res * res).sum(1) >= MIN_NCC_FINAL)
    out = xb + np.stack([dx / scale_b[0], dy / scale_b[1]], axis=1)
    return out, ok


def _load(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def match_pair(rec_a: dict, rec_b: dict, path_a: str, path_b: str, out_path: str, options: dict) -> dict:
    """Match and verify one pair (a dask task: paths in, a path out, a small dict back)."""
    import cv2

    cv2.setNumThreads(1)
    fa, fb = _load(path_a), _load(path_b)
    xa, xb = fa["xy"], fb["xy"]
    scale = float(min(fa["scale"][0], fb["scale"][0]))
    rng = pair_rng(options["seed"], rec_a["id"], rec_b["id"])
    extra = {}
    if rec_a["model"] is not None and rec_b["model"] is not None:
        ma, mb = model_from_dict(rec_a["model"]), model_from_dict(rec_b["model"])
        oa, da = ma.backproject(xa)
        ob, db = mb.backproject(xb)
        baseline = ma.C - mb.C
        ang_px = max(ma.angular_pixel(), mb.angular_pixel())
        tol = options["ransac_px"] / scale * ang_px
        max_par = float(np.linalg.norm(baseline) / options["min_depth_m"])
        margin = np.radians(options["margin_deg"])
        radius = (margin + max_par) / mb.angular_pixel() + options["ransac_px"] / scale
        # Keep only keypoints the models put inside the other frame (widened): guided matching.
        pa = mb.project(oa + FAR_M * da)
        pb = ma.project(ob + FAR_M * db)
        wa, ha = rec_a["width"], rec_a["height"]
        wb, hb = rec_b["width"], rec_b["height"]
        pad_b = radius
        pad_a = (margin + max_par) / ma.angular_pixel() + options["ransac_px"] / scale
        sel_a = np.flatnonzero(np.isfinite(pa).all(1) & (pa[:, 0] > -pad_b) & (pa[:, 0] < wb + pad_b)
                               & (pa[:, 1] > -pad_b) & (pa[:, 1] < hb + pad_b))
        sel_b = np.flatnonzero(np.isfinite(pb).all(1) & (pb[:, 0] > -pad_a) & (pb[:, 0] < wa + pad_a)
                               & (pb[:, 1] > -pad_a) & (pb[:, 1] < ha + pad_a))
        if len(sel_a) >= 2 and len(sel_b) >= 2:
            # Where a's keypoint can appear in b: the segment from its far-field image to its
            # image at min_depth_m (the epipolar parallax), widened by the pointing uncertainty.
            near_pix = mb.project(oa[sel_a] + options["min_depth_m"] * da[sel_a])
            far_pix = pa[sel_a]
            near_pix = np.where(np.isfinite(near_pix), near_pix, far_pix)
            ca, cb = _segment_candidates(far_pix, near_pix, xb[sel_b], margin / mb.angular_pixel()
                                         + options["ransac_px"] / scale)
            ia, ib = ratio_match(fa["descriptors"][sel_a], fb["descriptors"][sel_b], options["ratio"], ca, cb)
            ia, ib = sel_a[ia], sel_b[ib]
        else:
            ia = ib = np.zeros(0, int)
        candidates = int(len(ia))
        mask, rot = verify_rotation(da[ia], db[ib], baseline, max_par, tol, 2 * margin + max_par,
                                    options["ransac_iterations"], rng)
        method = "rotation"
        extra["rotation"] = rot
    else:
        ia, ib = ratio_match(fa["descriptors"], fb["descriptors"], options["ratio"])
        candidates = int(len(ia))
        mask = np.zeros(len(ia), bool)
        method = "homography"
        if len(ia) >= 8:
            cv2.setRNGSeed(int(rng.integers(2**31)))
            hmat, m = cv2.findHomography(xa[ia], xb[ib], cv2.RANSAC, options["ransac_px"] / scale,
                                         maxIters=max(options["ransac_iterations"], 2000), confidence=0.999)
            if hmat is not None:
                mask = m.ravel().astype(bool)
                extra["homography"] = hmat
                if "patches" in fa and "patches" in fb:
                    # Refined photos: the position in b of each inlier's keypoint in a.
                    ia, ib = ia[mask], ib[mask]
                    xb_fine, mask = refine_matches(fa["patches"][ia], fb["patches"][ib], fa["patch_scale"],
                                                   fb["patch_scale"], xa[ia], xb[ib], hmat)
                    if mask.sum() >= 8:
                        # Verified again at the refined precision (a wrong local optimum of the
                        # refinement is still within the coarse tolerance).
                        tol = options["ransac_px"] / float(min(fa["patch_scale"][0], fb["patch_scale"][0]))
                        sel = np.flatnonzero(mask)
                        h2, m2 = cv2.findHomography(xa[ia[sel]], xb_fine[sel], cv2.RANSAC, tol,
                                                    maxIters=options["ransac_iterations"], confidence=0.999)
                        if h2 is not None:
                            mask[sel[~m2.ravel().astype(bool)]] = False
                    extra["xb"] = xb_fine[mask]
    ia, ib = ia[mask], ib[mask]
    if len(ia) < options["min_inliers"]:
        ia = ib = np.zeros(0, int)
        extra.pop("xb", None)
    buf = io.BytesIO()
    np.savez(buf, ia=ia.astype(np.int32), ib=ib.astype(np.int32), **extra)
    write_bytes(out_path, buf.getvalue())
    return {"a": rec_a["id"], "b": rec_b["id"], "method": method, "candidates": candidates, "inliers": int(len(ia))}


def load(ws: Workspace, a: str, b: str) -> dict:
    return ws.load_arrays("matches", f"{pair_name(a, b)}.npz")


def run(ws: Workspace, config, client) -> dict:
    frames = {f["id"]: f for f in ws.read_json("ingest", "frames.json")["frames"]}
    pairs = ws.read_json("pairs", "pairs.json")["pairs"]
    options = config.key_of(*CONFIG_FIELDS)
    key = digest("matches", code_key(__name__), upstream_key(ws, "pairs"), options)
    if ws.stage_done("matches", key):
        return ws.stage_report("matches")
    # Per-pair records: a killed run's finished pairs are not matched again.
    items = [(pair_name(p["a"], p["b"]), match_pair,
              (frames[p["a"]], frames[p["b"]], str(ws.path("features", f"{p['a']}.npz")),
               str(ws.path("features", f"{p['b']}.npz")), str(ws.path("matches", f"{pair_name(p['a'], p['b'])}.npz")),
               options)) for p in pairs]
    results, resumed = resumable(ws, client, "matches", key, items)
    ws.write_json({"pairs": results}, "matches", "summary.json")
    report = {"pairs": len(results), "verified_pairs": sum(r["inliers"] > 0 for r in results),
              "candidates": int(sum(r["candidates"] for r in results)),
              "inliers": int(sum(r["inliers"] for r in results)), "resumed": resumed}
    ws.mark_done("matches", key, report)
    return report
