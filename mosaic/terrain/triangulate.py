"""Triangulation of stereo matches: where the two rays through the rectified models meet.

Each match gives a left ray (x, y) and a right ray (x - d, y) from the two linear (CAHV) models of
the rectified pair. The models share A, H, V and their centres differ by b along H's unit
direction, so the two rays of a match lie in one epipolar plane and meet exactly, at depth
(distance along A) z = hs b / d: the point is C_left + z u / (u . A) for the left ray's unit
direction u. That is the midpoint of the rays' common perpendicular (``closest_points``, the
general construction, which the tests check it against) at a third of its cost. A match is kept when
both rays point forward to it, its range from the left camera lies in [min_range, max_range], and
the rays meet at an angle of at least ``min_angle_deg`` (a small angle means a range that one
tenth of a pixel moves by metres). Every point carries the standard deviation its range would
have for ``sigma_disparity`` pixels of matching noise, sigma_r = r^2 sigma_d / (f b), which is what
the gridder weighs samples by.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Points:
    """Triangulated points (N, 3) in the models' frame, with per-point diagnostics."""

    xyz: np.ndarray
    range: np.ndarray
    angle_deg: np.ndarray
    sigma: np.ndarray
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


def triangulate(pair, disp, min_range=0.5, max_range=60.0, min_angle_deg=0.3,
                sigma_disparity=0.3) -> Points:
    """Points of every finite disparity of ``disp`` (left-referenced, rectified ``pair``)."""
    ys, xs = np.nonzero(np.isfinite(disp))
    d = disp[ys, xs].astype(float)
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
    angle = np.degrees(np.arccos(np.clip(cosang, -1.0, 1.0)))
    keep = (d > 0) & (rng >= min_range) & (rng <= max_range) & (angle >= min_angle_deg)
    keep &= np.all(np.isfinite(p), axis=1)
    rk = rng[keep]
    return Points(
        xyz=p[keep], range=rk, angle_deg=angle[keep],
        sigma=rk * rk * sigma_disparity / fb, pixels=left[keep],
    )
