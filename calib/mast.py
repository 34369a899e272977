"""The Mars 2020 Remote Sensing Mast (RSM): mast azimuth/elevation -> camera pose in ROVER_NAV_FRAME.

The RSM head carries Navcam and Mastcam-Z. It turns about an azimuth axis (nearly RNAV +z, down)
and, riding on it, an elevation axis (nearly RNAV -y). The geometry is the flight values of JPL's
pointing model (``PigPointM20mastCamera.cc`` in NASA-AMMOS/VICAR, "current as of 2020-11-10"),
stated there in the ROVER_MECH frame; ``RNAV = RMECH + (0.09002, 0, -1.13338)``.

Conventions (checked against three real Perseverance frames, see docs/camera-models.md):

- ``mast_az``/``mast_el`` (degrees) are the telemetry values ``mastAz``/``mastEl`` of the raw-image
  JSON: RSM joint angle minus home (home_az = 3.161115 rad, home_el = 1.588138 rad). At (0, 0) the
  head is at "home": cameras look along RNAV +x (forward), level.
- Azimuth is a right-handed rotation by ``mast_az`` about the published azimuth axis (+z is down,
  so positive azimuth turns the cameras clockwise seen from above, from +x towards +y).
- Elevation is a right-handed rotation by ``mast_el`` about the NEGATED published elevation axis
  (that is, about ~RNAV +y), so that positive elevation raises the cameras. The published axis
  with the other sign puts the real frames' axes 20-68 degrees off; this sign puts them within 0.7.
- The elevation joint rides on the azimuth joint: a home-frame point x goes to
  ``Raz (Rel (x - p_el) + p_el - p_az) + p_az`` with p_az, p_el points on the two axes. The camera
  centre therefore moves on a ~0.2 m lever as the mast pans and tilts (this parallax matters for
  stereo and for near-field mosaics).
- The "home" model of a camera is its model at (0, 0) in RNAV; ``pose_model`` poses it.

Example:

>>> import numpy as np
>>> rot, t = mast_pose(90.0, 0.0)
>>> round(float((rot @ [1.0, 0.0, 0.0])[1]), 3)   # forward turns to the rover's right (+y)
1.0
>>> rot, t = mast_pose(0.0, 30.0)
>>> round(float(-(rot @ [1.0, 0.0, 0.0])[2]), 3)   # raised 30 degrees (z is down)
0.5
>>> [round(v, 9) + 0.0 for v in mast_angles_of_axis(rot @ [1.0, 0.0, 0.0])]  # + 0.0: -0.0 prints as 0.0
[0.0, 30.0]
"""

from __future__ import annotations

import numpy as np

from .rotation import axis_angle

#: ROVER_MECH -> ROVER_NAV_FRAME offset (metres): x_rnav = x_rmech + RMECH_TO_RNAV.
RMECH_TO_RNAV = np.array([0.09002, 0.0, -1.13338])
#: Joint angles (radians) that telemetry ``mastAz``/``mastEl`` are measured from.
HOME_AZ_RAD = 3.161115
HOME_EL_RAD = 1.588138

_AZ_AXIS_PUBLISHED = np.array([-0.001238, -0.00064, 0.999999])
_EL_AXIS_PUBLISHED = np.array([-0.022114, -0.999755, -0.000732])

#: Unit azimuth axis in RNAV (positive rotation: clockwise from above).
AZ_AXIS = _AZ_AXIS_PUBLISHED / np.linalg.norm(_AZ_AXIS_PUBLISHED)
#: Unit elevation axis in RNAV, oriented so that a positive rotation raises the cameras.
EL_AXIS = -_EL_AXIS_PUBLISHED / np.linalg.norm(_EL_AXIS_PUBLISHED)
#: A point on each axis, in RNAV (metres).
AZ_POINT = np.array([0.7153434, 0.5596484, -1.1071009]) + RMECH_TO_RNAV
EL_POINT = np.array([0.7149266, 0.5617344, -0.7856477]) + RMECH_TO_RNAV


def joint_to_mast(az_joint_rad: float, el_joint_rad: float) -> tuple[float, float]:
    """Telemetry-convention mast angles (degrees) from RSM joint angles (radians, as in PDS4
    ``geom:Articulation_Device_Parameters``)."""
    az = (float(np.degrees(az_joint_rad - HOME_AZ_RAD)) + 180.0) % 360.0 - 180.0  # as the telemetry: [-180, 180)
    return az, float(np.degrees(el_joint_rad - HOME_EL_RAD))


