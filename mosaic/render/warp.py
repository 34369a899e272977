"""Warping one frame into one output window: exact projections on a coarse grid, interpolated.

GDAL's approximate-transformer idea: the exact mapping output pixel -> frame pixel (a CAHVORE
projection is an iterative solve) is evaluated on a grid of nodes every ``step`` output pixels and
interpolated bilinearly in between. The interpolation error is checked at every cell's centre and
edge midpoints; a cell whose fit is off by more than 0.75 ``tol`` there (``tol`` = 0.1 px), or
that has a corner where the frame does not see (behind the camera, outside a fisheye's cone),
is split into four with exact projections at the new nodes, recursively, down to exact
per-pixel projections (see ``_Sink``). Cells whose corners all land far outside the image are not
checked: their pixels are masked off anyway. Cells sit on a global grid (the window origin is a
multiple of the step), so a pixel's map never depends on which tile computes it.

What a camera sees of an output pixel:

- ``direction`` projections, ``range_m=None``: the direction at infinite range from the camera's
  own centre C. Every camera sees the same far direction at the same output pixel, which is what
  makes a panorama of distant terrain consistent; near terrain shows parallax between cameras
  (mast cameras sit ~2 m above and ~1 m from the rover origin), which only registration can hide.
- ``direction`` projections with ``range_m``: the point at that distance from the rover origin (a
  sphere of radius ``range_m`` around the rover), e.g. to render as seen from the origin.
- ``point`` projections (vertical): the surface point itself, projected exactly.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

import cv2
import numpy as np

from calib.errors import InputError
from calib.labels import read_image as read_vicar

from .masks import valid_box
from .masks import NONE as NO_MARGINS

#: Range (m) standing in for infinity: 1e6 m puts a 2 m baseline at 2e-6 rad, 0.03 px of a
#: Mastcam-Z pixel, and keeps CAHVORE's entrance-pupil terms negligible.
FAR = 1.0e6
#: Frame coordinate standing for "far off the image" (finite, so float32 arithmetic stays tame).
_OFF = 1.0e6


def targets(proj, x, y, model, range_m=None) -> np.ndarray:
    """Points (N, 3) to project through ``model`` for output pixels (x, y) (flat arrays)."""
    if proj.kind == "point":
        return proj.pixel_to_point(x, y).reshape(-1, 3)
    d = proj.pixel_to_dir(x, y).reshape(-1, 3)
    if range_m is None:
        return model.C[None, :] + FAR * d
    return float(range_m) * d


def _project(proj, model, xs, ys, range_m):
    """Frame pixels (N, 2) of output pixels; NaN where the frame does not see."""
    return model.project(targets(proj, xs, ys, model, range_m))


class FrameMap:
    """Where one frame lands in a window: ``rows``/``cols`` slices of the window, float32 maps
    ``mapx``/``mapy`` into the frame, the ``valid`` mask, all of the slices' shape, and (when
    asked for) ``field``, a smooth function of the frame position interpolated like the maps
    (:class:`NodeField`: its values are made for the pixels that need them)."""

    __slots__ = ("rows", "cols", "mapx", "mapy", "valid", "step", "exact_px", "field")

    def __init__(self, rows, cols, mapx, mapy, valid, step, exact_px, field=None):
        self.rows, self.cols = rows, cols
        self.mapx, self.mapy, self.valid = mapx, mapy, valid
        self.step, self.exact_px = step, exact_px
        self.field = field

    def crop(self, rows: slice, cols: slice):
        """The part of the map inside window rows x cols (None if empty)."""
        r0, r1 = max(self.rows.start, rows.start), min(self.rows.stop, rows.stop)
        c0, c1 = max(self.cols.start, cols.start), min(self.cols.stop, cols.stop)
        if r1 <= r0 or c1 <= c0:
            return None
        a = (slice(r0 - self.rows.start, r1 - self.rows.start), slice(c0 - self.cols.start, c1 - self.cols.start))
        return FrameMap(slice(r0, r1), slice(c0, c1), self.mapx[a], self.mapy[a], self.valid[a], self.step, 0,
                        self.field)


class NodeField:
    """A function's values (C channels) at a window's grid nodes (node (l, k) at window pixel
    ((k - 0.5) step - 0.5, (l - 0.5) step - 0.5); ``nodes[0, 0]`` is node (l0, k0)), interpolated
    bilinearly to the pixels of any part of the window: the maps' own interpolation, made from the
    few nodes around that part only, so a pixel's value is the same whatever part is asked for."""

    __slots__ = ("nodes", "l0", "k0", "step")

    def __init__(self, nodes, l0, k0, step):
        self.nodes, self.l0, self.k0, self.step = nodes, l0, k0, step

    def _block(self, rows, cols, channels):
        s, h = self.step, self.step // 2
        # Pixel x lies in cell (x + step/2) // step, between that node and the next.
        k0, k1 = (cols.start + h) // s, (cols.stop - 1 + h) // s + 1
        l0, l1 = (rows.start + h) // s, (rows.stop - 1 + h) // s + 1
        return self.nodes[l0 - self.l0:l1 - self.l0 + 1, k0 - self.k0:k1 - self.k0 + 1, channels], k0, l0

    def values(self, rows: slice, cols: slice, channels=slice(None)) -> np.ndarray:
        """float32 (h, w, c) at window pixels rows x cols (inside the nodes' span)."""
        nodes, k0, l0 = self._block(rows, cols, channels)
        s = self.step
        up = cv2.resize(np.ascontiguousarray(nodes), (nodes.shape[1] * s, nodes.shape[0] * s),
                        interpolation=cv2.INTER_LINEAR)
        jx, jy = cols.start - (k0 - 1) * s, rows.start - (l0 - 1) * s
        up = up[jy:jy + rows.stop - rows.start, jx:jx + cols.stop - cols.start]
        return up.reshape(up.shape[:2] + (-1,))

    def bounds(self, rows: slice, cols: slice, channels=slice(None)) -> tuple[float, float]:
        """(min, max) over those pixels' nodes: bounds of the values there (bilinear values lie
        between their nodes')."""
        nodes = self._block(rows, cols, channels)[0]
        return float(nodes.min()), float(nodes.max())


