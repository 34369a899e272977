"""Predicted overlap between frames from their camera models in LOCAL_LEVEL.

``overlap_matrix(metas)[a, b]`` is the fraction of frame a's image area whose rays, cast from a
grid of a's pixels to a sphere of ``radius`` metres around the rover (the far field for a
panorama), land inside frame b's image. Rays are followed to the sphere rather than to infinity
because the cameras of a stereo pair or of a mast sit a metre or two from the rover origin; at
50 m the parallax is ~1 degree, below the pointing knowledge.

``margin_deg`` widens every frame b by that angle on each side (converted to pixels with b's
angular pixel size), so that pair selection does not miss a pair because the telemetry pointing
is off by up to that much; with a margin the fraction is an upper bound.

Frames are compared only when they were taken from the same rover position: when both state a
site and drive and these differ, their overlap is 0 (their LOCAL_LEVEL origins differ).

Cost: one projection of a's grid into each candidate b. A cheap bound on boresight separation
(angle between boresights > sum of half-diagonals + margin) rules most pairs out first, so a
panorama of N frames costs O(N) projections of 32x24 points, not N^2.
"""

from __future__ import annotations

import numpy as np

from .rotation import vector_to_azel

GRID = (32, 24)


def grid_pixels(width: int, height: int, grid=GRID) -> np.ndarray:
    """Centres of a ``grid[0] x grid[1]`` tiling of the image, (n, 2) pixels."""
    gx, gy = grid
    xs = (np.arange(gx) + 0.5) * width / gx - 0.5
    ys = (np.arange(gy) + 0.5) * height / gy - 0.5
    xx, yy = np.meshgrid(xs, ys)
    return np.stack([xx.ravel(), yy.ravel()], axis=1)


def rays_to_sphere(origins, dirs, radius):
    """Points where rays leave the sphere of ``radius`` about the origin (far field if None/inf)."""
    if radius is None or not np.isfinite(radius):
        return origins + dirs * 1e9
    b = np.einsum("ij,ij->i", origins, dirs)
    c = np.einsum("ij,ij->i", origins, origins) - radius * radius
    with np.errstate(invalid="ignore"):
        t = -b + np.sqrt(b * b - c)
    return origins + t[:, None] * dirs


def _same_station(a, b) -> bool:
    if None in (a.site, a.drive, b.site, b.drive):
        return True
    return (a.site, a.drive) == (b.site, b.drive)


def _half_diagonal(model, width, height) -> float:
    """Largest angle (radians) between the boresight and the image border."""
    bs = model.boresight(width, height)
    d = model.footprint(width, height, n=4)
    cos = np.clip(d @ bs, -1, 1)
    cos = cos[np.isfinite(cos)]
    return float(np.arccos(cos.min())) if cos.size else np.pi


def overlap_matrix(metas, radius: float = 50.0, margin_deg: float = 0.0, grid=GRID) -> np.ndarray:
    """(N, N) matrix: entry [a, b] = fraction of frame a's area that frame b sees (diagonal 1).

    Frames without a model overlap nothing (0).
    """
    n = len(metas)
    out = np.zeros((n, n))
    models = [m.model_local_level() if m.model is not None else None for m in metas]
    valid = [i for i in range(n) if models[i] is not None]
    if not valid:
        return out
    pts, bs, reach = {}, {}, {}
    for i in valid:
        m, meta = models[i], metas[i]
        o, d = m.backproject(grid_pixels(meta.width, meta.height, grid))
        pts[i] = rays_to_sphere(o, d, radius)
        bs[i] = m.boresight(meta.width, meta.height)
        reach[i] = _half_diagonal(m, meta.width, meta.height)
        out[i, i] = 1.0
    margin = np.radians(margin_deg)
    bsm = np.array([bs[i] for i in valid])
    # Cheap prefilter over all pairs at once: boresights farther apart than both half-diagonals
    # (plus the margin and a little slack for distortion) cannot overlap.
    sep = np.arccos(np.clip(bsm @ bsm.T, -1, 1))
    r = np.array([reach[i] for i in valid])
    maybe = sep <= r[:, None] + r[None, :] + 2 * margin + np.radians(1.0)
    for jb, b in enumerate(valid):
        cands = [a for ja, a in enumerate(valid) if a != b and maybe[ja, jb] and _same_station(metas[a], metas[b])]
        if not cands:
            continue
        mb, meta_b = models[b], metas[b]
        pad = margin / mb.angular_pixel() if margin > 0 else 0.0
        allp = np.concatenate([pts[a] for a in cands])
        pix = mb.project(allp)
        inside = (
            (pix[:, 0] >= -0.5 - pad)
            & (pix[:, 0] <= meta_b.width - 0.5 + pad)
            & (pix[:, 1] >= -0.5 - pad)
            & (pix[:, 1] <= meta_b.height - 0.5 + pad)
        )
        # Points a model cannot see (behind it, outside a fisheye's cone) project to NaN,
        # which fails every comparison above.
        ok = inside
        start = 0
        for a in cands:
            k = len(pts[a])
            out[a, b] = float(np.count_nonzero(ok[start : start + k])) / k
            start += k
    return out


def overlapping_pairs(metas, radius: float = 50.0, margin_deg: float = 0.0, min_fraction: float = 0.0):
    """[(a, b, fraction)] for a < b with fraction = max of both directions > ``min_fraction``.

    The larger direction is the share of the smaller footprint the other frame sees, which is
    what decides whether a pair can be matched.
    """
    m = overlap_matrix(metas, radius=radius, margin_deg=margin_deg)
    sym = np.maximum(m, m.T)
    n = len(metas)
    return [(a, b, float(sym[a, b])) for a in range(n) for b in range(a + 1, n) if sym[a, b] > min_fraction]


def footprints(metas, n: int = 16):
    """Per frame, the border of its image in LOCAL_LEVEL azimuth/elevation degrees, (4n, 2).

    None for frames without a model. Points run clockwise from the upper-left corner; rays that
    do not back-project (outside a fisheye's valid cone) are NaN.
    """
    out = []
    for meta in metas:
        if meta.model is None:
            out.append(None)
            continue
        d = meta.model_local_level().footprint(meta.width, meta.height, n)
        az, el = vector_to_azel(d)
        out.append(np.stack([az, el], axis=1))
    return out
