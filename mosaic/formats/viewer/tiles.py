"""A JPEG tile pyramid of the panorama, so the viewer can zoom past the 4096-px preview.

Level ``z`` is the panorama reduced by ``2**z`` (level 0 is full resolution), cut into
``tile × tile`` JPEGs ``tiles/{z}/{row}/{col}.jpg``. Levels stop before the one that is no wider
than the preview, which already covers the coarse views. Tile ``(row, col)`` of level ``z`` shows
exactly the panorama pixels ``[col·t·2^z, min(W, (col+1)·t·2^z))`` × the same for rows, so the
viewer maps every tile exactly whatever the rounding of the edge tiles. Tiles with no covered
pixel are not written; ``tiles/tiles.json`` lists which exist. Colours follow ``preview.jpg``
(``mosaic.render.panorama.write_preview``): transparent is black, 16-bit is stretched linearly to
the 99.9th percentile of the covered colour values at preview size.

Memory is O(tile) per thread: each tile is one decimated windowed read of the COG, which GDAL
serves from the overview nearest the level. The pyramid is built in a temporary folder and
swapped in whole, so a reader never sees a half-made pyramid; a pyramid whose ``tiles.json``
matches the panorama (size, mtime) and settings is kept.

Browsers refuse ``file://`` images as WebGL textures, so the viewer uses the tiles only when the
page is served over HTTP (``mosaic view``); from disk it shows the embedded preview.

Example::

    from mosaic.formats.viewer import write_viewer
    from mosaic.formats.viewer.tiles import write_tiles
    write_viewer("out", tiles=write_tiles("out"))
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import shutil
import tempfile
import threading
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from calib.errors import InputError
from mosaic.runtime.atomic import replace_dir, write_json
from mosaic.runtime.progress import stage

TILE = 512
QUALITY = 85
PREVIEW_WIDTH = 4096
MANIFEST = "tiles.json"
URL = "tiles/{z}/{y}/{x}.jpg"
VERSION = 1


def plan_levels(width: int, height: int, tile: int = TILE, preview_width: int = PREVIEW_WIDTH) -> list[dict]:
    """The pyramid's levels for a ``width × height`` panorama: ``z``, ``scale`` (2**z), ``cols``, ``rows``."""
    levels = []
    z = 0
    while width / 2 ** z > preview_width:
        span = tile * 2 ** z
        levels.append({"z": z, "scale": 2 ** z, "cols": math.ceil(width / span), "rows": math.ceil(height / span)})
        z += 1
    return levels


def tile_window(level: dict, row: int, col: int, width: int, height: int, tile: int = TILE):
    """``(x0, y0, x1, y1)`` panorama pixels of a tile, and its size in pixels ``(w, h)``."""
    span = tile * level["scale"]
    x0, y0 = col * span, row * span
    x1, y1 = min(width, x0 + span), min(height, y0 + span)
    return (x0, y0, x1, y1), (math.ceil((x1 - x0) / level["scale"]), math.ceil((y1 - y0) / level["scale"]))


@contextlib.contextmanager
def _quiet():
    """The panorama has no CRS by contract: rasterio's warning about it is noise here."""
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def stretch_top(ds, preview_width: int = PREVIEW_WIDTH) -> float | None:
    """The value shown as white: None for 8-bit, else the 99.9th percentile of the covered colour
    values read at preview size (as ``write_preview`` does, so tiles and preview agree)."""
    from rasterio.enums import Resampling

    if ds.dtypes[0] == "uint8":
        return None
    f = max(1.0, ds.width / preview_width)
    w, h = max(1, int(ds.width / f)), max(1, int(ds.height / f))
    a = ds.read(out_shape=(ds.count, h, w), resampling=Resampling.average)
    vals = a[:-1][:, a[-1] > 0] if _has_alpha(ds) else a
    return float(np.percentile(vals, 99.9)) if vals.size else 1.0


def _has_alpha(ds) -> bool:
    from rasterio.enums import ColorInterp

    return ds.count in (2, 4) and ds.colorinterp[-1] == ColorInterp.alpha