def frame_map(proj, window, model, fw, fh, range_m=None, step=16, tol=0.1, margins=None, field=None):
    """Map the output ``window`` (x0, y0, w, h) into a ``fw`` x ``fh`` frame.

    Returns a FrameMap restricted to the rectangle of grid cells that reach the image, or None
    when the frame sees nothing of the window. ``step`` must be even and divide the window's
    origin: cells then sit on a global grid, so every window computes a given output pixel
    from the same nodes and tiles agree exactly where their windows overlap. ``margins``
    (:class:`.masks.Margins`) shrink the valid area to the frame's image; ``field(x, y)``, a
    smooth function of frame pixels (the photometric gain), is evaluated at the grid's nodes, to
    be interpolated like the maps where needed (:class:`NodeField`; same global grid, so tiles
    agree on it too).
    """
    x0, y0, w, h = window
    if step < 2 or step % 2 or x0 % step or y0 % step:
        raise ValueError(f"grid step {step} must be even and divide the window origin ({x0}, {y0})")
    margin = 1.0
    # Node k sits at window coordinate (k - 0.5) step - 0.5; cell k (nodes k, k+1) covers
    # window pixels [(k - 0.5) step, (k + 0.5) step) (nodes half a pixel outside the cell's
    # first and last pixel centres, which is exactly what cv2.resize by ``step`` assumes).
    half = step // 2
    nx = int(np.ceil(w / step + 1.5))
    ny = int(np.ceil(h / step + 1.5))
    kx = (np.arange(nx) - 0.5) * step - 0.5
    ky = (np.arange(ny) - 0.5) * step - 0.5
    gx, gy = np.meshgrid(x0 + kx, y0 + ky)
    nodes = _project(proj, model, gx.ravel(), gy.ravel(), range_m).reshape(ny, nx, 2)
    fin = np.isfinite(nodes).all(axis=2)
    c = [nodes[:-1, :-1], nodes[:-1, 1:], nodes[1:, :-1], nodes[1:, 1:]]
    f = [fin[:-1, :-1], fin[:-1, 1:], fin[1:, :-1], fin[1:, 1:]]
    anyf = f[0] | f[1] | f[2] | f[3]
    allf = f[0] & f[1] & f[2] & f[3]
    with np.errstate(invalid="ignore"):
        lo = np.fmin(np.fmin(c[0], c[1]), np.fmin(c[2], c[3]))
        hi = np.fmax(np.fmax(c[0], c[1]), np.fmax(c[2], c[3]))
        reach = (anyf & (hi[..., 0] >= -margin) & (lo[..., 0] <= fw - 1 + margin)
                 & (hi[..., 1] >= -margin) & (lo[..., 1] <= fh - 1 + margin))
        # A cell with a blind corner (behind the camera, outside a fisheye's cone) may still
        # see the image when a seeing corner lands within an image size of it.
        big = float(max(fw, fh))
        near = ((hi[..., 0] >= -big) & (lo[..., 0] <= fw + big) & (hi[..., 1] >= -big) & (lo[..., 1] <= fh + big))
    reach |= anyf & ~allf & near
    if not reach.any():
        return None
    iy, ix = np.nonzero(reach)
    ax = ix * step - half  # cells' first pixel, window-relative
    ay = iy * step - half
    corners = [cc[iy, ix] for cc in c]
    sink = _Sink(proj, model, range_m, x0, y0, tol)
    mids, bad_cell = sink.check(ax, ay, step, corners)
    # Rectangle of reaching cells -> window pixel slices.
    ka, kb = ix.min(), ix.max() + 1  # cells ka..kb-1 -> nodes ka..kb
    la, lb = iy.min(), iy.max() + 1
    # Blind nodes become a far sentinel so that interpolation near them lands off the image;
    # cells with a blind corner are refined below anyway.
    sub = np.clip(nodes[la:lb + 1, ka:kb + 1], -_OFF, _OFF)
    sub = np.where(np.isfinite(sub), sub, -_OFF).astype(np.float32)
    size = ((kb - ka + 1) * step, (lb - la + 1) * step)
    # One channel at a time: resizing the 2-channel array and splitting it costs twice as much.
    upx = cv2.resize(np.ascontiguousarray(sub[..., 0]), size, interpolation=cv2.INTER_LINEAR)
    upy = cv2.resize(np.ascontiguousarray(sub[..., 1]), size, interpolation=cv2.INTER_LINEAR)
    # upx[j] is window pixel (ka - 1) step + j; cells ka..kb-1 span j in [step/2, (kb-ka+0.5) step).
    c0, r0 = ka * step - half, la * step - half
    c1, r1 = kb * step - half, lb * step - half
    cs0, cs1 = max(c0, 0), min(c1, w)
    rs0, rs1 = max(r0, 0), min(r1, h)
    if cs1 <= cs0 or rs1 <= rs0:
        return None
    jx0 = half + cs0 - c0
    jy0 = half + rs0 - r0
    mapx = upx[jy0:jy0 + rs1 - rs0, jx0:jx0 + cs1 - cs0]
    mapy = upy[jy0:jy0 + rs1 - rs0, jx0:jx0 + cs1 - cs0]
    # Cells inside the rectangle that do not reach the image are off it, whatever a bilinear
    # fit of a wildly bending map says in between.
    cells = np.zeros((lb - la, kb - ka), dtype=bool)
    cells[iy - la, ix - ka] = True
    if not cells.all():
        full = np.repeat(np.repeat(cells, step, axis=0), step, axis=1)[rs0 - r0:rs1 - r0, cs0 - c0:cs1 - c0]
        mapx[~full] = -_OFF
        mapy[~full] = -_OFF
    if bad_cell.any():
        b = bad_cell
        sink.target(mapx, mapy, rs0, cs0)
        sink.refine(ax[b], ay[b], step, [cc[b] for cc in corners], [m[b] for m in mids])
    bx0, bx1, by0, by1 = valid_box(margins or NO_MARGINS, fw, fh)
    with np.errstate(invalid="ignore"):
        valid = (mapx >= bx0) & (mapx <= bx1) & (mapy >= by0) & (mapy <= by1)
    if not valid.any():
        return None
    values = None
    if field is not None:
        f = np.asarray(field(sub[..., 0], sub[..., 1]), dtype=np.float32)
        values = NodeField(f.reshape(f.shape[:2] + (-1,)), la, ka, step)
    return FrameMap(slice(rs0, rs1), slice(cs0, cs1), mapx, mapy, valid, step, sink.exact_px, values)


