"""Cloud Optimized GeoTIFF output, written window by window and converted once.

A COG cannot be written window by window (its tiles and overviews must follow a fixed order), so
writes go to a tiled, uncompressed, sparse intermediate GeoTIFF; ``close()`` (or leaving the
``with`` block) converts it once with GDAL's COG driver (overviews included) and renames the
result onto the target (``mosaic.runtime.atomic``). If the block raises, nothing appears at the target.

API::

    with CogWriter(path, width, height, count, dtype, transform=..., crs=..., nodata=None,
                   alpha=False, tile=512, colorinterp=None, tags=None,
                   window_overviews=False, workdir=None) as w:
        w.done                              # {(row0, col0): record} of a resumed writer
        w.write((row0, col0), array, record=None)   # array (bands, h, w) or (h, w); any thread
        w.note((row0, col0), record)        # a window with nothing to write, done
    overview_levels(array, n, alpha=..., nodata=...) -> [level arrays]   # in a worker, say
    validate(path) -> (ok, errors, warnings)
    equirect_transform(width, height) -> Affine   # the panorama contract, no CRS

Where the intermediate lives: by default a private temporary folder beside the target, removed
at the end. With ``workdir`` it lives there with a journal, and a run killed half-way and started
again resumes (``done``): the writer closes and reopens the intermediate at checkpoints (GDAL then
writes its blocks and directory) and only then journals the windows written since, so every
journaled window is whole on disk. Writes come from threads of this process: a task on another
machine returns its window to the process that owns the writer (the renderer's tiles do), which
needs no shared filesystem, no lock across processes and no part files to merge.

Compression: DEFLATE (every GDAL, QGIS and browser COG reader has it) at level 1 with a predictor.
Measured on an 8192 x 4096 RGBA panorama (2 busy cores): conversion 8.7 s / 71 MB at level 1
against 28 s / 66 MB at the default level 6, 6.5 s / 64 MB for ZSTD level 1 (``compress="zstd"``,
for readers known to have it), 12 s / 103 MB without a predictor, 4.3 s / 179 MB uncompressed.

Bytes are deterministic: GDAL's GeoTIFF writer stores no timestamp, the COG driver writes tiles
and overviews in a fixed order whatever the number of compression threads, and we set no
time-dependent tags; two runs over the same input give identical files (tested).

Transparency: with ``alpha=True`` the last band is alpha (0 transparent). GDAL uses an alpha band
as the mask of the other bands when it averages overviews, so transparent pixels do not bleed into
the colour of overview pixels (tested); it masks the alpha band by itself too, so an overview pixel
is as opaque as the covered pixels under it (coverage edges grow by up to half a coarse pixel).
Float rasters (DEMs) take ``nodata``; overviews skip it. ``overview_levels`` (window overviews)
follows the same rules.

The equirectangular panorama contract (DESIGN.md): transform ``(0, 360/W, 0, 90, 0, -180/H)`` in
GDAL order, degrees of (azimuth, elevation), and no CRS: ``equirect_transform(W, H)``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

# rasterio (and affine) are imported where they are used, as elsewhere in the house: every
# command imports this module (through the render), and with rasterio at the top `mosaic --help`
# took 0.61 CPU-s and 84 MiB instead of 0.54 and 61.
from mosaic.runtime.atomic import atomic_path, write_text

log = logging.getLogger("mosaic")

#: Data types a COG here may hold: 8/16-bit unsigned imagery and float32 elevations.
DTYPES = ("uint8", "uint16", "float32")

_DEFAULT_INTERP = {
    1: ("gray",),
    3: ("red", "green", "blue"),
}


def equirect_transform(width: int, height: int) -> Affine:
    """The panorama contract: column x -> azimuth 360 (x + 0.5) / W, row y -> elevation 90 - 180 (y + 0.5) / H.

    GDAL geotransform ``(0, 360/W, 0, 90, 0, -180/H)``; written with no CRS (angles, not a map).
    """
    from affine import Affine

    if width != 2 * height:
        raise ValueError(f"equirectangular panorama must be 2:1, got {width}x{height}")
    return Affine(360.0 / width, 0.0, 0.0, 0.0, -180.0 / height, 90.0)


@contextlib.contextmanager
def _quiet_ungeoreferenced():
    # Parts, and panoramas of a plain photo set, legitimately carry no georeferencing.
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        yield


def _window(where, shape_hw) -> Window:
    from rasterio.windows import Window

    if isinstance(where, Window):
        return where
    row0, col0 = where
    return Window(int(col0), int(row0), int(shape_hw[1]), int(shape_hw[0]))


def _as_bands(array: np.ndarray, count: int) -> np.ndarray:
    a = np.asarray(array)
    if a.ndim == 2 and count == 1:
        a = a[None]
    if a.ndim != 3 or a.shape[0] != count:
        raise ValueError(f"expected an array of shape ({count}, h, w), got {a.shape}")
    return a


def _colorinterp(count: int, alpha: bool, colorinterp) -> list[ColorInterp]:
    from rasterio.enums import ColorInterp

    if colorinterp is not None:
        names = list(colorinterp)
    else:
        colour = count - 1 if alpha else count
        names = list(_DEFAULT_INTERP.get(colour, ("gray",) + ("undefined",) * (colour - 1)))
        if alpha:
            names.append("alpha")
    if len(names) != count:
        raise ValueError(f"colorinterp names {len(names)} bands, the raster has {count}")
    return [ColorInterp[n] if isinstance(n, str) else ColorInterp(n) for n in names]


def overview_factors(width: int, height: int, tile: int = 512) -> list[int]:
    """2, 4, ... while the level above is larger than a tile: the COG driver's own count."""
    factors, w, h = [], width, height
    while w > tile or h > tile:
        w, h = w // 2, h // 2
        factors.append(2 * (factors[-1] if factors else 1))
    return factors


