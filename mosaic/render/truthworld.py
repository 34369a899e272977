"""A procedural equirectangular "world" and frames sampled from it through camera models.

The renderer's truth test and benchmark need frames whose true models are known exactly: a world
image (full sphere, the panorama contract's grid) is sampled through CAHV/CAHVOR/CAHVORE models in
LOCAL_LEVEL (each frame pixel's back-projected direction looked up in the world, far field), with a
chosen exposure gain, and written with a ``solution.json`` in the contract's schema. A perfect
renderer given these models reproduces the world wherever a frame sees.

The world is smooth (a sky/ground gradient and large blobs) plus band-limited texture and a
distinctive pattern (a grid of dark lines every 15 degrees of azimuth and elevation, and a
checkerboard patch) so that geometric errors show up under phase correlation.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from calib.models import CAHV, CAHVORE
from calib.rotation import azel_to_vector
from mosaic.runtime.atomic import write_json


def blur_wrap(a, sigma):
    """Gaussian blur that wraps around in x (the 0/360 degree seam must not be a world edge)."""
    pad = min(a.shape[1], int(4 * sigma) + 2)
    p = np.concatenate([a[:, -pad:], a, a[:, :pad]], axis=1)
    return cv2.GaussianBlur(p, (0, 0), sigma)[:, pad:-pad]


def world(height: int, seed: int = 0) -> np.ndarray:
    """An RGB float32 equirectangular world (height, 2 * height, 3), values in [0, 1]."""
    rng = np.random.default_rng(seed)
    w = 2 * height
    y, x = np.mgrid[0:height, 0:w].astype(np.float32)
    az = 360.0 * (x + 0.5) / w
    el = 90.0 - 180.0 * (y + 0.5) / height
    base = 0.45 + 0.25 * np.tanh(el / 20.0)
    img = np.repeat(base[..., None], 3, axis=2) * np.array([1.0, 0.92, 0.8], np.float32)
    # Texture: noise at a few scales, blurred so it is band-limited (several pixels per cycle).
    tex = np.zeros((height, w), np.float32)
    for sigma, amp in ((height / 40.0, 0.12), (height / 120.0, 0.08), (2.0, 0.05)):
        n = rng.standard_normal((height, w)).astype(np.float32)
        n = blur_wrap(n, sigma)
        tex += amp * n / max(float(n.std()), 1e-6)
    img += tex[..., None] * np.array([1.0, 0.9, 1.1], np.float32)
    # Distinctive pattern: dark grid lines and a checkerboard patch north of the horizon.
    line = (np.abs(((az + 7.5) % 15.0) - 7.5) < 0.4) | (np.abs(((el + 7.5) % 15.0) - 7.5) < 0.4)
    img[line] *= 0.55
    checker = ((np.floor(az / 3) + np.floor(el / 3)) % 2 == 0) & (az > 20) & (az < 50) & (el > -10) & (el < 10)
    img[checker] *= 1.35
    img = blur_wrap(img, 0.7)
    return np.clip(img, 0.02, 0.98).astype(np.float32)


def pointing_model(az, el, width, height, focal, center=(0.6, 0.2, -1.9), distortion=None, kind="CAHV"):
    """A camera at ``center`` (LOCAL_LEVEL, metres) looking at (az, el) degrees with ``focal``
    pixels, no roll; ``kind`` CAHV, or CAHVORE (T=1) with radial terms ``distortion``."""
    a = azel_to_vector(az, el)
    right = azel_to_vector(az + 90.0, 0.0)
    down = np.cross(a, right)
    hc, vc = (width - 1) / 2.0, (height - 1) / 2.0
    h = focal * right + hc * a
    v = focal * down + vc * a
    if kind == "CAHV":
        return CAHV(np.asarray(center, float), a, h, v)
    r = distortion if distortion is not None else (0.0, -0.04, 0.01)
    return CAHVORE(np.asarray(center, float), a, h, v, O=a, R=r, E=(0.0, 0.0, 0.0), T=1, P=0.0)


def _frame_dirs(model, width, height, step=8):
    """Unit directions (height, width, 3) of every frame pixel: exact back-projections every
    ``step`` pixels, interpolated (directions, not angles, so nothing jumps at 0/360 degrees).
    For a world sampled at a fraction of the frame's resolution the interpolation error is
    far below a world pixel (and a CAHV frame's rays are exactly linear in the pixel anyway)."""
    nx, ny = -(-width // step) + 2, -(-height // step) + 2
    # Node k at pixel (k - 0.5) step - 0.5, as cv2.resize by ``step`` assumes (see render.warp).
    gx, gy = np.meshgrid((np.arange(nx) - 0.5) * step - 0.5, (np.arange(ny) - 0.5) * step - 0.5)
    _, d = model.backproject(np.stack([gx.ravel(), gy.ravel()], axis=1))
    if not np.isfinite(d).all():
        gy2, gx2 = np.mgrid[0:height, 0:width]
        _, d = model.backproject(np.stack([gx2.ravel(), gy2.ravel()], axis=1).astype(float))
        return d.reshape(height, width, 3)
    up = cv2.resize(d.reshape(ny, nx, 3).astype(np.float32), (nx * step, ny * step), interpolation=cv2.INTER_LINEAR)
    out = up[step:step + height, step:step + width]  # pixel i is resized index i + step
    return out / np.linalg.norm(out, axis=2, keepdims=True)


def sample_frame(world_img: np.ndarray, model, width: int, height: int) -> np.ndarray:
    """The frame (height, width, bands) float32 that ``model`` sees of the world (far field)."""
    wh, ww = world_img.shape[:2]
    d = _frame_dirs(model, width, height)
    az = np.degrees(np.arctan2(d[..., 1], d[..., 0])) % 360.0
    el = np.degrees(np.arcsin(np.clip(-d[..., 2], -1, 1)))
    mx = (az / 360.0 * ww - 0.5).astype(np.float32)
    my = ((90.0 - el) / 180.0 * wh - 0.5).astype(np.float32)
    # Columns wrap at 0/360 degrees: pad the world by a few columns on either side.
    pad = 4
    padded = np.concatenate([world_img[:, -pad:], world_img, world_img[:, :pad]], axis=1)
    out = cv2.remap(padded, mx + pad, my, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return out if out.ndim == 3 else out[..., None]


def write_frames(out_dir, world_img, specs, bit_depth=8, grey=False, ext=".png"):
    """Write frames and ``solution.json`` into ``out_dir``. ``specs``: dicts with ``model``,
    ``width``, ``height`` and ``gain``. Returns the solution path."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    top = 255.0 if bit_depth == 8 else 65535.0
    frames = []
    for k, s in enumerate(specs):
        img = sample_frame(world_img, s["model"], s["width"], s["height"]) * s.get("gain", 1.0)
        if grey:
            img = img.mean(axis=2, keepdims=True)
        pix = np.clip(np.rint(img * top), 0, top).astype(np.uint8 if bit_depth == 8 else np.uint16)
        name = f"frame_{k:04d}{ext}"
        bgr = pix[..., ::-1] if pix.shape[2] == 3 else pix[..., 0]
        if not cv2.imwrite(str(out_dir / name), np.ascontiguousarray(bgr)):
            raise OSError(f"{out_dir / name}: cannot write")
        frames.append({"id": f"f{k:04d}", "image": name, "width": s["width"], "height": s["height"], "used": True,
                       "model": s["model"].to_dict(), "frame": "LOCAL_LEVEL",
                       "residual_px": {"rms": 0.0, "n": 0}})
    path = out_dir / "solution.json"
    write_json(path, {"frames": frames, "stats": {"rms_px": 0.0, "tie_points": 0, "pairs": 0, "synthetic": True}})
    return path


def ring_specs(n, width, height, focal, el=0.0, az0=0.0, gains=None, kinds=("CAHV", "CAHVORE"), center=(0.6, 0.2, -1.9)):
    """``n`` frames evenly spaced in azimuth at elevation ``el``, alternating model kinds."""
    specs = []
    for k in range(n):
        g = 1.0 if gains is None else float(gains[k % len(gains)])
        m = pointing_model(az0 + 360.0 * k / n, el, width, height, focal, center=center, kind=kinds[k % len(kinds)])
        specs.append({"model": m, "width": width, "height": height, "gain": g})
    return specs
