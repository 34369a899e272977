"""A Jezero-floor terrain: heights and albedo on nested grids in the SITE frame.

SITE axes are +x north, +y east, +z down; this module works with *up* heights ``h = -z`` and
converts only at its boundary (``site_z``). The terrain is a sum of three grid layers centred on
the rover, each adding detail where cameras see it at a matching resolution:

- ``far``: 8 m cells over +-4 km: gentle rolling plain plus a scarp / crater rim ring at 1.2-2 km,
  45-145 m high (2-6 degrees above the horizon, as the delta scarp and crater rim seen from the floor);
- ``mid``: 6.4 cm cells over +-64 m: metre-scale relief, small craters, rocks 8 cm - 1 m;
- ``near``: 1.6 cm cells over +-12.8 m: centimetre roughness and pebbles 2-8 cm.

Detail layers fade to zero (heights) and one (albedo factors) towards their borders, so the sum
has no seams. Heights and albedo are bilinear in each layer; the same ``height`` function feeds the
ray caster and the truth DEM, so a rendered pixel and the DEM agree by construction.

Rocks follow a power-law size-frequency N(>D) = a D^-2.5 per m^2 (a = 0.002: ~0.6 rocks >10 cm
per m^2, ~0.002 >1 m, a moderately rocky floor in the sense of Golombek's k of a few percent).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

#: Rock size-frequency: cumulative number of rocks wider than D (m) per m^2 is ROCK_A * D**-ROCK_B.
ROCK_A = 0.002
ROCK_B = 2.5


@dataclass(frozen=True)
class Layer:
    """One grid: values at cell centres ``x0 + i * cell`` (north), ``y0 + j * cell`` (east)."""

    name: str
    x0: float
    y0: float
    cell: float
    height: np.ndarray  # (nx, ny) float32, metres up
    albedo: np.ndarray  # (nx, ny) float32: absolute albedo (far) or a factor (detail layers)

    @property
    def shape(self):
        return self.height.shape

    def _corners(self, x, y):
        nx, ny = self.height.shape
        u = np.clip((x - self.x0) / self.cell, 0.0, nx - 1.000001)
        v = np.clip((y - self.y0) / self.cell, 0.0, ny - 1.000001)
        i = u.astype(np.intp)
        j = v.astype(np.intp)
        return i, j, (u - i), (v - j)

    def sample(self, arr, x, y):
        """Bilinear value of ``arr`` (a field of this layer) at points; borders clamp."""
        i, j, fu, fv = self._corners(x, y)
        ny = arr.shape[1]
        flat = arr.reshape(-1)
        k = i * ny + j
        a = flat[k]
        b = flat[k + 1]
        c = flat[k + ny]
        d = flat[k + ny + 1]
        return (a + (b - a) * fv) * (1 - fu) + (c + (d - c) * fv) * fu

    def contains(self, x, y, margin=0.0):
        nx, ny = self.height.shape
        return (
            (x >= self.x0 + margin)
            & (x <= self.x0 + (nx - 1) * self.cell - margin)
            & (y >= self.y0 + margin)
            & (y <= self.y0 + (ny - 1) * self.cell - margin)
        )


@dataclass
class Terrain:
    """The whole terrain: ``far`` + ``mid`` + ``near`` layers and the rover's place on it."""

    layers: list
    rover_xy: tuple
    seed: int
    sun_azel: tuple = (135.0, 35.0)
    hmax: float = field(init=False)

    def __post_init__(self):
        self.hmax = float(sum(float(layer.height.max()) for layer in self.layers))
        self.far = self.layers[0]
        self.radius = 0.5 * (self.far.shape[0] - 1) * self.far.cell - 2 * self.far.cell

    def height(self, x, y):
        """Up height (m) at SITE (x, y); NaN outside the terrain."""
        h = self.far.sample(self.far.height, x, y)
        for layer in self.layers[1:]:
            inside = layer.contains(x, y)
            if inside.all():
                h = h + layer.sample(layer.height, x, y)
            elif inside.any():
                h[inside] += layer.sample(layer.height, x[inside], y[inside])
        rx, ry = self.rover_xy
        h[(x - rx) ** 2 + (y - ry) ** 2 > self.radius**2] = np.nan
        return h

    def site_z(self, x, y):
        """SITE z (down) of the surface."""
        return -self.height(np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float)))

    def rover_position(self):
        """The rover origin (nominal ground under the rover) in SITE."""
        rx, ry = self.rover_xy
        return np.array([rx, ry, float(self.site_z(rx, ry)[0])])

    def albedo(self, x, y, footprint):
        """Albedo at points seen with a pixel footprint (m): detail layers finer than the
        footprint fade out, so distant texture does not alias into noise."""
        a = self.far.sample(self.far.albedo, x, y)
        for layer in self.layers[1:]:
            w = np.clip(2.5 - footprint / layer.cell, 0.0, 1.0) * layer.contains(x, y)
            sel = w > 0
            if sel.any():
                f = layer.sample(layer.albedo, x[sel], y[sel])
                a[sel] *= 1.0 + (f - 1.0) * w[sel]
        return a

    def normal(self, x, y, footprint):
        """Unit surface normals in (north, east, up) from heights smoothed at the footprint."""
        eps = np.maximum(footprint, self.layers[-1].cell)
        hx = (self.height(x + eps, y) - self.height(x - eps, y)) / (2 * eps)
        hy = (self.height(x, y + eps) - self.height(x, y - eps)) / (2 * eps)
        n = np.stack([-hx, -hy, np.ones_like(hx)], axis=1)
        n /= np.linalg.norm(n, axis=1, keepdims=True)
        return np.nan_to_num(n, nan=0.0)

    def sun_vector(self):
        """Unit vector towards the sun in (north, east, up)."""
        az, el = np.radians(self.sun_azel)
        return np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])

    def grid(self, x0, y0, cell, nx, ny):
        """Heights and albedo sampled on a regular grid (cell centres ``x0 + i cell``)."""
        xs = x0 + cell * np.arange(nx)
        ys = y0 + cell * np.arange(ny)
        gx, gy = np.meshgrid(xs, ys, indexing="ij")
        h = self.height(gx.ravel(), gy.ravel()).reshape(nx, ny)
        a = self.albedo(gx.ravel(), gy.ravel(), np.full(gx.size, cell)).reshape(nx, ny)
        return h, a


