"""Export a solved panorama as a Hugin project (``panorama.pto``) that Hugin's ``nona`` renders.

Hugin's lenses are simpler than JPL's models: one projection (rectilinear ``f0`` or full-frame
equidistant fisheye ``f3``), a horizontal field of view ``v``, a radial polynomial
``r_src = (a r^3 + b r^2 + c r + 1 - a - b - c) r`` (r normalised by half the smaller image side),
a lens shift ``d, e`` and yaw/pitch/roll. Each frame's Hugin parameters are fitted by least squares
to its exact camera model over a grid of pixels, so a frame renders where our model says, to the
fit's residual (reported, typically well under a pixel for Navcam and Mastcam-Z).

Orientation conventions, checked against ``nona``: Hugin's panorama centre is our azimuth 180°
(its column c covers azimuth ``360 (c + 0.5) / W``, as ours), yaw grows to the right (clockwise
from north, like our azimuth), pitch up, and a positive roll turns the camera clockwise seen from
behind (its right axis tilts down). Camera translation is not exported: Hugin renders from one
point, so near-field parallax is not represented.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from calib.rotation import azel_to_vector, vector_to_azel
from mosaic.runtime import atomic


@dataclass
class HuginLens:
    projection: int  # 0 rectilinear, 3 full-frame fisheye (equidistant)
    v: float  # horizontal field of view, degrees
    a: float
    b: float
    c: float
    d: float  # lens centre shift, pixels (right)
    e: float  # lens centre shift, pixels (down)
    yaw: float
    pitch: float
    roll: float
    rms_px: float = 0.0


def _basis(yaw, pitch, roll):
    """Forward, right and up unit vectors (north-east-down) of a Hugin camera pose (degrees)."""
    az = yaw + 180.0
    f = azel_to_vector(az, pitch)
    r0 = azel_to_vector(az + 90.0, 0.0)
    u0 = azel_to_vector(az, pitch + 90.0)
    cr, sr = np.cos(np.radians(roll)), np.sin(np.radians(roll))
    return f, cr * r0 - sr * u0, cr * u0 + sr * r0


def hugin_project(dirs, lens: HuginLens, width: int, height: int) -> np.ndarray:
    """Pixels (0-based, centre convention) where Hugin puts unit directions ``dirs`` (N, 3)."""
    f, right, up = _basis(lens.yaw, lens.pitch, lens.roll)
    xc, yc, zc = dirs @ right, -(dirs @ up), dirs @ f
    theta = np.arctan2(np.hypot(xc, yc), zc)
    half = np.radians(lens.v) / 2.0
    if lens.projection == 0:
        fpx = (width / 2.0) / np.tan(half)
        rad = fpx * np.tan(theta)
    else:
        fpx = (width / 2.0) / half
        rad = fpx * theta
    norm = min(width, height) / 2.0
    rn = rad / norm
    scale = lens.a * rn**3 + lens.b * rn**2 + lens.c * rn + (1.0 - lens.a - lens.b - lens.c)
    rho = np.hypot(xc, yc)
    with np.errstate(invalid="ignore", divide="ignore"):
        ux, uy = np.where(rho > 0, xc / rho, 0.0), np.where(rho > 0, yc / rho, 0.0)
    r_src = scale * rad
    x = (width - 1) / 2.0 + lens.d + r_src * ux
    y = (height - 1) / 2.0 + lens.e + r_src * uy
    return np.stack([x, y], axis=1)


def fit_lens(model, width: int, height: int, grid: int = 24) -> HuginLens:
    """Hugin parameters that reproduce ``model`` (LOCAL_LEVEL) over the image, least squares."""
    xs, ys = np.meshgrid(np.linspace(0, width - 1, grid), np.linspace(0, height - 1, grid))
    pix = np.stack([xs.ravel(), ys.ravel()], 1)
    _, dirs = model.backproject(pix)
    ok = np.all(np.isfinite(dirs), axis=1)
    pix, dirs = pix[ok], dirs[ok]
    fov_h, _ = model.fov(width, height)
    linearity = getattr(model, "linearity", 1.0)
    projection = 3 if (linearity < 0.5 or fov_h > 120) else 0
    # Start from the image centre's ray and the direction of the image's +x axis.
    _, cdir = model.backproject([[(width - 1) / 2, (height - 1) / 2], [(width - 1) / 2 + 10, (height - 1) / 2]])
    az, el = vector_to_azel(cdir[0])
    f0, r0, u0 = _basis(float(az) - 180.0, float(el), 0.0)
    xd = cdir[1] - cdir[0]
    roll0 = np.degrees(np.arctan2(-(xd @ u0), xd @ r0))

    def unpack(p):
        return HuginLens(projection, p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8])

    def resid(p):
        return (hugin_project(dirs, unpack(p), width, height) - pix).ravel()

    p0 = np.array([fov_h, 0, 0, 0, 0, 0, float(az) - 180.0, float(el), roll0])
    p, r = _least_squares(resid, p0, np.array([1, 0.01, 0.01, 0.01, 1, 1, 0.1, 0.1, 0.1]))
    lens = unpack(p)
    lens.yaw = (lens.yaw + 180.0) % 360.0 - 180.0
    lens.rms_px = float(np.sqrt(np.mean(r**2)))
    return lens


def _least_squares(resid, p0, scale, iterations=100):
    """Levenberg-Marquardt on a small dense problem (the 9 Hugin parameters, ~1000 residuals),
    forward-difference Jacobian with steps of 1e-6 ``scale`` (each parameter's typical size).
    Written out because ``scipy.optimize`` costs a stitch 0.13-0.29 s to import (measured on 2
    busy cores) for this one fit, more than the fits of all frames together."""
    p, r = np.asarray(p0, float), resid(p0)
    cost, lam = float(r @ r), 1e-3
    steps = 1e-6 * scale
    for _ in range(iterations):
        jac = np.stack([(resid(p + h * e) - r) / h for h, e in zip(steps, np.eye(len(p)))], axis=1)
        a, g = jac.T @ jac, jac.T @ r
        damp = np.maximum(np.diag(a), 1e-12)
        while True:
            dp = -np.linalg.solve(a + lam * np.diag(damp), g)
            new = resid(p + dp)
            new_cost = float(new @ new)
            if new_cost < cost or lam > 1e10:
                break
            lam *= 10
        if not new_cost < cost:
            break
        done = cost - new_cost <= 1e-14 * cost or np.all(np.abs(dp) <= 1e-10 * scale)
        p, r, cost, lam = p + dp, new, new_cost, max(lam / 10, 1e-12)
        if done:
            break
    return p, r


def pto_text(frames, pano_width: int, pano_height: int, control_points=(), window=None) -> str:
    """The text of a Hugin project.

    ``frames``: dicts with ``image`` (path), ``width``, ``height`` and ``model`` (a calib model in
    LOCAL_LEVEL); ``control_points``: (i, j, xi, yi, xj, yj) tuples in the frames' pixels.
    ``pano_width`` x ``pano_height`` is the full sphere; ``window`` = (x0, y0, w, h), a cropped
    panorama's place in it. Hugin cannot crop across its canvas edge, so the whole scene is turned
    in yaw to put the window's centre at Hugin's canvas centre, and the crop (``S``) is the window.
    """
    turn, crop = 0.0, ""
    if window is not None:
        x0, y0, w, h = window
        turn = 180.0 - (x0 + w / 2.0) * 360.0 / pano_width
        c0 = int(round(pano_width / 2.0 - w / 2.0))
        crop = f" S{c0},{c0 + w},{y0},{y0 + h}"
    lines = [
        "# hugin project file, written by jezero-mosaic",
        f'p f2 w{pano_width} h{pano_height} v360 E0 R0{crop} n"TIFF_m c:LZW"',
        "m i0",
    ]
    if turn:
        lines.append(f"#-jezero yaw turned by {turn:.8f} deg: Hugin's canvas centre is the window's centre")
    for fr in frames:
        lens = fit_lens(fr["model"], fr["width"], fr["height"])
        lens.yaw = (lens.yaw + turn + 180.0) % 360.0 - 180.0
        lines.append(
            f"#-jezero frame {os.path.basename(str(fr['image']))} fit_rms_px {lens.rms_px:.4f}"
        )
        lines.append(
            f"i w{fr['width']} h{fr['height']} f{lens.projection} v{lens.v:.8f} Ra0 Rb0 Rc0 Rd0 Re0 "
            f"Eev0 Er1 Eb1 r{lens.roll:.8f} p{lens.pitch:.8f} y{lens.yaw:.8f} TrX0 TrY0 TrZ0 Tpy0 Tpp0 "
            f"j0 a{lens.a:.10f} b{lens.b:.10f} c{lens.c:.10f} d{lens.d:.6f} e{lens.e:.6f} g0 t0 "
            f'Va1 Vb0 Vc0 Vd0 Vx0 Vy0 Vm5 n"{fr["image"]}"'
        )
    for i, j, xi, yi, xj, yj in control_points:
        lines.append(f"c n{int(i)} N{int(j)} x{xi:.3f} y{yi:.3f} X{xj:.3f} Y{yj:.3f} t0")
    return "\n".join(lines) + "\n"


def write_pto(path, frames, pano_width: int, pano_height: int, control_points=(), window=None):
    return atomic.write_text(path, pto_text(frames, pano_width, pano_height, control_points, window))
