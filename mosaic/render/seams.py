"""Seams: which frame owns each output pixel, cut where overlapping frames agree.

**Per pair, before the tiles.** For each pair of overlapping frames i < j the seam is solved once,
on frame i's reduced grid (:func:`solve_pair`, a few pixels of the frame per grid pixel: fine
enough to go round a rock), from what both frames show there (frame j resampled through both
camera models). The cost of a grid pixel is how much the frames disagree there after the best
smooth gain between them (relative colour difference plus gradient difference: parallax,
moving shadows, glare and clipping all disagree), plus a penalty within a band of either
frame's border (:data:`BAND`). The overlap's boundary is made of frame i's border (where only j
may own pixels) and frame j's border (only i); the two places where these meet are joined by the
cheapest path through the overlap, 8-connected Dijkstra on the pixel costs, which is the minimum
cut between the two borders (on a planar grid a cut is a dual path). The side of the path that
touches i's border goes to j, the other to i. Memory and time are those of one frame's reduced
copy, whatever the panorama's size. The answer is a :class:`PairSeam`: a bit per reduced pixel
over the overlap's box, packed (a few kB), carried to the tiles that need it.

**Per pixel, in the tiles.** A pixel's owner is decided from the frames that see it, in their
fixed order: the first is the candidate, and each next frame k takes over where the pair
(candidate, k) prefers k (:func:`assign`). A pair's preference at a pixel is its seam's bit at the
candidate frame's own map of that pixel (nearest reduced pixel); a pair without a seam (one frame
inside the other, an overlap too small or too tangled to cut) prefers the frame that sees the
pixel nearer its own centre (normalised image coordinates), the rule of earlier versions.
Everything a pixel's owner depends on (the frames' maps and valid areas on the global warp grid,
the frame order, the pair seams) is the same in every tile window that holds the pixel, so tiles
agree exactly along their borders whatever the tiling.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .warp import FrameMap

_FAR = np.float32(np.inf)
#: Width (reduced pixels) of the band along either frame's border that seams avoid.
BAND = 6
#: Cost of one step of seam (keeps seams short where the frames agree everywhere).
STEP_COST = 0.03
#: Cost of a pixel where either frame is clipped (relative differences are at most ~1).
CLIPPED_COST = 2.0


def centre_score(fmap: FrameMap, fw: int, fh: int) -> np.ndarray:
    """Normalised squared distance from the frame's centre (h, w float32); inf where not valid."""
    cx, cy = (fw - 1) / 2.0, (fh - 1) / 2.0
    # In place, one temporary per axis.
    u = np.subtract(fmap.mapx, np.float32(cx))
    u *= np.float32(2.0 / fw)
    np.square(u, out=u)
    v = np.subtract(fmap.mapy, np.float32(cy))
    v *= np.float32(2.0 / fh)
    np.square(v, out=v)
    u += v
    np.copyto(u, _FAR, where=~fmap.valid)
    return u


@dataclass(frozen=True)
class PairSeam:
    """The seam of frames ``i`` < ``j`` (indices into the render's frame list): over the box
    (x0, y0, w, h) of i's reduced grid (``scale`` frame pixels per grid pixel), 1 where i owns
    the pixel, 0 where j does; packed row-major (np.packbits)."""

    i: int
    j: int
    scale: int
    x0: int
    y0: int
    w: int
    h: int
    bits: bytes

    def grid(self) -> np.ndarray:
        flat = np.unpackbits(np.frombuffer(self.bits, np.uint8), count=self.w * self.h)
        return flat.reshape(self.h, self.w).astype(bool)

    def prefers_i(self, x, y, grid=None) -> np.ndarray:
        """Whether i owns the pixels at i's frame coordinates (x, y) (float arrays)."""
        g = self.grid() if grid is None else grid
        s = np.float32(1.0 / self.scale)
        gx = np.floor((np.asarray(x, np.float32) + np.float32(0.5)) * s).astype(np.int32) - self.x0
        gy = np.floor((np.asarray(y, np.float32) + np.float32(0.5)) * s).astype(np.int32) - self.y0
        np.clip(gx, 0, self.w - 1, out=gx)
        np.clip(gy, 0, self.h - 1, out=gy)
        return g[gy, gx]


# -- solving one pair ------------------------------------------------------------------------------

