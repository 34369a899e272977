"""Render a solved frame set into a panorama, tile by tile on dask.

``render_panorama(solution, out_dir, ...)`` reads a ``solution.json`` (contract, DESIGN.md), then

1. reads every frame once (a dask task each, :func:`.photometry.prepare`): its valid area
   (:mod:`.masks`), its largest value and a reduced copy;
2. for every pair of overlapping frames (a task each, :func:`_pair_task`) samples the overlap for
   the photometric fit and cuts the pair's seam (:mod:`.seams`), on the reduced copies;
3. solves the pan's photometric model from all pairs at once (:func:`.photometry.solve`);
4. cuts the output into tiles and renders each tile as a dask task: the task gets the few frames
   whose cone of view meets the tile's window (the tile plus a halo as wide as the blender's
   support) with their tones, margins and the seams of their pairs, maps the window into each
   frame (:mod:`.warp`), decides each pixel's owner (:func:`.seams.assign`), blends
   (:mod:`.blend`) and returns the tile's pixels, which the client writes into ``panorama.tif``
   (:class:`mosaic.formats.cog.CogWriter`) as they arrive.

Memory is O(tile x frames touching it) per tile task, O(reduced frame) per pair task, plus a
bounded number of tiles in flight and the reduced copies (about 0.1 MP per frame) on the client,
whatever the panorama's size; ``plan()`` states the sizes before anything is allocated and
``max_pixels`` refuses outputs beyond a limit.

Because every tile window starts on the coarsest pyramid level's grid and carries the full halo,
tiles blend exactly as one whole image would (tested: a 2-tile and a 1-tile render agree), and a
wrapping projection's halo at x = 0 comes from the right edge (directions are periodic in x), so
the 0/360 degree seam is blended like any other place.
"""

from __future__ import annotations

import importlib
import json
import logging
import threading
import time
import warnings
from dataclasses import dataclass, replace
from pathlib import Path

import cv2
import numpy as np

from calib.errors import InputError
from calib.models import model_from_dict
from mosaic.formats import solution as solution_io
from mosaic.formats.cog import CogWriter, equirect_transform, overview_factors, overview_levels
from mosaic.runtime import cluster
from mosaic.runtime.atomic import write_bytes, write_json
from mosaic.runtime.cluster import as_completed
from mosaic.runtime.progress import stage, track_futures

from . import blend, photometry, seams, warp
from .masks import NONE as NO_MARGINS
from .masks import Margins
from .masks import valid_box as masks_box
from .projections import Equirectangular, EquirectWindow, covered_window, make_projection

log = logging.getLogger("mosaic")

#: Refuse outputs above this many pixels unless told otherwise (4 gigapixels: ~32 GB of RGBA16).
MAX_PIXELS = 4_000_000_000
LEVELS = 4
#: Bounds of GDAL's block cache while the COG's intermediate is written (bytes).
CACHE_MIN, CACHE_MAX = 16 * 2**20, 256 * 2**20
_CONE_MARGIN = np.radians(0.25)


@dataclass(frozen=True)
class FrameInfo:
    """One used frame: what a tile task needs to warp it (small and picklable)."""

    index: int
    id: str
    path: str
    width: int
    height: int
    model: object
    boresight: np.ndarray
    radius: float  # half-angle (radians) of a cone holding the frame's view
    gain: float = 1.0  # the mean of the tone's channel gains (reported)
    scale: float = 1.0  # to the output's value range (8-bit frames in a 16-bit panorama: 257)
    tone: photometry.Tone = photometry.Tone()
    margins: object = NO_MARGINS
    alpha: bool = False
    top: float = 0.0  # the frame's largest value
    darkened: bool = False  # the tone lowers some value of the frame (its highlights roll off to white)


def _cone(model, w, h):
    b = model.boresight(w, h)
    d = model.footprint(w, h, n=16)
    d = d[np.isfinite(d).all(axis=1)]
    r = float(np.arccos(np.clip(d @ b, -1, 1)).max()) if len(d) else np.pi
    return b, r + _CONE_MARGIN


def load_solution(solution):
    """(solution dict, folder relative image paths resolve against)."""
    if isinstance(solution, dict):
        return solution, Path.cwd()
    p = Path(solution)
    return solution_io.load(p), (p if p.is_dir() else p.parent)


def _resolve(base: Path, img: Path) -> Path:
    """A relative image path: against the solution's folder (contract), else the folder above it,
    where a scene's ``truth/solution.json`` (mosaic synth) finds its frames."""
    p = base / img
    if not p.exists() and (base.parent / img).exists():
        return base.parent / img
    return p


def frames_of(solution) -> list[FrameInfo]:
    data, base = load_solution(solution)
    src = solution if not isinstance(solution, dict) else None
    out = []
    for k, f in enumerate(data["frames"]):
        if not isinstance(f, dict):
            raise InputError(src, f"frame {k}: not a JSON object", field="frames")
        if not f.get("used", True):
            continue
        try:
            fid = str(f.get("id", k))
            img = Path(f["image"])
            w, h = int(f["width"]), int(f["height"])
            if w < 1 or h < 1:
                raise ValueError(f"a frame of {w} x {h} pixels")
        except (KeyError, TypeError, ValueError, OverflowError) as e:  # Overflow: an infinite size
            raise InputError(src, f"frame {k}: missing or bad id/image/width/height ({e})", field="frames") from None
        frame = f.get("frame", "LOCAL_LEVEL")
        if frame != "LOCAL_LEVEL":
            raise InputError(src, f"frame {fid}: model in {frame!r}, expected LOCAL_LEVEL", field="frame")
        model = model_from_dict(f.get("model"), source=src)
        path = img if img.is_absolute() else _resolve(base, img)
        b, r = _cone(model, w, h)
        if not np.isfinite(b).all():
            raise InputError(src, f"frame {fid}: its model gives no ray through the image centre", field="model")
        out.append(FrameInfo(len(out), fid, str(path), w, h, model, b, r))
    if not out:
        raise InputError(src, "no used frames to render", field="frames")
    return out


def _probe(path):
    """(dtype name, bands) of an image from its header (GDAL reads PNG/JPEG/TIFF headers)."""
    p = Path(path)
    if not p.exists():
        raise InputError(p, "image file not found")
    if p.suffix.lower() in (".img", ".vic"):
        img = warp.read_image(p)
        return img.dtype.name, (1 if img.ndim == 2 else img.shape[2])
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            with rasterio.open(p) as ds:
                dt, n = ds.dtypes[0], ds.count
        except rasterio.errors.RasterioIOError as e:
            raise InputError(p, f"cannot read image header ({e})") from None
    bands = 3 if n >= 3 else 1
    if dt not in ("uint8", "uint16"):
        dt = "float32" if dt.startswith("float") else "uint16"
    return dt, bands


