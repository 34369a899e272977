"""JPL-style stereo linearisation: two CAHV models with one shared A, H, V, differing only in C.

Follows cmod's ``cmod_cahvore_warp_models`` mode 2 (REFERENCE.md §1), the Mars 2020 default:

- H points along the baseline C_right - C_left, so every image row is an epipolar line and a
  point's disparity is purely horizontal (x_left - x_right = hs * b / depth >= 0);
- A is the mean of the two optical axes (O for CAHVOR/CAHVORE, A for CAHV) with its baseline
  component removed, which keeps the image normal close to both inputs and splits any toe-in
  evenly between the two cameras;
- V = A x H completes a right-handed (x right, y down, z forward) frame;
- pixels are square, with the finer of the two inputs' linear scales, and the output window is
  sized to the common field of the two inputs (their footprints' overlap in the rectified plane).

Images are resampled by mapping each output pixel's CAHV ray to a point one metre along it and
projecting that point through the full input model (the entrance-pupil offset E is ~1e-8 m on
Mars 2020 Navcam, so the range hardly matters). The exact projection is computed on a coarse grid
and interpolated (GDAL's approximate-transformer idea); ``remap_maps`` reports the bound.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.errors import ModelError
from calib.models import CAHV

#: Surface the output rays are intersected with before projecting through the input model (m).
RAY_RANGE = 1.0
#: Half-angle of the rectified field is capped here: a pinhole image of a wider field wastes
#: most of its pixels on the stretched edges.
MAX_HALF_ANGLE_DEG = 62.0


@dataclass(frozen=True)
class RectifiedPair:
    """The linearised models of a stereo pair and their common image size."""

    left: CAHV
    right: CAHV
    width: int
    height: int

    @property
    def baseline(self) -> float:
        return float(np.linalg.norm(self.right.C - self.left.C))

    @property
    def focal(self) -> float:
        """Horizontal scale hs (pixels per unit tangent), equal to the vertical one."""
        return self.left.intrinsics()[2]

    def to_dict(self) -> dict:
        return {"left": self.left.to_dict(), "right": self.right.to_dict(),
                "width": self.width, "height": self.height}


def _tangent(dirs, a, h, v):
    """Tangent-plane coordinates of unit directions in the frame (h, v, a); NaN behind it."""
    z = dirs @ a
    with np.errstate(divide="ignore", invalid="ignore"):
        u = (dirs @ h) / z
        w = (dirs @ v) / z
    bad = ~(z > 1e-6)
    u[bad] = np.nan
    w[bad] = np.nan
    return u, w


def rectify_pair(left, right, left_size, right_size, scale=None, max_pixels=None,
                 max_half_angle_deg=MAX_HALF_ANGLE_DEG) -> RectifiedPair:
    """Rectified CAHV models for the pair (``left_size``/``right_size`` are (width, height)).

    ``scale`` overrides the output's pixels per unit tangent (default: the finer input scale);
    ``max_pixels`` caps the output's area by coarsening the scale.
    """
    baseline = right.C - left.C
    b = float(np.linalg.norm(baseline))
    if b < 1e-6:
        raise ModelError(left.source, "stereo models share one camera centre (no baseline)", field="C")
    hp = baseline / b
    # H must keep the left camera's sense of "right", else the roles of the two would swap.
    h_left = left.H - (left.H @ left.A) * left.A
    if hp @ h_left < 0:
        raise ModelError(right.source, "right camera is not to the right of the left one", field="C")
    # The image normal follows the mean boresight of the two frames (for full frames that is
    # the mean optical axis; for a subframe tile it is where the tile actually looks).
    mean_axis = left.boresight(*left_size) + right.boresight(*right_size)
    ap = mean_axis - (mean_axis @ hp) * hp
    norm = np.linalg.norm(ap)
    if norm < 1e-6:
        raise ModelError(left.source, "cameras look along the baseline; cannot rectify", field="A")
    ap /= norm
    vp = np.cross(ap, hp)

    if scale is None:
        scale = min(min(m.intrinsics()[2:]) for m in (left, right))

    lim = np.tan(np.radians(max_half_angle_deg))
    boxes = []
    for model, (w, h) in ((left, left_size), (right, right_size)):
        _, d = model.backproject(model.border_pixels(w, h, n=64))
        u, v = _tangent(d, ap, hp, vp)
        ok = np.isfinite(u) & np.isfinite(v)
        if not ok.any():
            raise ModelError(model.source, "image border does not back-project", field="model")
        boxes.append((np.nanmin(u), np.nanmax(u), np.nanmin(v), np.nanmax(v)))
    boxes = np.array(boxes)
    umin, umax = max(boxes[:, 0].max(), -lim), min(boxes[:, 1].min(), lim)
    vmin, vmax = max(boxes[:, 2].max(), -lim), min(boxes[:, 3].min(), lim)
    if not (umax > umin and vmax > vmin):
        raise ModelError(right.source, "the two cameras' fields do not overlap", field="model")
    if max_pixels is not None:
        area = (umax - umin) * (vmax - vmin) * scale * scale
        if area > max_pixels:
            scale *= np.sqrt(max_pixels / area)
    width = int(np.ceil((umax - umin) * scale))
    height = int(np.ceil((vmax - vmin) * scale))
    # Pixel centre x covers tangent umin + (x + 0.5) / scale.
    hc = -umin * scale - 0.5
    vc = -vmin * scale - 0.5
    H = scale * hp + hc * ap
    V = scale * vp + vc * ap
    return RectifiedPair(
        left=CAHV(left.C, ap, H, V, source=left.source),
        right=CAHV(right.C, ap, H, V, source=right.source),
        width=width, height=height,
    )


def _project_rays(src_model, rect_model, pixels):
    origins, dirs = rect_model.backproject(pixels)
    return src_model.project(origins + RAY_RANGE * dirs)


def _keys_weights(t):
    """Integer cell and the 4 Keys cubic-convolution weights (a = -0.5) of coordinates t."""
    i = np.floor(t).astype(np.int64)
    f = t - i
    w = np.stack([
        ((-0.5 * f + 1.0) * f - 0.5) * f,
        (1.5 * f - 2.5) * f * f + 1.0,
        ((-1.5 * f + 2.0) * f + 0.5) * f,
        (0.5 * f - 0.5) * f * f,
    ], axis=-1)
    return i - 1, w


def _cubic_upsample(grid, step, width, height):
    """Evaluate the coarse ``grid`` (nodes every ``step`` px) at every pixel, separably.

    Float arithmetic throughout: cv2.remap quantises coordinates to 1/32 of a cell, which at
    step 8 costs 0.25 px.
    """
    # The grid has one node before pixel 0 and two past the last pixel, so every stencil of
    # 4 nodes is exact (no edge extrapolation).
    ix, wx = _keys_weights(np.arange(width) / step + 1)
    iy, wy = _keys_weights(np.arange(height) / step + 1)
    g = grid
    rows = sum(wx[None, :, k] * g[:, ix + k] for k in range(4))
    return sum(wy[:, k, None] * rows[iy + k, :] for k in range(4))


def remap_maps(src_model, rect_model, width: int, height: int, src_size, step: int = 8):
    """cv2.remap maps (float32 x, y) from rectified pixels to ``src_model`` pixels, and the
    largest interpolation error (px) over the source image ``src_size`` (w, h), measured midway
    between the coarse nodes.

    Pixels whose ray the input model cannot project get -1 (outside the image).
    """
    gx = np.arange(-step, width - 1 + 3 * step, step, dtype=float)[: (width - 1) // step + 4]
    gy = np.arange(-step, height - 1 + 3 * step, step, dtype=float)[: (height - 1) // step + 4]
    xx, yy = np.meshgrid(gx, gy)
    src = _project_rays(src_model, rect_model, np.stack([xx.ravel(), yy.ravel()], 1))
    sx = src[:, 0].reshape(xx.shape)
    sy = src[:, 1].reshape(xx.shape)
    good = np.isfinite(sx) & np.isfinite(sy)
    sx = np.where(good, sx, 0.0)
    sy = np.where(good, sy, 0.0)
    map_x = _cubic_upsample(sx, step, width, height)
    map_y = _cubic_upsample(sy, step, width, height)
    # A pixel is usable only if its whole 4x4 stencil of nodes projected.
    bad = _cubic_upsample((~good).astype(float), step, width, height) != 0
    if not good.all():
        import cv2

        stencil = cv2.dilate((~good).astype(np.uint8), np.ones((5, 5), np.uint8))
        bad |= _cubic_upsample(stencil.astype(float), step, width, height) > 1e-9
    map_x[bad] = -1.0
    map_y[bad] = -1.0

    # Error check midway between nodes, where interpolation is worst.
    cx = np.minimum(np.arange(step // 2, width, step), width - 1)
    cy = np.minimum(np.arange(step // 2, height, step), height - 1)
    cxx, cyy = np.meshgrid(cx, cy)
    exact = _project_rays(src_model, rect_model, np.stack([cxx.ravel(), cyy.ravel()], 1).astype(float))
    approx = np.stack([map_x[cyy, cxx].ravel(), map_y[cyy, cxx].ravel()], 1)
    err = np.linalg.norm(exact - approx, axis=1)
    inside = (np.isfinite(err) & (approx[:, 0] >= 0) & (approx[:, 1] >= 0)
              & (approx[:, 0] <= src_size[0] - 1) & (approx[:, 1] <= src_size[1] - 1))
    max_err = float(err[inside].max()) if inside.any() else 0.0
    return map_x.astype(np.float32), map_y.astype(np.float32), max_err


def rectify_image(image, map_x, map_y, src_width: int, src_height: int):
    """Resample ``image`` onto the rectified grid (bilinear); returns (image float32, valid mask)."""
    import cv2

    img = np.asarray(image, dtype=np.float32)
    out = cv2.remap(img, map_x, map_y, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                    borderValue=0)
    valid = (map_x >= 0) & (map_y >= 0) & (map_x <= src_width - 1) & (map_y <= src_height - 1)
    return out, valid


def to_rectified(src_model, rect_model, pixels) -> np.ndarray:
    """Rectified pixels of ``src_model`` pixels (the inverse of the resampling map)."""
    origins, dirs = src_model.backproject(pixels)
    # Directions from the rectified model's centre: the input's entrance pupil sits on it (to E).
    return rect_model.project(origins + RAY_RANGE * dirs)
