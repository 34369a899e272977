"""Seams: which frame owns each output pixel, cut where overlapping frames agree.

**Per pair, before the tiles.** For each pair of overlapping frames i < j the seam is solved once,
on frame i's reduced grid (:func:`solve_pair`, a few pixels of the frame per grid pixel: fine
enough to go round a rock), from what both frames show there (frame j resampled through both
camera models). The cost of a grid pixel is how much the frames disagree there after the best
smooth gain between them (relative colour difference plus gradient difference: parallax,
moving shadows, glare and clipping all disagree), plus a penalty within a band of either
frame's border (:data:`BAND_PX`). The overlap's boundary is made of frame i's border (where only j
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

#: Width (frame pixels) of the band along either frame's border that seams avoid: the blend's
#: support (a seam nearer a border blends with the frame's missing pixels, and costs the
#: masked pyramids).
BAND_PX = 96
UNDECIDED = 2
#: Overlaps smaller than this share of either frame keep the centre rule (corners of four frames).
MIN_OVERLAP = 0.04
#: Cost of one step of seam (keeps seams short where the frames agree everywhere).
STEP_COST = 0.03
#: Cost per unit of distance from the centre rule's seam (normalised squared centre distances):
#: a seam leaves the middle of an overlap only where that buys agreement.
CENTRE_WEIGHT = 0.5
#: Cost of a pixel where either frame is clipped (relative differences are at most ~1).
CLIPPED_COST = 2.0


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
        """Whether i owns the pixels at i's frame coordinates (x, y) (2-D float32 arrays): the
        nearest grid pixel's bit (beyond the box, the nearest box pixel's)."""
        g = self.grid() if grid is None else grid
        s = np.float32(1.0 / self.scale)
        # Grid pixel k spans frame pixels [k s - 0.5, (k + 1) s - 0.5): its centre in grid
        # coordinates is k, so nearest-neighbour sampling at (x + 0.5) / s - 0.5 picks it.
        gx = (x + np.float32(0.5)) * s - np.float32(0.5 + self.x0)
        gy = (y + np.float32(0.5)) * s - np.float32(0.5 + self.y0)
        return cv2.remap(g.view(np.uint8), gx, gy, cv2.INTER_NEAREST, borderMode=cv2.BORDER_REPLICATE) > 0


def seam_to_dict(s: PairSeam, a: str, b: str) -> dict:
    """A seam for ``render.json``: frame ids a < b (by render order), grid box, bits in base64."""
    import base64

    return {"a": a, "b": b, "scale": s.scale, "box": [s.x0, s.y0, s.w, s.h], "bits": base64.b64encode(s.bits).decode()}


def seam_from_dict(d: dict, i: int, j: int) -> PairSeam:
    import base64

    x0, y0, w, h = (int(v) for v in d["box"])
    return PairSeam(int(i), int(j), int(d["scale"]), x0, y0, w, h, base64.b64decode(d["bits"]))


# -- solving one pair ------------------------------------------------------------------------------

def disagreement(va: np.ndarray, vb: np.ndarray, overlap: np.ndarray, white: float) -> np.ndarray:
    """Per grid pixel, how much frames a and b (float32 (h, w, C) on a's grid) disagree after the
    smooth gain that best matches a to b over ``overlap``: relative colour difference plus relative
    gradient difference; CLIPPED_COST where either is clipped; inf outside the overlap."""
    h, w, nc = va.shape
    sa, sb = _band_sum(va), _band_sum(vb)
    ga, gb = sa / np.float32(nc), sb / np.float32(nc)
    lo = 0.02 * white
    ok = overlap & (ga > lo) & (gb > lo) & (ga < 0.95 * white) & (gb < 0.95 * white)
    u = (np.arange(w, dtype=np.float32) - w / 2.0) / max(w, h)
    v = (np.arange(h, dtype=np.float32) - h / 2.0) / max(w, h)
    coef = np.zeros(6)
    ys, xs = np.nonzero(ok)
    if len(ys) > 30:
        step = max(1, len(ys) // 2000)
        ys, xs = ys[::step], xs[::step]
        d = np.log(gb[ys, xs]) - np.log(ga[ys, xs])
        uu, vv = u[xs], v[ys]
        bm = np.stack([np.ones_like(uu), uu, vv, uu * uu, uu * vv, vv * vv], axis=1).astype(float)
        wts = np.ones(len(d))
        for _ in range(3):
            bw = bm * wts[:, None]
            coef = np.linalg.solve(bw.T @ bm + 1e-6 * np.eye(6), bw.T @ d)
            r = d - bm @ coef
            s = max(1.4826 * float(np.median(np.abs(r))), 0.01)
            wts = 1.0 / (1.0 + (r / s) ** 2)
    c = coef.astype(np.float32)
    ratio = np.exp(c[0] + (c[1] * u + c[3] * u * u)[None, :] + (c[2] * v + c[5] * v * v)[:, None]
                   + c[4] * v[:, None] * u[None, :])
    eps = np.float32(0.05 * white)
    if nc == 1:
        ca = va[..., 0] * ratio
        colour = np.abs(ca - vb[..., 0]) / (ca + vb[..., 0] + eps)
        gca = ca
    else:
        ca = va * ratio[..., None]
        colour = _band_sum(np.abs(ca - vb)) / (sa * ratio + sb + eps)
        gca = ga * ratio
    cost = 2.0 * colour + 0.5 * structure_mismatch(gca, gb, white)
    top = np.float32(0.98 * white * nc)  # clipped in any band reads as near white in the sum
    clipped = (sa >= top) | (sb >= top) if nc == 1 else (va.max(axis=2) >= 0.98 * white) | (vb.max(axis=2) >= 0.98 * white)
    cost[clipped] = CLIPPED_COST
    cost[~overlap] = np.inf
    return cost


def structure_mismatch(ga: np.ndarray, gb: np.ndarray, white: float) -> np.ndarray:
    """How differently two grey images (float32 (h, w), one grid) vary from pixel to pixel: the
    gradient difference over the gradients' size, 0 (same structure, whatever the gain) to ~2;
    low in flat areas. Parallax and misregistration show as mismatched structure."""
    eps = np.float32(0.2 * white)
    out = np.zeros(ga.shape, np.float32)
    for dx, dy in ((1, 0), (0, 1)):
        ka = cv2.Sobel(ga, cv2.CV_32F, dx, dy, ksize=3)
        kb = cv2.Sobel(gb, cv2.CV_32F, dx, dy, ksize=3)
        out += np.abs(ka - kb) / (np.abs(ka) + np.abs(kb) + eps)
    return out


def _band_sum(a: np.ndarray) -> np.ndarray:
    """Sum over the last axis (1 or 3 bands): numpy's reduction over a short last axis is slow."""
    if a.shape[2] == 1:
        return a[..., 0].copy()
    out = a[..., 0] + a[..., 1]
    out += a[..., 2]
    return out


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


def _components(mask: np.ndarray, connectivity: int):
    """(labels, count) of the mask's connected components, numbered 1.. in raster order of their
    first pixel, exactly as scipy.ndimage.label numbers them: OpenCV's pixel-based SAUF scan (the
    block-based default may number them otherwise), without the 0.075 s import of scipy.ndimage
    that every rendered stitch paid for this alone."""
    n, labels = cv2.connectedComponentsWithAlgorithm(mask.astype(np.uint8), connectivity, cv2.CV_32S, cv2.CCL_SAUF)
    return labels, n - 1


def cut(cost: np.ndarray, overlap: np.ndarray, inside_a: np.ndarray, inside_b: np.ndarray):
    """Ownership of the overlap (1 = a, 0 = b): its boundary runs along a's border where b goes on
    beyond it (j must own those pixels), along b's border where a goes on (i must own them), and
    elsewhere along both frames' borders (free). The cheapest path between the two free stretches
    (or points where the borders cross) cuts the overlap in two. None when the overlap has not
    exactly two of them (one frame inside the other, or a tangle)."""
    from scipy.sparse.csgraph import dijkstra

    h, w = overlap.shape
    k4 = np.array([[0, 1, 0], [1, 1, 1], [0, 1, 0]], np.uint8)
    k8 = np.ones((3, 3), np.uint8)

    def near(mask, k=k4):
        return cv2.dilate(mask.astype(np.uint8), k) > 0

    edge_a = overlap & near(inside_b & ~inside_a)  # beyond is b alone: j owns
    edge_b = overlap & near(inside_a & ~inside_b) & ~edge_a  # beyond is a alone: i owns
    if not edge_a.any() or not edge_b.any():
        return None
    boundary = overlap & near(~overlap)
    ends = (boundary & ~edge_a & ~edge_b) | (edge_a & near(edge_b, k8)) | (edge_b & near(edge_a, k8))
    lab, n = _components(ends, 8)
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
    # The path and both free stretches cut the overlap.
    path = path.reshape(h, w) | (lab > 0)
    comps, nc = _components(overlap & ~path, 4)
    touches_a = np.zeros(nc + 1, bool)
    touches_b = np.zeros(nc + 1, bool)
    touches_a[np.unique(comps[edge_a & ~path])] = True
    touches_b[np.unique(comps[edge_b & ~path])] = True
    touches_a[0] = touches_b[0] = False
    if (touches_a & touches_b).any():
        return None  # the cut leaks: no clean split
    own = np.ones((h, w), np.uint8)
    own[touches_a[comps]] = 0
    own[path] = UNDECIDED  # the cut itself: its neighbours decide (solve_pair)
    return own


def band(scale: int, grid_shape=None) -> int:
    """BAND_PX in reduced pixels of ``scale`` frame pixels, at most an eighth of the grid's
    smaller side (``grid_shape``: a small frame's overlaps are narrow)."""
    b = -(-BAND_PX // int(scale))
    if grid_shape is not None:
        b = min(b, min(grid_shape) // 8)
    return max(2, b)


def solve_pair(i, j, va, vb, overlap, inside_a, inside_b, scale, white, origin=(0, 0), band_px=None,
               centre_gap=None) -> PairSeam | None:
    """The seam of frames i < j on a box of i's reduced grid at ``origin`` (x, y): ``va`` i's
    reduced image and ``vb`` j's resampled onto it (float32 (h, w, C)), ``overlap`` where both
    see, ``inside_a``/``inside_b`` each frame's valid area there. The box must reach at least
    band + 1 pixels beyond the overlap (a ring beyond frame i's grid included: whether j sees
    there decides who owns i's border); ``band_px``: the border band in grid pixels (default
    :func:`band`); ``centre_gap``: how far each grid pixel is from the centre rule's seam (the
    difference of the two frames' normalised squared centre distances), which the seam follows
    (CENTRE_WEIGHT per unit) where the frames agree everywhere."""
    if overlap.sum() < 16:
        return None
    cost = disagreement(va, vb, overlap, white)
    # Keep off both frames' borders: a penalty falling from 1 to 0 across the band.
    da = cv2.distanceTransform(inside_a.astype(np.uint8), cv2.DIST_L2, 3)
    db = cv2.distanceTransform(inside_b.astype(np.uint8), cv2.DIST_L2, 3)
    b = band(scale, inside_a.shape) if band_px is None else band_px
    cost += np.maximum(0, 1 - da / b) + np.maximum(0, 1 - db / b) + STEP_COST
    if centre_gap is not None:
        cost += CENTRE_WEIGHT * np.minimum(centre_gap, 1.0)
    own = cut(cost, overlap, inside_a, inside_b)
    if own is None:
        return None
    # The cut's own pixels, and pixels around the overlap, take their nearest decided overlap
    # pixel's owner (full-resolution pixels of the overlap may map just outside its grid pixels).
    decided = overlap & (own != UNDECIDED)
    if not decided.any():
        return None
    _, lab = cv2.distanceTransformWithLabels((~decided).astype(np.uint8), cv2.DIST_L2, 3,
                                             labelType=cv2.DIST_LABEL_PIXEL)
    ys, xs = np.nonzero(decided)
    # Labels of zero pixels (the overlap) number them in scan order: lab[y, x] - 1 indexes ys/xs.
    near = lab - 1
    filled = own[ys[near], xs[near]]
    y0, y1 = max(0, ys.min() - 2), min(own.shape[0], ys.max() + 3)
    x0, x1 = max(0, xs.min() - 2), min(own.shape[1], xs.max() + 3)
    box = filled[y0:y1, x0:x1].astype(bool)
    return PairSeam(int(i), int(j), int(scale), int(x0 + origin[0]), int(y0 + origin[1]), int(x1 - x0), int(y1 - y0),
                    np.packbits(box.ravel()).tobytes())


# -- ownership in a tile ---------------------------------------------------------------------------

def assign(shape, fmaps, sizes, pair_seams=None, ids=None):
    """Label image (int16, -1 where no frame sees) over a window of ``shape`` from the frames'
    maps (None entries are skipped, in the frames' fixed order), their (width, height), and the
    pair seams (``{(gi, gj): PairSeam}`` keyed by global frame index ``ids[k]``, gi < gj)."""
    label = np.full(shape, -1, dtype=np.int16)
    pair_seams = pair_seams or {}
    ids = list(range(len(fmaps))) if ids is None else list(ids)
    grids = {}
    for k, fm in enumerate(fmaps):
        if fm is None:
            continue
        sub = label[fm.rows, fm.cols]
        for w in range(k):
            fw = fmaps[w]
            if fw is None:
                continue
            r0, r1 = max(fm.rows.start, fw.rows.start), min(fm.rows.stop, fw.rows.stop)
            c0, c1 = max(fm.cols.start, fw.cols.start), min(fm.cols.stop, fw.cols.stop)
            if r1 <= r0 or c1 <= c0:
                continue
            ik = (slice(r0 - fm.rows.start, r1 - fm.rows.start), slice(c0 - fm.cols.start, c1 - fm.cols.start))
            m = sub[ik] == w
            m &= fm.valid[ik]
            rows, cols = np.flatnonzero(m.any(axis=1)), np.flatnonzero(m.any(axis=0))
            if not len(rows):
                continue
            # Decide only over the box of the contested pixels.
            br = slice(rows[0], rows[-1] + 1)
            bc = slice(cols[0], cols[-1] + 1)
            m = m[br, bc]
            iw = (slice(r0 - fw.rows.start + br.start, r0 - fw.rows.start + br.stop),
                  slice(c0 - fw.cols.start + bc.start, c0 - fw.cols.start + bc.stop))
            ikb = (slice(ik[0].start + br.start, ik[0].start + br.stop),
                   slice(ik[1].start + bc.start, ik[1].start + bc.stop))
            seam = pair_seams.get((ids[w], ids[k]))
            if seam is not None:
                if seam not in grids:
                    grids[seam] = seam.grid()
                keep = seam.prefers_i(fw.mapx[iw], fw.mapy[iw], grids[seam])
            else:
                # The earlier frame keeps ties.
                keep = _centre(fw.mapx[iw], fw.mapy[iw], *sizes[w]) <= _centre(fm.mapx[ikb], fm.mapy[ikb], *sizes[k])
            np.copyto(sub[ikb], np.int16(k), where=m & ~keep)
        np.copyto(sub, np.int16(k), where=fm.valid & (sub < 0))
    return label


def _centre(mapx, mapy, fw, fh):
    """Normalised squared distance from the frame's centre at its map positions."""
    u = (mapx - np.float32((fw - 1) / 2.0)) * np.float32(2.0 / fw)
    v = (mapy - np.float32((fh - 1) / 2.0)) * np.float32(2.0 / fh)
    return u * u + v * v