def _output_kind(frames):
    """Output dtype (the finest input depth) and colour band count (RGB if any frame is)."""
    probes = [_probe(f.path) for f in frames]
    dts = {p[0] for p in probes}
    dtype = "float32" if "float32" in dts else ("uint16" if "uint16" in dts else "uint8")
    bands = 3 if any(p[1] == 3 for p in probes) else 1
    return dtype, bands, [p[0] for p in probes]


def default_resolution(frames, projection, ground_z=0.0) -> float:
    """The finest input's pixel: degrees per pixel, or metres per pixel on the ground (vertical)."""
    ang = min(f.model.angular_pixel() for f in frames)
    if projection == "vertical":
        height = min(max(1.0, ground_z - float(f.model.C[2])) for f in frames)
        return ang * height
    return float(np.degrees(ang))


def _projection(frames, projection, resolution, align, elevation_range, proj_kw):
    proj_kw = dict(proj_kw)
    crop = proj_kw.pop("crop", False)
    res = resolution if resolution is not None else default_resolution(frames, projection,
                                                                        proj_kw.get("ground_z", 0.0))
    proj = make_projection(projection, res, align=align, elevation_range=elevation_range, **proj_kw)
    if crop and projection == "equirect":
        borders = np.concatenate([f.model.footprint(f.width, f.height, n=32) for f in frames])
        # A frame whose cone holds a pole sees it: the window then runs to that pole.
        poles = [any(float(f.boresight @ p) > np.cos(f.radius) for f in frames)
                 for p in (np.array([0.0, 0, -1]), np.array([0.0, 0, 1]))]
        proj = covered_window(proj, borders, poles=poles, align=align)
    return proj


def _windows(proj, tile, hal):
    """Tiles as (core (x0, y0, w, h), window (x0, y0, w, h)), row-major."""
    out = []
    for r0 in range(0, proj.height, tile):
        r1 = min(proj.height, r0 + tile)
        for c0 in range(0, proj.width, tile):
            c1 = min(proj.width, c0 + tile)
            wr0, wr1 = max(0, r0 - hal), min(proj.height, r1 + hal)
            if proj.wraps:
                wc0, wc1 = c0 - hal, c1 + hal
            else:
                wc0, wc1 = max(0, c0 - hal), min(proj.width, c1 + hal)
            out.append(((c0, r0, c1 - c0, r1 - r0), (wc0, wr0, wc1 - wc0, wr1 - wr0)))
    return out


def _window_samples(window, n=12):
    x0, y0, w, h = window
    t = np.linspace(0, 1, n)
    xs = np.concatenate([x0 - 0.5 + t * w, np.full(n, x0 + w - 0.5), x0 - 0.5 + t * w, np.full(n, x0 - 0.5)])
    ys = np.concatenate([np.full(n, y0 - 0.5), y0 - 0.5 + t * h, np.full(n, y0 + h - 0.5), y0 - 0.5 + t * h])
    gx, gy = np.meshgrid(x0 - 0.5 + (np.arange(5) + 0.5) * w / 5, y0 - 0.5 + (np.arange(5) + 0.5) * h / 5)
    return np.concatenate([xs, gx.ravel()]), np.concatenate([ys, gy.ravel()])


def _cones_of(vecs):
    """Cone (centre (T, 3), half-angle (T,)) of each row of unit vectors (T, S, 3), NaN-tolerant."""
    ok = np.isfinite(vecs).all(axis=2)
    v = np.where(ok[..., None], vecs, 0.0)
    c = v.sum(axis=1)
    n = np.linalg.norm(c, axis=1, keepdims=True)
    c = np.where(n > 1e-9, c / np.maximum(n, 1e-300), np.array([1.0, 0, 0]))
    cos = np.einsum("tsk,tk->ts", v, c)
    cos = np.where(ok, cos, 1.0)
    r = np.arccos(np.clip(cos.min(axis=1), -1, 1))
    r = np.where((n[:, 0] > 1e-9) & ok.any(axis=1), r, np.pi)
    # A window with blind samples (outside a polar view's disc) keeps the cone of the rest;
    # a wholly blind one gets an empty cone.
    r = np.where(ok.any(axis=1), r, -1.0)
    return c, r


def _tile_frames(proj, windows, frames, range_m):
    """For each tile, the indices of the frames whose cone meets the tile window's cone."""
    samples = [_window_samples(win) for _, win in windows]
    xs = np.stack([s[0] for s in samples])
    ys = np.stack([s[1] for s in samples])
    fb = np.array([f.boresight for f in frames])
    fr = np.array([f.radius for f in frames])
    hits = [[] for _ in windows]
    if proj.kind == "direction" and range_m is None:
        c, r = _cones_of(proj.pixel_to_dir(xs, ys))
        for a in range(0, len(windows), 4096):
            ang = np.arccos(np.clip(c[a:a + 4096] @ fb.T, -1, 1))
            ti, fi = np.nonzero((ang <= r[a:a + 4096, None] + fr[None, :]) & (r[a:a + 4096, None] >= 0))
            for t, f in zip(ti.tolist(), fi.tolist()):
                hits[a + t].append(f)
        return hits
    if proj.kind == "point":
        pts = proj.pixel_to_point(xs, ys)
    else:
        pts = float(range_m) * proj.pixel_to_dir(xs, ys)
    for f in frames:
        v = pts - f.model.C
        v = v / np.linalg.norm(v, axis=-1, keepdims=True)
        c, r = _cones_of(v)
        ang = np.arccos(np.clip(c @ f.boresight, -1, 1))
        for t in np.nonzero((ang <= r + f.radius) & (r >= 0))[0].tolist():
            hits[t].append(f.index)
    return hits


# -- the tile task --------------------------------------------------------------------------------

@dataclass(frozen=True)
class TileJob:
    proj: object
    core: tuple
    window: tuple
    frames: tuple  # FrameInfo, in increasing index
    bands: int
    dtype: str
    levels: int
    range_m: float | None
    step: int
    tol: float
    seams: tuple = ()  # PairSeam of pairs of these frames


