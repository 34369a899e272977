"""Photometry: how each frame's values are corrected before blending, solved over the whole pan.

**The model.** Frame i's value v at frame pixel (x, y), channel c, is rendered as

    R = rolloff(v * exp(a_ic + V_g(rho) + t_i . (rho_x, rho_y)))

with ``rho = ((x, y) - principal point) / focal / rho_ref`` the field position (1 at the
group's farthest corner), ``a_ic`` the frame's exposure per channel (one for grey frames),
``V_g(rho) = b1 rho^2 + b2 rho^4 + b3 rho^6`` the vignetting of the frame's lens group (frames of
one size and focal length share a lens) and ``t_i`` a tilt of the frame's gain across its field,
which takes up what neither exposure nor vignetting explains (a gradient of stray light, a
flat field off by a few percent) where the overlaps support it. The correction works on the
stored values: for a power-law response (the square-root companding of rover frames, linear
data) a multiplicative correction in values is one in radiance, with the exponent of the
response (a frame exposed ``e`` times longer through a square-root LUT is ``sqrt(e)`` brighter
in values).

``rolloff`` keeps highlights white: a clipped pixel (at or above ``white``, the data's real
maximum) is rendered white whatever the gain, and values between ``knee`` and ``white`` blend
smoothly towards it, so a clipped sky in a darkened frame stays white instead of turning into a
flat grey beside the other frames' white sky.

**The fit.** Every frame is read once at a reduced scale (:func:`prepare`); for each pair of
overlapping frames the overlap is sampled on a grid of the first frame's reduced pixels carried
through both camera models (far-field directions, as the renderer), giving value pairs
(:func:`pair_samples`). Samples near black or near clipping, on steep gradients (where a residual
misregistration matters) or outside either frame's valid area get no vote. All pairs are solved
together (:func:`solve`), so loops close: linear least squares in log values, iteratively
reweighted (Cauchy) so that parallax, moving shadows and glare in one frame do not pull the rest,
with weak priors (exposure 0, tilt 0, no vignetting) for what the overlaps do not determine and
one strong constraint: the mean log exposure of each channel is 0 (mean gain 1).

Thresholds follow the data's real bit depth (:func:`white_level`): 12-bit data in 16-bit
containers is white at 4095, not 65535.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .masks import Margins, detect_margins, valid_box
from .warp import bilinear

#: Target size of a frame's reduced copy (pixels): fine enough for a seam to go round a rock
#: (a reduced pixel is 3-4 pixels of a 1-2 MP frame), small enough to hold every frame's.
REDUCED_PIXELS = 100_000
#: Samples kept per pair (evenly over the overlap).
PAIR_SAMPLES = 1200
#: Samples darker than this fraction of white, or brighter than WHITE_VOTE, get no vote.
BLACK = 0.02
WHITE_VOTE = 0.95
#: Highlights blend towards white from this fraction of white up.
KNEE = 0.96
#: Log-gradient (per reduced pixel) at which a sample's weight halves: steep places move with a
#: residual misregistration.
GRADIENT_HALF = 0.04
#: Prior weights (against the sum of sample weights of a frame, see solve()).
PRIOR_EXPOSURE = 1e-3
PRIOR_TILT = 0.05
PRIOR_VIGNETTING = 1e-3
PRIOR_OFFSET = 0.05
PRIOR_OFFSET_FIELD = 0.01
#: Terms of a frame's offset field (1, u, v, u^2, uv, v^2: a veil of stray light is smooth).
OFFSET_TERMS = 6
#: Tie points: brightness is the mean of a (2r+1)^2 box (well above a residual misregistration);
#: every HOLD_OUT-th tie point is held out of the fit (for the agreement measure); where tie
#: points are given, a dense sample weighs DENSE_WEIGHT of one (dense samples in near terrain
#: compare different things: parallax).
TIE_RADIUS = 4
HOLD_OUT = 3
DENSE_WEIGHT = 0.02
#: Robust scale floor (log units) and reweighting rounds.
SIGMA_FLOOR = 0.01
ROUNDS = 10


def reduction(width: int, height: int) -> int:
    """Integer reduction factor that brings a frame near REDUCED_PIXELS."""
    return max(1, int(round(math.sqrt(width * height / REDUCED_PIXELS))))


@dataclass(frozen=True)
class FrameData:
    """What one read of a frame yields: its margins, whether it has alpha, its largest value, and
    a reduced copy (block means of ``scale`` x ``scale`` pixels, the input's dtype, (h, w, C))
    with the reduced pixels whose whole block is valid."""

    margins: Margins
    alpha: bool
    top: float
    scale: int
    image: np.ndarray
    valid: np.ndarray
    points: np.ndarray | None = None  # brightness (N, C) at the points asked for (tie points)


def prepare(path: str, width: int, height: int, scale: int, points=None) -> FrameData:
    """Read a frame once: margins from its pixels, alpha, its maximum, the reduced copy and the
    brightness at ``points`` (N, 2) (:func:`point_values`)."""
    from .warp import read_pixels

    img, alpha = read_pixels(path)
    values = None if points is None or not len(points) else point_values(img, np.asarray(points, float))
    margins = detect_margins(img, alpha)
    top = float(img.max()) if img.size else 0.0
    rw, rh = max(1, width // scale), max(1, height // scale)
    crop = img[:rh * scale, :rw * scale]
    red = cv2.resize(crop, (rw, rh), interpolation=cv2.INTER_AREA) if scale > 1 else crop.copy()
    if red.ndim == 2:
        red = red[..., None]
    # A reduced pixel is valid when its whole block lies inside the margins (and is opaque).
    x0, x1, y0, y1 = valid_box(margins, width, height)
    bx = np.arange(rw) * scale
    by = np.arange(rh) * scale
    okx = (bx >= np.ceil(x0)) & (bx + scale - 1 <= np.floor(x1))
    oky = (by >= np.ceil(y0)) & (by + scale - 1 <= np.floor(y1))
    valid = oky[:, None] & okx[None, :]
    if alpha is not None:
        opaque = (alpha[:rh * scale, :rw * scale] > 0).astype(np.float32)
        valid &= cv2.resize(opaque, (rw, rh), interpolation=cv2.INTER_AREA) > 1 - 1e-6
    return FrameData(margins, alpha is not None, top, scale, np.ascontiguousarray(red), valid, values)


def point_values(img: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Brightness (N, C) of a frame at points (N, 2): each channel's mean over a box of
    2 TIE_RADIUS + 1 pixels, bilinear between pixel centres; NaN where the box leaves the frame."""
    a = img[..., None] if img.ndim == 2 else img
    k = 2 * TIE_RADIUS + 1
    out = np.stack([bilinear(cv2.blur(a[..., c].astype(np.float32), (k, k)), xy[:, 0], xy[:, 1])
                    for c in range(a.shape[2])], axis=1)
    h, w = a.shape[:2]
    r = TIE_RADIUS
    inside = (xy[:, 0] >= r) & (xy[:, 0] <= w - 1 - r) & (xy[:, 1] >= r) & (xy[:, 1] <= h - 1 - r)
    out[~inside] = np.nan
    return out


def held_out(n: int) -> np.ndarray:
    """Which of n tie points (in the order the registration lists them) the fit leaves out."""
    return np.arange(n) % HOLD_OUT == 0


def white_level(tops, dtype: str) -> float:
    """The data's real maximum: 2^bits - 1 for the fewest bits (8 at least) that hold the largest
    value seen (12-bit data in a 16-bit container: 4095), 1.0 for float data at most 1."""
    top = max(tops) if len(tops) else 0.0
    if dtype == "float32":
        return 1.0 if top <= 1.0 else float(top)
    bits = max(8, int(math.ceil(math.log2(top + 1.0)))) if top > 0 else 8
    return float(2 ** min(bits, 16) - 1)


# -- the model ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Tone:
    """One frame's photometric correction (small and picklable: it travels in every tile job)."""

    gain: tuple = (1.0,)            # per channel: exp(a_ic)
    centre: tuple = (0.0, 0.0)      # principal point (frame pixels)
    norm: float = 1.0               # pixels of field radius per unit rho (focal x rho_ref)
    vignetting: tuple = (0.0, 0.0, 0.0)
    tilt: tuple = (0.0, 0.0)
    offset: tuple = (0.0, 0.0, 0.0)  # subtracted before the gain (a veil, a black level): o0 + ou rho_x + ov rho_y
    white: float = 255.0
    knee: float = 229.5

    @property
    def uniform(self) -> bool:
        """No spatial term: gain and offset are the same everywhere in the frame."""
        return not (any(self.vignetting) or any(self.tilt) or any(self.offset[1:]))

    def field(self, x, y):
        """Log gain (spatial part) and offset at frame pixels (x, y): float32 (..., 2), for the
        renderer to interpolate with its maps (:func:`.warp.frame_map`)."""
        return np.stack([self.log_field(x, y), self.offset_field(x, y)], axis=-1)

    def log_field(self, x, y):
        """The spatial part of the log gain at frame pixels (x, y) (float32 arrays)."""
        u = (np.asarray(x, np.float32) - np.float32(self.centre[0])) * np.float32(1.0 / self.norm)
        v = (np.asarray(y, np.float32) - np.float32(self.centre[1])) * np.float32(1.0 / self.norm)
        # Far off the frame (the renderer's sentinels) the field is never used: keep it finite.
        np.clip(u, -4, 4, out=u)
        np.clip(v, -4, 4, out=v)
        r2 = u * u + v * v
        b1, b2, b3 = (np.float32(b) for b in self.vignetting)
        out = r2 * (b1 + r2 * (b2 + r2 * b3))
        if self.tilt[0] or self.tilt[1]:
            out += np.float32(self.tilt[0]) * u + np.float32(self.tilt[1]) * v
        return out

    def offset_field(self, x, y):
        """The offset (values) at frame pixels (x, y), float32."""
        if not any(self.offset[1:]):
            return np.full(np.shape(x), np.float32(self.offset[0]), np.float32)
        u = np.clip((np.asarray(x, np.float32) - np.float32(self.centre[0])) * np.float32(1.0 / self.norm), -4, 4)
        v = np.clip((np.asarray(y, np.float32) - np.float32(self.centre[1])) * np.float32(1.0 / self.norm), -4, 4)
        b = offset_basis(u, v)
        return (b[..., :len(self.offset)] * np.asarray(self.offset, np.float32)).sum(axis=-1).astype(np.float32)

    def exposure(self) -> float:
        """The frame's exposure relative to the pan's common level (values; 1 / mean gain)."""
        return float(np.exp(-np.mean(np.log(self.gain))))


def offset_basis(u, v):
    """The offset field's terms at field positions (u, v): 1, u, v, u^2, uv, v^2 (last axis)."""
    one = np.ones_like(u)
    return np.stack([one, u, v, u * u, u * v, v * v], axis=-1)


def render_values(tone: Tone, x, y, values):
    """Values as rendered (before blending) of a frame's ``values`` (N, C) at its pixels (x, y)
    (N,): the renderer's own arithmetic, for measures that compare frames as rendered."""
    v = np.asarray(values, np.float32)
    g = np.exp(tone.log_field(x, y))[:, None] * np.asarray(tone.gain, np.float32)[None, :]
    out = np.maximum(v - tone.offset_field(x, y)[:, None], 0) * g
    return rolloff(out, v, tone.white, tone.knee, tone.white)


def rolloff(out, v, white, knee, white_out):
    """Highlights towards white: ``out`` (``v`` gained, in output units) stays where v <= knee,
    becomes ``white_out`` where v >= white (clipped input), and blends by a smoothstep in
    between; where ``out`` exceeds ``white_out`` it is clipped. In place on ``out`` (float32),
    which is returned."""
    hi = v > knee
    if knee < white and hi.any():
        t = np.clip((v[hi].astype(np.float32) - np.float32(knee)) / np.float32(white - knee), 0, 1)
        s = t * t * (3 - 2 * t)
        o = out[hi]
        out[hi] = o + (np.float32(white_out) - o) * s
    np.minimum(out, np.float32(white_out), out=out)
    return out


# -- samples from one pair ------------------------------------------------------------------------

@dataclass(frozen=True)
class PairSamples:
    """Corresponding samples of frames i and j: frame pixels (N, 2) each, values (N, C) each and
    weights (N,)."""

    i: int
    j: int
    xi: np.ndarray
    xj: np.ndarray
    vi: np.ndarray
    vj: np.ndarray
    w: np.ndarray


def blurred(img: np.ndarray) -> np.ndarray:
    """float32 copy of a reduced image, lightly blurred so that a residual misregistration of a
    reduced pixel hardly moves a sample."""
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0).reshape(img.shape)


