"""Photometry: how each frame's values are corrected before blending, solved over the whole pan.

**The model.** Frame i's value v at frame pixel (x, y), channel c, is rendered as

    R = rolloff(v * exp(a_ic + V_g(rho) + t_i . (rho_x, rho_y)))

with ``rho = ((x, y) - principal point) / r_g`` the field position (``r_g`` the pixel distance
of the lens group's farthest corner: the same sensor pixel has the same rho in every frame of
the lens), ``a_ic`` the frame's exposure per channel (one for grey frames),
``V_g(rho) = b1 rho^2 + b2 rho^4 + b3 rho^6`` the vignetting of the frame's lens group (frames of
one size whose focal lengths form one cluster share a lens: :func:`lens_groups`) and ``t_i`` a
tilt of the frame's gain across its field, which takes up what neither exposure nor vignetting
explains (a gradient of stray light, a flat field off by a few percent) where the overlaps support it. The correction works on the
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
reweighted (Huber) so that parallax, moving shadows and glare in one frame pull the rest with a
bounded vote only,
with weak priors (exposure 0, tilt 0, no vignetting) for what the overlaps do not determine and
one strong constraint: the mean log exposure of each channel is 0 (mean gain 1).

Thresholds follow the data's real bit depth (:func:`white_level`): 12-bit data in 16-bit
containers is white at 4095, not 65535.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import cv2
import numpy as np

from . import warp
from .masks import Margins, detect_margins, valid_box
from .seams import structure_mismatch
from .warp import bilinear

#: Target size of a frame's reduced copy (pixels): fine enough for a seam to go round a rock
#: (a reduced pixel is 3-4 pixels of a 1-2 MP frame), small enough to hold every frame's.
REDUCED_PIXELS = 50_000
#: Samples kept per pair (evenly over the overlap).
PAIR_SAMPLES = 300
#: Samples darker than this fraction of white, or brighter than WHITE_VOTE, get no vote.
BLACK = 0.02
WHITE_VOTE = 0.95
#: Highlights blend towards white from this fraction of white up.
KNEE = 0.96
#: Log-gradient (per reduced pixel) at which a sample's weight halves: steep places move with a
#: residual misregistration.
GRADIENT_HALF = 0.04
#: Structure mismatch (:func:`.seams.structure_mismatch`, 5 x 5 mean) at which a sample's weight
#: halves.
MISMATCH_HALF = 0.15
#: Ground parallax (frame pixels, :func:`ground_parallax`) at which a sample's weight halves.
PARALLAX_HALF = 3.0
#: Prior weights (against the sum of sample weights of a frame, see solve()).
PRIOR_EXPOSURE = 1e-3
PRIOR_TILT = 0.05
PRIOR_VIGNETTING = 1e-3
PRIOR_VCENTRE = 1e-2
PRIOR_OFFSET = 0.05
PRIOR_OFFSET_FIELD = 0.01
#: Terms of a frame's offset field (1, u, v, u^2, uv, v^2: a veil of stray light is smooth).
OFFSET_TERMS = 6
#: Tie points: brightness is the mean of a (2r+1)^2 box (well above a residual misregistration);
#: every HOLD_OUT-th distinct tie point is held out of the fit (for the agreement measure,
#: :func:`tie_roles`); where tie
#: points are given, a dense sample weighs DENSE_WEIGHT of one (dense samples in near terrain
#: compare different things: parallax).
TIE_RADIUS = 4
HOLD_OUT = 3
DENSE_WEIGHT = 0.02
#: Robust scale floor (log units) and reweighting rounds.
SIGMA_FLOOR = 0.01
ROUNDS = 8
#: Huber's constant (in robust sigmas; the usual 95 % efficiency at normal residuals). The fit
#: weighs residuals by Huber's weights, not Cauchy's: a pair's residuals on real pans are broad
#: and lopsided (Curiosity ring pair 6-7: a sixth of its tie points more than 8 % off, all on one
#: side), and Cauchy weights, which fall to nothing beyond a few sigma of the pan's pooled scale,
#: left such a pair's balance at the mode of the rest, while the agreement measure reports the
#: median (a lopsided test pair: 0.35-0.46 % from it, Huber 0.04-0.12 %).
HUBER_K = 1.345


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


def prepare(path: str, width: int, height: int, scale: int, points=None, keep: bool = False) -> FrameData:
    """Read a frame once: margins from its pixels, alpha, its maximum, the reduced copy and the
    brightness at ``points`` (N, 2) (:func:`point_values`). ``keep``: read it through the tiles'
    frame cache (:data:`.warp.CACHE`), which keeps it for them."""
    img, alpha = warp.CACHE.get(path) if keep else warp.read_pixels(path)
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
    2 TIE_RADIUS + 1 pixels, bilinear between pixel centres; NaN where the box leaves the frame.

    Only the boxes about the points are read (blurring whole frames took 80 ms for a 10 MP frame
    against a 30 ms decode): the values of a blurred frame sampled bilinearly, up to float
    rounding."""
    a = img[..., None] if img.ndim == 2 else img
    h, w, nc = a.shape
    r = TIE_RADIUS
    k = 2 * r + 1
    out = np.full((len(xy), nc), np.nan)
    inside = (xy[:, 0] >= r) & (xy[:, 0] <= w - 1 - r) & (xy[:, 1] >= r) & (xy[:, 1] <= h - 1 - r)
    if not inside.any():
        return out
    x, y = xy[inside, 0], xy[inside, 1]
    ix, iy = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - ix, y - iy
    # The (k + 1)^2 pixels under the boxes of the four neighbours (the last row and column may
    # lie beyond the frame where their weight is 0: clipped), and their integral image.
    span = np.arange(-r, r + 2)
    rows = np.clip(iy[:, None] + span, 0, h - 1)
    cols = np.clip(ix[:, None] + span, 0, w - 1)
    patch = a[rows[:, :, None], cols[:, None, :]].astype(np.float64)
    integral = np.zeros((len(x), k + 2, k + 2, nc))
    integral[:, 1:, 1:] = patch.cumsum(axis=1).cumsum(axis=2)

    def box(dy, dx):
        return (integral[:, dy + k, dx + k] - integral[:, dy, dx + k] - integral[:, dy + k, dx]
                + integral[:, dy, dx]) / (k * k)

    fx, fy = fx[:, None], fy[:, None]
    out[inside] = ((1 - fy) * ((1 - fx) * box(0, 0) + fx * box(0, 1)) + fy * ((1 - fx) * box(1, 0) + fx * box(1, 1)))
    return out


