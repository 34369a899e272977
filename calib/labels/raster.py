"""Pixels on disk: raw arrays a label describes (PDS3/VICAR, PDS4) and ordinary image files.

``frame_pixels(meta)`` (behind ``calib.labels.read_image``) is the one way the rest of the code
gets a frame's pixels, as a numpy array of shape (lines, samples) or (lines, samples, bands), RGB
order, in the file's own dtype (16-bit
stays 16-bit). Zero-byte, truncated or undecodable files, and pixels whose size disagrees with
the label's, raise InputError naming the file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..meta import FrameMeta

#: Extensions read through OpenCV/Pillow (lower case).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
#: Extensions of raw products with an attached (or PDS4) label, or bare VICAR files.
RAW_SUFFIXES = (".img", ".vic")


@dataclass(frozen=True)
class RawLayout:
    """Where and how a label says the pixels are stored.

    ``storage`` is ``"BSQ"`` (band, line, sample: PDS3 BAND_SEQUENTIAL, PDS4 "Last Index
    Fastest" Band/Line/Sample), ``"BIL"`` (line, band, sample) or ``"BIP"`` (line, sample, band).
    ``dtype`` is a numpy dtype string with explicit byte order (``">i2"``, ``"u1"``, ...).
    ``prefix``/``suffix`` are bytes before/after each stored line (PDS3 LINE_PREFIX_BYTES).
    """

    file: str
    offset: int
    dtype: str
    lines: int
    samples: int
    bands: int = 1
    storage: str = "BSQ"
    prefix: int = 0
    suffix: int = 0

    @property
    def nbytes(self) -> int:
        item = np.dtype(self.dtype).itemsize
        if self.storage == "BIP":
            return self.lines * (self.prefix + self.samples * self.bands * item + self.suffix)
        return self.lines * self.bands * (self.prefix + self.samples * item + self.suffix)


def raw_frame(layout: RawLayout, **meta) -> FrameMeta:
    """The FrameMeta of a frame whose pixels a label lays out (PDS3/VICAR, PDS4): its size, bands
    and bit depth come from ``layout``, the rest from ``meta`` (FrameMeta's fields)."""
    return FrameMeta(width=layout.samples, height=layout.lines, bands=layout.bands,
                     bit_depth=8 * np.dtype(layout.dtype).itemsize, **meta)


def read_raw(layout: RawLayout) -> np.ndarray:
    """The array a RawLayout describes: (lines, samples) or (lines, samples, bands), native order."""
    path = layout.file
    item = np.dtype(layout.dtype).itemsize
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise InputError(path, f"cannot read pixels: {e.strerror or e}") from None
    if layout.offset < 0 or min(layout.lines, layout.samples, layout.bands) < 1 or min(layout.prefix, layout.suffix) < 0:
        raise InputError(path, f"impossible pixel layout {layout}")
    need = layout.offset + layout.nbytes
    if size < need:
        raise InputError(path, f"truncated: {size} bytes, the label needs {need}")
    with open(path, "rb") as f:
        f.seek(layout.offset)
        buf = f.read(layout.nbytes)
    raw = np.frombuffer(buf, dtype=np.uint8)
    if layout.storage == "BIP":
        rows = raw.reshape(layout.lines, -1)[:, layout.prefix : layout.prefix + layout.samples * layout.bands * item]
        arr = np.ascontiguousarray(rows).view(layout.dtype).reshape(layout.lines, layout.samples, layout.bands)
    else:
        rows = raw.reshape(layout.lines * layout.bands, -1)[:, layout.prefix : layout.prefix + layout.samples * item]
        arr = np.ascontiguousarray(rows).view(layout.dtype)
        if layout.storage == "BSQ":
            arr = arr.reshape(layout.bands, layout.lines, layout.samples).transpose(1, 2, 0)
        elif layout.storage == "BIL":
            arr = arr.reshape(layout.lines, layout.bands, layout.samples).transpose(0, 2, 1)
        else:
            raise InputError(path, f"unknown band storage {layout.storage!r}", field="storage")
    arr = arr.astype(np.dtype(layout.dtype).newbyteorder("="), copy=False)
    arr = np.ascontiguousarray(arr)
    return arr[:, :, 0] if layout.bands == 1 else arr


def image_header(path) -> tuple[int, int, int, int]:
    """(width, height, bands, bit_depth) of a PNG/JPEG/TIFF from its header, without decoding."""
    from PIL import Image, UnidentifiedImageError

    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise InputError(path, "empty file (0 bytes)")
        with Image.open(path) as im:
            w, h = im.size
            bands = len(im.getbands())
            depth = _bit_depth(im)
    except InputError:
        raise
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise InputError(path, f"not a readable image: {e}") from None
    return int(w), int(h), int(bands), depth


def _bit_depth(im) -> int:
    # Pillow reports 16-bit RGB(A) PNG/TIFF as 8-bit modes: ask the file's own header.
    if im.format == "PNG":
        with open(im.filename, "rb") as f:
            ihdr = f.read(25)
        if len(ihdr) == 25 and ihdr[12:16] == b"IHDR":
            return max(8, int(ihdr[24]))
    if im.format == "TIFF":
        bits = im.tag_v2.get(258)
        if bits:
            return int(bits[0] if isinstance(bits, tuple) else bits)
    return {"I;16": 16, "I;16B": 16, "I;16L": 16, "I": 32, "F": 32}.get(im.mode, 8)


def frame_pixels(meta: FrameMeta) -> np.ndarray:
    """Pixels of a frame: (lines, samples) or (lines, samples, bands), RGB, the file's dtype.

    ``meta``: a FrameMeta (its ``image`` and, for raw products, ``extra["raw_layout"]``); the
    array's size must match the frame's width and height. ``calib.labels.read_image`` also takes
    a path (it finds the frame's label first).
    """
    path, width, height = meta.image, meta.width, meta.height
    layout = meta.extra.get("raw_layout")
    if path is None:
        raise InputError(meta.source, "no image file beside this label", field="image")
    if layout is not None:
        arr = read_raw(layout)
    else:
        arr = _decode(path)
    h, w = arr.shape[:2]
    if width and height and (w, h) != (int(width), int(height)):
        raise InputError(path, f"image is {w}x{h} pixels, the label/model says {width}x{height}")
    return arr


def require_bytes(path) -> int:
    """The size of the image file ``path``; InputError when it cannot be read or is empty."""
    try:
        size = os.path.getsize(path)
    except OSError as e:
        raise InputError(path, f"cannot read image: {e.strerror or e}") from None
    if size == 0:
        raise InputError(path, "empty file (0 bytes)")
    return size


def _decode(path) -> np.ndarray:
    import cv2

    path = os.fspath(path)
    require_bytes(path)
    data = np.fromfile(path, dtype=np.uint8)
    arr = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if arr is None:
        raise InputError(path, "cannot decode image (corrupt, truncated or unsupported format)")
    suffix = Path(path).suffix.lower()
    if suffix == ".png" and not _png_complete(data):
        # libpng decodes a file cut after the last IDAT chunk without complaint.
        raise InputError(path, "truncated PNG (no IEND chunk)")
    if suffix in (".jpg", ".jpeg") and b"\xff\xd9" not in bytes(data[-4096:]):
        # OpenCV 4's libjpeg fills a cut file with grey and only warns (OpenCV 5 refuses it);
        # entropy-coded data never holds FF D9, so a whole file has that end marker near its end.
        raise InputError(path, "truncated JPEG (no end-of-image marker)")
    if arr.ndim == 3:
        if arr.shape[2] == 3:
            arr = arr[:, :, ::-1]
        elif arr.shape[2] == 4:
            arr = arr[:, :, [2, 1, 0, 3]]
        arr = np.ascontiguousarray(arr)
    return arr


def _png_complete(data: np.ndarray) -> bool:
    return bytes(data[-12:-8]) == b"\x00\x00\x00\x00" and bytes(data[-8:-4]) == b"IEND"
