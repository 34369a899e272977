"""The synthetic scenes: which camera looks where, and the rover they sit on.

Pointing is given as telemetry mast angles (degrees, RNAV: azimuth clockwise from the rover's
front, elevation up), as operations command it. Choices (docs/synthetic-scenes.md):

- ``navcam-360``: two tiers of 5 Navcam-left frames (96.5 x 73.1 degrees each) at 72-degree
  azimuth steps, i.e. 24.5 degrees (25 %) horizontal overlap; tiers at -35 and +5 degrees
  elevation (36.6 degrees, 50 %, vertical overlap), the upper tier staggered by half a step so
  every upper frame overlaps two lower ones. Default downsample 4 (1280 x 960 frames).
- ``navcam-stereo``: 5 left/right Navcam pairs at 72-degree steps, elevation -40 degrees: the
  ground from ~0.6 m to the horizon all around the rover. Default downsample 4.
- ``mastcamz-pan``: a 3-tier Mastcam-Z left pan over 100 degrees of azimuth towards the scarp,
  20 % overlap at the chosen zoom (default 34 mm: 19.7 x 14.8 degrees). Default downsample 1.
- ``mastcamz-360``: the same 3-tier, 20 %-overlap Mastcam-Z pan all the way round, tiers ending
  2 degrees above the horizon (ground in every frame): 69 frames at 34 mm, 126 at 63 mm. Made
  for registration benchmarks that need 100+ frames (a Navcam 360 has 10). Default downsample 4.

Rover attitude: heading uniform in [0, 360), pitch and roll within +-2 degrees (seeded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from calib.errors import InputError
from calib.instruments import MCZ_PIXEL_MM, instrument
from calib.rotation import axis_angle


@dataclass(frozen=True)
class Shot:
    """One commanded pointing of one camera."""

    instrument: str
    mast_az: float
    mast_el: float
    zoom_mm: float | None = None
    sequence: int = 0
    tier: int = 0


def _wrap(az):
    return float((az + 180.0) % 360.0 - 180.0)


def navcam_360(zoom_mm=None):
    shots = []
    for tier, (el, offset) in enumerate(((-35.0, 0.0), (5.0, 36.0))):
        for k in range(5):
            shots.append(Shot("NAVCAM_LEFT", _wrap(offset + 72.0 * k), el, None, 100, tier))
    return shots


def navcam_stereo(zoom_mm=None):
    shots = []
    for k in range(5):
        az = _wrap(72.0 * k)
        shots.append(Shot("NAVCAM_LEFT", az, -40.0, None, 200, 0))
        shots.append(Shot("NAVCAM_RIGHT", az, -40.0, None, 200, 0))
    return shots


def mastcamz_pan(zoom_mm=None):
    zoom = 34.0 if zoom_mm is None else float(zoom_mm)
    hfov, vfov = _mcz_fov(zoom)
    daz, del_ = 0.8 * hfov, 0.8 * vfov
    ncol = int(math.ceil(100.0 / daz)) + 1
    shots = []
    for tier, el in enumerate((-1.5 * del_ + 2.0, -0.5 * del_ + 2.0, 0.5 * del_ + 2.0)):
        for k in range(ncol):
            az = -50.0 + daz * k
            shots.append(Shot("MCZ_LEFT", _wrap(az), float(el), zoom, 300, tier))
    return shots


def mastcamz_360(zoom_mm=None):
    zoom = 34.0 if zoom_mm is None else float(zoom_mm)
    hfov, vfov = _mcz_fov(zoom)
    ncol = int(math.ceil(360.0 / (0.8 * hfov)))
    daz, del_ = 360.0 / ncol, 0.8 * vfov
    return [Shot("MCZ_LEFT", _wrap(daz * k), float(2.0 - 0.5 * vfov - tier * del_), zoom, 301, tier)
            for tier in range(3) for k in range(ncol)]


def _mcz_fov(zoom):
    inst = instrument("MCZ_LEFT")
    lo, hi = inst.zoom_range_mm
    if not lo <= zoom <= hi:
        raise InputError(None, f"Mastcam-Z zoom {zoom} mm outside {lo}-{hi} mm", field="--zoom")
    return (math.degrees(2 * math.atan(inst.width * MCZ_PIXEL_MM / 2 / zoom)),
            math.degrees(2 * math.atan(inst.height * MCZ_PIXEL_MM / 2 / zoom)))


#: name -> (shots(zoom_mm), default downsample, one-line description)
SCENES = {
    "navcam-360": (navcam_360, 4, "full 360-degree Navcam pan, two tiers of 5 frames"),
    "navcam-stereo": (navcam_stereo, 4, "5 Navcam left/right pairs around the rover at -40 degrees"),
    "mastcamz-pan": (mastcamz_pan, 1, "3-tier Mastcam-Z pan over 100 degrees at a chosen zoom"),
    "mastcamz-360": (mastcamz_360, 4, "3-tier Mastcam-Z pan all round (69 frames at 34 mm, 126 at 63 mm)"),
}


def scene_shots(name: str, zoom_mm=None):
    if name not in SCENES:
        raise InputError(None, f"unknown scene {name!r} (known: {', '.join(SCENES)})", field="--scene")
    return SCENES[name][0](zoom_mm)


def rover_attitude(rng):
    """(quaternion-ready rotation RNAV -> SITE, heading, pitch, roll in degrees)."""
    heading = float(rng.uniform(0.0, 360.0))
    pitch = float(rng.uniform(-2.0, 2.0))
    roll = float(rng.uniform(-2.0, 2.0))
    # Yaw about +z (down: clockwise from above), then pitch about +y, then roll about +x.
    rot = (axis_angle([0, 0, 1], math.radians(heading)) @ axis_angle([0, 1, 0], math.radians(pitch))
           @ axis_angle([1, 0, 0], math.radians(roll)))
    return rot, heading, pitch, roll


def pointing_error(rng, lo_deg=0.5, hi_deg=1.0):
    """A rotation by a uniform angle in [lo, hi] degrees about a uniformly random axis."""
    axis = rng.standard_normal(3)
    axis /= np.linalg.norm(axis)
    angle = math.radians(float(rng.uniform(lo_deg, hi_deg)))
    return axis_angle(axis, angle), axis * angle


def navcam_tiles(sensor_w, sensor_h, downsample, tile_w=1288, tile_h=968, step_w=1280, step_h=960):
    """1-based full-sensor subframes of the raw-feed tiles of a frame downsampled by ``s``:
    tiles of (1288 x 968) delivered pixels at steps of 1280 x 960, i.e. 16 px overlap, the last
    one flush with the sensor edge (as the real NRF tile (2545, 1, 2576, 1936) at scale 2)."""
    s = int(downsample)

    def starts(full, tile, step):
        n = max(1, math.ceil(full / (step * s)))
        if tile * s >= full:
            return [(1, full)]
        out = []
        for k in range(n):
            x0 = min(max(1, 1 + k * step * s - (tile - step) // 2 * s), full + 1 - tile * s)
            out.append((x0, tile * s))
        return out

    return [(x0, y0, w, h) for (y0, h) in starts(sensor_h, tile_h, step_h) for (x0, w) in starts(sensor_w, tile_w, step_w)]