def tie_roles(ties) -> tuple[np.ndarray, np.ndarray]:
    """Which tie points (i, j, xi, yi, xj, yj) (N, 6), in the order the registration lists them,
    the fit uses and which it holds out for the agreement measure: (fit, held) masks. Each
    distinct tie counts once: SIFT gives one place up to four orientations, so the registration
    lists the same tie several times in a row (11 % of the Curiosity pan's ties), and a share
    taken over the list held out a fifth of its points while their copies stayed in the fit.
    Every HOLD_OUT-th distinct tie, in the order of first appearance, is held out; later copies
    are in neither set."""
    t = np.asarray(ties, float).reshape(-1, 6)
    _, first, inverse = np.unique(t, axis=0, return_index=True, return_inverse=True)
    rank = np.empty(len(first), int)
    rank[np.argsort(first)] = np.arange(len(first))  # a distinct tie's rank by first appearance
    once = np.zeros(len(t), bool)
    once[first] = True
    held = once & (rank[inverse.ravel()] % HOLD_OUT == 0)
    return once & ~held, held


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
    centre: tuple = (0.0, 0.0)      # principal point (frame pixels): the fields' origin
    vcentre: tuple | None = None    # the vignetting's centre (frame pixels; None: the principal point)
    norm: float = 1.0               # pixels of field radius per unit rho (the lens group's farthest corner)
    vignetting: tuple = (0.0, 0.0, 0.0)
    tilt: tuple = (0.0,)            # log gain field: u, v, u^2, uv, v^2 terms (as many as given)
    offset: tuple = (0.0, 0.0, 0.0)  # subtracted before the gain (a veil, a black level): o0 + ou rho_x + ov rho_y
    white: float = 255.0
    knee: float = 229.5

    @property
    def uniform(self) -> bool:
        """No spatial term: gain and offset are the same everywhere in the frame."""
        return not (any(self.vignetting) or any(self.tilt) or any(self.offset[1:]))

    def field(self, x, y, scale: float = 1.0, bands: int = 1):
        """What the renderer multiplies and subtracts at frame pixels (x, y): float32 (..., bands)
        gains (channel gain x spatial gain x ``scale``), followed, where the tone has an offset,
        by (..., bands) gain x offset, so that rendered = v * gain - that. Smooth, so the renderer
        evaluates it at its warp grid's nodes and interpolates it with the maps."""
        g = np.exp(self.log_field(x, y))[..., None] * (np.resize(np.asarray(self.gain, np.float32), bands)
                                                        * np.float32(scale))
        if not any(self.offset):
            return g
        return np.concatenate([g, g * self.offset_field(x, y)[..., None]], axis=-1)

    def log_field(self, x, y):
        """The spatial part of the log gain at frame pixels (x, y) (float32 arrays)."""
        u = (np.asarray(x, np.float32) - np.float32(self.centre[0])) * np.float32(1.0 / self.norm)
        v = (np.asarray(y, np.float32) - np.float32(self.centre[1])) * np.float32(1.0 / self.norm)
        # Far off the frame (the renderer's sentinels) the field is never used: keep it finite.
        np.clip(u, -4, 4, out=u)
        np.clip(v, -4, 4, out=v)
        vc = self.centre if self.vcentre is None else self.vcentre
        du = u - np.float32((vc[0] - self.centre[0]) / self.norm)
        dv = v - np.float32((vc[1] - self.centre[1]) / self.norm)
        r2 = du * du + dv * dv
        b1, b2, b3 = (np.float32(b) for b in self.vignetting)
        out = r2 * (b1 + r2 * (b2 + r2 * b3))
        if any(self.tilt):
            terms = (u, v, u * u, u * v, v * v)
            for c, t in zip(self.tilt, terms):
                if c:
                    out += np.float32(c) * t
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
    if v.dtype in (np.uint8, np.uint16) and knee < white:
        # Integer values: the smoothstep from a table of every value (0 up to the knee), applied
        # to all pixels at once (masked gathers and scatters cost 3-5x as much), the same numbers.
        if v.max() > knee:
            s = _smoothstep_table(v.dtype, float(white), float(knee))[v]
            s *= np.float32(white_out) - out
            out += s
        np.minimum(out, np.float32(white_out), out=out)
        return out
    hi = v > knee
    if knee < white and hi.any():
        out[hi] = _towards_white(out[hi], _smoothstep(v[hi], white, knee), white_out)
    np.minimum(out, np.float32(white_out), out=out)
    return out


