"""One output tile's points fused into heights, brightness and sigma, robustly, with honest holes.

A sample's height error: a point is uncertain along its ray by sigma_r (``triangulate``); moved
by dr along the unit ray u it lands dr u_h away at a height dr u_up off, so the DEM under it is off
by dr (u_up - g . u_h), g the terrain's gradient. Samples carry sigma_r u (``su``, ``se``,
``sn``: up, east, north) and the gradient comes from the neighbourhood surface below, so a far
grazing ray counts as precise on flat ground and as imprecise on a slope facing the camera.

Fusion (``fuse``), each step removing what the one before cannot vouch for:

1. neighbourhood test: each cell's median height votes once in its ``block_m`` block; the median
   of the 3 x 3 blocks around a sample is its reference (where fewer than ``MIN_VOTES`` of them
   hold data, as in sparsely sampled far terrain, that of blocks twice as wide, and so on), and a
   sample further from it than ``outlier_m`` or 3 of its sigmas, whichever is larger, is dropped
   (a wrong match lands metres off its neighbours; a rock narrower than the 3 blocks and taller
   than ``outlier_m`` is rare); a sample more than ``gross_m`` from the median of the widest
   neighbourhood (3 x 3 blocks of 8 ``block_m``, 4.8 m by default) goes too, whatever its own
   neighbourhood says: a patch of wrong matches can fill a small neighbourhood by itself;
2. per cell, a trimmed, weighted mean: the samples within 3 robust spreads (or 3 of their own
   sigmas, or the cell's relief on the local slope) of the cell's weighted median, weighted by
   1 / sigma^2, so one near, well-triangulated sample outweighs many far ones;
3. honest holes (``fill_gaps``): an empty cell is filled only in a gap at most ``fill`` cells
   wide, between samples on both sides along at least ``fill_directions`` of the row, column and
   diagonals, that agree to within max(``jump_sigmas`` sigma, ``jump_m``), by linear
   interpolation between them (exact on any plane); one direction that shows a jump refuses the
   cell. Nothing else is filled: the rest stays nodata.

Each cell's predicted 1-sigma height error (``dem_sigma.tif``) combines the samples' own error
(the mean of their variances over the number of pairs that saw the cell: one pair's samples in a
cell share matching windows, so they do not average down), the spread of the samples the cell
kept (as the standard error of their mean), and the pointing uncertainty of the models, which tilts a pair's whole surface about the
mast: distance from the rover times ``pointing_sigma_deg``. A filled cell takes its sides' sigma
plus half their difference. A cell whose samples leave it less certain than ``max_sigma`` stays
empty.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .grid import GridSpec


@dataclass(frozen=True)
class FuseSettings:
    fill: int = 16                 # widest gap filled (cells)
    jump_m: float = 0.10           # a gap whose sides differ by more than max(jump_sigmas sigma, jump_m)...
    jump_sigmas: float = 3.0       # ...stays open
    fill_directions: int = 1       # a gap cell needs samples on both sides along this many of the 4 lines
    block_m: float = 0.2           # block of the neighbourhood test (m)
    outlier_m: float = 0.5         # a sample further from its neighbourhood's median (or 3 sigma) is dropped
    gross_m: float = 5.0           # ...and one further than this from the median of the widest neighbourhood
    max_sigma: float = 0.25        # m: a cell whose samples leave it less certain than this stays empty
    pointing_sigma_deg: float = 0.3  # per-axis uncertainty of the models' pointing (for the sigma)
    sigma_floor: float = 0.001     # m: no sample is better than this
    relief_slope: float = 0.0      # slope assumed under a sample's horizontal error beyond the one measured


def _group_starts(keys_sorted, n):
    """Start of each key's run in a sorted key array (n possible keys) and the run lengths."""
    counts = np.bincount(keys_sorted, minlength=n)
    return np.cumsum(counts) - counts, counts


def sort_within(keys, values) -> np.ndarray:
    """The order that sorts by key, then by value within a key: one argsort of a packed int64
    (key in the high bits, the value quantised to 2^-31 of its span in the low ones), 5-10x faster
    than a lexsort of the two."""
    v = np.asarray(values, np.float64)
    if v.size == 0:
        return np.zeros(0, np.int64)
    lo, hi = float(v.min()), float(v.max())
    q = np.zeros(v.shape, np.int64) if hi <= lo else ((v - lo) * ((2**31 - 1) / (hi - lo))).astype(np.int64)
    return np.argsort((np.asarray(keys, np.int64) << 31) | q, kind="stable")