def disagreement(va: np.ndarray, vb: np.ndarray, overlap: np.ndarray, white: float) -> np.ndarray:
    """Per grid pixel, how much frames a and b (float32 (h, w, C) on a's grid) disagree after the
    smooth gain that best matches a to b over ``overlap``: relative colour difference plus relative
    gradient difference; CLIPPED_COST where either is clipped; inf outside the overlap."""
    h, w, _ = va.shape
    ga, gb = va.mean(axis=2), vb.mean(axis=2)
    lo = 0.02 * white
    ok = overlap & (ga > lo) & (gb > lo) & (ga < 0.95 * white) & (gb < 0.95 * white)
    yy, xx = np.mgrid[0:h, 0:w]
    u = (xx - w / 2.0) / max(w, h)
    v = (yy - h / 2.0) / max(w, h)
    basis = np.stack([np.ones_like(u), u, v, u * u, u * v, v * v], axis=-1)
    coef = np.zeros(6)
    if ok.sum() > 30:
        d = np.log(gb[ok]) - np.log(ga[ok])
        bm = basis[ok]
        wts = np.ones(len(d))
        for _ in range(3):
            sw = np.sqrt(wts)
            coef = np.linalg.lstsq(bm * sw[:, None], d * sw, rcond=None)[0]
            r = d - bm @ coef
            s = max(1.4826 * float(np.median(np.abs(r))), 0.01)
            wts = 1.0 / (1.0 + (r / s) ** 2)
    ratio = np.exp(basis @ coef).astype(np.float32)
    ca = va * ratio[..., None]
    eps = np.float32(0.05 * white)
    colour = np.abs(ca - vb).sum(axis=2) / (np.abs(ca).sum(axis=2) + np.abs(vb).sum(axis=2) + eps)
    gca, gcb = ca.mean(axis=2), gb
    grad = np.zeros((h, w), np.float32)
    for dx, dy in ((1, 0), (0, 1)):
        ka = cv2.Sobel(gca, cv2.CV_32F, dx, dy, ksize=3)
        kb = cv2.Sobel(gcb, cv2.CV_32F, dx, dy, ksize=3)
        grad += np.abs(ka - kb) / (np.abs(ka) + np.abs(kb) + 4 * eps)
    cost = (2.0 * colour + 0.5 * grad).astype(np.float32)
    clipped = (va.max(axis=2) >= 0.98 * white) | (vb.max(axis=2) >= 0.98 * white)
    cost[clipped] = CLIPPED_COST
    cost[~overlap] = np.inf
    return cost


def _grid_graph(cost: np.ndarray, nodes: np.ndarray):
    """Sparse 8-connected graph over the ``nodes`` mask, edge weight = mean node cost x length."""
    from scipy.sparse import coo_matrix

    h, w = cost.shape
    idx = np.full((h, w), -1, np.int64)
    n = int(nodes.sum())
    idx[nodes] = np.arange(n)
    src, dst, wt = [], [], []
    for dy, dx in ((0, 1), (1, 0), (1, 1), (1, -1)):
        ys0, ys1 = slice(0, h - dy), slice(dy, h)
        xs0 = slice(max(0, -dx), w - max(0, dx))
        xs1 = slice(max(0, dx), w + min(0, dx))
        a, b = idx[ys0, xs0], idx[ys1, xs1]
        m = (a >= 0) & (b >= 0)
        c = 0.5 * (cost[ys0, xs0][m] + cost[ys1, xs1][m]) * (1.4142135 if dx and dy else 1.0)
        src.append(a[m])
        dst.append(b[m])
        wt.append(c)
    g = coo_matrix((np.concatenate(wt), (np.concatenate(src), np.concatenate(dst))), shape=(n, n)).tocsr()
    return g, idx


def cut(cost: np.ndarray, overlap: np.ndarray, inside_a: np.ndarray, inside_b: np.ndarray):
    """Ownership of the overlap (1 = a, 0 = b) from the cheapest path between the two places
    where a's border meets b's, or None when the overlap does not have exactly two (one frame
    inside the other, or a tangle)."""
    from scipy.ndimage import label as cc_label
    from scipy.sparse.csgraph import dijkstra

    h, w = overlap.shape
    pad_a = np.pad(inside_a, 1, constant_values=False)
    pad_b = np.pad(inside_b, 1, constant_values=True)  # b goes on beyond a's grid
    k4 = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    near_not_a = cv2.dilate((~pad_a).astype(np.uint8), k4)[1:-1, 1:-1] > 0
    near_not_b = cv2.dilate((~pad_b).astype(np.uint8), k4)[1:-1, 1:-1] > 0
    edge_a = overlap & near_not_a  # a's border: j must own it
    edge_b = overlap & near_not_b & ~edge_a  # b's border inside a: i must own it
    if not edge_a.any() or not edge_b.any():
        return None
    k8 = np.ones((3, 3), np.uint8)
    ends = (edge_a & (cv2.dilate(edge_b.astype(np.uint8), k8) > 0)) | \
           (edge_b & (cv2.dilate(edge_a.astype(np.uint8), k8) > 0))
    lab, n = cc_label(ends, structure=np.ones((3, 3)))
    if n != 2:
        return None
    graph, idx = _grid_graph(cost, overlap)
    sources = idx[lab == 1]
    targets = idx[lab == 2]
    dist, pred, _ = dijkstra(graph, directed=False, indices=sources, return_predecessors=True, min_only=True)
    t = int(targets[np.argmin(dist[targets])])
    if not np.isfinite(dist[t]):
        return None
    path = np.zeros(overlap.size, bool)
    flat = np.flatnonzero(overlap.ravel())  # node -> flat pixel
    node = t
    while node >= 0:
        path[flat[node]] = True
        node = pred[node]
    # The path and both junctions (clusters of pixels where the borders meet) cut the overlap.
    path = path.reshape(h, w) | (lab > 0)
    comps, nc = cc_label(overlap & ~path)
    touches_a = np.zeros(nc + 1, bool)
    touches_b = np.zeros(nc + 1, bool)
    touches_a[np.unique(comps[edge_a & ~path])] = True
    touches_b[np.unique(comps[edge_b & ~path])] = True
    touches_a[0] = touches_b[0] = False
    if (touches_a & touches_b).any():
        return None  # the cut leaks: no clean split
    own = np.ones((h, w), np.uint8)
    own[touches_a[comps]] = 0
    return own