# -- generation ---------------------------------------------------------------------------------


def fractal_noise(rng, n, cell, beta, amplitude, min_wavelength=None, max_wavelength=None):
    """Periodic Gaussian noise with power spectrum ~ k^-beta, scaled to ``amplitude`` RMS."""
    kx = np.fft.fftfreq(n, d=cell)
    ky = np.fft.rfftfreq(n, d=cell)
    k = np.hypot(kx[:, None], ky[None, :])
    k[0, 0] = np.inf
    amp = k ** (-beta / 2.0)
    if min_wavelength:
        amp *= np.exp(-((k * min_wavelength) ** 2))
    if max_wavelength:
        amp *= k * max_wavelength > 1.0
    spec = amp * (rng.standard_normal(k.shape) + 1j * rng.standard_normal(k.shape))
    field = np.fft.irfft2(spec, s=(n, n))
    field *= amplitude / max(field.std(), 1e-12)
    return field


def _fade(n, width):
    """1 in the middle, smoothly 0 at the borders, over ``width`` cells."""
    t = np.clip(np.minimum(np.arange(n), np.arange(n)[::-1]) / width, 0, 1)
    t = t * t * (3 - 2 * t)
    return np.outer(t, t)


def _stamp_rocks(rng, height, albedo, cell, area, dmin, dmax, keep_clear=None):
    """Add rocks (power-law sizes in [dmin, dmax]) as irregular domes; returns their count."""
    n_exp = ROCK_A * (dmin**-ROCK_B - dmax**-ROCK_B) * area
    count = int(rng.poisson(n_exp))
    u = rng.random(count)
    # Inverse CDF of a power law truncated to [dmin, dmax].
    d = (dmin**-ROCK_B - u * (dmin**-ROCK_B - dmax**-ROCK_B)) ** (-1.0 / ROCK_B)
    nx, ny = height.shape
    ci = rng.random(count) * nx
    cj = rng.random(count) * ny
    elong = rng.uniform(0.6, 1.0, count)
    angle = rng.uniform(0, np.pi, count)
    hfrac = rng.uniform(0.3, 0.6, count)
    rock_albedo = rng.uniform(0.65, 1.45, count)
    if keep_clear is not None:
        (i0, j0), r = keep_clear
        ok = np.hypot(ci - i0, cj - j0) * cell > r + d
        d, ci, cj, elong, angle, hfrac, rock_albedo = (a[ok] for a in (d, ci, cj, elong, angle, hfrac, rock_albedo))
    rocks = np.zeros_like(height)
    owner_albedo = np.ones_like(albedo)
    # Bucket by footprint so each bucket stamps as one vectorised (n, k, k) block.
    radius_cells = 0.5 * d / cell
    ks = np.ceil(radius_cells).astype(int) + 1
    for k in np.unique(ks):
        sel = np.flatnonzero(ks == k)
        off = np.arange(-k, k + 1)
        ii = np.floor(ci[sel]).astype(int)[:, None, None] + off[None, :, None]
        jj = np.floor(cj[sel]).astype(int)[:, None, None] + off[None, None, :]
        du = (ii + 0.5 - ci[sel][:, None, None]) * cell
        dv = (jj + 0.5 - cj[sel][:, None, None]) * cell
        ca, sa = np.cos(angle[sel])[:, None, None], np.sin(angle[sel])[:, None, None]
        a_ax = 0.5 * d[sel][:, None, None]
        b_ax = a_ax * elong[sel][:, None, None]
        r2 = ((du * ca + dv * sa) / a_ax) ** 2 + ((-du * sa + dv * ca) / b_ax) ** 2
        dome = np.sqrt(np.clip(1 - r2, 0, None)) ** 0.8 * (hfrac[sel] * d[sel])[:, None, None]
        ii, jj = np.broadcast_arrays(ii, jj)
        inside = (ii >= 0) & (ii < nx) & (jj >= 0) & (jj < ny) & (dome > 0)
        idx = ii[inside] * ny + jj[inside]
        vals = dome[inside]
        flat = rocks.reshape(-1)
        np.maximum.at(flat, idx, vals)
        won = flat[idx] == vals
        owner_albedo.reshape(-1)[idx[won]] = np.broadcast_to(rock_albedo[sel][:, None, None], dome.shape)[inside][won]
    height += rocks
    albedo *= owner_albedo
    return len(d)


