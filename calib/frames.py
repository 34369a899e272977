"""Coordinate frames and pixel grids a frame's camera model moves between.

Spatial frames (contract, see docs/formats.md):

- ROVER_NAV_FRAME: +x forward, +y right, +z down, origin at the nominal ground point under the
  rover; camera models of every reader live here.
- SITE: +x north, +y east, +z down, fixed to the ground. ``x_site = R(q) x_rnav + t`` with q the
  label's rover quaternion (scalar first, rover -> SITE) and t the rover origin in SITE.
- LOCAL_LEVEL: SITE's axes with the origin at the rover: ``x_ll = R(q) x_rnav``. Azimuth is
  clockwise from north, elevation positive up.

Pixel grids: a delivered product may be a subframe (1-based ``(first_sample, first_line,
samples, lines)`` on the full sensor) downsampled by ``s``; its model's pixel p relates to the
full sensor's pixel P by ``P = s p + (first - 1)``. JPL scales H and V by 1/s without a
half-pixel term, and so do we.
"""

from __future__ import annotations

import numpy as np

from .meta import LOCAL_LEVEL, ROVER_NAV_FRAME, SITE, FrameMeta
from .rotation import quat_to_matrix, vector_to_azel


def rover_to_site(meta: FrameMeta):
    """(R, t) with ``x_site = R @ x_rnav + t``; identity and zero where the label has no pose."""
    r = np.eye(3) if meta.attitude is None else quat_to_matrix(meta.attitude)
    t = np.zeros(3) if meta.rover_position is None else np.asarray(meta.rover_position, float)
    return r, t


def model_in(meta: FrameMeta, frame: str):
    """The frame's camera model expressed in ROVER_NAV_FRAME, SITE or LOCAL_LEVEL."""
    if meta.model is None:
        return None
    r, t = rover_to_site(meta)
    # Everything goes through SITE: rnav -> site is (r, t); local level -> site is (I, t).
    to_site = {ROVER_NAV_FRAME: (r, t), SITE: (np.eye(3), np.zeros(3)), LOCAL_LEVEL: (np.eye(3), t)}
    if meta.model_frame not in to_site or frame not in to_site:
        raise ValueError(f"unknown frame {meta.model_frame!r} -> {frame!r}")
    if meta.model_frame == frame:
        return meta.model
    r1, t1 = to_site[meta.model_frame]
    r2, t2 = to_site[frame]
    # x_frame = r2^T (r1 x + t1 - t2)
    return meta.model.transformed(r2.T @ r1, r2.T @ (t1 - t2))


def product_model(model, subframe, downsample: int = 1):
    """The model of a product cut from the full sensor at ``subframe`` and downsampled."""
    if subframe is not None:
        model = model.shift(subframe[0] - 1, subframe[1] - 1)
    return model.scale(downsample) if downsample and downsample != 1 else model


def full_sensor_model(model, subframe, downsample: int = 1):
    """The full sensor's model of a product model (inverse of ``product_model``)."""
    if downsample and downsample != 1:
        model = model.scale(1.0 / downsample)
    if subframe is not None:
        model = model.shift(-(subframe[0] - 1), -(subframe[1] - 1))
    return model


def boresight_azel(meta: FrameMeta) -> tuple[float, float]:
    """Azimuth and elevation (degrees, LOCAL_LEVEL) of the image centre's ray."""
    model = meta.model_local_level()
    az, el = vector_to_azel(model.boresight(meta.width, meta.height))
    return float(az), float(el)