class _Sink:
    """Checks and refines cells of a frame map. A cell is checked at its centre and at its four
    edge midpoints (a saddle-shaped map fits its centre and misses the edges); one whose fit is
    off by more than ``tol`` there (or that has a blind corner) is split into four, whose corners
    are the points just checked, recursively; cells of 2 x 2 pixels or less are computed exactly
    pixel by pixel. Every decision depends on the cell alone (global grid), never on the window,
    so overlapping windows produce identical maps."""

    def __init__(self, proj, model, range_m, x0, y0, tol):
        self.proj, self.model, self.range_m = proj, model, range_m
        self.x0, self.y0, self.tol = x0, y0, tol
        self.exact_px = 0

    def target(self, mapx, mapy, rs0, cs0):
        self.mapx, self.mapy, self.rs0, self.cs0 = mapx, mapy, rs0, cs0

    def _p(self, x, y):
        return _project(self.proj, self.model, self.x0 + x, self.y0 + y, self.range_m)

    def check(self, ax, ay, s, corners):
        """Exact values at the cells' (top, left, right, bottom, centre) and which cells fail."""
        c00, c01, c10, c11 = corners
        hs = s / 2.0
        n = len(ax)
        px = np.concatenate([ax + hs - 0.5, ax - 0.5, ax + s - 0.5, ax + hs - 0.5, ax + hs - 0.5])
        py = np.concatenate([ay - 0.5, ay + hs - 0.5, ay + hs - 0.5, ay + s - 0.5, ay + hs - 0.5])
        e = self._p(px, py)
        top, left, right, bottom, centre = (e[k * n:(k + 1) * n] for k in range(5))
        fit = [0.5 * (c00 + c01), 0.5 * (c00 + c10), 0.5 * (c01 + c11), 0.5 * (c10 + c11),
               0.25 * (c00 + c01 + c10 + c11)]
        with np.errstate(invalid="ignore"):
            err = np.max([np.abs(a - b).max(axis=1) for a, b in zip((top, left, right, bottom, centre), fit)], axis=0)
        # The checks sample the fit's error, they do not bound it: three quarters of the stated
        # tolerance leaves room for the worst point lying between them (tested against exact maps).
        return [top, left, right, bottom, centre], ~(err <= 0.75 * self.tol)  # NaN (blind) fails

    def _put(self, yy, xx, vals):
        yy = yy - self.rs0
        xx = xx - self.cs0
        h, w = self.mapx.shape
        ok = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
        v = np.where(np.isfinite(vals), np.clip(vals, -_OFF, _OFF), -_OFF)
        self.mapx[yy[ok], xx[ok]] = v[..., 0][ok]
        self.mapy[yy[ok], xx[ok]] = v[..., 1][ok]

    def refine(self, ax, ay, s, corners, mids):
        if s <= 2:
            j = np.arange(s)
            yy = np.broadcast_to(ay[:, None, None] + j[None, :, None], (len(ax), s, s))
            xx = np.broadcast_to(ax[:, None, None] + j[None, None, :], (len(ax), s, s))
            vals = self._p(xx.ravel(), yy.ravel()).reshape(len(ax), s, s, 2)
            self._put(yy, xx, vals)
            self.exact_px += vals.shape[0] * s * s
            return
        c00, c01, c10, c11 = corners
        top, left, right, bottom, centre = mids
        hs = s // 2
        qx = np.concatenate([ax, ax + hs, ax, ax + hs])
        qy = np.concatenate([ay, ay, ay + hs, ay + hs])
        q = [np.concatenate([c00, top, left, centre]), np.concatenate([top, c01, centre, right]),
             np.concatenate([left, centre, c10, bottom]), np.concatenate([centre, right, bottom, c11])]
        qm, bad = self.check(qx, qy, hs, q)
        good = ~bad
        if good.any():
            t = (np.arange(hs) + 0.5) / hs
            ty, tx = t[None, :, None, None], t[None, None, :, None]
            g = good
            vals = ((1 - ty) * (1 - tx) * q[0][g][:, None, None] + (1 - ty) * tx * q[1][g][:, None, None]
                    + ty * (1 - tx) * q[2][g][:, None, None] + ty * tx * q[3][g][:, None, None])
            j = np.arange(hs)
            yy = np.broadcast_to(qy[g][:, None, None] + j[None, :, None], vals.shape[:3])
            xx = np.broadcast_to(qx[g][:, None, None] + j[None, None, :], vals.shape[:3])
            self._put(yy, xx, vals)
        if bad.any():
            self.refine(qx[bad], qy[bad], hs, [a[bad] for a in q], [m[bad] for m in qm])


