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
"""

from __future__ import annotations

import io
import zlib

import numpy as np

from calib.models import model_from_dict

from .. import progress
from ..workspace import Workspace, digest
from . import code_key, task_key, upstream_key

CONFIG_FIELDS = ("ratio", "ransac_px", "ransac_iterations", "min_depth_m", "min_inliers", "seed", "margin_deg")
#: Distance used to predict where a keypoint's partner lies (the far field).
FAR_M = 1000.0


def pair_name(a: str, b: str) -> str:
    return f"{a}__{b}"


def pair_rng(seed: int, a: str, b: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(a.encode()), zlib.crc32(b.encode())])


def _distances(da: np.ndarray, db: np.ndarray) -> np.ndarray:
    if da.dtype == np.uint8:
        bits = np.unpackbits(da[:, None, :] ^ db[None, :, :], axis=2)
        return bits.sum(axis=2).astype(np.float32)
    a = da.astype(np.float32)
    b = db.astype(np.float32)
    d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)
    return np.sqrt(np.maximum(d2, 0.0))


def ratio_match(da, db, ratio: float, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Indices (ia, ib) of mutual best matches passing the ratio test, among ``allowed`` candidates."""
    if len(da) < 2 or len(db) < 2:
        return np.zeros(0, int), np.zeros(0, int)
    d = _distances(da, db)
    if allowed is not None:
        d = np.where(allowed, d, np.inf)
    two = np.argpartition(d, 1, axis=1)[:, :2]
    rows = np.arange(len(d))
    d0, d1 = d[rows, two[:, 0]], d[rows, two[:, 1]]
    best = np.where(d0 <= d1, two[:, 0], two[:, 1])
    first, second = np.minimum(d0, d1), np.maximum(d0, d1)
    ok = np.isfinite(first) & (first < ratio * second)
    # Mutual: a's best in b must have a as its best in a (ties broken by the lower index).
    back = np.argmin(d, axis=0)
    ok &= back[best] == rows
    ia = rows[ok]
    return ia, best[ok]


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
    pred = np.einsum("...ij,nj->...ni", rot, da)
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


def verify_rotation(da, db, baseline, max_parallax, tol, max_angle, iterations, rng):
    """RANSAC on a rotation between two ray bundles; returns (inlier mask, R)."""
    n = len(da)
    if n < 3:
        return np.zeros(n, bool), np.eye(3)
    idx = np.stack([rng.choice(n, 2, replace=False) for _ in range(iterations)])
    rots = _kabsch(da[idx], db[idx])
    angle = np.arccos(np.clip((np.trace(rots, axis1=1, axis2=2) - 1) / 2, -1, 1))
    rots = rots[angle <= max_angle]
    if len(rots) == 0:
        return np.zeros(n, bool), np.eye(3)
    inl = rotation_residuals(rots, da, db, baseline, max_parallax, tol)
    best = int(np.argmax(inl.sum(axis=1)))
    mask, rot = inl[best], rots[best]
    for _ in range(2):
        if mask.sum() < 3:
            break
        rot = _kabsch(da[mask][None], db[mask][None])[0]
        mask = rotation_residuals(rot, da, db, baseline, max_parallax, tol)
    return mask, rot


def _load(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def match_pair(rec_a: dict, rec_b: dict, path_a: str, path_b: str, out_path: str, options: dict) -> dict:
    """Match and verify one pair (a dask task: paths in, a path out, a small dict back)."""
    import cv2

    from ..atomic import write_bytes

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
            near = np.linalg.norm(pa[sel_a][:, None, :] - xb[sel_b][None, :, :], axis=2) < radius
            ia, ib = ratio_match(fa["descriptors"][sel_a], fb["descriptors"][sel_b], options["ratio"], near)
            ia, ib = sel_a[ia], sel_b[ib]
        else:
            ia = ib = np.zeros(0, int)
        mask, rot = verify_rotation(da[ia], db[ib], baseline, max_par, tol, 2 * margin + max_par,
                                    options["ransac_iterations"], rng)
        method = "rotation"
        extra["rotation"] = rot
    else:
        ia, ib = ratio_match(fa["descriptors"], fb["descriptors"], options["ratio"])
        mask = np.zeros(len(ia), bool)
        method = "homography"
        if len(ia) >= 8:
            cv2.setRNGSeed(int(rng.integers(2**31)))
            hmat, m = cv2.findHomography(xa[ia], xb[ib], cv2.RANSAC, options["ransac_px"] / scale,
                                         maxIters=max(options["ransac_iterations"], 2000), confidence=0.999)
            if hmat is not None:
                mask = m.ravel().astype(bool)
                extra["homography"] = hmat
    candidates = int(len(ia))
    ia, ib = ia[mask], ib[mask]
    if len(ia) < options["min_inliers"]:
        ia = ib = np.zeros(0, int)
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
    futures = []
    for p in pairs:
        a, b = p["a"], p["b"]
        futures.append(client.submit(
            match_pair, frames[a], frames[b], str(ws.path("features", f"{a}.npz")),
            str(ws.path("features", f"{b}.npz")), str(ws.path("matches", f"{pair_name(a, b)}.npz")), options,
            key=task_key("matches", pair_name(a, b), key)))
    results = progress.track_futures("matches", futures, client)
    ws.write_json({"pairs": results}, "matches", "summary.json")
    report = {"pairs": len(results), "verified_pairs": sum(r["inliers"] > 0 for r in results),
              "candidates": int(sum(r["candidates"] for r in results)),
              "inliers": int(sum(r["inliers"] for r in results))}
    ws.mark_done("matches", key, report)
    return report