def pair_samples(i, j, ba, bb, overlap, mapx, mapy, scale_a, scale_b, white) -> PairSamples | None:
    """Samples of the overlap of frames i (``ba``: its blurred reduced image) and j (``bb``) on
    i's reduced grid: ``overlap`` (h, w) bool where both see, ``mapx``/``mapy`` the positions in
    j's full-resolution pixels of i's reduced pixel centres."""
    inner = cv2.erode(overlap.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    ys, xs = np.nonzero(inner)
    if len(ys) < 20:
        return None
    stride = max(1, int(len(ys) // PAIR_SAMPLES))
    ys, xs = ys[::stride], xs[::stride]
    va = ba[ys, xs]
    qx = (mapx[ys, xs] + 0.5) / scale_b - 0.5
    qy = (mapy[ys, xs] + 0.5) / scale_b - 0.5
    vb = np.stack([bilinear(np.ascontiguousarray(bb[..., c]), qx, qy) for c in range(bb.shape[2])], axis=1)
    lo, hi = BLACK * white, WHITE_VOTE * white
    ok = (va > lo).all(axis=1) & (vb > lo).all(axis=1) & (va < hi).all(axis=1) & (vb < hi).all(axis=1)
    # Steepness of the log image at the sample (either frame): misregistration sensitivity.
    ga = _log_gradient(ba)[ys, xs]
    w = 1.0 / (1.0 + (ga / GRADIENT_HALF) ** 2)
    ok &= np.isfinite(vb).all(axis=1)
    if ok.sum() < 20:
        return None
    xi = np.stack([(xs + 0.5) * scale_a - 0.5, (ys + 0.5) * scale_a - 0.5], axis=1)[ok]
    xj = np.stack([mapx[ys, xs], mapy[ys, xs]], axis=1)[ok].astype(float)
    return PairSamples(i, j, xi, xj, va[ok], vb[ok], w[ok].astype(np.float32))


def _log_gradient(b: np.ndarray) -> np.ndarray:
    g = np.log(np.maximum(b.mean(axis=2), 1e-3))
    gx = cv2.Sobel(g, cv2.CV_32F, 1, 0, ksize=3) / 8.0
    gy = cv2.Sobel(g, cv2.CV_32F, 0, 1, ksize=3) / 8.0
    return np.hypot(gx, gy)


# -- the joint solve ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Lens:
    """Where a frame's field position comes from: principal point and focal length (pixels)."""

    centre: tuple
    focal: float


def lens_of(model, width: int, height: int) -> Lens:
    hc, vc, hs, vs = model.intrinsics()
    return Lens((float(hc), float(vc)), float(0.5 * (hs + vs)))


def lens_groups(lenses, sizes):
    """Group index per frame: frames of one size whose focal lengths agree within 3 % share a
    lens (and its vignetting); and each group's rho_ref (its farthest corner, in focal lengths)."""
    keys, groups, refs = [], [], []
    for lens, (w, h) in zip(lenses, sizes):
        key = None
        for g, (kw, kh, kf) in enumerate(keys):
            if (kw, kh) == (w, h) and abs(math.log(lens.focal / kf)) < 0.03:
                key = g
                break
        if key is None:
            keys.append((w, h, lens.focal))
            refs.append(0.0)
            key = len(keys) - 1
        cx, cy = lens.centre
        corner = max(math.hypot(x - cx, y - cy) for x in (-0.5, w - 0.5) for y in (-0.5, h - 0.5)) / lens.focal
        refs[key] = max(refs[key], corner)
        groups.append(key)
    return groups, refs


#: The models tried, simplest first: (name, tilt, offset terms).
MODELS = (("exposure+vignetting", False, 0), ("+offset", False, 1), ("+tilt+offset field", True, OFFSET_TERMS))
#: A more complex model must beat the simpler ones' validation error by this factor.
SIMPLER_WITHIN = 1.03


def fit(n: int, channels: int, samples: list, lenses: list, sizes: list, white: float):
    """The pan's tones with the model the data supports: each of :data:`MODELS` is solved on
    three quarters of the samples and scored on the rest (the median absolute log difference of
    the two frames as rendered); the simplest model within SIMPLER_WITHIN of the best score wins
    and is solved again on all samples. Returns (tones, stats) as :func:`solve`."""
    train, check = [], []
    for s in samples:
        k = np.arange(len(s.w)) % 4 == 3
        train.append(_subset(s, ~k))
        check.append(_subset(s, k))
    scores = []
    for name, tilt, terms in MODELS:
        tones, _ = solve(n, channels, train, lenses, sizes, white, tilt=tilt, offset_terms=terms)
        scores.append(_score(tones, check))
    best = min(scores)
    pick = next(k for k, sc in enumerate(scores) if sc <= best * SIMPLER_WITHIN)
    name, tilt, terms = MODELS[pick]
    tones, stats = solve(n, channels, samples, lenses, sizes, white, tilt=tilt, offset_terms=terms)
    stats["model"] = name
    stats["validation"] = {m[0]: float(sc) for m, sc in zip(MODELS, scores)}
    return tones, stats


def _subset(s, sel):
    return PairSamples(s.i, s.j, s.xi[sel], s.xj[sel], s.vi[sel], s.vj[sel], s.w[sel])


def _score(tones, samples) -> float:
    """Weighted median of |log Ri - log Rj| over samples (the frames' values as rendered)."""
    r, w = [], []
    for s in samples:
        if not len(s.w):
            continue
        ri = render_values(tones[s.i], s.xi[:, 0], s.xi[:, 1], s.vi).mean(axis=1)
        rj = render_values(tones[s.j], s.xj[:, 0], s.xj[:, 1], s.vj).mean(axis=1)
        ok = (ri > 0) & (rj > 0)
        r.append(np.abs(np.log(np.maximum(ri, 1e-6)) - np.log(np.maximum(rj, 1e-6)))[ok])
        w.append(s.w[ok])
    if not r:
        return 0.0
    r, w = np.concatenate(r), np.concatenate(w).astype(float)
    order = np.argsort(r)
    cw = np.cumsum(w[order])
    return float(r[order][np.searchsorted(cw, 0.5 * cw[-1])]) if cw[-1] > 0 else 0.0


def solve(n: int, channels: int, samples: list, lenses: list, sizes: list, white: float,
          tilt: bool = True, offset_terms: int = OFFSET_TERMS):
    """The pan's tones (n Tone) and fit statistics from ``samples`` (PairSamples over frames
    0..n-1, values with ``channels`` bands), ``lenses`` and ``sizes`` ((width, height)) per frame.

    Gauss-Newton on the log residuals (the offsets enter non-linearly), each step a weighted
    linear least squares whose weights are the samples' own times Cauchy weights of the last
    residuals (scale from their MAD)."""
    from scipy.sparse import coo_matrix, diags, hstack
    from scipy.sparse.linalg import spsolve

    groups, refs = lens_groups(lenses, sizes)
    ng = len(refs)
    C = channels
    # Unknowns: exposure (n x C), tilt (n x 2), offset field (n x 3: constant, u, v), vignetting (ng x 3).
    Q = max(1, offset_terms)
    offset = offset_terms > 0
    E, T, O, V = 0, n * C, n * C + 2 * n, n * C + (2 + Q) * n
    m = V + 3 * ng
    norms = [lenses[i].focal * refs[groups[i]] for i in range(n)]
    samples = [s for s in samples if len(s.w)]
    if not samples:
        tones = [_tone(lenses[i], norms[i], np.zeros(C), (0.0, 0.0), (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), white)
                 for i in range(n)]
        return tones, {"pairs": 0, "samples": 0, "log_rms_before": 0.0, "log_rms_after": 0.0}

    def field(i, xy):
        u = (xy[:, 0] - lenses[i].centre[0]) / norms[i]
        v = (xy[:, 1] - lenses[i].centre[1]) / norms[i]
        return u, v, u * u + v * v

    # The linear part of the design (everything but the offsets), one block of rows per channel.
    rows, cols, vals = [], [], []
    vi_all, vj_all, fi_all, fj_all, w_all, pair_of, bi_all, bj_all = [], [], [], [], [], [], [], []
    r0 = 0
    for p_idx, s in enumerate(samples):
        ui, vi, r2i = field(s.i, s.xi)
        uj, vj, r2j = field(s.j, s.xj)
        N = len(s.w)
        for c in range(C):
            cc = c if s.vi.shape[1] == C else 0
            rr = r0 + np.arange(N)
            ent = [(E + s.i * C + c, 1.0), (E + s.j * C + c, -1.0)]
            if tilt:
                ent += [(T + 2 * s.i, ui), (T + 2 * s.j, -uj), (T + 2 * s.i + 1, vi), (T + 2 * s.j + 1, -vj)]
            gi, gj = groups[s.i], groups[s.j]
            for k in range(3):
                ent += [(V + 3 * gi + k, r2i ** (k + 1)), (V + 3 * gj + k, -(r2j ** (k + 1)))]
            for col, val in ent:
                rows.append(rr)
                cols.append(np.full(N, col))
                vals.append(np.broadcast_to(np.asarray(val, float), (N,)))
            vi_all.append(s.vi[:, cc].astype(float))
            vj_all.append(s.vj[:, cc].astype(float))
            fi_all.append(np.full(N, s.i))
            fj_all.append(np.full(N, s.j))
            bi_all.append(offset_basis(ui, vi)[:, :Q])
            bj_all.append(offset_basis(uj, vj)[:, :Q])
            w_all.append(s.w.astype(float))
            pair_of.append(np.full(N, p_idx))
            r0 += N
    A0 = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))), shape=(r0, m)).tocsr()
    va, vb = np.concatenate(vi_all), np.concatenate(vj_all)
    fa, fb = np.concatenate(fi_all), np.concatenate(fj_all)
    ba, bb = np.concatenate(bi_all), np.concatenate(bj_all)
    w0 = np.concatenate(w_all)
    pair_of = np.concatenate(pair_of)
    # Priors, scaled by a frame's typical share of the data so that they weigh alike in any pan.
    per_frame = np.bincount(fa, w0, n) + np.bincount(fb, w0, n)
    scale = max(float(np.median(per_frame[per_frame > 0])), 1.0) / C
    prior = np.zeros(m)
    prior[E:T] = PRIOR_EXPOSURE * scale
    prior[T:O] = PRIOR_TILT * scale if tilt else 1e9
    prior[O:V] = np.tile([PRIOR_OFFSET] + [PRIOR_OFFSET_FIELD] * (Q - 1), n) * scale if offset else 1e9
    prior[V:] = PRIOR_VIGNETTING * scale
    # Mean gain 1: the sum over frames of each channel's log exposure is 0 (a heavy row each).
    G = coo_matrix((np.ones(n * C), ([c for _ in range(n) for c in range(C)],
                                     [E + i * C + c for i in range(n) for c in range(C)])), shape=(C, m)).tocsr()
    heavy = 1e3 * scale
    x = np.zeros(m)
    sigma = None
    before = None
    def offsets(x):
        oc = x[O:V].reshape(n, Q) * white
        return (oc[fa] * ba).sum(axis=1), (oc[fb] * bb).sum(axis=1)

    for _ in range(ROUNDS):
        oa, ob = offsets(x)
        da, db = va - oa, vb - ob
        usable = (da > 0.5 * BLACK * white) & (db > 0.5 * BLACK * white)
        da, db = np.maximum(da, 1e-6), np.maximum(db, 1e-6)
        r = A0 @ x + np.log(da) - np.log(db)
        if before is None:
            before = float(np.sqrt(np.average((np.log(va) - np.log(vb)) ** 2, weights=w0)))
        w = w0 * usable
        if sigma is not None:
            w = w / (1.0 + (r / sigma) ** 2)
        # d r / d offset: -white / (v - o) for frame i's value, + white / (v - o) for j's.
        J = coo_matrix((np.concatenate([(-white / da)[:, None] * ba, (white / db)[:, None] * bb]).ravel(),
                        (np.repeat(np.concatenate([np.arange(r0)] * 2), Q),
                         np.concatenate([O + Q * fa[:, None] + np.arange(Q), O + Q * fb[:, None] + np.arange(Q)]).ravel())),
                       shape=(r0, m)).tocsr()
        A = A0 + J if offset else A0
        N = (A.T @ diags(w) @ A) + diags(prior) + heavy * (G.T @ G)
        g = A.T @ (w * r) + prior * x + heavy * (G.T @ (G @ x))
        dx = -spsolve(N.tocsc(), g)
        x = x + dx
        if offset:
            x[O:V] = np.clip(x[O:V], -0.1, 0.3)
        oa, ob = offsets(x)
        da, db = np.maximum(va - oa, 1e-6), np.maximum(vb - ob, 1e-6)
        r = A0 @ x + np.log(da) - np.log(db)
        sel = usable & (w0 > 0)
        mad = float(np.median(np.abs(r[sel] - np.median(r[sel])))) if sel.any() else 0.0
        sigma = max(1.4826 * mad, SIGMA_FLOOR)
        if np.abs(dx).max() < 1e-5:
            break
    after = float(np.sqrt(np.average(r ** 2, weights=w0)))
    tones = []
    for i in range(n):
        g = groups[i]
        tones.append(_tone(lenses[i], norms[i], x[E + i * C:E + (i + 1) * C], (x[T + 2 * i], x[T + 2 * i + 1]),
                           tuple(x[V + 3 * g:V + 3 * g + 3]), tuple(x[O + Q * i:O + Q * (i + 1)] * white), white))
    per_pair = np.abs([np.median(r[pair_of == k]) for k in range(len(samples))])
    stats = {"pairs": len(samples), "samples": int(r0 // C), "lens_groups": ng,
             "log_rms_before": before, "log_rms_after": after, "robust_sigma": float(sigma),
             "pair_bias_abs_log": {"median": float(np.median(per_pair)), "max": float(np.max(per_pair))}}
    return tones, stats


def _tone(lens, norm, a, tilt, vig, offset, white):
    return Tone(gain=tuple(float(np.exp(v)) for v in a), centre=lens.centre, norm=float(norm),
                vignetting=tuple(float(v) for v in vig), tilt=tuple(float(v) for v in tilt),
                offset=tuple(float(v) for v in offset),
                white=float(white), knee=float(KNEE * white))


def tone_to_dict(t: Tone) -> dict:
    return {"gain": list(t.gain), "centre": list(t.centre), "norm": t.norm, "vignetting": list(t.vignetting),
            "tilt": list(t.tilt), "offset": list(t.offset), "white": t.white, "knee": t.knee}


def tone_from_dict(d: dict) -> Tone:
    return Tone(gain=tuple(d["gain"]), centre=tuple(d["centre"]), norm=float(d["norm"]),
                vignetting=tuple(d["vignetting"]), tilt=tuple(d["tilt"]), offset=tuple(d.get("offset", (0.0, 0.0, 0.0))),
                white=float(d["white"]),
                knee=float(d["knee"]))


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
