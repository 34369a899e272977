"""From camera model to 8-bit frame: ray cast, shading, sky, and the sensor.

Radiance model (grey, arbitrary units, 1.0 ~ a white Lambertian surface under the full sun):
``albedo * (AMBIENT + (1 - AMBIENT) * max(0, n . sun) * lit)`` on terrain (``lit`` 0 in the
cast shadow of rocks and crater walls within the mid layer, ``raycast.in_shadow``), mixed towards the horizon
sky by dust haze ``exp(-t / HAZE_M)``; the sky brightens towards the horizon and the sun.

Sensor: a 12-bit linear signal (``GAIN`` DN per radiance unit at exposure 1) times a per-frame
exposure factor and a radial vignetting ``1 - VIGNETTE r^2`` (r = distance from the full
sensor's centre over its half diagonal, so tiles and downsampled frames vignette alike), plus
shot noise (``ELECTRONS_PER_DN``) and read noise (``READ_NOISE_DN``), then companded to 8 bits
by a square-root table, as the flight cameras' 12->8 bit LUTs do. Every random draw comes from
the frame's own generator, so frames are reproducible one by one and in any order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .raycast import in_shadow, intersect

AMBIENT = 0.28
HAZE_M = 6000.0
GAIN = 3600.0
VIGNETTE = 0.3
ELECTRONS_PER_DN = 8.0
READ_NOISE_DN = 1.5


@dataclass(frozen=True)
class Sensor:
    """Where a delivered image sits on its sensor: full size, 1-based subframe, downsample."""

    full_width: int
    full_height: int
    subframe: tuple  # (x0, y0, w, h), 1-based full-sensor pixels
    downsample: int

    @property
    def width(self) -> int:
        return self.subframe[2] // self.downsample

    @property
    def height(self) -> int:
        return self.subframe[3] // self.downsample

    def full_pixels(self, x, y):
        """Full-sensor 0-based coordinates of delivered pixel centres."""
        s = self.downsample
        return (x + 0.5) * s - 0.5 + self.subframe[0] - 1, (y + 0.5) * s - 0.5 + self.subframe[1] - 1


def sky_radiance(dirs_neu, sun):
    """Sky brightness for unit directions (north, east, up)."""
    el = np.arcsin(np.clip(dirs_neu[:, 2], -1, 1))
    cos_sun = np.clip(dirs_neu @ sun, -1, 1)
    glow = np.exp(-np.arccos(cos_sun) / 0.35)
    return 0.16 + 0.16 * np.exp(-np.maximum(el, 0) / 0.25) + 0.5 * glow


def radiance(terrain, model_site, width, height):
    """Noise-free radiance (height, width) of a frame whose model is in SITE, and the hit
    distances t (NaN on sky)."""
    yy, xx = np.mgrid[0:height, 0:width]
    pix = np.stack([xx.ravel(), yy.ravel()], 1).astype(float)
    origins, dirs = model_site.backproject(pix)
    t = intersect(terrain, origins, dirs)
    sun = terrain.sun_vector()
    dneu = dirs * np.array([1.0, 1.0, -1.0])
    out = sky_radiance(np.nan_to_num(dneu), sun)
    hit = np.flatnonzero(np.isfinite(t))
    if hit.size:
        th = t[hit]
        p = origins[hit] + th[:, None] * dirs[hit]
        footprint = th * model_site.angular_pixel()
        n = terrain.normal(p[:, 0], p[:, 1], footprint)
        alb = terrain.albedo(p[:, 0], p[:, 1], footprint)
        direct = np.clip(n @ sun, 0, None)
        # Cast shadows matter where rocks and crater walls are resolved: within the mid layer.
        near = (direct > 0) & (th < 0.5 * terrain.layers[1].shape[0] * terrain.layers[1].cell)
        if near.any():
            direct[np.flatnonzero(near)[in_shadow(terrain, p[near], sun)]] = 0.0
        lit = alb * (AMBIENT + (1 - AMBIENT) * direct)
        haze = np.exp(-th / HAZE_M)
        horizon = sky_radiance(np.column_stack([dneu[hit, :2], np.zeros(hit.size)]), sun)
        out[hit] = lit * haze + horizon * (1 - haze)
    out[~np.isfinite(dirs).all(1)] = 0.0
    return out.reshape(height, width), t.reshape(height, width)


def expose(rad, sensor: Sensor, exposure: float, rng, noise: bool = True):
    """8-bit companded frame from radiance: exposure, vignetting, noise, 12-bit clip, sqrt LUT."""
    h, w = rad.shape
    yy, xx = np.mgrid[0:h, 0:w]
    fx, fy = sensor.full_pixels(xx, yy)
    cx, cy = (sensor.full_width - 1) / 2.0, (sensor.full_height - 1) / 2.0
    r2 = ((fx - cx) ** 2 + (fy - cy) ** 2) / (cx**2 + cy**2)
    dn = rad * GAIN * exposure * (1 - VIGNETTE * r2)
    if noise:
        electrons = rng.poisson(np.clip(dn, 0, None) * ELECTRONS_PER_DN) / ELECTRONS_PER_DN
        dn = electrons + rng.normal(0.0, READ_NOISE_DN, dn.shape)
    dn = np.clip(np.rint(dn), 0, 4095).astype(np.int64)
    return compand_lut()[dn]


def compand_lut():
    """12-bit DN -> 8-bit: square-root companding (noise-matched quantisation)."""
    return np.rint(255.0 * np.sqrt(np.arange(4096) / 4095.0)).astype(np.uint8)