def sorted_median(keys_sorted, values_sorted, n) -> np.ndarray:
    """Median per key (0..n-1) of values sorted by (key, value); NaN for keys without values."""
    starts, counts = _group_starts(keys_sorted, n)
    out = np.full(n, np.nan)
    have = counts > 0
    lo = starts[have] + (counts[have] - 1) // 2
    hi = starts[have] + counts[have] // 2
    out[have] = 0.5 * (values_sorted[lo].astype(np.float64) + values_sorted[hi])
    return out


def group_median(keys, values, n) -> np.ndarray:
    """Median of ``values`` per key (0..n-1); NaN for keys without values."""
    order = sort_within(keys, values)
    return sorted_median(np.asarray(keys)[order], np.asarray(values)[order], n)


def sorted_weighted_median(keys_sorted, values_sorted, weights_sorted, n) -> np.ndarray:
    """Weighted median per key of values sorted by (key, value): the first value whose cumulative
    weight reaches half of its key's total."""
    ks, vs, ws = keys_sorted, values_sorted, np.asarray(weights_sorted, np.float64)
    if ks.size == 0:
        return np.full(n, np.nan)
    starts, counts = _group_starts(ks, n)
    cum = np.cumsum(ws)
    before = np.zeros(n)
    have = counts > 0
    before[have] = cum[starts[have]] - ws[starts[have]]
    total = np.bincount(ks, ws, n)
    reached = cum - before[ks] >= 0.5 * total[ks] * (1 - 1e-12)
    # The first index of each key's run where the half is reached.
    first = reached & np.concatenate([[True], ~reached[:-1] | (ks[1:] != ks[:-1])])
    out = np.full(n, np.nan)
    out[ks[first]] = vs[first]
    return out


#: A block's 3 x 3 neighbourhood needs this many blocks with data, else the next coarser level
#: (blocks twice as wide) answers for it: far terrain is sampled in lines ever further apart, and
#: a neighbourhood of a few cells there holds too few votes to outvote a patch of wrong matches or
#: to show the slope.
MIN_VOTES = 5
#: Coarser levels tried (blocks of 2, 4, 8 x block_m).
LEVELS = 3