def _stamp_craters(rng, height, cell, count, dmin, dmax):
    """Fresh-to-degraded small craters: a bowl (depth ~0.1-0.2 D) with a low raised rim."""
    nx, ny = height.shape
    ii = np.arange(nx)[:, None] * cell
    jj = np.arange(ny)[None, :] * cell
    for _ in range(count):
        d = float(np.exp(rng.uniform(np.log(dmin), np.log(dmax))))
        cx, cy = rng.uniform(0.15, 0.85) * nx * cell, rng.uniform(0.15, 0.85) * ny * cell
        depth = rng.uniform(0.08, 0.18) * d
        k = int(np.ceil(1.6 * d / cell))
        i0, i1 = max(0, int(cx / cell) - k), min(nx, int(cx / cell) + k + 1)
        j0, j1 = max(0, int(cy / cell) - k), min(ny, int(cy / cell) + k + 1)
        r = np.hypot(ii[i0:i1] - cx, jj[:, j0:j1] - cy) / (0.5 * d)
        bowl = np.where(r < 1, -depth * (1 - r**2) + 0.25 * depth, 0.25 * depth * np.exp(-((r - 1) / 0.35) ** 2))
        height[i0:i1, j0:j1] += bowl


def _layer_grid(rover_xy, half, cell):
    n = int(round(2 * half / cell))
    x0 = rover_xy[0] - half + 0.5 * cell
    y0 = rover_xy[1] - half + 0.5 * cell
    return n, x0, y0


