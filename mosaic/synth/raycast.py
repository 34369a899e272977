"""Ray / terrain intersection over the nested heightfield, vectorised over all rays of a frame.

The march steps in ray parameter t with the larger of two steps:

- a *clearance* step ``c / (L h + max(0, -d_up))`` (c the ray's height above the surface, h the
  ray's horizontal speed, L a slope bound): where the ray is high above the ground the surface
  cannot rise to meet it within that distance while slopes stay under L. L = 1 within the
  detailed 64 m (a rock there is at most as high as its narrowest width, so a whole rock is
  never stepped over; a steep flank may be entered a little late, and bisection then finds it), 0.6 on
  the far plain and scarp;
- a *resolution* step ``q t`` (q = 0.02): a feature thinner than 2 % of its distance along the
  ray (a few pixels at Navcam's 0.33 mrad x downsample) may be stepped over; nothing larger is.

The first sample below the surface brackets the hit; bisection (12 halvings) refines it to
under 0.1 mm at 10 m. Rays leave the march as *sky* when they rise above the highest terrain
or leave the terrain's disc. Only the rays still marching are computed on at each step.
"""

from __future__ import annotations

import numpy as np

STEP_FRACTION = 0.02
MIN_STEP = 0.004
SLOPE_NEAR = 1.0
SLOPE_FAR = 0.6
BISECTIONS = 12


def intersect(terrain, origins, dirs, t_max=None):
    """Distances t (N,) along unit ``dirs`` from ``origins`` (SITE, +z down) to the first surface
    hit; NaN for rays that reach the sky. Rays with NaN origin or direction stay NaN."""
    o = np.asarray(origins, float)
    d = np.asarray(dirs, float)
    n = len(o)
    ox, oy, oup = o[:, 0], o[:, 1], -o[:, 2]
    dx, dy, dup = d[:, 0], d[:, 1], -d[:, 2]
    rx, ry = terrain.rover_xy
    near_r = 0.5 * terrain.layers[1].shape[0] * terrain.layers[1].cell
    if t_max is None:
        t_max = 2.5 * terrain.radius
    hspeed = np.hypot(dx, dy)
    descent = np.maximum(0.0, -dup)

    result = np.full(n, np.nan)
    active = np.flatnonzero(np.isfinite(o).all(1) & np.isfinite(d).all(1))
    t = np.full(n, 0.02)
    t_prev = np.zeros(n)
    hit_lo = []
    hit_hi = []
    while active.size:
        ta = t[active]
        px = ox[active] + ta * dx[active]
        py = oy[active] + ta * dy[active]
        pup = oup[active] + ta * dup[active]
        ground = terrain.height(px, py)
        clearance = pup - ground
        out = np.isnan(ground) | (ta > t_max) | ((dup[active] >= 0) & (pup > terrain.hmax))
        below = ~out & (clearance <= 0)
        if below.any():
            hit_lo.append(active[below])
            hit_hi.append(ta[below])
        keep = ~(out | below)
        active = active[keep]
        if not active.size:
            break
        ta = ta[keep]
        c = clearance[keep]
        r = np.hypot(px[keep] - rx, py[keep] - ry)
        slope = np.where(r < near_r, SLOPE_NEAR, SLOPE_FAR)
        step = np.maximum(STEP_FRACTION * ta, c / (slope * hspeed[active] + descent[active] + 1e-9))
        step = np.maximum(step, MIN_STEP)
        t_prev[active] = ta
        t[active] = ta + step

    if hit_lo:
        idx = np.concatenate(hit_lo)
        hi = np.concatenate(hit_hi)
        lo = t_prev[idx]
        for _ in range(BISECTIONS):
            mid = 0.5 * (lo + hi)
            pup = oup[idx] + mid * dup[idx]
            ground = terrain.height(ox[idx] + mid * dx[idx], oy[idx] + mid * dy[idx])
            above = pup - ground > 0
            lo = np.where(above, mid, lo)
            hi = np.where(above, hi, mid)
        result[idx] = 0.5 * (lo + hi)
    return result


def in_shadow(terrain, points, sun_neu, clear=2.0, start=0.02):
    """Whether surface ``points`` (N, 3, SITE) are shadowed from the sun (unit north-east-up).

    A ray towards the sun is marched like ``intersect`` from ``start`` metres off the surface
    until it dips under the terrain (shadow) or clears it by ``clear`` metres: with the sun
    higher than any slope of the plain, only rocks and crater walls (at most ~2 m) can shade.
    """
    p = np.asarray(points, float)
    n = len(p)
    shadow = np.zeros(n, dtype=bool)
    dx, dy, dup = (float(v) for v in sun_neu)
    hspeed = np.hypot(dx, dy)
    if dup <= 0:
        shadow[:] = True
        return shadow
    ox, oy, oup = p[:, 0], p[:, 1], -p[:, 2]
    active = np.flatnonzero(np.isfinite(p).all(1))
    t = np.full(n, start)
    while active.size:
        ta = t[active]
        ground = terrain.height(ox[active] + ta * dx, oy[active] + ta * dy)
        c = oup[active] + ta * dup - ground
        below = c <= 0
        shadow[active[below]] = True
        keep = ~below & (c < clear) & np.isfinite(ground)
        active = active[keep]
        ta, c = ta[keep], c[keep]
        t[active] = ta + np.maximum(STEP_FRACTION * ta, np.maximum(c / (SLOPE_NEAR * hspeed), MIN_STEP))
    return shadow