def _median3x3(med):
    """nan-aware median of each block's 3 x 3 neighbourhood, and how many of the 9 hold data."""
    import warnings

    bh, bw = med.shape
    pad = np.pad(med, 1, constant_values=np.nan)
    stack = np.stack([pad[i:i + bh, j:j + bw] for i in range(3) for j in range(3)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(stack, axis=0), np.isfinite(stack).sum(axis=0)


def _coarser(med):
    """The nan-aware median of each 2 x 2 group of blocks."""
    import warnings

    bh, bw = med.shape
    pad = np.pad(med, ((0, bh % 2), (0, bw % 2)), constant_values=np.nan)
    q = pad.reshape(pad.shape[0] // 2, 2, pad.shape[1] // 2, 2).transpose(0, 2, 1, 3).reshape(
        pad.shape[0] // 2, pad.shape[1] // 2, 4)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmedian(q, axis=2)


def _nan_gradient(a, axis):
    """Central differences where both neighbours hold data, one-sided where one does, else 0."""
    a = np.moveaxis(a, axis, 0)
    g = np.zeros_like(a)
    if a.shape[0] > 1:
        fwd = np.full_like(a, np.nan)
        bwd = np.full_like(a, np.nan)
        fwd[:-1] = a[1:] - a[:-1]
        bwd[1:] = a[1:] - a[:-1]
        both = np.isfinite(fwd) & np.isfinite(bwd)
        g = np.where(both, 0.5 * (fwd + bwd), np.where(np.isfinite(fwd), fwd, np.where(np.isfinite(bwd), bwd, 0.0)))
    return np.moveaxis(g, 0, axis)


def neighbourhood_reference(cell_height: np.ndarray, block: int):
    """(reference, d/dcol, d/drow, coarse) per cell, float32: the median over the 3 x 3 blocks of
    ``block`` cells around it of the blocks' medians, each valid cell voting once (or, where fewer
    than ``MIN_VOTES`` blocks hold data, the same at the next coarser level); gradients of that
    surface in height per cell; and the coarsest level's reference (3 x 3 blocks of
    2^LEVELS x ``block`` cells) for the gross test."""
    h, w = cell_height.shape
    bh, bw = -(-h // block), -(-w // block)
    rr, cc = np.nonzero(np.isfinite(cell_height))
    bid = (rr // block) * bw + (cc // block)
    med = group_median(bid, cell_height[rr, cc], bh * bw).reshape(bh, bw)
    levels = []
    for level in range(LEVELS + 1):
        ref, votes = _median3x3(med)
        size = block * 2 ** level  # cells per block at this level
        levels.append((ref, votes, _nan_gradient(ref, 1) / size, _nan_gradient(ref, 0) / size))
        if min(med.shape) <= 2:
            break
        med = _coarser(med)
    ref, _, g_col, g_row = levels[-1]
    coarse = ref
    for fine_ref, votes, fine_gc, fine_gr in reversed(levels[:-1]):
        shape = fine_ref.shape
        up = lambda a: np.repeat(np.repeat(a, 2, 0), 2, 1)[:shape[0], :shape[1]]  # noqa: E731
        ok = votes >= MIN_VOTES
        ref, g_col, g_row = (np.where(ok, f, up(c)) for f, c in ((fine_ref, ref), (fine_gc, g_col), (fine_gr, g_row)))
        coarse = up(coarse)
    up = lambda a: np.repeat(np.repeat(a.astype(np.float32), block, 0), block, 1)[:h, :w]  # noqa: E731
    return up(ref), up(np.nan_to_num(g_col)), up(np.nan_to_num(g_row)), up(coarse)


def fuse(cells_hw, cell, height, value, su, se, sn, pair, gsd: float, settings: FuseSettings,
         gains=None) -> dict:
    """Robust per-cell estimates of one window of ``cells_hw`` = (h, w) cells from its samples
    (``cell`` = row * w + col). Returns float arrays (h, w), NaN where no sample survived:
    height, value, sigma (random + spread, m), and the counts n and pairs.

    Works on the samples sorted once by (cell, height): every per-cell statistic is then a run of
    consecutive samples, and dropping samples keeps the order."""
    s = settings
    h, w = cells_hw
    n = h * w
    order = sort_within(cell, height)
    cell = np.asarray(cell, np.int64)[order]
    height = np.asarray(height, np.float32)[order]
    pair_i = np.asarray(pair, np.int32)[order]
    value = np.asarray(value, np.float32)[order]
    if gains is not None:
        value = value * np.asarray(gains, np.float32)[pair_i]
    # 1. Neighbourhood test against the 3 x 3 block median of cell medians.
    block = max(1, int(round(s.block_m / gsd)))
    ref, g_col, g_row, coarse = neighbourhood_reference(sorted_median(cell, height, n).reshape(h, w), block)
    ref, g_col, g_row, coarse = ref.ravel(), g_col.ravel(), g_row.ravel(), coarse.ravel()
    # Columns run east, rows south: the gradient in height per metre east and north.
    se, sn = np.asarray(se, np.float32)[order], np.asarray(sn, np.float32)[order]
    sig = (np.asarray(su, np.float32)[order] - (g_col[cell] / gsd).astype(np.float32) * se
           + (g_row[cell] / gsd).astype(np.float32) * sn)
    # Relief the neighbourhood cannot show (a slope narrower than its blocks, or one the samples
    # misplace) still turns the horizontal error into height: ``relief_slope`` of it.
    sig = np.sqrt(sig * sig + np.float32(s.relief_slope ** 2) * (se * se + sn * sn) + np.float32(s.sigma_floor ** 2))
    keep = np.abs(height - ref[cell]) <= np.maximum(s.outlier_m, 3.0 * sig)
    # A patch of wrong matches large enough to be its own neighbourhood (a near-field corner
    # matched 20 m out, below the ground) still sits metres off the terrain around it.
    keep &= ~(np.abs(height - coarse[cell]) > s.gross_m)
    cell, height, sig, pair_i, value = cell[keep], height[keep], sig[keep], pair_i[keep], value[keep]
    # 2. Trimmed weighted mean around the weighted median.
    wt = 1.0 / (sig.astype(np.float64) ** 2)
    med = sorted_weighted_median(cell, height, wt, n)
    dev = np.abs(height - med[cell]).astype(np.float32)
    o2 = sort_within(cell, dev)
    mad = sorted_median(cell[o2], dev[o2], n)
    slope_relief = np.hypot(g_col, g_row)[cell]  # height change across one cell
    tol = np.maximum(np.maximum(3.0 * 1.4826 * mad[cell], 3.0 * sig), slope_relief)
    inl = dev <= tol
    cell, height, sig, pair_i, value, wt = cell[inl], height[inl], sig[inl], pair_i[inl], value[inl], wt[inl]
    sw = np.bincount(cell, wt, n)
    cnt = np.bincount(cell, minlength=n)
    with np.errstate(divide="ignore", invalid="ignore"):
        z = np.bincount(cell, wt * height, n) / sw
        v = np.bincount(cell, wt * value, n) / sw
        spread2 = np.bincount(cell, wt * (height - z[cell]) ** 2, n) / sw
    npairs = np.zeros(n, np.int64)
    for p in np.unique(pair_i):
        npairs += np.bincount(cell[pair_i == p], minlength=n) > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        # The samples' own error: their mean variance (n / sum 1/sigma^2) over the pairs that saw
        # the cell (one pair's samples in a cell share matching windows: that part does not
        # average down); their scatter, which does, as the standard error of their mean.
        rand2 = cnt / (sw * np.maximum(npairs, 1))
        spread2 = spread2 / np.maximum(cnt, 1)
        sigma = np.sqrt(rand2 + spread2)
    # Samples that disagree by metres (two surfaces, or a wrong match the tests could not outvote)
    # make no height worth a cell.
    vague = ~(sigma <= s.max_sigma)
    z[vague] = np.nan
    shape = (h, w)
    return {"height": z.reshape(shape), "value": v.reshape(shape), "sigma": sigma.reshape(shape),
            "n": cnt.reshape(shape), "pairs": npairs.reshape(shape)}


#: Directions a gap is bridged along: row, column and the two diagonals (row step, column step).
_DIRECTIONS = ((0, 1), (1, 0), (1, 1), (1, -1))


def _lines(shape, dr, dc):
    """Each cell's (position t, line) when the cells are laid out along the lines of direction
    (dr, dc): moving one step along (dr, dc) adds 1 to t and keeps the line."""
    h, w = shape
    r = np.arange(h, dtype=np.int32)[:, None]
    c = np.arange(w, dtype=np.int32)[None, :]
    if dr == 0:
        return np.broadcast_to(c, shape), np.broadcast_to(r, shape), w, h
    if dc == 0:
        return np.broadcast_to(r, shape), np.broadcast_to(c, shape), h, w
    if dc > 0:
        return np.broadcast_to(r, shape), c - r + (h - 1), h, w + h - 1
    return np.broadcast_to(r, shape), c + r, h, w + h - 1


def _neighbours(have, dr, dc, cells):
    """For the given cells (flat indices), the flat index of the nearest valid cell ahead along
    (dr, dc) and behind it, and the steps to each (a huge number where there is none): two
    cumulative max/min scans over the cells laid out along their lines, O(cells)."""
    t, line, nt, nl = _lines(have.shape, dr, dc)
    big = np.iinfo(np.int32).max // 4
    pos = np.full((nt, nl), -big, np.int32)
    pos[t[have], line[have]] = t[have]
    behind = np.maximum.accumulate(pos, axis=0)
    pos[pos < 0] = big
    ahead = np.minimum.accumulate(pos[::-1], axis=0)[::-1]
    del pos
    tc, lc = t.ravel()[cells], line.ravel()[cells]
    tb, ta = behind[tc, lc].astype(np.int64), ahead[tc, lc].astype(np.int64)
    k_b, k_a = tc - tb, ta - tc
    # Positions back to flat indices: the cell at (position, line), clipped where there is none.
    flat = np.full((nt, nl), -1, np.int64)
    flat[t, line] = np.arange(have.size).reshape(have.shape)
    return flat[np.clip(ta, 0, nt - 1), lc], k_a, flat[np.clip(tb, 0, nt - 1), lc], k_b


def fill_gaps(height, value, sigma, settings: FuseSettings):
    """Fill the small gaps of a fused window (arrays (h, w), NaN = empty) where no height jump
    borders them; returns the filled arrays and the mask of filled cells."""
    s = settings
    have = np.isfinite(height)
    filled = np.zeros(height.shape, bool)
    if s.fill < 1 or not have.any() or have.all():
        return height, value, sigma, filled
    reach = int(s.fill) + 1  # a gap of ``fill`` cells has its two sides fill + 1 steps apart
    n = height.size
    hf, vf, sf = height.ravel(), value.ravel(), sigma.ravel()
    empty = np.flatnonzero(~have.ravel())
    num_h, num_v, num_s, den = (np.zeros(n) for _ in range(4))
    jump = np.zeros(n, bool)
    directions = np.zeros(n, np.int8)
    for dr, dc in _DIRECTIONS:
        ia, ka, ib, kb = _neighbours(have, dr, dc, empty)
        ok = (ka + kb) <= reach
        cand, ia, ka, ib, kb = empty[ok], ia[ok], ka[ok], ib[ok], kb[ok]
        h1, h2 = hf[ia], hf[ib]
        diff = np.abs(h1 - h2)
        agree = diff <= np.maximum(s.jump_sigmas * np.hypot(sf[ia], sf[ib]), s.jump_m)
        jump[cand[~agree]] = True
        cand, ia, ka, ib, kb, h1, h2, diff = (a[agree] for a in (cand, ia, ka, ib, kb, h1, h2, diff))
        a = kb / (ka + kb)  # weight of the side ahead: linear interpolation between the sides
        wt = 1.0 / np.square(ka + kb, dtype=np.float64)
        num_h[cand] += wt * (a * h1 + (1 - a) * h2)
        num_v[cand] += wt * (a * vf[ia] + (1 - a) * vf[ib])
        # The sides' sigma, plus half their difference: what a straight line may miss between them.
        num_s[cand] += wt * (np.maximum(sf[ia], sf[ib]) ** 2 + (0.5 * diff) ** 2)
        den[cand] += wt
        directions[cand] += 1
    # Far terrain comes in lines of samples ever further apart along the line of sight: one
    # direction across such a line gap is enough by default (2 also drops the streaks that bridge
    # lone samples at the data's fringe, but, measured at 1/4 scale, 11 % of the 10-20 m band).
    filled = ((directions >= s.fill_directions) & ~jump).reshape(height.shape)
    with np.errstate(divide="ignore", invalid="ignore"):
        height = np.where(filled, (num_h / den).reshape(height.shape), height)
        value = np.where(filled, (num_v / den).reshape(height.shape), value)
        sigma = np.where(filled, np.sqrt(num_s / den).reshape(height.shape), sigma)
    return height, value, sigma, filled


def grid_tile(spec: GridSpec, tile_index, points: np.ndarray, settings: FuseSettings = FuseSettings(),
              gains=None):
    """Gridded arrays of one tile, NaN where empty: {"height", "value", "sigma", "filled"}
    (float32, filled bool). ``points``: POINT_FIELDS rows; ``gains``: per pair index, applied to
    the brightness."""
    row0, col0, rows, cols = spec.window(tile_index)
    halo = spec.halo
    h, w = rows + 2 * halo, cols + 2 * halo
    col, row, height, value, su, se, sn, pair = points
    c = np.floor(col.astype(np.float64) - col0 + halo).astype(np.int64)
    r = np.floor(row.astype(np.float64) - row0 + halo).astype(np.int64)
    ok = (c >= 0) & (r >= 0) & (c < w) & (r < h) & np.isfinite(height) & np.isfinite(su)
    gsd = abs(spec.transform.a)
    f = fuse((h, w), r[ok] * w + c[ok], height[ok], value[ok], su[ok], se[ok], sn[ok], pair[ok].astype(np.int64),
             gsd, settings, gains)
    z, v, sg, filled = fill_gaps(f["height"], f["value"], f["sigma"], settings)
    # Pointing: an error of the models tilts a pair's surface about the mast, the grid's centre.
    rr = (np.arange(row0 - halo, row0 - halo + h) + 0.5 - spec.height / 2.0)[:, None]
    cc = (np.arange(col0 - halo, col0 - halo + w) + 0.5 - spec.width / 2.0)[None, :]
    sg = np.hypot(sg, np.hypot(rr, cc) * (gsd * math.radians(settings.pointing_sigma_deg)))
    inner = (slice(halo, halo + rows), slice(halo, halo + cols))
    out = {}
    for name, a in (("height", z), ("value", v), ("sigma", sg)):
        a = a[inner].astype(np.float32)
        a[~np.isfinite(z[inner])] = np.nan
        out[name] = a
    out["filled"] = filled[inner]
    return out