def _far_layer(rng, rover_xy):
    cell, half = 8.0, 4096.0
    n, x0, y0 = _layer_grid(rover_xy, half, cell)
    h = fractal_noise(rng, n, cell, beta=3.2, amplitude=4.0, min_wavelength=3 * cell)
    # A scarp / rim ring: its distance and height vary with azimuth (smooth periodic series).
    gx = x0 + cell * np.arange(n)[:, None] - rover_xy[0]
    gy = y0 + cell * np.arange(n)[None, :] - rover_xy[1]
    az = np.arctan2(gy, gx)
    r = np.hypot(gx, gy)
    harmonics = np.arange(1, 7)
    ra = rng.standard_normal(6) / harmonics
    rb = rng.standard_normal(6) / harmonics
    ph = rng.uniform(0, 2 * np.pi, 6)
    wav = sum(ra[k] * np.cos((k + 1) * az + ph[k]) for k in range(6))
    hav = sum(rb[k] * np.sin((k + 1) * az + ph[k]) for k in range(6))
    ring_r = 1600.0 + 400.0 * wav / max(np.abs(wav).max(), 1e-9)
    ring_h = 95.0 + 50.0 * hav / max(np.abs(hav).max(), 1e-9)
    s = (r - ring_r) / 180.0
    h += ring_h * 0.5 * (1 + np.tanh(s)) + 0.15 * ring_h * np.exp(-(s**2))
    # Keep the plain's mean at the rover's level, and the rover on nearly level ground.
    h -= h[n // 2, n // 2]
    alb = 0.24 * np.exp(fractal_noise(rng, n, cell, beta=2.6, amplitude=0.12, min_wavelength=2 * cell))
    alb *= 1.0 + 0.15 * (0.5 * (1 + np.tanh(s)))  # dustier slopes on the scarp
    return Layer("far", x0, y0, cell, h.astype(np.float32), alb.astype(np.float32))


def _detail_layer(rng, rover_xy, name, half, cell, relief, rough_beta, rocks, craters, albedo_rms):
    n, x0, y0 = _layer_grid(rover_xy, half, cell)
    h = fractal_noise(rng, n, cell, beta=rough_beta, amplitude=relief, min_wavelength=2 * cell,
                      max_wavelength=half)
    alb = np.exp(fractal_noise(rng, n, cell, beta=1.6, amplitude=albedo_rms, min_wavelength=2 * cell))
    for dmin, dmax, ncrater in craters:
        _stamp_craters(rng, h, cell, ncrater, dmin, dmax)
    dmin, dmax = rocks
    # Keep the rover's own footprint (1.5 m) clear of rocks the deck would sit on.
    centre = ((rover_xy[0] - x0) / cell, (rover_xy[1] - y0) / cell)
    _stamp_rocks(rng, h, alb, cell, (2 * half) ** 2, dmin, dmax, keep_clear=(centre, 1.5))
    fade = _fade(n, max(8, n // 12))
    h = (h - h[n // 2, n // 2]) * fade
    alb = 1.0 + (alb - 1.0) * fade
    return Layer(name, x0, y0, cell, h.astype(np.float32), alb.astype(np.float32))


def jezero_floor(seed: int, rover_xy=(4.0, -2.5), sun_azel=(135.0, 35.0)) -> Terrain:
    """The terrain of a scene: deterministic in ``seed``."""
    rng = np.random.default_rng([seed, 0x7E22])
    far = _far_layer(rng, rover_xy)
    mid = _detail_layer(rng, rover_xy, "mid", 64.0, 0.064, relief=0.12, rough_beta=3.0,
                        rocks=(0.08, 1.0), craters=[(1.0, 8.0, 14)], albedo_rms=0.10)
    near = _detail_layer(rng, rover_xy, "near", 12.8, 0.016, relief=0.006, rough_beta=2.6,
                         rocks=(0.02, 0.08), craters=[(0.2, 0.8, 4)], albedo_rms=0.08)
    return Terrain([far, mid, near], tuple(rover_xy), seed, sun_azel)