def _place(fm, img, f: FrameInfo, bands, rr, cc, out_top=np.inf):
    """The frame's warped pixels as rendered (its tone: gains, spatial field, highlights; nothing
    above the data's white, ``out_top`` being the output type's largest value), zero where it
    does not see (premultiplied by its cover, as :meth:`blend.MultiBand.add` takes
    them), and the cover, embedded in the region rr x cc, straight from the remap's dtype."""
    h, w = rr.stop - rr.start, cc.stop - cc.start
    # The map usually spans the whole region: then nothing needs zeroing first.
    whole = img.shape[:2] == (h, w)
    alloc = np.empty if whole else np.zeros
    out = alloc((h, w, bands), np.float32)
    cover = alloc((h, w), np.float32)
    r0, c0 = fm.rows.start - rr.start, fm.cols.start - cc.start
    sl = (slice(r0, r0 + img.shape[0]), slice(c0, c0 + img.shape[1]))
    cover[sl] = fm.valid
    dst = out[sl]
    t = f.tone
    src = img.reshape(img.shape[:2] + (-1,))
    if src.shape[2] != bands:
        src = np.repeat(src[..., :1], bands, axis=2)
    if fm.field is None:
        # A uniform tone: one scalar per channel. A scalar gain, then zeros where the frame does
        # not see: multiplying by a broadcast (h, w, 1) cover costs 4x as much.
        g = np.resize(np.asarray(t.gain, np.float32), bands) * np.float32(f.scale)
        rows = _row_view(dst)
        if (g == g[0]).all():
            np.multiply(src, g[0], out=dst, casting="unsafe")
        elif rows is not None:
            # Per-channel gains as one pattern along each row of interleaved pixels: as fast as
            # a scalar (a (3,) broadcast or OpenCV's per-channel scalar cost 3-4x as much).
            np.multiply(src.reshape(rows.shape), np.tile(g, src.shape[1])[None, :], out=rows, casting="unsafe")
        else:
            np.multiply(src, g, out=dst, casting="unsafe")
        if t.offset[0]:
            dst -= (g * np.float32(t.offset[0])).reshape(1, 1, -1)
    else:
        # fm.field: the tone's gains (and gain x offset) interpolated with the maps.
        cv2.multiply(src, fm.field.values(fm.rows, fm.cols, slice(0, bands)).reshape(dst.shape), dst=dst,
                     dtype=cv2.CV_32F)
        if fm.field.nodes.shape[2] > bands:
            cv2.subtract(dst, fm.field.values(fm.rows, fm.cols, slice(bands, None)).reshape(dst.shape), dst=dst)
    white_out = t.white * f.scale
    if f.top > t.knee and f.darkened:
        # Highlights and clipped pixels of a darkened frame go to white (brightened ones saturate).
        photometry.rolloff(dst, src, t.white, t.knee, white_out)
    elif white_out < out_top:
        # Data of fewer bits than the output's type: brightened values stop at the data's white.
        most = f.top * (max(t.gain) * f.scale if fm.field is None else
                        fm.field.bounds(fm.rows, fm.cols, slice(0, bands))[1])
        if most > white_out:
            np.minimum(dst, np.float32(white_out), out=dst)
    if not fm.valid.all():
        dst[~fm.valid] = 0
    return out, cover


def _row_view(a):
    """A (h, w * bands) view of a (h, w, bands) array whose rows are contiguous, else None."""
    h, w, b = a.shape
    if a.strides[2] != a.itemsize or a.strides[1] != b * a.itemsize:
        return None
    return np.lib.stride_tricks.as_strided(a, shape=(h, w * b), strides=(a.strides[0], a.itemsize))


def _field_of(f: FrameInfo, bands: int):
    """The frame's tone as the smooth function of frame pixels the warp interpolates."""
    return lambda x, y: f.tone.field(x, y, f.scale, bands)


def _alpha_valid(fm, alpha):
    """Where a frame's alpha band lets it be seen: all four pixels of the bilinear sample opaque."""
    a = warp.remap((alpha > 0).astype(np.float32), fm)[..., 0]
    return fm.valid & (a >= 1.0 - 1e-6)


#: Cells (CELL x CELL output pixels on the global grid) at which a tile decides where to blend.
CELL = 16