def remap(image, fmap: FrameMap, float32=True) -> np.ndarray:
    """The frame's pixels at the map, (h, w, bands), float32 or (``float32=False``) the image's
    dtype. Pixels between the outermost pixel centres and the image edge replicate the edge
    (``valid`` already excludes everything beyond)."""
    # Pixels off the image (not ``valid``) come out as some edge pixel: every caller masks them.
    out = cv2.remap(image, fmap.mapx, fmap.mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    if out.ndim == 2:
        out = out[..., None]
    return out.astype(np.float32, copy=False) if float32 else out


def bilinear(img, x, y):
    """Bilinear samples of a 2-D float32 image at float coordinates (any shape, pixel centres);
    0 outside."""
    shape = np.shape(x)
    x = np.asarray(x, np.float32).ravel()
    y = np.asarray(y, np.float32).ravel()
    n = len(x)
    cols = 4096  # cv2.remap wants maps under 32767 on a side
    pad = (-n) % cols
    mx = np.concatenate([x, np.full(pad, -1e6, np.float32)]).reshape(-1, cols)
    my = np.concatenate([y, np.full(pad, -1e6, np.float32)]).reshape(-1, cols)
    out = cv2.remap(np.ascontiguousarray(img, dtype=np.float32), mx, my, cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return out.ravel()[:n].reshape(shape)


def frame_to_frame(model_a, model_b, pix):
    """Pixels (N, 2) of frame b that see, in the far field, what frame a's pixels (N, 2) see (the
    renderer's correspondence: one direction seen from each camera's own centre); NaN where b
    does not see it."""
    _, d = model_a.backproject(pix)
    return model_b.project(model_b.C[None, :] + FAR * d)


def reduced_pair_map(model_a, model_b, rw, rh, scale, step=8, origin=0):
    """Frame b's full-resolution pixels (mapx, mapy, each (rh, rw) float32; -1e6 where b does not
    see) of frame a's reduced pixel centres (blocks of ``scale`` pixels), exact at every
    ``step``-th reduced pixel and bilinear in between (a frame's distortion bends slowly).
    ``origin``: the reduced pixel (x = y) the first row and column stand for (-1: a ring of
    pixels just beyond the frame)."""
    nx, ny = -(-(rw - 1) // step) + 1, -(-(rh - 1) // step) + 1
    kx = np.minimum(np.arange(nx) * step, (nx - 1) * step) + origin
    ky = np.minimum(np.arange(ny) * step, (ny - 1) * step) + origin
    gx, gy = np.meshgrid(kx, ky)
    full = np.stack([(gx.ravel() + 0.5) * scale - 0.5, (gy.ravel() + 0.5) * scale - 0.5], axis=1)
    q = frame_to_frame(model_a, model_b, full).reshape(ny, nx, 2)
    q = np.where(np.isfinite(q), np.clip(q, -_OFF, _OFF), -_OFF).astype(np.float32)
    return _node_interp(q[..., 0], step, rw, rh), _node_interp(q[..., 1], step, rw, rh)


def _node_interp(nodes, step, rw, rh):
    """Bilinear interpolation of node values at reduced pixels k * step (exact at the nodes)."""
    ny, nx = nodes.shape
    t = np.arange(rw) / step
    u = np.arange(rh) / step
    ix = np.minimum(t.astype(int), nx - 2) if nx > 1 else np.zeros(rw, int)
    iy = np.minimum(u.astype(int), ny - 2) if ny > 1 else np.zeros(rh, int)
    fx = (t - ix).astype(np.float32) if nx > 1 else np.zeros(rw, np.float32)
    fy = (u - iy).astype(np.float32) if ny > 1 else np.zeros(rh, np.float32)
    jx = np.minimum(ix + 1, nx - 1)
    jy = np.minimum(iy + 1, ny - 1)
    top = nodes[iy][:, ix] * (1 - fx) + nodes[iy][:, jx] * fx
    bot = nodes[jy][:, ix] * (1 - fx) + nodes[jy][:, jx] * fx
    return (top * (1 - fy)[:, None] + bot * fy[:, None]).astype(np.float32)


# -- reading frames ------------------------------------------------------------------------------

def read_pixels(path):
    """(pixels, alpha) of a frame: pixels (h, w) or (h, w, 3), RGB, in the stored dtype (uint8 or
    uint16; other integer types are clipped into uint16, floats stay float32), and the alpha band
    (h, w) when the file has one (grey + alpha or RGBA), else None. PNG/JPG/TIF through OpenCV,
    VICAR/PDS3 ``.IMG`` through ``calib.labels``."""
    path = Path(path)
    alpha = None
    if path.suffix.lower() in (".img", ".vic"):
        img = np.asarray(read_vicar(path))
        if img.ndim == 3 and img.shape[0] in (1, 3) and img.shape[2] not in (1, 3):
            img = np.moveaxis(img, 0, -1)  # band-sequential -> interleaved
    else:
        img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        if img is None:
            raise InputError(path, "cannot read image (missing or not a PNG/JPEG/TIFF)")
        if img.ndim == 3:
            if img.shape[2] in (2, 4):
                alpha = np.ascontiguousarray(img[..., -1])
                # OpenCV expands grey + alpha to BGRA: such a frame is grey.
                if img.shape[2] == 4 and not cv2.countNonZero(cv2.absdiff(img[..., 0], img[..., 1])) \
                        and not cv2.countNonZero(cv2.absdiff(img[..., 1], img[..., 2])):
                    img = img[..., :1]
            # cvtColor: a reversed-channel numpy copy costs as much as decoding the JPEG.
            conv = {3: cv2.COLOR_BGR2RGB, 4: cv2.COLOR_BGRA2RGB}.get(img.shape[2])
            img = cv2.cvtColor(img, conv) if conv is not None else img[..., 0]
    if img.ndim == 3 and img.shape[2] == 1:
        img = img[..., 0]
    if alpha is not None and alpha.min() > 0:
        alpha = None  # opaque everywhere: nothing to mask
    if img.dtype == np.uint8 or img.dtype == np.uint16:
        return np.ascontiguousarray(img), alpha
    if np.issubdtype(img.dtype, np.integer):
        return np.clip(img, 0, 65535).astype(np.uint16), alpha
    return np.ascontiguousarray(img, dtype=np.float32), alpha


def read_image(path) -> np.ndarray:
    """The pixels of :func:`read_pixels` (alpha dropped)."""
    return read_pixels(path)[0]


#: Bytes of decoded frames a process keeps for the tiles (and the frames pass, when all fit).
#: Tiles go down each column in turn, so the frames in use at once are the few of the columns at
#: hand: at 96 MiB the 1 GP bench decodes 223 times for its 216 frames (at 384 MiB: 216 times,
#: peak 919 MiB; now ~700) and boat's six 10 MP frames 6 times (render alone: peak 446 -> 383 MiB).
CACHE_BYTES = 96 << 20


class ImageCache:
    """Per-process LRU of decoded frames as (pixels, alpha or None), bounded in bytes (threads of
    one worker share it). A frame asked for by several threads at once is decoded once: the first
    decodes, the others wait for its pixels. Cached arrays are read-only (every reader shares them).
    ``decodes`` counts the frames decoded here."""

    def __init__(self, max_bytes=CACHE_BYTES):
        self.max_bytes = max_bytes
        self._items: OrderedDict[str, tuple] = OrderedDict()
        self._loading: dict[str, threading.Event] = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.decodes = 0

    def get(self, path) -> tuple:
        key = str(path)
        while True:
            with self._lock:
                if key in self._items:
                    self._items.move_to_end(key)
                    return self._items[key]
                busy = self._loading.get(key)
                if busy is None:
                    busy = self._loading[key] = threading.Event()
                    break
            busy.wait()  # then take its pixels (or, if that decode failed, try once more here)
        try:
            item = read_pixels(key)
            for a in item:
                if a is not None:
                    a.setflags(write=False)
            with self._lock:
                self.decodes += 1
                self._items[key] = item
                self._bytes += _nbytes(item)
                while self._bytes > self.max_bytes and len(self._items) > 1:
                    _, old = self._items.popitem(last=False)
                    self._bytes -= _nbytes(old)
            return item
        finally:
            with self._lock:
                del self._loading[key]
            busy.set()

    def fits(self, nbytes: int) -> bool:
        """Whether frames of ``nbytes`` decoded bytes in all would stay in the cache together."""
        return nbytes <= self.max_bytes


def _nbytes(item) -> int:
    return sum(a.nbytes for a in item if a is not None)


CACHE = ImageCache()
