"""Output projections: output pixel -> direction (or ground point) in LOCAL_LEVEL.

LOCAL_LEVEL is north-east-down with the rover at the origin; azimuth is clockwise from north,
elevation positive up. Pixels are 0-based with the origin at the centre of the upper-left pixel
(contract, docs/formats.md). Every projection is a small immutable value with

- ``width``, ``height`` (pixels),
- ``kind``: ``"direction"`` (``pixel_to_dir`` gives unit directions; a camera sees them at infinite
  range unless the renderer is given a finite range) or ``"point"`` (``pixel_to_point`` gives
  points on a surface, projected exactly through each camera, so parallax is right),
- ``wraps``: True when column x and x + width are the same direction (the 0/360 degree seam),
- ``transform``: the GDAL geotransform (c, a, b, f, d, e) of the output grid, in the units the
  projection's docstring states.

Pixel arguments may lie outside [0, width) when ``wraps`` (they wrap) and slightly outside the
grid otherwise (the renderer evaluates a coarse grid one cell beyond a window's edge).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from calib.errors import InputError


def _azel_dirs(az_deg, el_deg):
    az = np.radians(az_deg)
    el = np.radians(el_deg)
    ce = np.cos(el)
    return np.stack([ce * np.cos(az), ce * np.sin(az), -np.sin(el)], axis=-1)


@dataclass(frozen=True)
class Equirectangular:
    """Full sphere, width = 2 x height (contract). Column x covers azimuth 360 (x + 0.5) / W
    degrees, row y elevation 90 - 180 (y + 0.5) / H degrees; transform in degrees
    (azimuth, elevation)."""

    width: int
    kind = "direction"
    wraps = True

    @property
    def height(self) -> int:
        return self.width // 2

    @property
    def resolution(self) -> float:
        return 360.0 / self.width

    def pixel_to_dir(self, x, y):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        return _azel_dirs(360.0 * (x + 0.5) / self.width, 90.0 - 180.0 * (y + 0.5) / self.height)

    @property
    def transform(self):
        return (0.0, 360.0 / self.width, 0.0, 90.0, 0.0, -180.0 / self.height)


@dataclass(frozen=True)
class EquirectWindow:
    """The covered window of the full-sphere equirectangular grid (plain-photo panoramas, which
    cover a small part of the sphere). Pixel (x, y) is pixel (x + x0, y + y0) of the full grid of
    width ``full_width``, so the contract's pixel size and pixel <-> azimuth/elevation mapping hold;
    the transform puts the window's upper-left corner at its azimuth (which may be negative when the
    window straddles north) and elevation."""

    full_width: int
    x0: int
    y0: int
    width: int
    height: int
    kind = "direction"
    wraps = False

    @property
    def resolution(self) -> float:
        return 360.0 / self.full_width

    def pixel_to_dir(self, x, y):
        return Equirectangular(self.full_width).pixel_to_dir(np.asarray(x, dtype=float) + self.x0,
                                                             np.asarray(y, dtype=float) + self.y0)

    @property
    def transform(self):
        r = self.resolution
        return (self.x0 * r, r, 0.0, 90.0 - self.y0 * r, 0.0, -r)


def covered_window(full: Equirectangular, directions, poles=(False, False), align: int = 1, margin: int = 8):
    """The smallest window of ``full`` that holds the unit ``directions`` (N, 3) (frame borders),
    from the largest azimuth gap round; ``poles`` (zenith, nadir) seen extend it to the pole.
    The full grid when the window would not be smaller."""
    d = np.asarray(directions, dtype=float)
    d = d[np.isfinite(d).all(axis=1)]
    W, H = full.width, full.height
    if not len(d):
        return full
    az = np.sort(np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 360.0)
    el = np.degrees(np.arcsin(np.clip(-d[:, 2], -1, 1)))
    gaps = np.diff(np.concatenate([az, [az[0] + 360.0]]))
    k = int(np.argmax(gaps))
    if poles[0] or poles[1] or gaps[k] < 30.0:
        a0, a1 = 0.0, 360.0  # all round (a gap this small is not worth a seam-free crop)
    else:
        a0 = az[(k + 1) % len(az)]
        a1 = az[k] + (360.0 if k + 1 < len(az) else 0.0)
        if a1 <= a0:
            a1 += 360.0
    e1 = 90.0 if poles[0] else el.max()
    e0 = -90.0 if poles[1] else el.min()
    x0 = int(np.floor(a0 / 360.0 * W)) - margin
    x1 = int(np.ceil(a1 / 360.0 * W)) + margin
    y0 = max(0, int(np.floor((90.0 - e1) / 180.0 * H)) - margin)
    y1 = min(H, int(np.ceil((90.0 - e0) / 180.0 * H)) + margin)
    x0 -= x0 % align
    y0 -= y0 % align
    w = _round_up(x1 - x0, align)
    h = min(_round_up(y1 - y0, align), H - y0)
    if w >= W and h >= H:
        return full
    if w >= W:
        x0, w = 0, W
    return EquirectWindow(W, x0, y0, w, h)


@dataclass(frozen=True)
class Cylindrical:
    """360 degrees of azimuth over an elevation band, rows linear in tan(elevation) (a true
    cylinder, so verticals stay vertical and straight). Column x covers azimuth
    360 (x + 0.5) / W; transform in (azimuth degrees, tan(elevation))."""

    width: int
    height: int
    el_min: float
    el_max: float
    kind = "direction"
    wraps = True

    def __post_init__(self):
        if not -89.0 <= self.el_min < self.el_max <= 89.0:
            raise InputError(None, f"elevation band [{self.el_min}, {self.el_max}] must lie within (-90, 90) degrees",
                             field="elevation_range")

    @property
    def _t(self):
        return np.tan(np.radians(self.el_max)), np.tan(np.radians(self.el_min))

    def pixel_to_dir(self, x, y):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        t1, t0 = self._t
        t = t1 - (t1 - t0) * (y + 0.5) / self.height
        return _azel_dirs(360.0 * (x + 0.5) / self.width, np.degrees(np.arctan(t)))

    @property
    def transform(self):
        t1, t0 = self._t
        return (0.0, 360.0 / self.width, 0.0, float(t1), 0.0, -float(t1 - t0) / self.height)


@dataclass(frozen=True)
class _Square:
    """Outputs ``size`` pixels a side, and does not wrap."""

    size: int
    wraps = False

    @property
    def width(self) -> int:
        return self.size

    @property
    def height(self) -> int:
        return self.size


@dataclass(frozen=True)
class Polar(_Square):
    """Nadir-centred azimuthal equidistant view ("little planet" seen from above, north up, east
    right): the distance from the centre is the angle from the nadir. Covers nadir angles up to
    ``max_angle`` degrees (180 = the whole sphere); transform in degrees from the nadir."""

    max_angle: float = 180.0
    kind = "direction"

    def pixel_to_dir(self, x, y):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        c = self.size / 2.0
        s = 2.0 * self.max_angle / self.size  # degrees per pixel
        dx = (x + 0.5 - c) * s
        dy = (c - y - 0.5) * s
        rho = np.hypot(dx, dy)
        az = np.degrees(np.arctan2(dx, dy))
        d = _azel_dirs(az, rho - 90.0)
        d[rho > self.max_angle] = np.nan
        return d

    @property
    def transform(self):
        s = 2.0 * self.max_angle / self.size
        return (-self.max_angle, s, 0.0, self.max_angle, 0.0, -s)


@dataclass(frozen=True)
class Perspective:
    """A pinhole view towards (azimuth, elevation) with horizontal field of view ``hfov`` degrees,
    no roll; square pixels; transform in pixels (identity)."""

    width: int
    height: int
    azimuth: float
    elevation: float
    hfov: float
    kind = "direction"
    wraps = False

    def __post_init__(self):
        if not 0.0 < self.hfov < 179.0:
            raise InputError(None, f"perspective field of view {self.hfov} must be in (0, 179) degrees", field="hfov")

    def _axes(self):
        fwd = _azel_dirs(self.azimuth, self.elevation)
        right = _azel_dirs(self.azimuth + 90.0, 0.0)
        down = np.cross(fwd, right)
        return fwd, right, down

    def pixel_to_dir(self, x, y):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        f = (self.width / 2.0) / np.tan(np.radians(self.hfov) / 2.0)
        fwd, right, down = self._axes()
        u = (x - (self.width - 1) / 2.0) / f
        v = (y - (self.height - 1) / 2.0) / f
        d = fwd + u[..., None] * right + v[..., None] * down
        return d / np.linalg.norm(d, axis=-1, keepdims=True)

    @property
    def transform(self):
        return (0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


@dataclass(frozen=True)
class Vertical(_Square):
    """Orthographic view from above of the plane z = ``ground_z`` (LOCAL_LEVEL, +z down; 0 is the
    rover's nominal ground, cameras sit about 2 m above it at z ~ -2), north up, east right, centred
    on the rover. ``extent`` metres square at ``resolution`` metres per pixel; transform in metres
    (east, north) from the rover."""

    resolution: float
    ground_z: float = 0.0
    kind = "point"

    def pixel_to_point(self, x, y):
        x = np.asarray(x, dtype=float)
        y = np.asarray(y, dtype=float)
        half = self.size * self.resolution / 2.0
        east = -half + (x + 0.5) * self.resolution
        north = half - (y + 0.5) * self.resolution
        return np.stack(np.broadcast_arrays(north, east, np.full_like(east, self.ground_z)), axis=-1)

    @property
    def transform(self):
        half = self.size * self.resolution / 2.0
        return (-half, self.resolution, 0.0, half, 0.0, -self.resolution)


def _round_up(n: float, multiple: int) -> int:
    return int(max(multiple, multiple * np.ceil(n / multiple - 1e-9)))


def make_projection(name: str, resolution: float, *, align: int = 1, elevation_range=None,
                    max_angle: float = 180.0, direction=(0.0, 0.0), fov=(60.0, 40.0),
                    extent: float = 40.0, ground_z: float = 0.0):
    """The projection ``name`` at ``resolution`` (degrees per pixel; metres per pixel for
    ``vertical``). Sizes are rounded up to a multiple of ``align`` (the blender's pyramid needs
    that for the 360 degree wrap), so the resolution actually used can be slightly finer."""
    if not (resolution and np.isfinite(resolution) and resolution > 0):
        raise InputError(None, f"resolution must be a positive number, got {resolution!r}", field="resolution")
    if name == "equirect":
        w = _round_up(360.0 / resolution, 2 * align)
        return Equirectangular(w)
    if name == "cylindrical":
        lo, hi = elevation_range if elevation_range is not None else (-60.0, 60.0)
        w = _round_up(360.0 / resolution, align)
        t = np.tan(np.radians([lo, hi]))
        h = _round_up((t[1] - t[0]) / np.radians(resolution), align)
        return Cylindrical(w, h, float(lo), float(hi))
    if name == "polar":
        return Polar(_round_up(2.0 * max_angle / resolution, align), float(max_angle))
    if name == "perspective":
        az, el = direction
        hf, vf = fov
        w = _round_up(2 * np.tan(np.radians(hf) / 2) / np.radians(resolution), align)
        h = _round_up(w * np.tan(np.radians(vf) / 2) / np.tan(np.radians(hf) / 2), align)
        return Perspective(w, h, float(az), float(el), float(hf))
    if name == "vertical":
        return Vertical(_round_up(extent / resolution, align), float(resolution), float(ground_z))
    raise InputError(None, f"unknown projection {name!r} (equirect, cylindrical, polar, perspective, vertical)",
                     field="projection")
