"""Rotations: scalar-first quaternions, rotation vectors and matrices.

Conventions (contract): a quaternion ``(s, x, y, z)`` rotates child-frame vectors into the parent
frame, ``v_parent = R(q) @ v_child``. Rotation vectors are axis * angle (radians).
"""

from __future__ import annotations

import numpy as np


def quat_to_matrix(q) -> np.ndarray:
    """3x3 rotation matrix of a scalar-first quaternion (normalised first: labels round it)."""
    s, x, y, z = np.asarray(q, dtype=float) / np.linalg.norm(q)
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - s * z), 2 * (x * z + s * y)],
            [2 * (x * y + s * z), 1 - 2 * (x * x + z * z), 2 * (y * z - s * x)],
            [2 * (x * z - s * y), 2 * (y * z + s * x), 1 - 2 * (x * x + y * y)],
        ]
    )


def matrix_to_quat(m) -> np.ndarray:
    """Scalar-first unit quaternion of a rotation matrix, with s >= 0."""
    m = np.asarray(m, dtype=float)
    t = np.trace(m)
    if t > 0:
        r = np.sqrt(1.0 + t) * 2
        q = [0.25 * r, (m[2, 1] - m[1, 2]) / r, (m[0, 2] - m[2, 0]) / r, (m[1, 0] - m[0, 1]) / r]
    else:
        i = int(np.argmax(np.diag(m)))
        j, k = (i + 1) % 3, (i + 2) % 3
        r = np.sqrt(1.0 + m[i, i] - m[j, j] - m[k, k]) * 2
        q = np.empty(4)
        q[0] = (m[k, j] - m[j, k]) / r
        q[1 + i] = 0.25 * r
        q[1 + j] = (m[j, i] + m[i, j]) / r
        q[1 + k] = (m[k, i] + m[i, k]) / r
    q = np.asarray(q, dtype=float)
    return q if q[0] >= 0 else -q


def skew(v) -> np.ndarray:
    """Cross-product matrices: ``skew(v) @ w == np.cross(v, w)``; works on (3,) or (N, 3)."""
    v = np.asarray(v, dtype=float)
    out = np.zeros(v.shape[:-1] + (3, 3))
    out[..., 0, 1], out[..., 0, 2] = -v[..., 2], v[..., 1]
    out[..., 1, 0], out[..., 1, 2] = v[..., 2], -v[..., 0]
    out[..., 2, 0], out[..., 2, 1] = -v[..., 1], v[..., 0]
    return out


def rotvec_to_matrix(w) -> np.ndarray:
    """Rodrigues' formula; exact for any angle, well behaved near zero."""
    w = np.asarray(w, dtype=float)
    theta = float(np.linalg.norm(w))
    k = skew(w)
    if theta < 1e-12:
        return np.eye(3) + k
    return np.eye(3) + np.sin(theta) / theta * k + (1 - np.cos(theta)) / theta**2 * (k @ k)


def matrix_to_rotvec(m) -> np.ndarray:
    q = matrix_to_quat(m)
    s, v = q[0], q[1:]
    n = np.linalg.norm(v)
    if n < 1e-15:
        return 2 * v
    return 2 * np.arctan2(n, s) * v / n


def axis_angle(axis, angle) -> np.ndarray:
    axis = np.asarray(axis, dtype=float)
    return rotvec_to_matrix(axis / np.linalg.norm(axis) * angle)


def azel_to_vector(az_deg, el_deg) -> np.ndarray:
    """Unit vector in a north-east-down frame (SITE / LOCAL_LEVEL) from azimuth (clockwise from
    north) and elevation (positive up), in degrees. Broadcasts."""
    az = np.radians(np.asarray(az_deg, dtype=float))
    el = np.radians(np.asarray(el_deg, dtype=float))
    return np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), -np.sin(el)], axis=-1)


def vector_to_azel(v):
    """Azimuth in [0, 360) and elevation in degrees of north-east-down vectors (..., 3)."""
    v = np.asarray(v, dtype=float)
    az = np.degrees(np.arctan2(v[..., 1], v[..., 0])) % 360.0
    el = np.degrees(np.arctan2(-v[..., 2], np.hypot(v[..., 0], v[..., 1])))
    return az, el