def _contested(label, core, levels):
    """Where in the tile's ``core`` (window slices) the blend matters: a (ch, cw) bool mask of the
    pixels with pixels of two frames or more within :func:`.blend.support` of them (either axis),
    else None. Elsewhere every frame weight the pyramids would mix is one frame's, and the blend
    returns that frame's values (up to float rounding). Decided per cell, conservatively, from the
    labels (-1: no frame) of the cells within reach, which lie inside the window for every core
    cell (the halo reaches further): the same cells, so the same answer, in every tiling."""
    h, w = label.shape
    lab = np.pad(label, ((0, -h % CELL), (0, -w % CELL)), constant_values=-1)
    cells = lab.reshape(lab.shape[0] // CELL, CELL, lab.shape[1] // CELL, CELL)
    hi = cells.max(axis=(1, 3))
    lo = cells.view(np.uint16).min(axis=(1, 3))  # -1 reads as 65535: no frame
    reach = -(-blend.support(levels) // CELL)
    k = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    many = cv2.erode(lo, k).astype(np.int32) < cv2.dilate(hi, k)
    rs, cs = core
    r0, c0 = rs.start // CELL, cs.start // CELL
    ch, cw = rs.stop - rs.start, cs.stop - cs.start
    sub = many[r0:r0 + -(-ch // CELL), c0:c0 + -(-cw // CELL)]
    if not sub.any():
        return None
    return np.repeat(np.repeat(sub, CELL, axis=0), CELL, axis=1)[:ch, :cw]


def _box(mask):
    """(rows, cols) slices of the bounding box of a 2-D bool mask (which holds a True)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1)


def render_tile(job: TileJob):
    """Pixels of one tile: ((row0, col0), array (bands + 1, h, w) with alpha last) and stats, or
    (None, stats) when no frame covers the tile.

    Every frame's map and valid area cover the window (tile + halo): ownership (``seams.assign``)
    there decides which core pixels need the blend (:func:`_contested`). Those are blended over
    the box that holds them padded by the blend's reach, from the frames that own pixels in it;
    every other core pixel takes its owner's warped value straight (a tile inside one frame warps
    its core only)."""
    x0, y0, w, h = job.window
    cx, cy, cw, ch = job.core
    fmaps = [warp.frame_map(job.proj, job.window, f.model, f.width, f.height, job.range_m, job.step, job.tol,
                            margins=f.margins, field=None if f.tone.uniform else _field_of(f, job.bands))
             for f in job.frames]
    for k, f in enumerate(job.frames):
        if f.alpha and fmaps[k] is not None:
            fmaps[k].valid = _alpha_valid(fmaps[k], warp.CACHE.get(f.path)[1])
            if not fmaps[k].valid.any():
                fmaps[k] = None
    stats = {"frames": sum(m is not None for m in fmaps),
             "exact_px": sum(m.exact_px for m in fmaps if m is not None)}
    if not stats["frames"]:
        return None, stats
    pair_seams = {(s.i, s.j): s for s in job.seams}
    label = seams.assign((h, w), fmaps, [(f.width, f.height) for f in job.frames], pair_seams,
                         [f.index for f in job.frames])
    core = (slice(cy - y0, cy - y0 + ch), slice(cx - x0, cx - x0 + cw))
    lc = label[core]
    alpha = lc >= 0
    if not alpha.any():
        return None, stats
    dt = np.dtype(job.dtype)
    top = float(np.iinfo(dt).max) if dt.kind == "u" else np.inf

    def placed(i, rr, cc):
        """Frame i's rendered values over window rows rr x cols cc (and its cover)."""
        f, fm = job.frames[i], fmaps[i].crop(rr, cc)
        return _place(fm, warp.remap(warp.CACHE.get(f.path)[0], fm, float32=False), f, job.bands, rr, cc, top)

    def shift(box, r, c):
        return slice(box[0].start + r, box[0].stop + r), slice(box[1].start + c, box[1].stop + c)

    blended = _contested(label, core, job.levels)
    owners = [i for i in range(len(fmaps)) if fmaps[i] is not None and (lc == i).any()]
    if blended is None and len(owners) == 1:
        out = placed(owners[0], *core)[0]
    else:
        out = np.zeros((ch, cw, job.bands), np.float32)
        for i in owners:
            mine = lc == i
            if blended is not None:
                mine &= ~blended
            if not mine.any():
                continue
            box = _box(mine)
            img, _ = placed(i, *shift(box, core[0].start, core[1].start))
            cv2.copyTo(img, mine[box].view(np.uint8), out[box])
    if blended is not None:
        # The box of the contested pixels, padded by the blend's reach on the coarsest grid.
        a, pad = 1 << job.levels, blend.support(job.levels)
        br, bc = shift(_box(blended), core[0].start, core[1].start)
        rr = slice(max(0, (br.start - pad) // a * a), min(h, br.stop + pad))
        cc = slice(max(0, (bc.start - pad) // a * a), min(w, bc.stop + pad))
        region = label[rr, cc]
        mb = blend.MultiBand(region.shape, job.bands, job.levels)
        for i in range(len(fmaps)):
            fm = None if fmaps[i] is None else fmaps[i].crop(rr, cc)
            if fm is None:
                continue
            own = region[fm.rows.start - rr.start:fm.rows.stop - rr.start,
                         fm.cols.start - cc.start:fm.cols.stop - cc.start] == i
            if not own.any():
                continue
            # A frame matters only where its seam weight reaches: around the pixels it owns.
            ob = shift(_box(own), fm.rows.start - rr.start, fm.cols.start - cc.start)
            pr, pc = mb.region(*ob)
            img, cover = placed(i, *shift((pr, pc), rr.start, cc.start))
            mb.add(pr, pc, img, cover, (region[pr, pc] == i).astype(np.float32))
        res = mb.result()
        cb = _box(blended)
        sub = res[shift(cb, core[0].start - rr.start, core[1].start - cc.start)]
        cv2.copyTo(sub, blended[cb].view(np.uint8), out[cb])
    arr = np.empty((job.bands + 1, ch, cw), dt)
    top = np.iinfo(dt).max if dt.kind == "u" else 1.0
    # The blend may overshoot a little at sharp edges: nothing above the data's white (12-bit
    # data in a 16-bit panorama ends at 4095).
    white = max(f.tone.white * f.scale for f in job.frames)
    for b in range(job.bands):
        band = np.ascontiguousarray(out[..., b])
        if white < top:
            np.minimum(band, np.float32(white), out=band)
        if dt.kind == "u":
            # OpenCV's saturating conversion rounds half to even like np.rint, clips like np.clip,
            # in one pass instead of three.
            band = cv2.add(band, 0.0, dtype=cv2.CV_8U if dt == np.uint8 else cv2.CV_16U)
        arr[b] = band
        arr[b][~alpha] = 0
    arr[job.bands] = np.where(alpha, top, 0).astype(dt)
    stats["covered_px"] = int(alpha.sum())
    return (cy, cx, arr), stats


def _tile_task(job: TileJob, levels: int):
    """A tile task: ((row0, col0) of the tile, its pixels or None, their first ``levels`` overview
    levels (:func:`mosaic.formats.cog.overview_levels`, computed where the tile was rendered), stats)."""
    result, stats = render_tile(job)
    if result is None:
        return (job.core[1], job.core[0]), None, [], stats
    cy, cx, arr = result
    return (cy, cx), arr, overview_levels(arr, levels, alpha=True), stats


def _count(tstats, st):
    tstats["exact_px"] += st["exact_px"]
    if st["written"]:
        tstats["tiles_written"] += 1
        tstats["covered_px"] += st["covered_px"]


def _pass_key(proj) -> int:
    """Which coordinate of a tile's core (x0: 0, y0: 1) stays the same along one pass of
    :func:`_tile_order`: columns when the panorama is wider than tall, else rows."""
    return 0 if proj.width > proj.height else 1


def _tile_order(jobs, proj):
    """Tiles down each column in turn when the panorama is wider than tall (a pan: a column meets
    the few frames above each other there, and the next column most of them again), else along
    each row: consecutive tiles share frames, so each is decoded about once whatever the frame
    cache holds (row by row, a 360 degree pan's frames were all needed before any came back)."""
    if _pass_key(proj) == 0:
        return sorted(jobs, key=lambda j: (j.core[0], j.core[1]))
    return list(jobs)  # _windows gives them row-major


def _block_cache_bytes(jobs, proj, bands: int, dtype) -> int:
    """GDAL's block cache while the tiles are written: one pass (a column, or a row: see
    :func:`_tile_order`) of written tiles and the overview blocks they touch, within
    [``CACHE_MIN``, ``CACHE_MAX``].

    A tile's overview windows fill only part of an overview block, which the next pass completes.
    GDAL keeps the block's other part in its cache meanwhile, or writes the block out and reads it
    back at the next touch: with the cache at 256 bytes (rasterio takes ``GDAL_CACHEMAX`` in bytes;
    "256" was meant as MB), boat's 635 overview writes took 1.28 s under the writer's lock, and
    0.23 s with 16 MiB. The checkpoints close the files every ``CHECKPOINT_S`` and empty the cache,
    so what it holds stays within a second's tiles whatever the panorama's size."""
    key = _pass_key(proj)
    per_pass: dict[int, int] = {}
    for j in jobs:
        per_pass[j.core[key]] = per_pass.get(j.core[key], 0) + int(j.core[2]) * int(j.core[3])
    pixels = max(per_pass.values(), default=0)
    # Twice the pass: every overview level keeps at least one block of the pass open (boat: six
    # base blocks in a column and seven open overview blocks, ~16 MiB with the cache's own).
    need = 2 * pixels * bands * np.dtype(dtype).itemsize
    return int(min(max(need, CACHE_MIN), CACHE_MAX))


#: What the render's pair tasks import on first use: scipy's sparse modules, for the seams'
#: shortest paths and the photometric solve.
FIRST_USE_IMPORTS = ("scipy.sparse.csgraph", "scipy.sparse.linalg")


def preload() -> threading.Thread:
    """Start importing :data:`FIRST_USE_IMPORTS` in a background thread; join it before the render.

    Imported by the first pair task, they took 0.18-0.3 s on 2 cores while the other task thread
    waited on the import lock (budapest's first pair 0.275 s, each other one 0.01-0.03 s). Imported
    while registration goes on, from the end of its features stage, budapest's gains phase took
    0.32 s instead of 0.47 s (medians of 6 alternating runs; docs/benchmarks.md). Not earlier:
    features is budapest's peak (two SIFT pyramids), and the modules add 27 MiB."""
    def work():
        for name in FIRST_USE_IMPORTS:
            try:
                importlib.import_module(name)
            except Exception as e:  # noqa: BLE001 -- the task that needs it will say so
                log.debug("preload: %s not imported (%s)", name, e)

    t = threading.Thread(target=work, name="render-preload", daemon=True)
    t.start()
    return t


# -- planning and the driver -----------------------------------------------------------------------

def _align(levels, step):
    """The grid every tile window starts on: the coarsest pyramid level's and the warp grid's."""
    if step < 2 or step & (step - 1):
        raise InputError(None, f"warp grid step {step} must be a power of two >= 2", field="step")
    return max(16, 1 << levels, step)


def _halo(levels, step):
    a = _align(levels, step)
    return -(-blend.halo(levels) // a) * a


def _setup(solution, projection, resolution, tile, elevation_range, levels, max_pixels, proj_kw, step=16):
    a = _align(levels, step)
    if tile <= 0 or tile % a:
        raise InputError(None, f"tile size {tile} must be a positive multiple of {a}", field="tile")
    frames = frames_of(solution)
    proj = _projection(frames, projection, resolution, a, elevation_range, proj_kw)
    npx = proj.width * proj.height
    if npx > max_pixels:
        raise InputError(solution if not isinstance(solution, dict) else None,
                         f"output {proj.width} x {proj.height} = {npx / 1e9:.2f} gigapixels exceeds the limit of "
                         f"{max_pixels / 1e9:.2f} (raise max_pixels or coarsen the resolution)", field="resolution")
    return frames, proj


def plan(solution, *, projection="equirect", resolution=None, tile=512, elevation_range=None, levels=LEVELS,
         max_pixels=MAX_PIXELS, **proj_kw) -> dict:
    """Dry run: output size, tile count and byte estimates, without reading any pixels (image
    headers only). Raises InputError when the output would exceed ``max_pixels``."""
    frames, proj = _setup(solution, projection, resolution, tile, elevation_range, levels, max_pixels, proj_kw)
    dtype, bands, _ = _output_kind(frames)
    item = np.dtype(dtype).itemsize
    win = tile + 2 * _halo(levels, 16)
    ntiles = -(-proj.width // tile) * -(-proj.height // tile)
    biggest = max(f.width * f.height * bands * item for f in frames)
    return {
        "projection": projection, "width": proj.width, "height": proj.height, "tiles": ntiles,
        "resolution": float(proj.resolution) if projection == "equirect" else None,
        "bands": bands + 1, "dtype": dtype, "frames": len(frames),
        "bytes_estimate": int(proj.width * proj.height * (bands + 1) * item),
        # per task: the window's pyramids (num + den, 4/3 for the levels) and per frame a map,
        # a warped copy and its pyramid; plus the largest decoded frame in the cache.
        "tile_bytes_estimate": int(win * win * 4 * ((bands + 1) * 4 / 3 * 2 + 6 * (bands + 3)) + biggest),
    }


def render_panorama(solution, out_dir, *, projection="equirect", resolution=None, tile=512, client=None,
                    elevation_range=None, range_m=None, levels=LEVELS, gains=True, seams=True, ties=None,
                    max_pixels=MAX_PIXELS, step=16, tol=0.1, preview_width=4096, work_dir=None,
                    **proj_kw) -> dict:
    """Render ``solution`` (path to solution.json, or its dict with paths relative to the working
    directory) into ``out_dir/panorama.tif`` (COG) and ``out_dir/preview.jpg``.

    ``projection``: equirect (default; full sphere, W = 2H), cylindrical (``elevation_range``),
    polar (``max_angle``), perspective (``direction=(az, el)``, ``fov=(h, v)``), vertical
    (``extent`` metres, ``ground_z``). ``resolution``: degrees per pixel (metres for vertical),
    default the finest input pixel. ``range_m``: render far-field directions (None) or points at
    that distance from the rover origin. ``gains``: solve the photometric model (True), none
    (False), or one gain per used frame (an array). ``seams``: cut seams where frames agree
    (True) or give each pixel to the frame that sees it nearest its centre (False). ``ties``:
    the registration's tie points (i, j, xi, yi, xj, yj), i and j indexing the used frames
    (:func:`mosaic.pipeline.registration.tie_points`), which the photometric fit samples first (all but
    every :data:`.photometry.HOLD_OUT`-th distinct one, held out for the agreement measure).
    ``client``: an executor (:mod:`mosaic.runtime.cluster`: local threads or a dask client); None starts the
    local default. ``work_dir``: a folder that keeps the finished tiles (the COG's intermediate
    and a journal of the tiles in it, :class:`mosaic.formats.cog.CogWriter`; the caller keys the folder by
    its inputs), so a run killed mid-render and started again renders only the missing tiles and
    writes the same bytes. Returns paths and stats.
    """
    import rasterio

    t0, c0 = time.monotonic(), time.process_time()
    frames, proj = _setup(solution, projection, resolution, tile, elevation_range, levels, max_pixels, proj_kw, step)
    dtype, bands, fdtypes = _output_kind(frames)
    top = {"uint8": 255.0, "uint16": 65535.0}
    out_top = top.get(dtype, 1.0)
    scales = [out_top / top[d] if d in top and dtype in top else 1.0 for d in fdtypes]
    own = None
    if client is None:
        own = cluster.client()
        client = own.__enter__()
    try:
        t1, c1 = time.monotonic(), time.process_time()
        frames, pair_seams, gstats = prepare_frames(frames, client, bands, dtype, fdtypes, scales, gains, seams, ties)
        t2, c2 = time.monotonic(), time.process_time()
        windows = _windows(proj, tile, _halo(levels, step))
        hits = _tile_frames(proj, windows, frames, range_m)
        jobs = [TileJob(proj, core, win, tuple(frames[i] for i in sorted(hit)), bands, dtype, levels, range_m, step, tol,
                        _seams_among(pair_seams, hit))
                for (core, win), hit in zip(windows, hits) if hit]
        transform = (equirect_transform(proj.width, proj.height) if isinstance(proj, Equirectangular)
                     else _affine(proj.transform))
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        path = out_dir / "panorama.tif"
        tstats = {"tiles": len(windows), "tiles_with_frames": len(jobs), "tiles_written": 0, "covered_px": 0,
                  "exact_px": 0}
        # Overviews from the tiles (in the tasks) when every tile starts on the coarsest
        # overview's grid; else GDAL's, over the whole raster at the end.
        factors = overview_factors(proj.width, proj.height)
        levels = len(factors) if factors and tile % factors[-1] == 0 else 0
        with rasterio.Env(GDAL_CACHEMAX=_block_cache_bytes(jobs, proj, bands + 1, dtype)), \
                CogWriter(path, proj.width, proj.height, bands + 1, dtype, transform=transform, alpha=True,
                          window_overviews=bool(levels), workdir=work_dir) as cw:
            todo = []
            for j in _tile_order(jobs, proj):
                st = cw.done.get((j.core[1], j.core[0]))
                if st is None:
                    todo.append(j)
                else:
                    _count(tstats, st)
            tstats["tiles_resumed"] = len(jobs) - len(todo)
            tstats["tiles_rendered"] = len(todo)
            if tstats["tiles_resumed"]:
                log.info("render: %d of %d tiles already rendered (resuming)", tstats["tiles_resumed"], len(jobs))
            for at, arr, lv, st in _run_jobs(client, todo, (levels,)):
                st["written"] = arr is not None
                _count(tstats, st)
                if arr is None:
                    cw.note(at, st)
                else:
                    cw.write(at, arr, record=st, levels=lv or None)
            t3, c3 = time.monotonic(), time.process_time()
        t4, c4 = time.monotonic(), time.process_time()
        preview = write_preview(path, out_dir / "preview.jpg", preview_width)
        write_record(out_dir / "render.json", frames, pair_seams, gstats)
    finally:
        if own is not None:
            own.__exit__(None, None, None)
    t5, c5 = time.monotonic(), time.process_time()
    return {
        "panorama": str(path), "preview": str(preview), "projection": projection,
        "width": proj.width, "height": proj.height, "bands": bands + 1, "dtype": dtype,
        "resolution": float(proj.resolution if projection == "equirect" else 360.0 / proj.width)
        if projection in ("equirect", "cylindrical") else None,
        "window": [proj.x0, proj.y0, proj.full_width, proj.full_width // 2] if isinstance(proj, EquirectWindow) else None,
        "frames": len(frames), "gains": {f.id: f.gain for f in frames}, "photometry": gstats,
        "tones": {f.id: photometry.tone_to_dict(f.tone) for f in frames},
        "margins": {f.id: f.margins.as_list() for f in frames},
        **tstats,
        "seconds": {"total": t5 - t0, "gains": t2 - t1, "render": t3 - t2, "cog": t4 - t3, "preview": t5 - t4},
        # CPU seconds of this process (all its threads: the embedded cluster's workers included,
        # a remote cluster's not): on a shared machine the honest measure of cost.
        "cpu_seconds": {"total": c5 - c0, "gains": c2 - c1, "render": c3 - c2, "cog": c4 - c3, "preview": c5 - c4},
    }


def _pair_task(i, j, fa, fb, ma, mb, size_a, size_b, white, seams_on):
    """One pair of overlapping frames (i < j), on i's reduced grid: photometric samples of the
    overlap and the pair's seam. Returns (PairSamples or None, PairSeam or None)."""
    cv2.setNumThreads(1)
    rh, rw = fa.valid.shape
    # The grid and a ring of pixels beyond it, where only b may see (the seam needs to know).
    mapx, mapy = warp.reduced_pair_map(ma, mb, rw + 2, rh + 2, fa.scale, origin=-1)
    wb, hb = size_b
    bx0, bx1, by0, by1 = masks_box(fb.margins, wb, hb)
    inside_b = (mapx >= bx0) & (mapx <= bx1) & (mapy >= by0) & (mapy <= by1)
    inside_a = np.pad(fa.valid, 1, constant_values=False)
    overlap = inside_a & inside_b
    ys, xs = np.nonzero(overlap)
    if len(ys) < 16:
        return None, None
    # Everything from here on works on the overlap's box (plus the seam's border band).
    band = seams.band(fa.scale, fa.valid.shape)
    pad = band + 3
    y0, y1 = max(0, ys.min() - pad), min(rh + 2, ys.max() + pad + 1)
    x0, x1 = max(0, xs.min() - pad), min(rw + 2, xs.max() + pad + 1)
    box = (slice(y0, y1), slice(x0, x1))
    mx, my = mapx[box], mapy[box]
    qx, qy = (mx + 0.5) / fb.scale - 0.5, (my + 0.5) / fb.scale - 0.5
    inside_b = inside_b[box]
    if fb.alpha:
        inside_b &= warp.bilinear(fb.valid.astype(np.float32), qx, qy) >= 1.0 - 1e-6
    inside_a = inside_a[box]
    overlap = inside_a & inside_b
    # Frame a's values on the box (the ring beyond the frame is never in the overlap).
    va = np.zeros((y1 - y0, x1 - x0, fa.image.shape[2]), np.float32)
    gy0, gx0 = max(y0 - 1, 0), max(x0 - 1, 0)
    sub = fa.image[gy0:y1 - 1, gx0:x1 - 1].astype(np.float32)
    va[gy0 + 1 - y0:gy0 + 1 - y0 + sub.shape[0], gx0 + 1 - x0:gx0 + 1 - x0 + sub.shape[1]] = sub
    x0, y0 = x0 - 1, y0 - 1  # box origin in a's grid coordinates
    vb = np.stack([warp.bilinear(fb.image[..., c], qx, qy) for c in range(fb.image.shape[2])], axis=-1)
    if va.shape[2] != vb.shape[2]:  # a grey frame beside a colour one: compare brightness
        va, vb = va.mean(axis=2, keepdims=True), vb.mean(axis=2, keepdims=True)
    samples = photometry.pair_samples(i, j, va, vb, overlap, mx, my, (x0, y0), fa.scale, white, (ma, mb))
    seam = None
    # A corner overlap (a few percent of either frame) keeps the centre rule: cheaper, and there
    # the seam meets other frames' within a few reduced pixels anyway.
    if seams_on and len(ys) >= seams.MIN_OVERLAP * min(fa.valid.size, fb.valid.size):
        wa, ha = size_a
        gx = ((np.arange(x0, x0 + va.shape[1]) + 0.5) * fa.scale - 0.5 - (wa - 1) / 2.0) * (2.0 / wa)
        gy = ((np.arange(y0, y0 + va.shape[0]) + 0.5) * fa.scale - 0.5 - (ha - 1) / 2.0) * (2.0 / ha)
        sa = (gx * gx)[None, :] + (gy * gy)[:, None]
        sb = ((mx - (wb - 1) / 2.0) * (2.0 / wb)) ** 2 + ((my - (hb - 1) / 2.0) * (2.0 / hb)) ** 2
        seam = seams.solve_pair(i, j, va, vb, overlap, inside_a, inside_b, fa.scale, white, (x0, y0), band,
                                np.abs(sa - sb).astype(np.float32))
    return samples, seam


def prepare_frames(frames, client, bands, dtype, fdtypes, scales, gains=True, seams_on=True, ties=None):
    """Read every frame once and solve what the tiles need from all of them: each frame's valid
    area, tone and the pair seams. ``ties``: tie points (i, j, xi, yi, xj, yj) between the frames
    (indices), the photometric fit's best samples (all but the held-out share). Returns (frames
    with them, {(i, j): PairSeam}, stats)."""
    n = len(frames)
    red = [photometry.reduction(f.width, f.height) for f in frames]
    ties = np.zeros((0, 6)) if ties is None or not len(ties) else np.asarray(ties, float)
    fit, held = photometry.tie_roles(ties)
    ti, tj = ties[:, 0].astype(int), ties[:, 1].astype(int)
    points = [np.concatenate([ties[fit & (ti == k), 2:4], ties[fit & (tj == k), 4:6]]) for k in range(n)]
    # When every frame fits the frame cache, this pass's decodes stay there for the tiles: each
    # frame is decoded once in the whole render (else once here and once for the tiles).
    keep = warp.CACHE.fits(sum(f.width * f.height * bands * np.dtype(dt).itemsize for f, dt in zip(frames, fdtypes)))
    read = client.map(photometry.prepare, [f.path for f in frames], [f.width for f in frames],
                      [f.height for f in frames], red, points, [keep] * n, pure=False)
    data = track_futures("frames", read)  # a bar per frame read: the first pass over every pixel
    whites = []
    for k, f in enumerate(frames):
        same = [d.top for d, dt in zip(data, fdtypes) if dt == fdtypes[k]]
        whites.append(photometry.white_level(same, fdtypes[k]))
    pairs = [(i, j) for i, j in photometry.overlapping_pairs(np.array([f.boresight for f in frames]),
                                                             np.array([f.radius for f in frames]))
             if _sees_other(frames[i], frames[j])]
    want_samples = isinstance(gains, bool) and gains
    samples, pair_seams = [], {}
    if pairs and (want_samples or seams_on):
        # The reduced frames themselves (small: ~0.2 MB), so that any executor runs the tasks as
        # they are (a dask cluster ships them in the graph, twice per pair).
        futs = client.map(_pair_task, [i for i, _ in pairs], [j for _, j in pairs], [data[i] for i, _ in pairs],
                          [data[j] for _, j in pairs], [frames[i].model for i, _ in pairs],
                          [frames[j].model for _, j in pairs], [(frames[i].width, frames[i].height) for i, _ in pairs],
                          [(frames[j].width, frames[j].height) for _, j in pairs], [whites[i] for i, _ in pairs],
                          [seams_on] * len(pairs), pure=False)
        for smp, seam in track_futures("overlaps", futs):
            if smp is not None:
                samples.append(smp)
            if seam is not None:
                pair_seams[(seam.i, seam.j)] = seam
    lenses = [photometry.lens_of(f.model, f.width, f.height) for f in frames]
    sizes = [(f.width, f.height) for f in frames]
    channels = max(d.image.shape[2] for d in data)
    tie_samples = _tie_samples(ties[fit], data, whites) if want_samples else []
    if tie_samples:
        samples = [replace(s, w=s.w * np.float32(photometry.DENSE_WEIGHT)) for s in samples] + tie_samples
    if want_samples:
        tones, stats = photometry.fit(n, channels, samples, lenses, sizes, max(whites))
        tones = [replace(t, white=w, knee=photometry.KNEE * w) for t, w in zip(tones, whites)]
    else:
        if isinstance(gains, bool):
            g = np.ones(n)
        else:
            g = np.asarray(gains, dtype=float)
            if g.shape != (n,):
                raise InputError(None, f"{len(g)} gains given for {n} used frames", field="gains")
        tones = [photometry.Tone(gain=(float(gi),), centre=lens.centre, white=w, knee=photometry.KNEE * w)
                 for gi, lens, w in zip(g, lenses, whites)]
        stats = {"pairs": 0}
    stats["tie_points"] = int(sum(len(s.w) for s in tie_samples))
    stats["tie_points_held_out"] = int(held.sum())
    stats["seams"] = len(pair_seams)
    stats["overlapping_pairs"] = len(pairs)
    out = [replace(f, gain=float(np.mean(t.gain)), scale=float(s), tone=t, margins=d.margins, alpha=d.alpha,
                   top=d.top, darkened=_darkens(t, f.width, f.height)) for f, t, s, d in zip(frames, tones, scales, data)]
    return out, pair_seams, stats


def _darkens(tone: photometry.Tone, width: int, height: int, n: int = 33) -> bool:
    """Whether a tone lowers some value of a frame: a gain below 1, an offset, or a spatial gain
    field below 1 somewhere (on an n x n grid over the frame, corners included). A property of
    the frame, so its pixels render alike in every tile."""
    if min(tone.gain) < 1 or any(tone.offset):
        return True
    if tone.uniform:
        return False
    x, y = np.meshgrid(np.linspace(-0.5, width - 0.5, n), np.linspace(-0.5, height - 0.5, n))
    return bool(tone.log_field(x, y).min() + np.log(min(tone.gain)) < 0)


#: A pair's tie points weigh sqrt(TIE_PAIR_POINTS / n) each: a pair's say grows with the square
#: root of its tie count, so pairs with few ties (which count as much in the agreement figures)
#: are not outvoted.
TIE_PAIR_POINTS = 100.0


def _sees_other(fa: FrameInfo, fb: FrameInfo, n: int = 8) -> bool:
    """Whether two frames whose cones meet overlap at all: some of either's border or centre
    rays (far field) land inside the other (cones are a loose bound: a third of a pan's cone
    pairs do not overlap, and a pair task costs more than this test)."""
    for a, b in ((fa, fb), (fb, fa)):
        pix = np.concatenate([a.model.border_pixels(a.width, a.height, n), [[(a.width - 1) / 2.0, (a.height - 1) / 2.0]]])
        q = warp.frame_to_frame(a.model, b.model, pix)
        ok = np.isfinite(q).all(axis=1)
        if (ok & (q[:, 0] >= -0.5) & (q[:, 0] <= b.width - 0.5) & (q[:, 1] >= -0.5) & (q[:, 1] <= b.height - 0.5)).any():
            return True
    return False


def _tie_samples(ties, data, whites):
    """PairSamples of tie points (i, j, xi, yi, xj, yj) from the brightness each frame's read
    measured at them (in the order its points were asked for: as i, then as j)."""
    ti, tj = ties[:, 0].astype(int), ties[:, 1].astype(int)
    n = len(data)
    vi = np.full((len(ties), 3), np.nan)
    vj = np.full((len(ties), 3), np.nan)
    for k in range(n):
        vals = data[k].points
        a, b = np.flatnonzero(ti == k), np.flatnonzero(tj == k)
        if vals is None or not len(a) + len(b):
            continue
        c = vals.shape[1]
        vi[a, :c] = vals[:len(a)]
        vj[b, :c] = vals[len(a):]
    out = []
    for i, j in sorted(set(zip(ti.tolist(), tj.tolist()))):
        sel = np.flatnonzero((ti == i) & (tj == j))
        ci, cj = data[i].image.shape[2], data[j].image.shape[2]
        a, b = vi[sel, :ci], vj[sel, :cj]
        if ci != cj:
            a, b = a.mean(axis=1, keepdims=True), b.mean(axis=1, keepdims=True)
        wi, wj = whites[i], whites[j]
        ok = (np.isfinite(a).all(axis=1) & np.isfinite(b).all(axis=1)
              & (a > photometry.BLACK * wi).all(axis=1) & (b > photometry.BLACK * wj).all(axis=1)
              & (a < photometry.WHITE_VOTE * wi).all(axis=1) & (b < photometry.WHITE_VOTE * wj).all(axis=1))
        if ok.sum() < 3:
            continue
        out.append(photometry.PairSamples(i, j, ties[sel[ok], 2:4], ties[sel[ok], 4:6], a[ok].astype(np.float32),
                                          b[ok].astype(np.float32),
                                          np.full(int(ok.sum()), np.sqrt(TIE_PAIR_POINTS / ok.sum()), np.float32)))
    return out


def _seams_among(pair_seams, hit):
    """The seams of pairs of the frames ``hit`` (indices)."""
    hs = sorted(hit)
    return tuple(pair_seams[(a, b)] for k, a in enumerate(hs) for b in hs[k + 1:] if (a, b) in pair_seams)


def write_record(path, frames, pair_seams, stats):
    """``render.json`` beside the panorama: how each frame was rendered (its tone,
    :func:`.photometry.tone_to_dict`, and valid margins), the pair seams and the photometric fit's
    statistics, keyed by frame id; what ``mosaic eval`` and ``quality.png`` measure it with."""
    ids = {f.index: f.id for f in frames}
    return write_json(path, {
        "frames": {f.id: {**photometry.tone_to_dict(f.tone), "margins": f.margins.as_list(), "alpha": f.alpha}
                   for f in frames},
        "seams": [seams.seam_to_dict(sm, ids[sm.i], ids[sm.j]) for _, sm in sorted(pair_seams.items())],
        "photometry": stats})


def read_record(path, frames):
    """(tones {id: Tone}, margins {id: Margins}, pair seams {(i, j): PairSeam} re-indexed to
    ``frames``) from a ``render.json``; empty where it is missing."""
    p = Path(path)
    if not p.is_file():
        return {}, {}, {}
    d = json.loads(p.read_text())
    index = {f.id: f.index for f in frames}
    tones = {fid: photometry.tone_from_dict(t) for fid, t in d.get("frames", {}).items()}
    margins = {fid: Margins(*t.get("margins", [0, 0, 0, 0])) for fid, t in d.get("frames", {}).items()}
    found = {}
    for sd in d.get("seams", []):
        if sd["a"] in index and sd["b"] in index:
            sm = seams.seam_from_dict(sd, index[sd["a"]], index[sd["b"]])
            found[(sm.i, sm.j)] = sm
    return tones, margins, found


def _affine(gt):
    from affine import Affine

    return Affine.from_gdal(*gt)


def _run_jobs(client, jobs, extra=()):
    """Yield ``_tile_task(job, *extra)`` as tiles finish, keeping a bounded number in flight
    (memory stays O(in-flight tiles), not O(panorama))."""
    if not jobs:
        return
    nthreads = sum(client.nthreads().values()) or 1
    limit = 2 * nthreads + 2
    it = iter(jobs)
    first = [client.submit(_tile_task, j, *extra, pure=False) for _, j in zip(range(limit), it)]
    ac = as_completed(first)
    with stage("render", len(jobs)) as bar:
        for fut in ac:
            res = fut.result()
            fut.release()
            nxt = next(it, None)
            if nxt is not None:
                ac.add(client.submit(_tile_task, nxt, *extra, pure=False))
            bar.advance()
            yield res


def _percentile_u16(vals, q) -> float:
    """``np.percentile(vals.astype(np.float32), q)`` of uint16 values, to the last bit, from their
    histogram: no float copy to sort. 1.0 for no values."""
    if vals.size == 0:
        return 1.0
    cum = np.cumsum(np.bincount(vals.ravel(), minlength=65536))
    pos = q / 100.0 * (vals.size - 1)
    lo = int(np.floor(pos))
    a = np.float32(np.searchsorted(cum, lo, side="right"))
    b = np.float32(np.searchsorted(cum, min(lo + 1, vals.size - 1), side="right"))
    t = np.float32(pos - lo)
    # numpy's float32 interpolation, from whichever end is nearer.
    return float(b - (b - a) * (np.float32(1) - t) if t >= 0.5 else a + (b - a) * t)


def write_preview(cog_path, out_path, max_width=4096):
    """A JPEG of the panorama at most ``max_width`` wide, read from the COG's overviews;
    transparent pixels black, 16-bit stretched to its 99.9th percentile."""
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(cog_path) as ds:
            f = max(1.0, ds.width / max_width)
            w, h = max(1, int(ds.width / f)), max(1, int(ds.height / f))
            a = ds.read(out_shape=(ds.count, h, w), resampling=Resampling.average)
    alpha = a[-1] > 0
    col = a[:-1]
    if a.dtype == np.uint16:
        # A lookup table stretches 16-bit values straight to 8 bits: no float copy of the
        # preview (on a 4096-px preview the float arrays took 110 MiB and set the process peak).
        top = _percentile_u16(col[:, alpha], 99.9)
        lut = np.clip(np.rint(np.arange(65536, dtype=np.float32) * (255.0 / max(top, 1e-6))), 0, 255)
        col = lut.astype(np.uint8)[col]
    elif a.dtype != np.uint8:
        vals = col[:, alpha].astype(np.float32)
        top = float(np.percentile(vals, 99.9)) if vals.size else 1.0
        col = np.clip(np.rint(col.astype(np.float32) * (255.0 / max(top, 1e-6))), 0, 255).astype(np.uint8)
    col[:, ~alpha] = 0
    img = np.moveaxis(col, 0, -1)
    if img.shape[2] == 3:
        img = img[..., ::-1]
    ok, buf = cv2.imencode(".jpg", np.ascontiguousarray(img), [cv2.IMWRITE_JPEG_QUALITY, 90])
    if not ok:
        raise RuntimeError(f"{out_path}: JPEG encoding failed")
    write_bytes(out_path, buf.tobytes())
    return Path(out_path)
