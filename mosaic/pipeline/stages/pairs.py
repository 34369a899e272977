"""Pairs: which frames to match, written as ``pairs/pairs.json``; never all N^2 for a large set.

With camera models: the predicted overlap of the two frames' footprints (rays of a pixel grid of
one frame, projected into the other), widened by the pointing uncertainty ``margin_deg``; only
pairs whose boresights are close enough to overlap at all are tested, so the cost is a cheap
N^2 dot product plus O(pairs) projections.

Without models (plain photos): a vote ranking. The strongest descriptors of every frame go into
one index; each descriptor's nearest neighbours vote for their frames, and every frame keeps its
``neighbours`` best-voted partners: O(N K log(N K)), not N^2 matchings.
"""

from __future__ import annotations

import numpy as np

from calib.models import model_from_dict
from mosaic.formats.workspace import Workspace, digest
from mosaic.pipeline.stages import code_key, upstream_key
from mosaic.pipeline.stages import features as features_stage
from mosaic.runtime import progress

CONFIG_FIELDS = ("margin_deg", "min_overlap", "neighbours")
GRID = (16, 12)
#: Distance (metres) at which footprints are compared: far enough that only the pointing matters.
FAR_M = 1000.0
#: Descriptors per frame that vote in the similarity ranking.
VOTERS = 300


def grid_pixels(width: int, height: int, n=GRID) -> np.ndarray:
    xs = (np.arange(n[0]) + 0.5) * width / n[0] - 0.5
    ys = (np.arange(n[1]) + 0.5) * height / n[1] - 0.5
    gx, gy = np.meshgrid(xs, ys)
    return np.stack([gx.ravel(), gy.ravel()], axis=1)


def overlap_fraction(model_a, size_a, model_b, size_b, margin_deg: float) -> float:
    """Fraction of frame a's grid rays that land inside frame b, b's border widened by margin_deg."""
    origins, dirs = model_a.backproject(grid_pixels(*size_a))
    ok = np.all(np.isfinite(dirs), axis=1)
    if not ok.any():
        return 0.0
    pix = model_b.project(origins[ok] + FAR_M * dirs[ok])
    pad = np.radians(margin_deg) / model_b.angular_pixel()
    w, h = size_b
    inside = ((pix[:, 0] >= -0.5 - pad) & (pix[:, 0] <= w - 0.5 + pad)
              & (pix[:, 1] >= -0.5 - pad) & (pix[:, 1] <= h - 0.5 + pad))
    return float(inside.sum() / len(dirs))


def pairs_from_models(frames: list[dict], margin_deg: float, min_overlap: float) -> list[dict]:
    models = [model_from_dict(f["model"]) for f in frames]
    sizes = [(f["width"], f["height"]) for f in frames]
    axes = np.array([m.boresight(*s) for m, s in zip(models, sizes)])
    # Half-diagonal field of view: no overlap is possible beyond the sum of two of them.
    half = np.array([np.arccos(np.clip(np.min(m.footprint(*s, n=4) @ a), -1, 1))
                     for m, s, a in zip(models, sizes, axes)])
    ang = np.arccos(np.clip(axes @ axes.T, -1, 1))
    reach = half[:, None] + half[None, :] + np.radians(margin_deg)
    out = []
    cand = np.argwhere(np.triu(ang < reach, 1))
    with progress.stage("pairs", len(cand)) as bar:
        for i, j in cand:
            f = max(overlap_fraction(models[i], sizes[i], models[j], sizes[j], margin_deg),
                    overlap_fraction(models[j], sizes[j], models[i], sizes[i], margin_deg))
            if f >= min_overlap:
                out.append({"a": frames[i]["id"], "b": frames[j]["id"], "overlap": round(f, 4)})
            bar.advance()
    return out


def pairs_from_similarity(ws: Workspace, frames: list[dict], neighbours: int) -> list[dict]:
    import cv2

    descs, owner = [], []
    for k, f in enumerate(frames):
        d = features_stage.load(ws, f["id"])["descriptors"][:VOTERS]
        descs.append(d)
        owner.append(np.full(len(d), k))
    if not descs or sum(len(d) for d in descs) == 0:
        return []
    allx = np.concatenate(descs)
    owner = np.concatenate(owner)
    n = len(frames)
    binary = allx.dtype == np.uint8
    k = min(len(allx), 5)
    cv2.setRNGSeed(0)
    if binary or len(allx) <= 20000:
        # Exact search: deterministic, and fast enough at this size.
        matcher = cv2.BFMatcher(cv2.NORM_HAMMING if binary else cv2.NORM_L2)
    else:
        matcher = cv2.FlannBasedMatcher({"algorithm": 1, "trees": 4}, {"checks": 64})
    votes = np.zeros((n, n))
    with progress.stage("pairs", 1) as bar:
        knn = matcher.knnMatch(allx, allx, k=k)
        for qi, ms in enumerate(knn):
            a = owner[qi]
            seen = set()
            for m in ms:
                b = owner[m.trainIdx]
                if b != a and b not in seen:
                    seen.add(b)
                    votes[a, b] += 1.0
        bar.advance()
    votes = votes + votes.T
    keep = set()
    for a in range(n):
        order = np.lexsort((np.arange(n), -votes[a]))
        for b in order[: neighbours]:
            if b != a and votes[a, b] > 0:
                keep.add((min(a, b), max(a, b)))
    return [{"a": frames[i]["id"], "b": frames[j]["id"], "votes": int(votes[i, j])} for i, j in sorted(keep)]


def run(ws: Workspace, config, client=None) -> dict:
    frames = ws.read_json("ingest", "frames.json")["frames"]
    key = digest("pairs", code_key(__name__), upstream_key(ws, "features"), config.key_of(*CONFIG_FIELDS))
    if ws.stage_done("pairs", key):
        return ws.stage_report("pairs")
    with_model = [f for f in frames if f["model"] is not None]
    photos = [f for f in frames if f["model"] is None]
    pairs = []
    if len(with_model) > 1:
        pairs += [dict(p, mode="models") for p in pairs_from_models(with_model, config.margin_deg, config.min_overlap)]
    if len(photos) > 1:
        pairs += [dict(p, mode="similarity") for p in pairs_from_similarity(ws, photos, config.neighbours)]
    ws.write_json({"pairs": pairs}, "pairs", "pairs.json")
    n = len(frames)
    report = {"frames": n, "pairs": len(pairs), "all_pairs": n * (n - 1) // 2}
    ws.mark_done("pairs", key, report)
    return report