def _check_window(win: Window, a: np.ndarray, width: int, height: int) -> None:
    if (int(win.height), int(win.width)) != a.shape[1:]:
        raise ValueError(f"window {win} does not match array shape {a.shape}")
    if win.row_off < 0 or win.col_off < 0 or win.row_off + win.height > height or win.col_off + win.width > width:
        raise ValueError(f"window {win} outside the {width}x{height} raster")


#: A resumable writer (``workdir``) makes its finished windows durable at its first window and then
#: at most this often (seconds): each checkpoint closes and reopens the files (GDAL writes their
#: directories then) and appends the windows written since to the journal. A killed run loses at
#: most this much work.
CHECKPOINT_S = 1.0

_JOURNAL = "journal.jsonl"


class CogWriter:
    """Write a raster window by window, from any thread of this process; ``close()`` produces the COG.

    Parameters: ``path`` target; ``width``, ``height``, ``count`` (bands, alpha included), ``dtype``
    (``uint8``, ``uint16`` or ``float32``); ``transform`` (Affine) and ``crs`` (anything rasterio
    accepts, or None: the panorama has none); ``nodata`` (floats: the DEM's void value);
    ``alpha`` (last band is alpha); ``tile`` (COG block size); ``colorinterp`` (band names such
    as ``("red", "green", "blue", "alpha")``; defaults from count and alpha); ``tags`` (dataset
    metadata, str -> str); ``resampling`` (overviews, default ``average``); ``compress``
    (``deflate``, ``zstd``, ``lzw``, ``none``) and ``level``; ``threads`` (compression threads of
    the final conversion; the bytes do not depend on it).

    ``window_overviews``: the overviews come from the windows as they are written
    (:func:`overview_levels`, or ``levels=`` computed by the caller, e.g. in a worker) instead of
    from GDAL over the whole raster at close: every write must then start on the grid of the
    coarsest overview (``self.align`` pixels) and be whole multiples of it unless it ends at the
    raster's edge. Uncovered (transparent, nodata) pixels never enter an average; an overview pixel
    is opaque where any pixel under it is. On a mostly empty canvas (a rover pan's sky and nadir)
    this skips the empty blocks GDAL would average, and the work is spread over the writers.

    ``workdir``: where the intermediate (and the overview levels and the journal) live. None: a
    private temporary folder beside the target, removed at close or on failure. A folder: kept when
    the ``with`` block raises or the process dies, so that a writer opened again on it with the same
    raster resumes: ``done`` maps every window recorded with ``write(..., record=)`` or ``note``
    by a checkpoint (:data:`CHECKPOINT_S`) to its record, and those windows need not be written
    again. The intermediate's pixels are plain values, so a resumed COG has the same bytes as an
    uninterrupted one.
    """

    def __init__(self, path, width: int, height: int, count: int, dtype, *, transform=None, crs=None,
                 nodata=None, alpha: bool = False, tile: int = 512, colorinterp=None, tags=None,
                 resampling: str = "average", compress: str = "deflate", level: int | None = 1,
                 threads: int | str = "ALL_CPUS", window_overviews: bool = False, workdir=None,
                 checkpoint_s: float | None = None):
        self.path = Path(path)
        self.width, self.height, self.count = int(width), int(height), int(count)
        self.dtype = np.dtype(dtype).name
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype {self.dtype} not supported (one of {DTYPES})")
        if self.width < 1 or self.height < 1 or self.count < 1:
            raise ValueError(f"bad raster shape {self.count}x{self.height}x{self.width}")
        if alpha and self.count < 2:
            raise ValueError("alpha=True needs at least one colour band before the alpha band")
        if tile % 16:
            raise ValueError(f"tile size {tile} must be a multiple of 16")
        self.transform, self.crs, self.nodata, self.alpha, self.tile = transform, crs, nodata, alpha, int(tile)
        self.interp = _colorinterp(self.count, alpha, colorinterp)
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.resampling, self.compress, self.level, self.threads = resampling, compress, level, threads
        self.window_overviews = bool(window_overviews)
        self.factors = self.overview_factors()
        self.align = self.factors[-1] if self.factors else 1
        self.checkpoint_s = CHECKPOINT_S if checkpoint_s is None else float(checkpoint_s)
        self._lock = threading.Lock()
        self._closed = False
        self._pending: list[str] = []
        self._last = -np.inf
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.persistent = workdir is not None
        if self.persistent:
            self.workdir = Path(workdir)
            self.workdir.mkdir(parents=True, exist_ok=True)
        else:
            self.workdir = Path(tempfile.mkdtemp(prefix=f".{self.path.stem}.cog-", dir=self.path.parent))
        self.intermediate = self.workdir / "intermediate.tif"
        self.done: dict = {}
        try:
            self._open()
        except BaseException:
            self._cleanup()
            raise

    # -- the intermediate files and the journal ---------------------------------------------

    def _level_path(self, k: int) -> Path:
        return self.workdir / f"overview-{self.factors[k]}.tif"

    def _files(self) -> list[Path]:
        return [self.intermediate] + ([self._level_path(k) for k in range(len(self.factors))]
                                      if self.window_overviews else [])

    def _spec(self) -> dict:
        t = None if self.transform is None else list(self.transform)[:6]
        return {"width": self.width, "height": self.height, "count": self.count, "dtype": self.dtype,
                "tile": self.tile, "factors": self.factors if self.window_overviews else None,
                "transform": t, "crs": None if self.crs is None else str(self.crs), "nodata": self.nodata,
                "alpha": self.alpha, "interp": [int(c) for c in self.interp], "tags": self.tags}

    def _open(self) -> None:
        journal = self.workdir / _JOURNAL
        if self.persistent and journal.exists():
            try:
                self.done = self._read_journal(journal)
                self._ds = self._reopen()
                return
            except Exception as e:  # noqa: BLE001 - anything unreadable: start again
                log.info("%s: not resuming from %s (%s)", self.path, self.workdir, e)
                self.done = {}
                self._close_files()
        for p in self._files() + [journal, self.workdir / "overviews.vrt"]:
            p.unlink(missing_ok=True)
        self._ds = [self._create(self.intermediate, self.width, self.height)]
        for k, f in enumerate(self.factors if self.window_overviews else ()):
            self._ds.append(self._create(self._level_path(k), -(-self.width // f), -(-self.height // f)))
        if self.persistent:
            self._checkpoint_files()
            # The header lands whole or not at all (a reader of a journal being started never
            # sees it half-written); the records after it are appended.
            write_text(journal, json.dumps({"spec": self._spec()}) + "\n")

    def _read_journal(self, journal: Path) -> dict:
        spec, done = read_journal(journal.parent)
        if not spec:
            raise ValueError("the journal has no whole header")
        if spec != json.loads(json.dumps(self._spec())):
            raise ValueError("the journal is of another raster")
        return done

    def _create(self, path: Path, width: int, height: int):
        import rasterio
        from affine import Affine
        from rasterio.enums import ColorInterp

        profile = dict(driver="GTiff", width=width, height=height, count=self.count,
                       dtype=self.dtype, tiled=True, blockxsize=self.tile, blockysize=self.tile,
                       interleave="pixel", sparse_ok=True, bigtiff="IF_SAFER")
        if self.transform is not None:
            profile["transform"] = self.transform @ Affine.scale(self.width / width, self.height / height)
        if self.crs is not None:
            profile["crs"] = self.crs
        if self.nodata is not None:
            profile["nodata"] = self.nodata
        if self.count == 3 + self.alpha and self.interp[:3] == [ColorInterp.red, ColorInterp.green, ColorInterp.blue]:
            profile["photometric"] = "RGB"
        with _quiet_ungeoreferenced():
            ds = rasterio.open(path, "w", **profile)
        ds.colorinterp = self.interp
        if self.tags:
            ds.update_tags(**self.tags)
        return ds

    def _reopen(self) -> list:
        import rasterio

        with _quiet_ungeoreferenced():
            out = []
            try:
                for p in self._files():
                    out.append(rasterio.open(p, "r+"))
            except BaseException:
                for ds in out:
                    ds.close()
                raise
            return out

    def _close_files(self) -> None:
        for ds in getattr(self, "_ds", []):
            with contextlib.suppress(Exception):
                if not ds.closed:
                    ds.close()

    def _checkpoint_files(self) -> None:
        # Closing makes GDAL write the blocks and the directories: what is on disk is then whole.
        self._close_files()
        self._ds = self._reopen()

    def checkpoint(self) -> None:
        """Make every window written so far durable and record it in the journal (resumable
        writers; a no-op for the others)."""
        with self._lock:
            self._checkpoint()

    def _checkpoint(self) -> None:
        self._last = time.monotonic()
        if not self.persistent or not self._pending:
            return
        self._checkpoint_files()
        with open(self.workdir / _JOURNAL, "a") as fh:
            fh.write("".join(self._pending))
        self._pending = []

    # -- writing ---------------------------------------------------------------------------

    def write(self, where, array, record=None, levels=None) -> None:
        """Write ``array`` (bands, h, w) at ``where`` (a Window or (row0, col0)); thread-safe.
        ``record`` (JSON-able): what ``done`` gives for this window once a checkpoint made it
        durable. ``levels``: the window's overview levels (:func:`overview_levels`), when the
        writer takes the overviews from its windows and the caller computed them already."""
        from rasterio.windows import Window

        a = _as_bands(array, self.count).astype(self.dtype, copy=False)
        win = _window(where, a.shape[1:])
        _check_window(win, a, self.width, self.height)
        if self.window_overviews:
            self._check_aligned(win)
            if levels is None:
                levels = overview_levels(a, len(self.factors), alpha=self.alpha, nodata=self.nodata)
        else:
            levels = None
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.path}: write after close")
            self._ds[0].write(a, window=win)
            for k, lv in enumerate(levels or ()):
                f = self.factors[k]
                self._ds[k + 1].write(lv, window=Window(int(win.col_off) // f, int(win.row_off) // f,
                                                        lv.shape[2], lv.shape[1]))
            self._note(win, record)

    def note(self, where, record) -> None:
        """Record a window with nothing to write (all transparent) as done."""
        with self._lock:
            self._note(_window(where, (0, 0)), record)

    def _note(self, win, record) -> None:
        if not self.persistent or record is None:
            return
        self._pending.append(json.dumps({"at": [int(win.row_off), int(win.col_off)], "record": record}) + "\n")
        if time.monotonic() - self._last >= self.checkpoint_s:
            self._checkpoint()

    def _check_aligned(self, win) -> None:
        a = self.align
        r0, c0, h, w = int(win.row_off), int(win.col_off), int(win.height), int(win.width)
        if r0 % a or c0 % a or (h % a and r0 + h != self.height) or (w % a and c0 + w != self.width):
            raise ValueError(f"window {win} is not on the {a}-pixel grid the overviews need")

    # -- finishing -------------------------------------------------------------------------

    def _options(self) -> dict:
        opts = dict(driver="COG", blocksize=self.tile, compress=self.compress.upper(),
                    overview_resampling=self.resampling.upper(), num_threads=str(self.threads),
                    bigtiff="IF_SAFER",
                    # Blocks that are all transparent/nodata are not stored (a rover pan leaves
                    # sky and nadir empty, a cropped photo panorama its corners): readers return
                    # nodata / alpha 0 for them, and conversion skips their compression.
                    sparse_ok="TRUE")
        if self.compress.lower() in ("deflate", "zstd", "lzw"):
            opts["predictor"] = "YES"  # horizontal differencing for integers, floating-point predictor for floats
        if self.level is not None and self.compress.lower() in ("deflate", "zstd"):
            opts["level"] = str(self.level)
        return opts

    def overview_factors(self) -> list[int]:
        return overview_factors(self.width, self.height, self.tile)

    def _vrt(self) -> Path:
        """The intermediate with the window overviews as its own: what the COG driver copies."""
        from xml.sax.saxutils import escape

        import rasterio
        from affine import Affine

        types = {"uint8": "Byte", "uint16": "UInt16", "float32": "Float32"}
        head = ds_head = ""
        with rasterio.open(self.intermediate) as ds:
            if ds.transform != Affine.identity() or self.transform is not None:
                head += f"<GeoTransform>{', '.join(repr(v) for v in ds.transform.to_gdal())}</GeoTransform>"
            if ds.crs is not None:
                head += f"<SRS>{escape(ds.crs.to_wkt())}</SRS>"
            if self.tags:
                ds_head = "<Metadata>" + "".join(f'<MDI key="{escape(k)}">{escape(v)}</MDI>'
                                                 for k, v in self.tags.items()) + "</Metadata>"
        bands = []
        for b in range(1, self.count + 1):
            src = (f'<SourceFilename relativeToVRT="1">{self.intermediate.name}</SourceFilename>'
                   f"<SourceBand>{b}</SourceBand>")
            nd = "" if self.nodata is None else f"<NoDataValue>{self.nodata!r}</NoDataValue>"
            ovr = "".join(f'<Overview><SourceFilename relativeToVRT="1">{self._level_path(k).name}</SourceFilename>'
                          f"<SourceBand>{b}</SourceBand></Overview>" for k in range(len(self.factors)))
            bands.append(f'<VRTRasterBand dataType="{types[self.dtype]}" band="{b}">{nd}'
                         f"<ColorInterp>{self.interp[b - 1].name.capitalize()}</ColorInterp>"
                         f'<SimpleSource>{src}<SrcRect xOff="0" yOff="0" xSize="{self.width}" ySize="{self.height}"/>'
                         f'<DstRect xOff="0" yOff="0" xSize="{self.width}" ySize="{self.height}"/></SimpleSource>'
                         f"{ovr}</VRTRasterBand>")
        vrt = self.workdir / "overviews.vrt"
        vrt.write_text(f'<VRTDataset rasterXSize="{self.width}" rasterYSize="{self.height}">{head}{ds_head}'
                       + "".join(bands) + "</VRTDataset>\n")
        return vrt

    def close(self) -> Path:
        """Build the overviews (unless the windows brought them), convert to a COG and rename it
        onto ``path``.

        GDAL's overviews are built once, into the uncompressed intermediate, and the COG driver
        copies them (``OVERVIEWS=FORCE_USE_EXISTING``). Left to itself it computes them into a
        compressed temporary file and decompresses them again: boat's 10880 x 2688 panorama took
        4.7 s (2.5 CPU-s) that way and 2.6 s (1.7 CPU-s) this way on 2 busy cores, and the file
        has the same bytes whenever the size halves evenly (the driver rounds odd sizes down, GDAL's
        overview factors round them up: an edge pixel more, nothing lost; tested).
        """
        import rasterio
        import rasterio.shutil
        from rasterio.enums import Resampling

        with self._lock:
            if self._closed:
                return self.path
            self._closed = True
            self._checkpoint()  # a run killed during the conversion resumes with every window
        try:
            source = self.intermediate
            if self.window_overviews:
                self._close_files()
                if self.factors:
                    source = self._vrt()
            elif self.factors:
                with rasterio.Env(GDAL_NUM_THREADS=str(self.threads)):
                    self._ds[0].build_overviews(self.factors, Resampling[self.resampling])
            self._close_files()
            with atomic_path(self.path) as tmp, _quiet_ungeoreferenced():
                rasterio.shutil.copy(source, tmp, overviews="FORCE_USE_EXISTING", **self._options())
        except BaseException:
            self._cleanup(keep=self.persistent)
            raise
        self._cleanup()
        return self.path

    def abort(self) -> None:
        """Drop everything written so far (a resumable writer keeps what its last checkpoint
        recorded); nothing is left at ``path``."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self.persistent:
                with contextlib.suppress(Exception):
                    self._checkpoint()
        self._cleanup(keep=self.persistent)

    def _cleanup(self, keep: bool = False) -> None:
        self._close_files()
        if keep:
            return
        if self.persistent:
            for p in self._files() + [self.workdir / _JOURNAL, self.workdir / "overviews.vrt"]:
                p.unlink(missing_ok=True)
        else:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False

    def __del__(self):
        # A writer dropped without close() must not leave its temporary folder behind.
        if not getattr(self, "_closed", True):
            with contextlib.suppress(Exception):
                self.abort()


def read_journal(workdir) -> tuple[dict, dict]:
    """(raster spec, {(row0, col0): record}) of the windows a resumable writer in ``workdir``
    made durable; ({}, {}) when it has no journal, or none whose header can be read (a journal
    only counts once its header is whole)."""
    path = Path(workdir) / _JOURNAL
    try:
        lines = path.read_text().split("\n")
        spec = json.loads(lines[0])["spec"]
    except (OSError, ValueError, KeyError, TypeError):
        return {}, {}
    done = {}
    for line in lines[1:]:
        try:  # the last line may be cut short by a kill: it never counts
            d = json.loads(line)
            done[tuple(d["at"])] = d["record"]
        except (ValueError, KeyError, TypeError):
            continue
    return spec, done


def overview_levels(array: np.ndarray, n: int, alpha: bool = False, nodata=None) -> list[np.ndarray]:
    """The first ``n`` overview levels (factors 2, 4, ...) of a window (bands, h, w) that starts on
    the grid of the coarsest: each pixel the mean of the covered pixels under it (alpha > 0 with
    ``alpha``, != ``nodata`` with it, all otherwise), rounded to the band's type; where none is
    covered, transparent (alpha 0, colour 0) or ``nodata``. A side that is odd at some level ends
    with the mean of what it has, as GDAL's overview sizes (rounded up) do."""
    import cv2

    a = np.asarray(array)
    bands, h, w = a.shape
    colour = bands - 1 if alpha else bands
    if alpha:
        cover = (a[-1] > 0).astype(np.float32)
    elif nodata is not None:
        cover = np.all(a != np.asarray(nodata, a.dtype), axis=0).astype(np.float32)
    else:
        cover = np.ones((h, w), np.float32)
    # Premultiplied means and the covered share, halved level by level (means of means of equal
    # blocks are the blocks' means); odd sides padded with uncovered pixels.
    num = [a[b].astype(np.float32) * cover for b in range(colour)]
    empty = 0 if nodata is None else nodata
    out = []
    for _ in range(n):
        hh, ww = cover.shape

        def halve(x):
            if hh % 2 or ww % 2:
                x = cv2.copyMakeBorder(x, 0, hh % 2, 0, ww % 2, cv2.BORDER_CONSTANT, value=0)
            return cv2.resize(x, ((ww + 1) // 2, (hh + 1) // 2), interpolation=cv2.INTER_AREA)

        num = [halve(x) for x in num]
        cover = halve(cover)
        seen = cover > 0
        lv = np.empty((bands,) + cover.shape, a.dtype)
        for b in range(colour):
            lv[b] = _to_dtype(num[b] / np.maximum(cover, np.float32(1e-30)), a.dtype)
            lv[b][~seen] = empty
        if alpha:
            lv[-1] = np.where(seen, np.iinfo(a.dtype).max if a.dtype.kind == "u" else 1.0, 0)
        out.append(lv)
    return out


def _to_dtype(v: np.ndarray, dtype) -> np.ndarray:
    """float32 values in ``dtype``: integers rounded half to even and clipped (OpenCV's saturating
    conversion, one pass)."""
    import cv2

    dtype = np.dtype(dtype)
    if dtype == np.uint8:
        return cv2.add(v, 0.0, dtype=cv2.CV_8U)
    if dtype == np.uint16:
        return cv2.add(v, 0.0, dtype=cv2.CV_16U)
    return v.astype(dtype, copy=False)


def write_cog(path, array, *, transform=None, crs=None, nodata=None, alpha=False, **kw) -> Path:
    """Write a whole in-memory raster (bands, h, w) or (h, w) as a COG in one call."""
    a = np.asarray(array)
    if a.ndim == 2:
        a = a[None]
    with CogWriter(path, a.shape[2], a.shape[1], a.shape[0], a.dtype, transform=transform, crs=crs,
                   nodata=nodata, alpha=alpha, **kw) as w:
        w.write((0, 0), a)
    return Path(path)


def validate(path) -> tuple[bool, list[str], list[str]]:
    """rio-cogeo's validation: (is a valid COG, errors, warnings)."""
    from rio_cogeo.cogeo import cog_validate

    ok, errors, warnings = cog_validate(os.fspath(path), quiet=True)
    return bool(ok), list(errors), list(warnings)
