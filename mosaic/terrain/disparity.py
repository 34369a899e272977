"""Dense disparity of a rectified pair: OpenCV's semi-global matcher plus filters.

Convention (OpenCV's): a left pixel (x, y) matches the right pixel (x - d, y), d >= 0, d = 0 at
infinity (the rectified models share A, H, V, so a point's rows agree exactly).

Filters, each removing what the matcher cannot vouch for:

- left-right consistency: the right image is matched against the left too (by mirroring both,
  which turns the right view into a "left" one) and a left match survives only if the right
  match at x - d points back to within ``lr_tolerance`` pixels;
- uniqueness (SGBM's ``uniquenessRatio``) and speckle removal (small islands of disparity);
- texture: pixels whose local standard deviation is below ``min_texture`` grey levels hold no
  information to match, whatever the matcher returns there;
- sub-pixel: SGBM's parabola on aggregated costs locks to integers and, measured on our
  synthetic pairs, underestimates disparity by ~0.1 px (a range bias growing as r^2), so each
  match is refined by a few 1-D Gauss-Newton steps minimising the zero-mean SSD between the left
  window and the bilinearly shifted right one (``refine``), which removes the bias;
- validity: pixels outside either input image (the rectified masks) are dropped, with a margin
  of half a block, so that fill values never take part in a match.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class MatchSettings:
    block: int = 5
    uniqueness: int = 10
    speckle_window: int = 100
    speckle_range: int = 2
    lr_tolerance: float = 1.0
    lr_mirror: bool = False  # True: a second full SGBM pass on mirrored images; False: SGBM's own check
    min_texture: float = 2.0
    refine_window: int = 7
    refine_iterations: int = 3
    coarse_range: bool = True
    coarse_margin: int = 8


def _coarse_range(l8, r8, max_disparity: int, s: "MatchSettings") -> tuple[int, int]:
    """[lo, hi) disparity search from a half-resolution pass (1/8 of the cost): the scene's
    0.5-99.5 percentiles after a 5x5 median, doubled, widened by ``coarse_margin`` px, rounded
    out to 16."""
    import cv2

    half = max(16, int(16 * np.ceil(max_disparity / 32.0)))
    a, b = cv2.pyrDown(l8), cv2.pyrDown(r8)
    m = _sgbm(0, half, s)
    d = m.compute(np.pad(a, ((0, 0), (half, 0))), np.pad(b, ((0, 0), (half, 0))))[:, half:]
    # Isolated mismatches spread over the whole search: a median removes them before the tails
    # are read.
    d = cv2.medianBlur(d.astype(np.float32) / 16.0, 5)
    d = d[d >= 0]
    if d.size < 100:
        return 0, max_disparity
    p_lo, p_hi = np.percentile(d, [0.5, 99.5]) * 2.0
    lo = max(0, int(np.floor((p_lo - s.coarse_margin) / 16.0)) * 16)
    hi = min(max_disparity, int(np.ceil((p_hi + s.coarse_margin) / 16.0)) * 16)
    return (lo, hi) if hi - lo >= 16 else (0, max_disparity)


def to_uint8(image, valid) -> np.ndarray:
    """8-bit version of a float image for the matcher: a 0.5–99.5 percentile stretch over the valid
    pixels (SGBM's costs need 8 bits; the stretch keeps faint texture above quantisation)."""
    img = np.asarray(image, dtype=np.float32)
    vals = img[valid]
    if vals.size == 0:
        return np.zeros(img.shape, np.uint8)
    lo, hi = np.percentile(vals, [0.5, 99.5])
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((img - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _sgbm(min_disparity: int, num_disparities: int, s: MatchSettings):
    import cv2

    return cv2.StereoSGBM_create(
        minDisparity=min_disparity, numDisparities=num_disparities, blockSize=s.block,
        P1=8 * s.block * s.block, P2=32 * s.block * s.block,
        disp12MaxDiff=-1 if s.lr_mirror else max(1, int(round(s.lr_tolerance))), uniquenessRatio=s.uniqueness,
        speckleWindowSize=s.speckle_window, speckleRange=s.speckle_range,
        mode=cv2.STEREO_SGBM_MODE_SGBM_3WAY,
    )


def local_std(image, block: int) -> np.ndarray:
    import cv2

    img = image.astype(np.float32)
    mean = cv2.boxFilter(img, -1, (block, block))
    sq = cv2.boxFilter(img * img, -1, (block, block))
    return np.sqrt(np.maximum(sq - mean * mean, 0.0))


def disparity(left, right, valid_left, valid_right, max_disparity: float,
              settings: MatchSettings = MatchSettings()) -> np.ndarray:
    """Left-referenced disparity (float32 px, NaN where rejected) of two rectified images.

    ``max_disparity`` is the largest disparity searched (the nearest range of interest); it is
    rounded up to a multiple of 16 as SGBM requires.
    """
    import cv2

    s = settings
    l8 = to_uint8(left, valid_left)
    r8 = to_uint8(right, valid_right)
    lo, hi = 0, int(16 * max(1, np.ceil(max_disparity / 16.0)))
    if s.coarse_range and hi > 64:
        lo, hi = _coarse_range(l8, r8, hi, s)
    num = hi - lo
    matcher = _sgbm(lo, num, s)
    # SGBM gives up on the first minDisparity + numDisparities columns of its reference image;
    # padding both images by that many columns keeps those pixels.
    padw = lo + num
    pad = ((0, 0), (padw, 0))
    raw_l = matcher.compute(np.pad(l8, pad), np.pad(r8, pad))[:, padw:].astype(np.float32) / 16.0
    ok = raw_l >= lo  # SGBM marks failures with minDisparity - 1
    h, w = raw_l.shape
    rows = np.broadcast_to(np.arange(h)[:, None], raw_l.shape)
    xr = np.rint(np.arange(w, dtype=np.float32)[None, :] - raw_l).astype(np.int64)
    inside = ok & (xr >= 0) & (xr < w)
    if s.lr_mirror:
        # Mirroring both images makes the right view the reference with the same positive
        # convention; a left match survives if the right match at x - d points back.
        raw_r = matcher.compute(np.pad(np.ascontiguousarray(r8[:, ::-1]), pad),
                                np.pad(np.ascontiguousarray(l8[:, ::-1]), pad))[:, padw:]
        raw_r = raw_r[:, ::-1].astype(np.float32) / 16.0
        back = np.full_like(raw_l, np.nan)
        back[inside] = raw_r[rows[inside], xr[inside]]
        ok = inside & (back >= lo) & (np.abs(back - raw_l) <= s.lr_tolerance)
    else:
        ok = inside

    # Both images' pixels used by the match must be real: erode the masks by half a block.
    k = np.ones((s.block, s.block), np.uint8)
    vl = cv2.erode(valid_left.astype(np.uint8), k).astype(bool)
    vr = cv2.erode(valid_right.astype(np.uint8), k).astype(bool)
    ok &= vl
    vr_at = np.zeros_like(ok)
    vr_at[inside] = vr[rows[inside], xr[inside]]
    ok &= vr_at
    if s.min_texture > 0:
        ok &= local_std(l8, s.block) >= s.min_texture
    disp = np.where(ok, raw_l, np.nan).astype(np.float32)
    if s.refine_iterations > 0:
        disp = refine(left, right, disp, s.refine_window, s.refine_iterations)
    return disp


def refine(left, right, disp, window: int = 7, iterations: int = 3, max_step: float = 1.0) -> np.ndarray:
    """Sub-pixel refinement: per pixel, d minimising sum_w (L(x) - R(x - d))^2 after removing
    each window's mean (robust to a gain/offset between the eyes), by Gauss-Newton steps with the
    window sums from box filters (d taken constant across the window). Matches that move by more
    than ``max_step`` px in total are dropped: the integer match was wrong there."""
    import cv2

    L = np.asarray(left, np.float32)
    R = np.asarray(right, np.float32)
    ok = np.isfinite(disp)
    d0 = np.where(ok, disp, 0.0).astype(np.float32)
    d = d0.copy()
    h, w = L.shape
    xs = np.broadcast_to(np.arange(w, dtype=np.float32)[None, :], (h, w))
    ys = np.broadcast_to(np.arange(h, dtype=np.float32)[:, None], (h, w))
    k = (window, window)
    box = lambda a: cv2.boxFilter(a, -1, k, normalize=False)  # noqa: E731
    lz = L - cv2.boxFilter(L, -1, k)
    for _ in range(iterations):
        mx = xs - d
        rd = cv2.remap(R, mx, ys, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # d/dd R(x - d) = -R_x: the gradient of the warped image is R's gradient at x - d.
        rx = cv2.remap(cv2.Sobel(R, cv2.CV_32F, 1, 0, ksize=1, scale=0.5), mx, ys, cv2.INTER_LINEAR,
                       borderMode=cv2.BORDER_REPLICATE)
        rz = rd - cv2.boxFilter(rd, -1, k)
        num = box(rx * (lz - rz))
        den = box(rx * rx)
        with np.errstate(divide="ignore", invalid="ignore"):
            step = np.where(den > 1e-12, -num / den, 0.0)
        d = d + np.clip(step, -0.5, 0.5).astype(np.float32)
    ok &= np.abs(d - d0) <= max_step
    return np.where(ok, d, np.nan).astype(np.float32)
