"""Relative orientation of a stereo pair: the right eye's small rotation that makes rows epipolar.

A pair's two models may disagree by a fraction of a degree (thermal drift of a real camera bar;
independently perturbed eyes in our synthetic scenes). Rectification then leaves vertical
disparity and the semi-global matcher, which searches along rows only, loses the pair. We
measure it from sparse SIFT matches of the raw images and rotate the right model about its own
centre to cancel it.

Only what the matches can observe is corrected. With the baseline fixed (it is the camera bar),
the coplanarity of each left ray, right ray and the baseline constrains the right eye's rotation
about the baseline (``hp``) and about the viewing direction (``ap``); a rotation about the
third axis (``vp``, perpendicular to both) moves rays *within* their epipolar planes, i.e. it
changes disparities (the pair's convergence, hence ranges), which no two-view match can tell
from a change of the scene. That component is left as the models give it.

Residuals are angles (radians) of each right ray out of its epipolar plane, robustly weighted
(soft L1 with a scale of one pixel), solved by ``scipy.optimize.least_squares`` twice, the
second time without matches beyond 5 robust sigmas.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.rotation import rotvec_to_matrix


@dataclass
class RelativeFit:
    rotation: np.ndarray      # 3x3, applied to the right model about its centre
    angle_deg: float
    matches: int
    inliers: int
    rms_before_px: float      # out-of-plane residual of the inliers, in pixels
    rms_after_px: float

    def to_dict(self) -> dict:
        return {"angle_deg": self.angle_deg, "matches": self.matches, "inliers": self.inliers,
                "rms_before_px": self.rms_before_px, "rms_after_px": self.rms_after_px}


def sift_matches(left8, right8, max_features: int = 2000, ratio: float = 0.75, max_size: int = 800):
    """Mutually consistent SIFT matches (Lowe's ratio test both ways): pixels (N, 2), (N, 2).

    Images wider than ``max_size`` are matched at a power-of-two reduction (two rotation angles
    need hundreds of matches, not full-resolution ones: SIFT costs ~150 ms per megapixel)."""
    import cv2

    scale = 1
    while max(left8.shape[1], right8.shape[1]) / scale > max_size:
        scale *= 2
    if scale > 1:
        left8 = cv2.resize(left8, None, fx=1 / scale, fy=1 / scale, interpolation=cv2.INTER_AREA)
        right8 = cv2.resize(right8, None, fx=1 / scale, fy=1 / scale, interpolation=cv2.INTER_AREA)
    sift = cv2.SIFT_create(nfeatures=max_features)
    kl, dl = sift.detectAndCompute(left8, None)
    kr, dr = sift.detectAndCompute(right8, None)
    if dl is None or dr is None or len(kl) < 8 or len(kr) < 8:
        return np.zeros((0, 2)), np.zeros((0, 2))
    bf = cv2.BFMatcher(cv2.NORM_L2)

    def good(a, b):
        out = {}
        for m in bf.knnMatch(a, b, k=2):
            if len(m) == 2 and m[0].distance < ratio * m[1].distance:
                out[m[0].queryIdx] = m[0].trainIdx
        return out

    lr, rl = good(dl, dr), good(dr, dl)
    pairs = [(i, j) for i, j in lr.items() if rl.get(j) == i]
    if not pairs:
        return np.zeros((0, 2)), np.zeros((0, 2))
    # INTER_AREA by s maps pixel centre x to (x + 0.5) / s - 0.5.
    pl = (np.array([kl[i].pt for i, _ in pairs], float) + 0.5) * scale - 0.5
    pr = (np.array([kr[j].pt for _, j in pairs], float) + 0.5) * scale - 0.5
    return pl, pr


def fit_right_rotation(left, right, pix_left, pix_right, hp, ap, min_matches: int = 30) -> RelativeFit | None:
    """The rotation of ``right`` (about its C) that best puts the matched rays in epipolar planes,
    about ``hp`` and ``ap`` only (see the module docstring); None with too few matches."""
    from scipy.optimize import least_squares

    if len(pix_left) < min_matches:
        return None
    _, dl = left.backproject(pix_left)
    _, dr = right.backproject(pix_right)
    ok = np.all(np.isfinite(dl), 1) & np.all(np.isfinite(dr), 1)
    dl, dr = dl[ok], dr[ok]
    if len(dl) < min_matches:
        return None
    b = right.C - left.C
    b = b / np.linalg.norm(b)
    normals = np.cross(b, dl)
    normals /= np.linalg.norm(normals, axis=1, keepdims=True)
    pixel = right.angular_pixel()

    def rot(x):
        return rotvec_to_matrix(x[0] * hp + x[1] * ap)

    def residuals(x, n, d):
        return (d @ rot(x).T * n).sum(1) / pixel  # in pixels

    x = np.zeros(2)
    keep = np.ones(len(dl), bool)
    for _ in range(2):
        sol = least_squares(residuals, x, args=(normals[keep], dr[keep]), loss="soft_l1", f_scale=1.0)
        x = sol.x
        r = residuals(x, normals, dr)
        sigma = 1.4826 * np.median(np.abs(r[keep])) + 1e-3
        keep = np.abs(r) < max(5 * sigma, 0.5)
        if keep.sum() < min_matches:
            return None
    before = residuals(np.zeros(2), normals[keep], dr[keep])
    after = residuals(x, normals[keep], dr[keep])
    return RelativeFit(rotation=rot(x), angle_deg=float(np.degrees(np.hypot(*x))), matches=int(len(dl)),
                       inliers=int(keep.sum()), rms_before_px=float(np.sqrt(np.mean(before ** 2))),
                       rms_after_px=float(np.sqrt(np.mean(after ** 2))))