def _smoothstep(v, white, knee):
    t = np.clip((v.astype(np.float32) - np.float32(knee)) / np.float32(white - knee), 0, 1)
    return t * t * (3 - 2 * t)


def _towards_white(o, s, white_out):
    return o + (np.float32(white_out) - o) * s


@functools.lru_cache(maxsize=8)
def _smoothstep_table(dtype, white: float, knee: float) -> np.ndarray:
    v = np.arange(np.iinfo(dtype).max + 1)
    s = _smoothstep(v, white, knee)
    s[v <= knee] = 0
    s.setflags(write=False)
    return s


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
    """float32 copy of a reduced image, lightly blurred (one reduced pixel)."""
    return cv2.GaussianBlur(img.astype(np.float32), (0, 0), 1.0).reshape(img.shape)


def pair_samples(i, j, va, vb, overlap, mapx, mapy, origin, scale_a, white, models=None) -> PairSamples | None:
    """Samples of the overlap of frames i and j on a box of i's reduced grid at ``origin`` (x, y):
    ``va`` i's reduced values there and ``vb`` j's resampled onto them (float32 (h, w, C)),
    ``overlap`` where both see, ``mapx``/``mapy`` the positions in j's full-resolution pixels of
    the box's pixel centres. Values are lightly blurred first, so that a residual misregistration
    of a reduced pixel hardly moves a sample; samples near black or clipping, or on steep log
    gradients, get no (or less) vote; so do samples that near terrain would move between the
    frames (``models``: the two camera models, :func:`ground_parallax`)."""
    inner = cv2.erode(overlap.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
    ys, xs = np.nonzero(inner)
    if len(ys) < 20:
        return None
    stride = max(1, int(len(ys) // PAIR_SAMPLES))
    ys, xs = ys[::stride], xs[::stride]
    ba, bb = blurred(va), blurred(vb)
    a, b = ba[ys, xs], bb[ys, xs]
    lo, hi = BLACK * white, WHITE_VOTE * white
    ok = (a > lo).all(axis=1) & (b > lo).all(axis=1) & (a < hi).all(axis=1) & (b < hi).all(axis=1)
    # Steepness of the log image at the sample (misregistration sensitivity), and structure that
    # differs between the frames about it (parallax: the frames see different things there).
    mismatch = cv2.blur(structure_mismatch(ba.mean(axis=2), bb.mean(axis=2), white), (5, 5))
    w = 1.0 / (1.0 + (_log_gradient(ba)[ys, xs] / GRADIENT_HALF) ** 2) / (1.0 + (mismatch[ys, xs] / MISMATCH_HALF) ** 2)
    if ok.sum() < 20:
        return None
    xi = np.stack([(xs + origin[0] + 0.5) * scale_a - 0.5, (ys + origin[1] + 0.5) * scale_a - 0.5], axis=1)[ok]
    xj = np.stack([mapx[ys, xs], mapy[ys, xs]], axis=1)[ok].astype(float)
    w = w[ok]
    if models is not None:
        w = w / (1.0 + (ground_parallax(models[0], models[1], xi, xj) / PARALLAX_HALF) ** 2)
    return PairSamples(i, j, xi, xj, a[ok], b[ok], w.astype(np.float32))


def ground_parallax(model_a, model_b, xa, xb_far):
    """How far (frame b's pixels) a sample would move in frame b if what frame a sees at ``xa``
    lay on the ground plane (z = 0 in LOCAL_LEVEL, +z down, the rover's nominal ground) instead
    of at infinity (``xb_far``): the parallax between the two cameras' centres that the far-field
    correspondence ignores. 0 for directions above the horizon and for cameras that share a
    centre (plain photos)."""
    if np.allclose(model_a.C, model_b.C):
        return np.zeros(len(xa))
    origins, d = model_a.backproject(xa)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = -origins[:, 2] / d[:, 2]
    down = np.isfinite(t) & (t > 0)
    out = np.zeros(len(xa))
    if down.any():
        p = origins[down] + t[down, None] * d[down]
        q = model_b.project(p)
        out[down] = np.nan_to_num(np.hypot(*(q - xb_far[down]).T), nan=1e6)
    return out


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
    """Which frames share a lens (and its vignetting), and the scale of their field positions:
    (group index per frame, field radius in pixels per unit rho, per group).

    Frames of one size share a lens when their focal lengths form one cluster: sorted, no step
    between neighbours above LENS_TOLERANCE (log). A field position is the pixel's offset from
    the principal point over the group's farthest corner (rho = 1 there), the same for every
    frame of the lens: not over each frame's focal length, since the focal lengths of plain
    photos are estimated per frame and absorb parallax (one Navcam's 17 frames: 1057 to
    1406 px), which stretched the same vignetting and fields by up to a third from frame to
    frame and split one camera into two lenses."""
    by_size = {}
    for k, size in enumerate(sizes):
        by_size.setdefault(tuple(size), []).append(k)
    members = []
    for ks in by_size.values():
        ks = sorted(ks, key=lambda k: lenses[k].focal)
        run = [ks[0]]
        for a, b in zip(ks, ks[1:]):
            if math.log(lenses[b].focal / lenses[a].focal) >= LENS_TOLERANCE:
                members.append(run)
                run = []
            run.append(b)
        members.append(run)
    members.sort(key=min)  # numbered in the frames' order
    groups, norms = [0] * len(lenses), []
    for g, ks in enumerate(members):
        radius = 0.0
        for k in ks:
            groups[k] = g
            (w, h), (cx, cy) = sizes[k], lenses[k].centre
            radius = max(radius, max(math.hypot(x - cx, y - cy) for x in (-0.5, w - 0.5) for y in (-0.5, h - 0.5)))
        norms.append(radius)
    return groups, norms


#: The models tried, simplest first: (name, vignetting, tilt, offset terms).
MODELS = (("exposure", False, 0, 0), ("exposure+vignetting", True, 0, 0), ("+offset", True, 0, 1),
          ("+tilt+offset field", True, 2, OFFSET_TERMS), ("+gain field+offset field", True, 5, OFFSET_TERMS))
#: Frames of one size share a lens and its vignetting unless their sorted focal lengths step by
#: more than this (log) somewhere between them: Mastcam-Z's zoom steps mostly do (26, 34, 48, 63,
#: 79, 100 mm), the focal lengths estimated for plain photos of one camera scatter without a gap.
LENS_TOLERANCE = 0.15
#: Samples per pair that choose the model.
CHOICE_SAMPLES = 60
#: A more complex model must beat the simpler ones' validation error by this factor.
SIMPLER_WITHIN = 1.05
#: ... and by this much (log units): below it the scores differ by the values' own quantisation.
SIMPLER_BY = 0.001


def fit(n: int, channels: int, samples: list, lenses: list, sizes: list, white: float):
    """The pan's tones with the model the data supports: each of :data:`MODELS` is solved on
    three quarters of (at most CHOICE_SAMPLES per pair of) the samples and scored on the rest
    (the median absolute log difference of the two frames as rendered); the simplest model within
    SIMPLER_WITHIN (or SIMPLER_BY) of the best score wins and is solved again on all samples.
    Returns (tones, stats) as :func:`solve`."""
    train, check = [], []
    for s in samples:
        # At most CHOICE_SAMPLES per pair decide the model (the final fit takes them all).
        step = max(1, len(s.w) // CHOICE_SAMPLES)
        k = np.arange(len(s.w)) % (4 * step)
        train.append(_subset(s, (k % step == 0) & (k != 3 * step)))
        check.append(_subset(s, k == 3 * step))
    scores = []
    for name, vignetting, tilt, terms in MODELS:
        tones, _ = solve(n, channels, train, lenses, sizes, white, vignetting=vignetting, tilt=tilt, offset_terms=terms)
        scores.append(_weighted_median(*_residuals(tones, check)))
    best = min(scores)
    pick = next(k for k, sc in enumerate(scores) if sc <= best * SIMPLER_WITHIN or sc - best < SIMPLER_BY)
    name, vignetting, tilt, terms = MODELS[pick]
    tones, stats = solve(n, channels, samples, lenses, sizes, white, vignetting=vignetting, tilt=tilt,
                         offset_terms=terms)
    stats["model"] = name
    stats["validation"] = {m[0]: float(sc) for m, sc in zip(MODELS, scores)}
    return tones, stats


def _subset(s, sel):
    return PairSamples(s.i, s.j, s.xi[sel], s.xj[sel], s.vi[sel], s.vj[sel], s.w[sel])


def _residuals(tones, samples):
    """(|log Ri - log Rj|, weights) over samples: the frames' values as rendered."""
    r, w = [np.zeros(0)], [np.zeros(0)]
    for s in samples:
        if not len(s.w):
            continue
        ri = render_values(tones[s.i], s.xi[:, 0], s.xi[:, 1], s.vi).mean(axis=1)
        rj = render_values(tones[s.j], s.xj[:, 0], s.xj[:, 1], s.vj).mean(axis=1)
        ok = (ri > 0) & (rj > 0)
        r.append(np.abs(np.log(np.maximum(ri, 1e-6)) - np.log(np.maximum(rj, 1e-6)))[ok])
        w.append(s.w[ok].astype(float))
    return np.concatenate(r), np.concatenate(w)


def _weighted_median(r, w) -> float:
    if not len(r) or w.sum() <= 0:
        return 0.0
    order = np.argsort(r)
    cw = np.cumsum(w[order])
    return float(r[order][np.searchsorted(cw, 0.5 * cw[-1])])


def solve(n: int, channels: int, samples: list, lenses: list, sizes: list, white: float,
          vignetting: bool = True, tilt: bool = True, offset_terms: int = OFFSET_TERMS):
    """The pan's tones (n Tone) and fit statistics from ``samples`` (PairSamples over frames
    0..n-1, values with ``channels`` bands), ``lenses`` and ``sizes`` ((width, height)) per frame.

    Gauss-Newton on the log residuals (the offsets enter non-linearly), each step a weighted
    linear least squares whose weights are the samples' own times Huber weights of the last
    residuals (scale from their MAD). A residual involves the parameters of two frames and their
    lens groups only, so the normal equations are summed pair by pair from small dense blocks
    into a sparse system. Exposures are free up to a common factor per channel: weak priors pick
    the smallest, then they are shifted to a mean log gain of exactly 0 (mean gain 1)."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.linalg import spsolve

    groups, radii = lens_groups(lenses, sizes)
    ng = len(radii)
    C = channels
    Q = offset_terms
    nt = int(tilt) * 2 if isinstance(tilt, bool) else int(tilt)
    nv = NV if vignetting else 0
    pf = C + nt + Q  # parameters per frame: exposure per channel, tilt, offset field
    m = n * pf + ng * nv
    norms = [radii[groups[i]] for i in range(n)]
    samples = [s for s in samples if len(s.w)]
    if not samples:
        tones = [_tone(lenses[i], norms[i], np.zeros(C), (0.0,), (0.0, 0.0, 0.0), (0.0,), white) for i in range(n)]
        return tones, {"pairs": 0, "samples": 0, "log_rms_before": 0.0, "log_rms_after": 0.0}
    blocks = [_PairBlock(s, C, lenses, norms, groups, Q, tilt, vignetting, pf, n) for s in samples]
    batches = _batches(blocks)
    # Priors, scaled by a frame's typical share of the data so that they weigh alike in any pan.
    per_frame = np.zeros(n)
    for b in blocks:
        per_frame[b.i] += b.w0.sum()
        per_frame[b.j] += b.w0.sum()
    scale = max(float(np.median(per_frame[per_frame > 0])), 1.0)
    prior = np.zeros(m)
    fp = np.array([PRIOR_EXPOSURE] * C + [PRIOR_TILT] * nt + ([PRIOR_OFFSET] + [PRIOR_OFFSET_FIELD] * (Q - 1))[:Q])
    prior[:n * pf] = np.tile(fp, n) * scale
    prior[n * pf:] = np.tile([PRIOR_VIGNETTING] * 3 + [PRIOR_VCENTRE] * 2, ng)[:m - n * pf] * scale
    x = np.zeros(m)
    wsum = sum(b.w0.sum() for b in blocks) * C
    before = float(np.sqrt(sum((b.w0[:, None] * np.log(b.vi / b.vj) ** 2).sum() for b in blocks) / wsum))
    res = [bt.residuals(x, white) for bt in batches]
    sigma = np.inf  # the first step is least squares: until the model is near, no sample is an outlier
    for _ in range(ROUNDS):
        rows, cols, vals, grad = [], [], [], np.zeros(m)
        for bt, (r, usable, D) in zip(batches, res):
            w = bt.w0[:, :, None] * usable * _huber(r, sigma)  # (P, N, C)
            P, k = D.shape[0], D.shape[-1]
            Dm = D.reshape(P, -1, k)
            Dw = Dm * w.reshape(P, -1, 1)
            nl = np.matmul(Dw.transpose(0, 2, 1), Dm)  # (P, k, k)
            g = np.matmul(Dw.transpose(0, 2, 1), r.reshape(P, -1, 1))[..., 0]  # (P, k)
            np.add.at(grad, bt.idx, g)
            rows.append(np.repeat(bt.idx, k, axis=1).ravel())
            cols.append(np.tile(bt.idx, (1, k)).ravel())
            vals.append(nl.ravel())
        N = coo_matrix((np.concatenate(vals + [prior]), (np.concatenate(rows + [np.arange(m)]),
                                                         np.concatenate(cols + [np.arange(m)]))), shape=(m, m))
        dx = -spsolve(N.tocsc(), grad + prior * x)
        x = x + dx
        if Q:
            xf = x[:n * pf].reshape(n, pf)
            np.clip(xf[:, C + nt:], -0.1, 0.3, out=xf[:, C + nt:])
        res = [bt.residuals(x, white) for bt in batches]
        sigma = _mad_sigma(res)
        if np.abs(dx).max() < 1e-5:
            break
    xf = x[:n * pf].reshape(n, pf).copy()
    xf[:, :C] -= xf[:, :C].mean(axis=0)  # mean gain 1 per channel
    after = float(np.sqrt(sum((bt.w0[:, :, None] * r ** 2).sum() for bt, (r, _, _) in zip(batches, res)) / wsum))
    tones = []
    for i in range(n):
        g = groups[i]
        vig = x[n * pf + nv * g:n * pf + nv * (g + 1)] if nv else np.zeros(NV)
        tones.append(_tone(lenses[i], norms[i], xf[i, :C], tuple(xf[i, C:C + nt]) if nt else (0.0,),
                           tuple(vig[:3]), tuple(xf[i, C + nt:] * white) if Q else (0.0,), white, vig[3:]))
    per_pair = []
    for bt, (r, _, _) in zip(batches, res):
        for p, cnt in enumerate(bt.count):
            per_pair.append(abs(float(np.median(r[p, :cnt]))))
    stats = {"pairs": len(samples), "samples": int(sum(len(b.w0) for b in blocks)), "lens_groups": ng,
             "log_rms_before": before, "log_rms_after": after, "robust_sigma": float(sigma),
             "pair_bias_abs_log": {"median": float(np.median(per_pair)), "max": float(np.max(per_pair))}}
    return tones, stats


def _huber(r, sigma):
    """Huber weights of residuals r at scale sigma: 1 within HUBER_K sigma, falling as 1 / |r|
    beyond (a bounded vote, never none)."""
    return 1.0 / np.maximum(np.abs(r) / (HUBER_K * sigma), 1.0)


def _mad_sigma(res) -> float:
    rr = np.concatenate([r[u] for r, u, _ in res]) if res else np.zeros(0)
    if not len(rr):
        return 1.0
    return max(1.4826 * float(np.median(np.abs(rr - np.median(rr)))), SIGMA_FLOOR)


#: Vignetting parameters of a lens group: b1, b2, b3 (log gain per rho^2, rho^4, rho^6) and the
#: centre's offset (cx, cy) from the principal point, in rho units (Hugin's Vx, Vy).
NV = 5


class _PairBlock:
    """One pair's samples and the constant part of their design: a residual row per sample and
    channel, over the parameters of frame i, frame j and their lens groups (``idx``)."""

    def __init__(self, s, C, lenses, norms, groups, Q, tilt, vignetting, pf, n):
        self.i, self.j, self.C, self.Q = s.i, s.j, C, Q
        vi = s.vi if s.vi.shape[1] == C else np.repeat(s.vi[:, :1], C, axis=1)
        vj = s.vj if s.vj.shape[1] == C else np.repeat(s.vj[:, :1], C, axis=1)
        self.vi, self.vj = vi.astype(float), vj.astype(float)
        self.w0 = s.w.astype(float)
        N = len(self.w0)
        fi, fj = _field_coords(lenses[s.i], norms[s.i], s.xi), _field_coords(lenses[s.j], norms[s.j], s.xj)
        self.ui, self.uj = np.stack(fi[:2], 1), np.stack(fj[:2], 1)  # (N, 2) field positions
        self.bi = offset_basis(fi[0], fi[1])[:, :Q]
        self.bj = offset_basis(fj[0], fj[1])[:, :Q]
        nt = int(tilt) * 2 if isinstance(tilt, bool) else int(tilt)
        gi, gj = groups[s.i], groups[s.j]
        vg = [gi] if gi == gj or not vignetting else [gi, gj]
        self.vshared = vignetting and len(vg) == 1
        self.idx = np.concatenate([s.i * pf + np.arange(pf), s.j * pf + np.arange(pf)]
                                  + ([n * pf + NV * g + np.arange(NV) for g in vg] if vignetting else []))
        # Constant columns per channel row: exposure and tilt (offsets and vignetting, which
        # enter non-linearly, are filled in at every step).
        D = np.zeros((N, C, len(self.idx)))
        for c in range(C):
            D[:, c, c] = 1.0
            D[:, c, pf + c] = -1.0
        if nt:
            D[:, :, C:C + nt] = offset_basis(fi[0], fi[1])[:, None, 1:1 + nt]
            D[:, :, pf + C:pf + C + nt] = -offset_basis(fj[0], fj[1])[:, None, 1:1 + nt]
        self.D0 = D
        self.oi, self.oj = C + nt, pf + C + nt  # first offset column of each frame
        self.vcol = 2 * pf if vignetting else None  # first vignetting column


class _Batch:
    """Pair blocks with the same layout stacked along a first axis (padded with zero-weight
    samples), so that a Gauss-Newton step is a few batched matrix products."""

    def __init__(self, blocks):
        P, nmax = len(blocks), max(len(b.w0) for b in blocks)
        b0 = blocks[0]
        C, Q, k = b0.C, b0.Q, len(b0.idx)
        self.Q, self.oi, self.oj, self.vcol, self.vshared = Q, b0.oi, b0.oj, b0.vcol, b0.vshared
        self.count = [len(b.w0) for b in blocks]
        self.idx = np.stack([b.idx for b in blocks])
        self.w0 = np.zeros((P, nmax))
        self.vi = np.ones((P, nmax, C))
        self.vj = np.ones((P, nmax, C))
        self.bi = np.zeros((P, nmax, Q))
        self.bj = np.zeros((P, nmax, Q))
        self.ui = np.zeros((P, nmax, 2))
        self.uj = np.zeros((P, nmax, 2))
        self.D0 = np.zeros((P, nmax, C, k))
        for p, b in enumerate(blocks):
            nb = len(b.w0)
            self.w0[p, :nb], self.vi[p, :nb], self.vj[p, :nb] = b.w0, b.vi, b.vj
            self.bi[p, :nb], self.bj[p, :nb], self.D0[p, :nb] = b.bi, b.bj, b.D0
            self.ui[p, :nb], self.uj[p, :nb] = b.ui, b.uj

    def residuals(self, x, white):
        """(residual (P, N, C), usable (P, N, C), design (P, N, C, k)) at parameters x."""
        xl = x[self.idx]  # (P, k)
        Q = self.Q
        if Q:
            o_i = np.einsum("pnq,pq->pn", self.bi, xl[:, self.oi:self.oi + Q]) * white
            o_j = np.einsum("pnq,pq->pn", self.bj, xl[:, self.oj:self.oj + Q]) * white
            di, dj = self.vi - o_i[..., None], self.vj - o_j[..., None]
        else:
            di, dj = self.vi, self.vj
        usable = (di > 0.5 * BLACK * white) & (dj > 0.5 * BLACK * white)
        di, dj = np.maximum(di, 1e-6), np.maximum(dj, 1e-6)
        D = self.D0
        lin = xl.copy()
        # Offsets and vignetting enter non-linearly: leave them out of D @ x.
        if Q:
            lin[:, self.oi:self.oi + Q] = 0
            lin[:, self.oj:self.oj + Q] = 0
        if self.vcol is not None:
            lin[:, self.vcol:] = 0
        r = np.log(di) - np.log(dj) + np.einsum("pnck,pk->pnc", D, lin)
        if Q:
            # Their columns hold d log(v - o) / d coefficient = -white x basis / (v - o), updated
            # in place at every step.
            D[..., self.oi:self.oi + Q] = (-white / di)[..., None] * self.bi[:, :, None, :]
            D[..., self.oj:self.oj + Q] = (white / dj)[..., None] * self.bj[:, :, None, :]
        if self.vcol is not None:
            v0 = self.vcol
            vj0 = v0 if self.vshared else v0 + NV
            val_i, jac_i = _vignetting(self.ui, xl[:, v0:v0 + NV])
            val_j, jac_j = _vignetting(self.uj, xl[:, vj0:vj0 + NV])
            r += (val_i - val_j)[..., None]
            if self.vshared:
                D[..., v0:v0 + NV] = (jac_i - jac_j)[:, :, None, :]
            else:
                D[..., v0:v0 + NV] = jac_i[:, :, None, :]
                D[..., vj0:vj0 + NV] = -jac_j[:, :, None, :]
        return r, usable, D


def _vignetting(u, p):
    """Log gain of a lens's vignetting at field positions u (P, N, 2) with parameters p (P, NV):
    b1 r^2 + b2 r^4 + b3 r^6 about the centre (cx, cy); and its derivatives (P, N, NV)."""
    b1, b2, b3, cx, cy = (p[:, k][:, None] for k in range(NV))
    dx, dy = u[..., 0] - cx, u[..., 1] - cy
    r2 = dx * dx + dy * dy
    val = r2 * (b1 + r2 * (b2 + r2 * b3))
    dval_dr2 = b1 + r2 * (2 * b2 + 3 * b3 * r2)
    jac = np.stack([r2, r2 * r2, r2 ** 3, -2 * dx * dval_dr2, -2 * dy * dval_dr2], axis=-1)
    return val, jac


def _batches(blocks):
    """Blocks grouped by parameter count and (to keep padding small) by size within a factor 2."""
    keyed = {}
    for b in blocks:
        keyed.setdefault((len(b.idx), int(np.log2(max(len(b.w0), 1)))), []).append(b)
    return [_Batch(v) for _, v in sorted(keyed.items())]


def _field_coords(lens, norm, xy):
    u = (xy[:, 0] - lens.centre[0]) / norm
    v = (xy[:, 1] - lens.centre[1]) / norm
    return u, v, u * u + v * v


def _tone(lens, norm, a, tilt, vig, offset, white, vshift=(0.0, 0.0)):
    vc = (lens.centre[0] + float(vshift[0]) * norm, lens.centre[1] + float(vshift[1]) * norm)
    return Tone(gain=tuple(float(np.exp(v)) for v in a), centre=lens.centre, vcentre=vc, norm=float(norm),
                vignetting=tuple(float(v) for v in vig), tilt=tuple(float(v) for v in tilt),
                offset=tuple(float(v) for v in offset) + (0.0,) * (OFFSET_TERMS - len(offset)),
                white=float(white), knee=float(KNEE * white))


def tone_to_dict(t: Tone) -> dict:
    return {"gain": list(t.gain), "centre": list(t.centre), "norm": t.norm, "vignetting": list(t.vignetting),
            "vignetting_centre": list(t.vcentre or t.centre),
            "tilt": list(t.tilt), "offset": list(t.offset), "white": t.white, "knee": t.knee}


def tone_from_dict(d: dict) -> Tone:
    return Tone(gain=tuple(d["gain"]), centre=tuple(d["centre"]), norm=float(d["norm"]),
                vcentre=tuple(d["vignetting_centre"]) if "vignetting_centre" in d else None,
                vignetting=tuple(d["vignetting"]), tilt=tuple(d["tilt"]), offset=tuple(d.get("offset", (0.0,))),
                white=float(d["white"]), knee=float(d["knee"]))


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