def _closest_points(p1, d1, p2, d2):
    w = p1 - p2
    b = d1 @ d2
    den = 1.0 - b * b
    s = (b * (d2 @ w) - (d1 @ w)) / den
    t = ((d2 @ w) - b * (d1 @ w)) / den
    return p1 + s * d1, p2 + t * d2


def mast_pivot() -> np.ndarray:
    """The RSM pivot in RNAV: the midpoint of the closest points of the two (skew) axes.

    The axes miss each other by 0.07 mm, so this is where both rotations leave points (nearly)
    fixed: the natural pivot for small re-pointing corrections of mast cameras.

    >>> np.round(mast_pivot(), 3)
    array([ 0.805,  0.559, -1.919])
    """
    pa, pe = _closest_points(AZ_POINT, AZ_AXIS, EL_POINT, EL_AXIS)
    return (pa + pe) / 2.0


def mast_pose(az_deg: float, el_deg: float) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R (3x3) and translation t with ``x_rnav = R @ x_home + t``: where the mast at
    (az_deg, el_deg) carries a point (or camera) that is at ``x_home`` with the mast at (0, 0)."""
    raz = axis_angle(AZ_AXIS, np.radians(az_deg))
    rel = axis_angle(EL_AXIS, np.radians(el_deg))
    rot = raz @ rel
    t = raz @ (EL_POINT - rel @ EL_POINT - AZ_POINT) + AZ_POINT
    return rot, t


def pose_model(home_model, az_deg: float, el_deg: float):
    """The camera model ``home_model`` (in RNAV, mast at 0, 0) with the mast at (az_deg, el_deg)."""
    rot, t = mast_pose(az_deg, el_deg)
    return home_model.transformed(rot, t)


def unpose_model(model, az_deg: float, el_deg: float):
    """Inverse of ``pose_model``: the home model of a camera whose model at (az_deg, el_deg) is
    ``model``. Used to measure a real camera's mounting from a real frame."""
    rot, t = mast_pose(az_deg, el_deg)
    return model.transformed(rot.T, -rot.T @ t)


def mast_angles_of_axis(direction, home_axis=(1.0, 0.0, 0.0)) -> tuple[float, float]:
    """Mast (az, el) in degrees that turn the home direction ``home_axis`` into ``direction``.

    Exact for the skewed axes: the elevation fixes the component along the azimuth axis (which
    azimuth preserves), ``alpha cos(el) + beta sin(el) + gamma = a . direction``; of its two
    roots the one nearer the naive elevation is taken. Azimuth is then the angle about the
    azimuth axis between the two directions' projections.
    """
    d = np.asarray(direction, dtype=float)
    d = d / np.linalg.norm(d)
    h = np.asarray(home_axis, dtype=float)
    h = h / np.linalg.norm(h)
    a, n = AZ_AXIS, EL_AXIS
    gamma = (n @ h) * (a @ n)
    alpha = a @ h - gamma
    beta = a @ np.cross(n, h)
    amp = np.hypot(alpha, beta)
    phase = np.arctan2(beta, alpha)
    c = np.clip((a @ d - gamma) / amp, -1.0, 1.0)
    roots = np.array([phase + np.arccos(c), phase - np.arccos(c)])
    roots = (roots + np.pi) % (2 * np.pi) - np.pi
    naive = np.arcsin(np.clip(-(a @ d), -1.0, 1.0))
    el = roots[np.argmin(np.abs(roots - naive))]
    w = axis_angle(n, el) @ h
    wp = w - (w @ a) * a
    dp = d - (d @ a) * a
    az = np.arctan2(a @ np.cross(wp, dp), wp @ dp)
    return float(np.degrees(az)), float(np.degrees(el))


def mast_angles(model, home_axis=(1.0, 0.0, 0.0)) -> tuple[float, float]:
    """Mast (az, el) in degrees of a posed model (in RNAV), from its axis A.

    ``home_axis`` is the camera's axis at home; the nominal instruments' is RNAV +x (Mastcam-Z's
    are toed in: pass ``instrument(name).home_model(zoom).A``). For a real frame with the default
    home axis this gives the telemetry angles to within ~1 degree (the camera's mounting offset).
    """
    return mast_angles_of_axis(model.A, home_axis)