def solve_pair(i, j, va, vb, overlap, inside_a, inside_b, scale, white) -> PairSeam | None:
    """The seam of frames i < j on i's reduced grid: ``va`` i's reduced image and ``vb`` j's
    resampled onto it (float32 (h, w, C)), ``overlap`` where both see, ``inside_a``/``inside_b``
    each frame's valid area on the grid."""
    if overlap.sum() < 16:
        return None
    cost = disagreement(va, vb, overlap, white)
    # Keep off both frames' borders: a penalty falling from 1 to 0 across BAND grid pixels.
    da = cv2.distanceTransform(np.pad(inside_a, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    db = cv2.distanceTransform(np.pad(inside_b, 1, constant_values=True).astype(np.uint8),
                               cv2.DIST_L2, 3)[1:-1, 1:-1]
    cost += np.maximum(0, 1 - da / BAND) + np.maximum(0, 1 - db / BAND) + STEP_COST
    own = cut(cost, overlap, inside_a, inside_b)
    if own is None:
        return None
    # Pixels around the overlap take their nearest overlap pixel's owner (full-resolution pixels
    # of the overlap may map just outside its reduced grid pixels).
    _, lab = cv2.distanceTransformWithLabels((~overlap).astype(np.uint8), cv2.DIST_L2, 3,
                                             labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(overlap)
    # Labels of zero pixels (the overlap) number them in scan order: lab[y, x] - 1 indexes ys/xs.
    near = lab - 1
    filled = own[ys[near], xs[near]]
    y0, y1 = max(0, ys.min() - 2), min(own.shape[0], ys.max() + 3)
    x0, x1 = max(0, xs.min() - 2), min(own.shape[1], xs.max() + 3)
    box = filled[y0:y1, x0:x1].astype(bool)
    return PairSeam(int(i), int(j), int(scale), int(x0), int(y0), int(x1 - x0), int(y1 - y0),
                    np.packbits(box.ravel()).tobytes())


# -- ownership in a tile ---------------------------------------------------------------------------

def assign(shape, fmaps, sizes, pair_seams=None, ids=None):
    """Label image (int16, -1 where no frame sees) over a window of ``shape`` from the frames'
    maps (None entries are skipped, in the frames' fixed order), their (width, height), and the
    pair seams (``{(gi, gj): PairSeam}`` keyed by global frame index ``ids[k]``, gi < gj)."""
    label = np.full(shape, -1, dtype=np.int16)
    pair_seams = pair_seams or {}
    ids = list(range(len(fmaps))) if ids is None else list(ids)
    scores = {}
    grids = {}

    def score(k):
        if k not in scores:
            scores[k] = centre_score(fmaps[k], *sizes[k])
        return scores[k]

    for k, fm in enumerate(fmaps):
        if fm is None:
            continue
        sub = label[fm.rows, fm.cols]
        free = fm.valid & (sub < 0)
        taken = fm.valid & ~free
        if taken.any():
            for w in np.unique(sub[taken]).tolist():
                m = taken & (sub == w)
                fw = fmaps[w]
                r0, c0 = fm.rows.start - fw.rows.start, fm.cols.start - fw.cols.start
                ys, xs = np.nonzero(m)
                seam = pair_seams.get((ids[w], ids[k]))
                if seam is not None:
                    if seam not in grids:
                        grids[seam] = seam.grid()
                    keep = seam.prefers_i(fw.mapx[ys + r0, xs + c0], fw.mapy[ys + r0, xs + c0], grids[seam])
                else:
                    keep = score(w)[ys + r0, xs + c0] <= score(k)[ys, xs]  # the earlier frame keeps ties
                sub[ys[~keep], xs[~keep]] = k
        sub[free] = k
    return label
