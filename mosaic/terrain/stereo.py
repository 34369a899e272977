"""The stereo stage's task: one pair's frames -> points bucketed by output tile.

``process_pair`` reads the two frames, fits the right eye's relative orientation (``relative``),
rectifies the pair (``rectify``), matches it (``disparity``), triangulates (``triangulate``),
moves the points into SITE and map coordinates and saves them by output tile
(``grid.save_points``), with a coarse summary of its brightness for the ortho's gains
(``ortho.save_summary``). It returns only counts and diagnostics; a pair that yields nothing
(no overlap, no valid disparity) says why in ``skipped`` and the run goes on without it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from calib.errors import ModelError
from calib.labels import read_image
from mosaic.formats.geo import local_level_to_map

from . import grid as gridmod
from . import ortho
from .disparity import MatchSettings, disparity, to_uint8
from .rectify import rectify_image, rectify_pair, remap_maps
from .relative import fit_right_rotation, sift_matches
from .triangulate import triangulate


@dataclass(frozen=True)
class StereoSettings:
    min_range: float = 1.0          # nearest depth matched: the search reaches f b / min_range
    max_range: float | None = None  # farthest range kept (None: capped by max_sigma only)
    max_sigma: float = 2.0          # m: points whose predicted error along the ray exceeds this go
    min_angle_deg: float = 0.3      # triangulation angle limit
    lr_tolerance: float = 1.5       # px, left-right check
    max_pixels: int = 4_000_000     # rectified image area cap
    max_disparity: int = 512        # px, cap on the disparity search
    block: int = 5                  # SGBM block
    refine_pair: bool = True        # correct the right eye's rotation from sparse matches


def gray01(image, bit_depth) -> np.ndarray:
    """Gray float32 in [0, 1] (RGB averaged; scaled by the frame's bit depth)."""
    a = np.asarray(image)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=2) if a.shape[2] >= 3 else a[..., 0]
    if np.issubdtype(np.asarray(image).dtype, np.floating):
        return a.astype(np.float32)
    depth = bit_depth or (8 if np.asarray(image).dtype == np.uint8 else 16)
    return (a.astype(np.float32) / float(2 ** int(depth) - 1)).astype(np.float32)


def site_offset(meta) -> np.ndarray:
    """The rover's position in SITE (zero when the label gives none)."""
    return np.zeros(3) if meta.rover_position is None else np.asarray(meta.rover_position, float)


def _refine_right(ml, mr, gl, gr, rp):
    """The right eye's rotation from SIFT matches (``relative``), or None without enough of them."""
    hc, _, hs, _ = rp.left.intrinsics()
    hp = (rp.left.H - hc * rp.left.A) / hs
    pl, pr = sift_matches(to_uint8(gl, np.ones(gl.shape, bool)), to_uint8(gr, np.ones(gr.shape, bool)))
    return fit_right_rotation(ml, mr, pl, pr, hp, rp.left.A)


def process_pair(pair, index: int, points_root: str, spec: dict, origin, settings: StereoSettings) -> dict:
    """One pair (the ``index``-th of the run): rectify, match, triangulate, bucket into
    ``points_root``; returns counts and diagnostics (small)."""
    t0 = time.perf_counter()
    s = settings
    left, right = pair.left, pair.right
    ml, mr = left.model_local_level(), right.model_local_level()
    lsize, rsize = (left.width, left.height), (right.width, right.height)
    stats = {"id": pair.id, "left": left.id, "right": right.id, "points": 0, "matched": 0,
             "match_fraction": 0.0, "tiles": {}}
    try:
        rp = rectify_pair(ml, mr, lsize, rsize, max_pixels=s.max_pixels)
    except ModelError as e:
        # One pair whose geometry cannot be rectified (no overlap, eyes swapped) must not sink
        # a whole pan: it is reported and left out.
        return dict(stats, skipped=e.problem, seconds=time.perf_counter() - t0)
    gl = gray01(read_image(left), left.bit_depth)
    gr = gray01(read_image(right), right.bit_depth)
    relative = None
    if s.refine_pair:
        relative = _refine_right(ml, mr, gl, gr, rp)
        if relative is not None and relative.rms_after_px < relative.rms_before_px:
            mr = mr.moved(relative.rotation)
            rp = rectify_pair(ml, mr, lsize, rsize, max_pixels=s.max_pixels)
    lx, ly, err_l = remap_maps(ml, rp.left, rp.width, rp.height, lsize)
    rx, ry, err_r = remap_maps(mr, rp.right, rp.width, rp.height, rsize)
    il, vl = rectify_image(gl, lx, ly, *lsize)
    ir, vr = rectify_image(gr, rx, ry, *rsize)
    del gl, gr, lx, ly, rx, ry
    max_disp = min(s.max_disparity, rp.focal * rp.baseline / s.min_range)
    m = disparity(il, ir, vl, vr, max_disp, MatchSettings(block=s.block, lr_tolerance=s.lr_tolerance))
    pts = triangulate(rp, m.disparity, min_range=s.min_range, max_range=s.max_range,
                      min_angle_deg=s.min_angle_deg, sigma_disparity=m.sigma, max_sigma=s.max_sigma)
    stats.update(rectified=[rp.width, rp.height], focal_px=rp.focal, baseline_m=rp.baseline,
                 remap_error_px=max(err_l, err_r), search_px=list(m.searched), matched=len(m),
                 match_fraction=len(m) / float(vl.sum() or 1), points=len(pts),
                 median_range_m=float(np.median(pts.range)) if len(pts) else None,
                 relative_orientation=None if relative is None else relative.to_dict(), right_model=mr.to_dict())
    if len(pts) == 0:
        why = "no valid disparity" + ("" if len(m) == 0 else
                                      f" ({len(m)} matches, none within the range and error limits)")
        return dict(stats, skipped=why, seconds=time.perf_counter() - t0)
    site = pts.xyz + site_offset(left)
    east, north = local_level_to_map(site[:, 0], site[:, 1], origin)
    g = gridmod.GridSpec.from_dict(spec)
    col, row = g.cells(east, north)
    px = pts.pixels.astype(np.int64)
    # LOCAL_LEVEL is north-east-down: the error vector along the ray, as (up, east, north).
    err = pts.sigma[:, None] * pts.dirs
    fields = {"col": col, "row": row, "height": -site[:, 2], "value": il[px[:, 1], px[:, 0]],
              "su": -err[:, 2], "se": err[:, 1], "sn": err[:, 0], "pair": np.full(len(pts), index, np.float32)}
    stats["tiles"] = gridmod.save_points(points_root, pair.id, g, fields)
    ortho.save_summary(points_root, pair.id, g, col, row, fields["value"])
    stats["seconds"] = time.perf_counter() - t0
    return stats
