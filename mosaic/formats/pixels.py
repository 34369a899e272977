"""Input pixels: each frame proven whole before any work, and kept at the scale features reads.

``decode(frame, scale)`` decodes a frame's image with a decoder that reports truncation and
returns its pixels at about ``scale`` of the delivered size, or raises InputError naming the
file. OpenCV is no proof: ``cv2.imread`` fills a truncated JPEG with grey and only prints a
warning. So:

- JPEG: Pillow (which raises on a cut entropy stream while ``ImageFile.LOAD_TRUNCATED_IMAGES``
  is off, its default), in draft mode: libjpeg decodes the whole stream at 1/2, 1/4 or 1/8 size
  straight from the DCT, several times cheaper than a full decode. The reduction is the one the
  features stage picks for a plain photo (``r`` with ``scale * r <= 1`` dividing both sides),
  and a photo is decoded grey, exactly as ``cv2.IMREAD_REDUCED_GRAYSCALE_r`` does (same bytes).
- PNG: Pillow, full decode (zlib must inflate everything), plus the IEND chunk; 16-bit colour
  PNGs (which Pillow reads as 8 bit) and TIFFs: ``calib.labels.read_image`` (OpenCV, which
  refuses a cut PNG or TIFF). Then area-reduced to ``scale``, in the file's dtype and bands.
- PDS3/VICAR and PDS4 raw arrays: the file's size against the label's layout (no decode).

The pixels go into ``CACHE``, a small in-process store bounded in bytes and keyed by the file's
path, size, mtime and the scale, so a stage running in this process (the features stage on the
embedded cluster's threads, the gain thumbnails) reads them instead of decoding the file again::

    d = decode(record, scale)            # Decoded(pixels, reduction, grey) or None (raw arrays)
    hit = CACHE.get(record["image"], scale, grey=True)   # the same Decoded, or None

``reduction`` is delivered pixels per stored pixel along x (1 = full size; 2, 4, 8 for a JPEG
draft; any float after an area reduction).
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import NamedTuple

import numpy as np

from calib.errors import InputError
from calib.labels import read_image
from calib.labels.raster import _bit_depth, require_bytes
from calib.meta import FrameMeta

#: Bytes of decoded pixels kept for the stages (about 20 Navcam frames at the features' scale).
CACHE_BYTES = 256 * 2**20


class Decoded(NamedTuple):
    pixels: np.ndarray   #: (h', w') or (h', w', bands), the file's dtype, RGB order
    reduction: float     #: delivered pixels per stored pixel (x)
    grey: bool           #: decoded grey from a colour JPEG's luma (a plain photo's features input)


def jpeg_reduction(width: int, height: int, scale: float) -> int:
    """The DCT reduction (1, 2, 4 or 8) the features stage decodes a JPEG photo at for ``scale``."""
    for r in (8, 4, 2):
        if scale * r <= 1.0 and width % r == 0 and height % r == 0:
            return r
    return 1


def _key(path, scale: float, grey: bool):
    st = os.stat(path)
    return (os.path.realpath(path), st.st_size, st.st_mtime_ns, round(float(scale), 6), bool(grey))


class PixelCache:
    """Decoded frames of this process, bounded in bytes. The first frames that fit stay: the
    stages read frames in the order the check decoded them, and evicting the oldest for the
    newest would make every read of such a scan miss."""

    def __init__(self, max_bytes: int = CACHE_BYTES):
        self.max_bytes = max_bytes
        self._items: dict = {}
        self._bytes = 0
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def put(self, path, scale: float, decoded: Decoded) -> bool:
        key = _key(path, scale, decoded.grey)
        with self._lock:
            if key in self._items or self._bytes + decoded.pixels.nbytes > self.max_bytes:
                return False
            decoded.pixels.setflags(write=False)  # shared by readers: nobody may change it
            self._items[key] = decoded
            self._bytes += decoded.pixels.nbytes
            return True

    def get(self, path, scale: float, grey: bool = False) -> Decoded | None:
        """The pixels ``decode`` kept for this file (unchanged since) and scale, or None."""
        try:
            key = _key(path, scale, grey)
        except OSError:
            return None
        with self._lock:
            hit = self._items.get(key)
            if hit is None:
                self.misses += 1
            else:
                self.hits += 1
            return hit

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self._bytes = 0

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)


CACHE = PixelCache()


def decode(frame, scale: float, grey: bool = False, cache: PixelCache | None = CACHE) -> Decoded | None:
    """Prove ``frame``'s pixels complete; return them at about ``scale`` (see the module doc).

    ``frame``: a FrameMeta or an ingest record (``image``, ``width``, ``height``; a FrameMeta's
    ``extra["raw_layout"]`` marks a raw array). ``grey``: a JPEG is decoded grey (its luma), as
    the features stage reads a plain photo. Returns None for raw arrays (checked, not decoded).
    """
    image, width, height, layout, source = _fields(frame)
    if layout is not None:
        _check_raw(layout)
        return None
    if image is None:
        raise InputError(source, "no image file beside this label", field="image")
    path = os.fspath(image)
    if cache is not None:
        hit = cache.get(path, scale, grey)
        if hit is not None:
            return hit
    suffix = Path(path).suffix.lower()
    require_bytes(path)
    if suffix in (".jpg", ".jpeg"):
        out = _jpeg(path, width, height, scale, grey)
    elif suffix == ".png":
        out = _png(path, width, height, scale)
    else:
        out = _reduce(_opencv(path, width, height), width, scale)
    if cache is not None:
        cache.put(path, scale, out)
    return out


def _fields(frame):
    if isinstance(frame, dict):
        return frame.get("image"), int(frame["width"]), int(frame["height"]), None, frame.get("path")
    return frame.image, int(frame.width), int(frame.height), frame.extra.get("raw_layout"), frame.source


def _check_raw(layout) -> None:
    try:
        size = os.path.getsize(layout.file)
    except OSError as e:
        raise InputError(layout.file, f"cannot read pixels: {e.strerror or e}") from None
    need = layout.offset + layout.nbytes
    if size < need:
        raise InputError(layout.file, f"truncated: {size} bytes, the label needs {need}")


def _open(path, width, height, what):
    from PIL import Image, UnidentifiedImageError

    try:
        im = Image.open(path)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise InputError(path, f"not a readable {what}: {e}") from None
    if im.size != (width, height):
        im.close()
        raise InputError(path, f"image is {im.size[0]}x{im.size[1]} pixels, the label/model says {width}x{height}")
    return im


def _load(im, path, what):
    from PIL import Image

    try:
        im.load()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise InputError(path, f"{what} is truncated or corrupt ({e})") from None


def _jpeg(path, width, height, scale, grey) -> Decoded:
    r = jpeg_reduction(width, height, scale)
    with _open(path, width, height, "JPEG") as im:
        mode = "L" if grey or im.mode in ("L", "1") else "RGB"
        if r > 1:
            im.draft(mode, (width // r, height // r))
        _load(im, path, "JPEG")
        got = im if im.mode == mode else im.convert(mode)
        arr = np.asarray(got)
    if arr.shape[1] * r != width:  # draft could not reduce (a progressive or odd file): area-reduce
        return _reduce(arr, width, scale)._replace(grey=mode == "L" and grey)
    return Decoded(arr, float(r), mode == "L" and grey)


def _png(path, width, height, scale) -> Decoded:
    with open(path, "rb") as f:
        f.seek(-12, os.SEEK_END)
        tail = f.read(12)
    if tail[4:8] != b"IEND":
        # Pillow and libpng decode a file cut after its last IDAT chunk without complaint.
        raise InputError(path, "truncated PNG (no IEND chunk)")
    with _open(path, width, height, "PNG") as im:
        if _bit_depth(im) > 8 and im.mode not in ("I;16", "I;16B", "I;16L", "I"):
            arr = None  # 16-bit colour: Pillow would hand back 8 bits
        else:
            _load(im, path, "PNG")
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode == "1":
                im = im.convert("L")
            elif im.mode == "LA":
                im = im.convert("RGBA")
            arr = np.asarray(im)
            arr = arr.astype(np.uint16 if im.mode == "I" else arr.dtype.newbyteorder("="), copy=False)
    if arr is None:
        arr = _opencv(path, width, height)
    return _reduce(arr, width, scale)


def _opencv(path, width, height) -> np.ndarray:
    """TIFF and 16-bit colour PNG: OpenCV's full decode (it refuses cut files), quietly."""
    import cv2

    level = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        return read_image(FrameMeta(id="", instrument="", width=width, height=height, model=None, image=path))
    finally:
        cv2.utils.logging.setLogLevel(level)


def _reduce(arr: np.ndarray, width: int, scale: float) -> Decoded:
    """``arr`` area-reduced to ``scale`` of ``width`` (never enlarged)."""
    import cv2

    if scale < 1.0:
        h, w = arr.shape[:2]
        size = (max(1, round(width * scale)), max(1, round(h * width * scale / w)))
        if size[0] < w:
            arr = cv2.resize(arr, size, interpolation=cv2.INTER_AREA)
    return Decoded(np.ascontiguousarray(arr), width / arr.shape[1], False)
