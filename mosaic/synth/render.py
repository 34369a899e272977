"""From camera model to 8-bit frame: ray cast, shading, sky, and the sensor.

Radiance model (grey, arbitrary units, 1.0 ~ a white Lambertian surface under the full sun):
``albedo * (AMBIENT + (1 - AMBIENT) * max(0, n . sun) * lit)`` on terrain (``lit`` 0 in the
cast shadow of rocks and crater walls within the mid layer, ``raycast.in_shadow``), mixed towards the horizon
sky by dust haze ``exp(-t / HAZE_M)``; the sky brightens towards the horizon and the sun.

Sensor: a 12-bit linear signal (``GAIN`` DN per radiance unit at exposure 1) times a per-frame
exposure factor and a radial vignetting ``1 - v r^2`` (r = distance from the full sensor's
centre over its half diagonal, so tiles and downsampled frames vignette alike; v =
``VIGNETTE`` unless the scene's :class:`Photometry` says otherwise), plus a veiling glare where
the scene has one (:func:`veil`), shot noise (``ELECTRONS_PER_DN``) and read noise
(``READ_NOISE_DN``), clipped at 4095, then companded to 8 bits by a square-root table, as the
flight cameras' 12->8 bit LUTs do (or, ``response="linear12"``, kept as 12-bit DN in a 16-bit
container, as MER/MSL inverse-LUT products are). Dark borders (:func:`dark_borders`) blank the
edge rows and columns the way linearised Curiosity products have them. Every random draw comes
from the frame's own generator, so frames are reproducible one by one and in any order.
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


#: Veiling glare: e-folding angle (radians) of the veil about the sun's direction, and of its
#: strength with the sun's angle from the boresight.
GLARE_SPREAD = np.radians(25.0)
GLARE_FALLOFF = np.radians(30.0)
#: Dark borders of a linearised Curiosity Navcam product: rows blank at the top and bottom,
#: columns at the left and right (the outer one blank, the next ones dim or ragged).
BORDER_ROWS = (3, 2)
BORDER_COLUMNS = (3, 2)


@dataclass(frozen=True)
class Photometry:
    """The troubles a scene's frames carry (``mosaic synth --exposure --vignetting --glare
    --dark-borders --bits``), written to scene.json as the truth of the photometric fit."""

    exposure: float = 0.15      # per-frame exposure uniform in [1 - e, 1 + e]
    vignetting: float = VIGNETTE  # 1 - v r^2 over the full sensor's half diagonal
    glare: float = 0.0          # veil at the sun, in DN at exposure 1, for a frame aimed at the sun
    dark_borders: bool = False
    response: str = "sqrt8"     # sqrt8 (8-bit companded) | linear12 (12-bit DN, 16-bit PNG)

    def to_dict(self) -> dict:
        return {"exposure_spread": self.exposure, "vignetting": self.vignetting, "glare_dn": self.glare,
                "dark_borders": {"rows": list(BORDER_ROWS), "columns": list(BORDER_COLUMNS)} if self.dark_borders
                else None, "response": self.response,
                "response_gamma": 0.5 if self.response == "sqrt8" else 1.0}


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


def expose(rad, sensor: Sensor, exposure: float, rng, noise: bool = True, photometry: Photometry = Photometry(),
           veil_dn=None):
    """The frame's pixels from radiance: exposure, vignetting, veil (DN, added after the optics'
    vignetting), noise, 12-bit clip, then the response (8-bit sqrt LUT, or 12-bit DN as uint16)
    and dark borders."""
    h, w = rad.shape
    yy, xx = np.mgrid[0:h, 0:w]
    fx, fy = sensor.full_pixels(xx, yy)
    cx, cy = (sensor.full_width - 1) / 2.0, (sensor.full_height - 1) / 2.0
    r2 = ((fx - cx) ** 2 + (fy - cy) ** 2) / (cx**2 + cy**2)
    dn = rad * GAIN * exposure * (1 - photometry.vignetting * r2)
    if veil_dn is not None:
        dn = dn + veil_dn * exposure
    if noise:
        electrons = rng.poisson(np.clip(dn, 0, None) * ELECTRONS_PER_DN) / ELECTRONS_PER_DN
        dn = electrons + rng.normal(0.0, READ_NOISE_DN, dn.shape)
    dn = np.clip(np.rint(dn), 0, 4095).astype(np.int64)
    img = dn.astype(np.uint16) if photometry.response == "linear12" else compand_lut()[dn]
    if photometry.dark_borders:
        dark_borders(img, rng)
    return img


def veil(dirs_neu, boresight_neu, sun, strength):
    """Veiling glare (DN at exposure 1) over a frame's pixels (unit ray directions (N, 3),
    north-east-up): stray light of the optics, strongest towards the sun and in frames aimed
    near it, ``strength`` x exp(-angle(boresight, sun) / GLARE_FALLOFF) x exp(-angle(ray, sun) /
    GLARE_SPREAD). It belongs to the frame, not the scene: overlapping frames disagree about it."""
    ab = np.arccos(np.clip(float(boresight_neu @ sun), -1, 1))
    ar = np.arccos(np.clip(dirs_neu @ sun, -1, 1))
    return strength * np.exp(-ab / GLARE_FALLOFF) * np.exp(-ar / GLARE_SPREAD)


def dark_borders(img, rng):
    """Blank and dim the edge rows and columns in place, as linearised Curiosity Navcam products
    have them: BORDER_ROWS blank rows, an outer blank column, a ragged next one (half its rows
    blank, the rest at a fifth) and a dim one (two thirds) on the left; on the right an outer
    column at a half and a ragged next one."""
    top, bottom = BORDER_ROWS
    img[:top] = 0
    img[img.shape[0] - bottom:] = 0
    col = img.astype(np.float64)
    shape = (img.shape[0],) + (1,) * (img.ndim - 2)  # one draw per row, all bands alike
    ragged = (rng.random(img.shape[0]) < 0.5).reshape(shape)
    img[:, 0] = 0
    img[:, 1] = np.where(ragged, 0, np.rint(0.2 * col[:, 1])).astype(img.dtype)
    img[:, 2] = np.rint(0.66 * col[:, 2]).astype(img.dtype)
    img[:, -1] = np.rint(0.5 * col[:, -1]).astype(img.dtype)
    ragged = (rng.random(img.shape[0]) < 0.5).reshape(shape)
    img[:, -2] = np.where(ragged, 0, np.rint(0.85 * col[:, -2])).astype(img.dtype)
    img[:top] = 0
    img[img.shape[0] - bottom:] = 0


def compand_lut():
    """12-bit DN -> 8-bit: square-root companding (noise-matched quantisation)."""
    return np.rint(255.0 * np.sqrt(np.arange(4096) / 4095.0)).astype(np.uint8)