def _to_jpeg(a: np.ndarray, alpha: bool, top: float | None, quality: int) -> bytes | None:
    """JPEG bytes of a (bands, h, w) read, or None when nothing in it is covered."""
    from PIL import Image

    if alpha:
        covered = a[-1] > 0
        if not covered.any():
            return None
        col = a[:-1].astype(np.float32)
    else:
        covered = None
        col = a.astype(np.float32)
    if top is not None:
        col *= 255.0 / max(top, 1e-6)
    col = np.clip(np.rint(col), 0, 255).astype(np.uint8)
    if covered is not None:
        col[:, ~covered] = 0
    img = Image.fromarray(col[0] if col.shape[0] == 1 else np.moveaxis(col[:3], 0, -1))
    buf = io.BytesIO()
    # Full-resolution chroma (4:4:4): these tiles are the sharp view; 4:2:0 bleeds colour edges.
    img.save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _signature(src: Path, tile: int, quality: int, preview_width: int) -> dict:
    st = src.stat()
    return {"version": VERSION, "source": src.name, "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns,
            "tile": tile, "quality": quality, "preview_width": preview_width}


def write_tiles(out_dir, source: str = "panorama.tif", tile: int = TILE, quality: int = QUALITY,
                preview_width: int = PREVIEW_WIDTH, threads: int | None = None) -> dict | None:
    """Build ``out_dir/tiles/`` from ``out_dir/source``; return the manifest (also ``tiles/tiles.json``).

    Returns None, and removes any old pyramid, when the panorama is no wider than
    ``preview_width`` (the preview already holds every pixel). ``threads``: concurrent tile reads
    (default: the CPU count).
    """
    import rasterio
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    out_dir = Path(out_dir)
    src = out_dir / source
    if not src.is_file():
        raise InputError(src, "no such panorama")
    target = out_dir / "tiles"
    sig = _signature(src, tile, quality, preview_width)
    with contextlib.suppress(OSError, ValueError):
        old = json.loads((target / MANIFEST).read_text())
        if {k: old.get(k) for k in sig} == sig:
            return old
    with _quiet():
        try:
            ds0 = rasterio.open(src)
        except rasterio.errors.RasterioIOError as e:
            raise InputError(src, f"not a readable raster ({e})") from None
        with ds0:
            width, height, alpha = ds0.width, ds0.height, _has_alpha(ds0)
            if ds0.count not in (1, 2, 3, 4) or ds0.dtypes[0] not in ("uint8", "uint16"):
                raise InputError(src, f"{ds0.count} bands of {ds0.dtypes[0]}: expected 8/16-bit gray or RGB, optional alpha")
            top = stretch_top(ds0, preview_width)
    levels = plan_levels(width, height, tile, preview_width)
    if not levels:
        shutil.rmtree(target, ignore_errors=True)
        return None

    tmp = Path(tempfile.mkdtemp(prefix=".tiles.", dir=out_dir))
    local = threading.local()
    opened = []
    lock = threading.Lock()

    def dataset():
        if getattr(local, "ds", None) is None:   # one handle per thread: GDAL handles are not shared
            local.ds = rasterio.open(src)
            with lock:
                opened.append(local.ds)
        return local.ds

    def make(job):
        level, r, c = job
        (x0, y0, x1, y1), (w, h) = tile_window(level, r, c, width, height, tile)
        a = dataset().read(window=Window(x0, y0, x1 - x0, y1 - y0), out_shape=(dataset().count, h, w),
                           resampling=Resampling.average)
        data = _to_jpeg(a, alpha, top, quality)
        if data is None:
            return job, False
        path = tmp / str(level["z"]) / str(r) / f"{c}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)       # the whole folder is swapped in at the end
        return job, True

    jobs = [(lv, r, c) for lv in levels for r in range(lv["rows"]) for c in range(lv["cols"])]
    present = {lv["z"]: bytearray(b"0" * (lv["rows"] * lv["cols"])) for lv in levels}
    try:
        with _quiet(), ThreadPoolExecutor(max_workers=threads or os.cpu_count() or 1) as pool, \
                stage("tiles", len(jobs)) as bar:
            for (lv, r, c), ok in pool.map(make, jobs):
                if ok:
                    present[lv["z"]][r * lv["cols"] + c] = ord("1")
                bar.advance()
        manifest = {**sig, "url": URL, "width": width, "height": height, "stretch_top": top,
                    "levels": [{**lv, "present": present[lv["z"]].decode()} for lv in levels]}
        write_json(tmp / MANIFEST, manifest, indent=None)
        replace_dir(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for ds in opened:
            ds.close()
    return manifest


