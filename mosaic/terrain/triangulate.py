"""Triangulation of stereo matches: where the two rays through the rectified models meet.

Each match gives a left ray (x, y) and a right ray (x - d, y) from the two linear (CAHV) models of
the rectified pair. The models share A, H, V and their centres differ by b along H's unit
direction, so the two rays of a match lie in one epipolar plane and meet exactly, at depth
(distance along A) z = hs b / d: the point is C_left + z u / (u . A) for the left ray's unit
direction u. That is the midpoint of the rays' common perpendicular (``closest_points``, the
general construction, which the tests check it against) at a third of its cost. A match is kept when
both rays point forward to it, its range from the left camera lies in [min_range, max_range], and
the rays meet at an angle of at least ``min_angle_deg`` (a small angle means a range that one
tenth of a pixel moves by metres).

Every point carries the standard deviation of its position along its ray for its match's
disparity sigma (``Matches.sigma``, or one value for all) combined with a term that grows with
the pixel's footprint on the ground, ``FOOTPRINT_PX`` r / f px (far terrain is seen at grazing
angles and its texture smeared: measured, the error in pixels doubles from 10 to 40 m at 1/4
scale, and matches the same footprint at 1/8): depth z = f b / d moves by z^2 sigma_d / (f b), the
range r = z r / z by r z sigma_d / (f b). The range is capped by that
expected error, not by a fixed distance: a point whose sigma_r exceeds ``max_sigma`` metres is
dropped (far points of a small disparity are where a mismatch by a pixel moves a point by metres).
The gridder turns sigma_r and the ray's direction into a height error (``grid``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Disparity error (px) per metre of a pixel's footprint (range / focal in px): 11 px per m/px,
#: i.e. 0.015 px per metre of range at f = 739 px (Navcam at 1/4). Measured with
#: ``disparity.SIGMA_GAIN`` on the same matches.
FOOTPRINT_PX = 11.0


@dataclass
class Points:
    """Triangulated points (N, 3) in the models' frame, with per-point diagnostics."""

    xyz: np.ndarray
    range: np.ndarray
    angle_deg: np.ndarray
    sigma: np.ndarray   # 1-sigma position error along the ray (m)
    dirs: np.ndarray    # unit ray directions (N, 3), from the left camera
    pixels: np.ndarray  # left rectified (x, y)

    def __len__(self):
        return len(self.xyz)


def closest_points(o1, d1, o2, d2):
    """Midpoints of the common perpendiculars of rays (o1 + s d1) and (o2 + t d2), and s, t."""
    w = o1 - o2
    a = np.einsum("ij,ij->i", d1, d1)
    b = np.einsum("ij,ij->i", d1, d2)
    c = np.einsum("ij,ij->i", d2, d2)
    d = np.einsum("ij,ij->i", d1, w)
    e = np.einsum("ij,ij->i", d2, w)
    den = a * c - b * b
    with np.errstate(divide="ignore", invalid="ignore"):
        s = (b * e - c * d) / den
        t = (a * e - b * d) / den
    p = 0.5 * ((o1 + s[:, None] * d1) + (o2 + t[:, None] * d2))
    return p, s, t


def triangulate(pair, disp, min_range=0.5, max_range=None, min_angle_deg=0.3,
                sigma_disparity=0.3, max_sigma=None) -> Points:
    """Points of every finite disparity of ``disp`` (left-referenced, rectified ``pair``).

    ``sigma_disparity``: px, one value or an array like ``disp`` (each match's own). Points are
    kept in [``min_range``, ``max_range``] (None: no upper limit) and with sigma_r <= ``max_sigma``
    (None: no limit)."""
    ys, xs = np.nonzero(np.isfinite(disp))
    d = disp[ys, xs].astype(float)
    sd = np.asarray(sigma_disparity, float)
    sd = sd[ys, xs] if sd.ndim == 2 else np.full(d.shape, float(sd))
    left = np.stack([xs, ys], 1).astype(float)
    cl, u = pair.left.backproject(left)
    a = pair.left.A
    fb = pair.focal * pair.baseline
    with np.errstate(divide="ignore", invalid="ignore"):
        depth = fb / d
        p = cl + (depth / (u @ a))[:, None] * u
    rng = np.linalg.norm(p - cl, axis=1)
    to_right = p - pair.right.C
    with np.errstate(divide="ignore", invalid="ignore"):
        cosang = np.einsum("ij,ij->i", u, to_right) / np.linalg.norm(to_right, axis=1)
        sd = np.hypot(sd, FOOTPRINT_PX * rng / pair.focal)
        sigma = rng * depth * sd / fb
    angle = np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0)))
    keep = (d > 0) & (rng >= min_range) & (angle >= min_angle_deg) & np.isfinite(sigma)
    if max_range is not None:
        keep &= rng <= max_range
    if max_sigma is not None:
        keep &= sigma <= max_sigma
    keep &= np.all(np.isfinite(p), axis=1)
    return Points(xyz=p[keep], range=rng[keep], angle_deg=angle[keep], sigma=sigma[keep], dirs=u[keep],
                  pixels=left[keep])
