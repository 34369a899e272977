"""Ortho balance: one gain per stereo pair, so that overlapping pairs agree in brightness.

Each pair brings its own exposure (the left frames of a pan are exposed one by one), so the raw
grey values of two pairs differ by a factor where they overlap and the ortho shows a seam along
every pair's edge. The gains g_p solve, in logs (x_p = log g_p), the least-squares problem

    sum over overlapping pairs (a, b) of  n_ab (x_a - x_b + r_ab)^2  +  W (mean of x)^2  +  eps sum x_p^2

where r_ab is the median, over the ``BLOCK`` x ``BLOCK``-cell blocks both pairs cover, of
log(mean brightness of a) - log(mean brightness of b), and n_ab the number of those blocks (a
median, so a shadow or a rock face that looks different from two sides cannot pull the gain).
The second term is the prior that keeps the mean gain at 1 (the ortho keeps the frames' overall
level); the third, tiny, fixes a pair that overlaps no other at gain 1.

Each pair task writes its summary (``save_summary``: block index, mean brightness, count) beside
its points; the client solves the gains (``solve_gains``) and the grid tasks multiply every
sample's brightness by its pair's gain before averaging.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from mosaic.runtime import atomic

#: Side of a brightness block (grid cells).
BLOCK = 16
#: Samples a block needs before its mean counts.
MIN_SAMPLES = 8


def _path(root, pair_id) -> Path:
    return Path(root) / "ortho" / f"{pair_id}.npz"


def save_summary(root, pair_id: str, spec, col, row, value) -> None:
    """Mean brightness per block of one pair's points (continuous grid ``col``/``row``)."""
    nbc = math.ceil(spec.width / BLOCK)
    nbr = math.ceil(spec.height / BLOCK)
    c = np.floor(np.asarray(col) / BLOCK).astype(np.int64)
    r = np.floor(np.asarray(row) / BLOCK).astype(np.int64)
    v = np.asarray(value, np.float64)
    ok = (c >= 0) & (r >= 0) & (c < nbc) & (r < nbr) & np.isfinite(v) & (v > 0)
    key = r[ok] * nbc + c[ok]
    n = np.bincount(key, minlength=nbr * nbc)
    total = np.bincount(key, v[ok], minlength=nbr * nbc)
    idx = np.flatnonzero(n >= MIN_SAMPLES)
    path = _path(root, pair_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, idx=idx, mean=total[idx] / n[idx])


def load_summary(root, pair_id: str):
    """(block indices, mean brightness) of a pair; empty arrays when it wrote none."""
    p = _path(root, pair_id)
    if not p.exists():
        return np.zeros(0, np.int64), np.zeros(0)
    with np.load(p) as z:
        return z["idx"], z["mean"]


def solve_gains(summaries) -> tuple[np.ndarray, dict]:
    """Gains (one per summary, mean of their logs 0) and a small report of the overlaps used."""
    n = len(summaries)
    rows, rhs, weights, links = [], [], [], []
    for a in range(n):
        for b in range(a + 1, n):
            ia, ma = summaries[a]
            ib, mb = summaries[b]
            common, pa, pb = np.intersect1d(ia, ib, assume_unique=True, return_indices=True)
            if common.size == 0:
                continue
            r = float(np.median(np.log(ma[pa]) - np.log(mb[pb])))
            row = np.zeros(n)
            row[a], row[b] = 1.0, -1.0
            rows.append(row)
            rhs.append(-r)
            weights.append(float(common.size))
            links.append({"a": a, "b": b, "blocks": int(common.size), "log_ratio": r})
    total = sum(weights) or 1.0
    # The prior: the mean log gain is 0, as firmly as all overlaps together; a faint pull to 0
    # for every pair keeps the system regular when some pair overlaps nothing.
    rows.append(np.full(n, 1.0 / max(n, 1)))
    rhs.append(0.0)
    weights.append(total)
    for p in range(n):
        row = np.zeros(n)
        row[p] = 1.0
        rows.append(row)
        rhs.append(0.0)
        weights.append(1e-6 * total)
    w = np.sqrt(np.asarray(weights))
    x, *_ = np.linalg.lstsq(np.asarray(rows) * w[:, None], np.asarray(rhs) * w, rcond=None)
    gains = np.exp(x)
    residual = [abs(x[k["a"]] - x[k["b"]] + k["log_ratio"]) for k in links]
    return gains, {"links": links, "gains": gains.tolist(),
                   "max_log_ratio_before": max((abs(k["log_ratio"]) for k in links), default=0.0),
                   "max_log_ratio_after": max(residual, default=0.0)}
