"""Photometry: one gain per frame, solved once from the frames' overlaps.

Each frame is read once at low resolution (a thumbnail about ``THUMB`` pixels across, grey, lightly
blurred so that a residual misregistration of a pixel or two does not matter). For every pair of
frames whose cones of view overlap, the thumbnail pixels of the first frame are carried through
both camera models (far-field directions, as the renderer does) into the second; the median log
ratio of the two frames' values over the common samples measures their exposure difference.
Least squares on log gains, ``g_i - g_j = -median(log I_i - log I_j)`` weighted by the square
root of the sample count, plus a weak prior ``g_i = 0`` (gain 1) that fixes the common level and
keeps frames without overlaps at 1. Gains multiply the frames' values before blending, so
exposure steps of +-15% meet without a step and the blender only has to hide what is left.
Vignetting is not modelled (the frames of rovers are flat-fielded on the ground).
"""

from __future__ import annotations

import numpy as np
import cv2
from scipy.sparse import coo_matrix
from scipy.sparse.linalg import lsqr

from .warp import FAR, read_image

THUMB = 96
PRIOR = 0.05  # weight of the gain-1 prior, against pair weights sqrt(n) ~ 10-50
MIN_SAMPLES = 20


def thumbnail(path, width: int, height: int):
    """Grey float32 thumbnail of a frame and its downsampling factor."""
    img = read_image(path).astype(np.float32)
    if img.ndim == 3:
        img = img.mean(axis=2)
    s = max(1, int(round(max(width, height) / THUMB)))
    t = cv2.resize(img, (max(1, width // s), max(1, height // s)), interpolation=cv2.INTER_AREA)
    return cv2.GaussianBlur(t, (0, 0), 1.0), s


def _sample(thumb, s, pix):
    """Bilinear samples of a thumbnail at full-resolution pixel positions (N, 2)."""
    x = ((pix[:, 0] + 0.5) / s - 0.5).astype(np.float32)
    y = ((pix[:, 1] + 0.5) / s - 0.5).astype(np.float32)
    return cv2.remap(thumb, x[None, :], y[None, :], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)[0]


def pair_ratio(ta, sa, ma, tb, sb, mb, wb, hb, saturation):
    """(median log(I_a / I_b), n) over a's thumbnail pixels that b sees, or None."""
    hy, hx = ta.shape
    gy, gx = np.mgrid[0:hy, 0:hx]
    pa = np.stack([(gx.ravel() + 0.5) * sa - 0.5, (gy.ravel() + 0.5) * sa - 0.5], axis=1)
    _, d = ma.backproject(pa)
    ok = np.isfinite(d).all(axis=1)
    if not ok.any():
        return None
    pb = mb.project(mb.C[None, :] + FAR * d[ok])
    inside = np.isfinite(pb).all(axis=1)
    m = 2.0 * sb  # keep clear of b's border, where its blurred thumbnail is unreliable
    inside &= (pb[:, 0] >= m) & (pb[:, 0] <= wb - 1 - m) & (pb[:, 1] >= m) & (pb[:, 1] <= hb - 1 - m)
    if inside.sum() < MIN_SAMPLES:
        return None
    va = ta.ravel()[ok][inside]
    vb = _sample(tb, sb, pb[inside])
    good = (va > 0.02 * saturation) & (vb > 0.02 * saturation) & (va < 0.98 * saturation) & (vb < 0.98 * saturation)
    if good.sum() < MIN_SAMPLES:
        return None
    return float(np.median(np.log(va[good]) - np.log(vb[good]))), int(good.sum())


def solve_gains(n: int, pairs):
    """Log-gain least squares. ``pairs`` = [(i, j, r_ij, n_ij)] with r_ij = log(I_i / I_j).
    Returns (gains (n,), rms of pair residuals before, after) in log units."""
    if not pairs:
        return np.ones(n), 0.0, 0.0
    rows, cols, vals, rhs = [], [], [], []
    for e, (i, j, r, cnt) in enumerate(pairs):
        w = np.sqrt(cnt)
        rows += [e, e]
        cols += [i, j]
        vals += [w, -w]
        rhs.append(-w * r)
    m = len(pairs)
    rows += list(range(m, m + n))
    cols += list(range(n))
    vals += [PRIOR] * n
    rhs += [0.0] * n
    a = coo_matrix((vals, (rows, cols)), shape=(m + n, n)).tocsr()
    g = lsqr(a, np.asarray(rhs), atol=1e-12, btol=1e-12, iter_lim=10 * n + 100)[0]
    r = np.array([p[2] for p in pairs])
    res = np.array([g[i] - g[j] + rr for (i, j, rr, _), rr in zip(pairs, r)])
    return np.exp(g), float(np.sqrt(np.mean(r**2))), float(np.sqrt(np.mean(res**2)))


def overlapping_pairs(dirs, radii):
    """Index pairs (i < j) of frames whose cones (boresight ``dirs`` (n, 3), half-angles
    ``radii`` radians) overlap. Chunked so memory stays O(n * chunk)."""
    n = len(dirs)
    out = []
    for a in range(0, n, 512):
        cos = np.clip(dirs[a:a + 512] @ dirs.T, -1, 1)
        ang = np.arccos(cos)
        hit = ang < (radii[a:a + 512, None] + radii[None, :])
        ii, jj = np.nonzero(hit)
        ii = ii + a
        keep = ii < jj
        out += list(zip(ii[keep].tolist(), jj[keep].tolist()))
    return out


def frame_gains(frames, client=None, saturation=255.0):
    """Gains (n,) for ``frames`` (a list of render.panorama.FrameInfo) and stats."""
    n = len(frames)
    if n < 2:
        return np.ones(n), {"pairs": 0, "log_rms_before": 0.0, "log_rms_after": 0.0}
    if client is not None:
        futs = client.map(thumbnail, [f.path for f in frames], [f.width for f in frames],
                          [f.height for f in frames], pure=False)
        from mosaic.progress import track_futures

        thumbs = track_futures("gains", futs)  # a bar per frame read: the first pass over every pixel
    else:
        thumbs = [thumbnail(f.path, f.width, f.height) for f in frames]
    dirs = np.array([f.boresight for f in frames])
    radii = np.array([f.radius for f in frames])
    pairs = []
    for i, j in overlapping_pairs(dirs, radii):
        fi, fj = frames[i], frames[j]
        r = pair_ratio(thumbs[i][0], thumbs[i][1], fi.model, thumbs[j][0], thumbs[j][1], fj.model,
                       fj.width, fj.height, saturation)
        if r is not None:
            pairs.append((i, j, r[0], r[1]))
    gains, before, after = solve_gains(n, pairs)
    return gains, {"pairs": len(pairs), "log_rms_before": before, "log_rms_after": after}

