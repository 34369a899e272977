"""PDS3 products with attached ODL labels (MER/MSL ``.IMG``, the VICAR label riding along).

Fields read (see docs/formats.md):

- ``GEOMETRIC_CAMERA_MODEL``: ``MODEL_TYPE``, ``MODEL_COMPONENT_1..9`` (C, A, H, V[, O, R[, E, T,
  P]]), ``REFERENCE_COORD_SYSTEM_NAME`` (MER's ROVER_FRAME is the rover navigation frame);
- ``ROVER_COORDINATE_SYSTEM``: ``ORIGIN_ROTATION_QUATERNION`` (s, x, y, z; rover -> SITE) and
  ``ORIGIN_OFFSET_VECTOR`` (rover origin in SITE, metres);
- ``ROVER_DERIVED_GEOMETRY_PARMS``: instrument azimuth/elevation in the rover frame (degrees), the
  mast pointing; ``SITE_DERIVED_GEOMETRY_PARMS`` is kept in ``extra`` for checks;
- ``IMAGE``: ``LINES``, ``LINE_SAMPLES``, ``BANDS``, ``SAMPLE_BITS``, ``SAMPLE_TYPE``,
  ``BAND_STORAGE_TYPE``, ``LINE_PREFIX_BYTES``/``LINE_SUFFIX_BYTES``, ``FIRST_LINE[_SAMPLE]``;
  the pixels start at (``^IMAGE`` - 1) * ``RECORD_BYTES`` (or at ``^IMAGE = n <BYTES>``);
- ``ROVER_MOTION_COUNTER`` (+ ``_NAME``) for site and drive, ``SPACECRAFT_CLOCK_START_COUNT``.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import LabelError
from ..meta import LOCAL_LEVEL, ROVER_NAV_FRAME, SITE, FrameMeta
from . import fields
from .odl import parse_label
from .raster import RawLayout, read_raw

#: How PDS3 names frames -> our frame names.
FRAME_NAMES = {
    "ROVER_FRAME": ROVER_NAV_FRAME,
    "ROVER_NAV_FRAME": ROVER_NAV_FRAME,
    "SITE_FRAME": SITE,
    "LOCAL_LEVEL_FRAME": LOCAL_LEVEL,
}

#: SAMPLE_TYPE -> (numpy kind, byte order); PDS3 defaults to MSB for unqualified names.
SAMPLE_TYPES = {
    "MSB_INTEGER": ("i", ">"),
    "INTEGER": ("i", ">"),
    "SUN_INTEGER": ("i", ">"),
    "MAC_INTEGER": ("i", ">"),
    "LSB_INTEGER": ("i", "<"),
    "PC_INTEGER": ("i", "<"),
    "VAX_INTEGER": ("i", "<"),
    "MSB_UNSIGNED_INTEGER": ("u", ">"),
    "UNSIGNED_INTEGER": ("u", ">"),
    "SUN_UNSIGNED_INTEGER": ("u", ">"),
    "MAC_UNSIGNED_INTEGER": ("u", ">"),
    "LSB_UNSIGNED_INTEGER": ("u", "<"),
    "PC_UNSIGNED_INTEGER": ("u", "<"),
    "VAX_UNSIGNED_INTEGER": ("u", "<"),
    "IEEE_REAL": ("f", ">"),
    "REAL": ("f", ">"),
    "FLOAT": ("f", ">"),
    "SUN_REAL": ("f", ">"),
    "MAC_REAL": ("f", ">"),
    "PC_REAL": ("f", "<"),
}

STORAGE = {"BAND_SEQUENTIAL": "BSQ", "LINE_INTERLEAVED": "BIL", "SAMPLE_INTERLEAVED": "BIP"}

_MAX_LABEL = 4 << 20
_MODEL_COUNTS = {"CAHV": 4, "CAHVOR": 6, "CAHVORE": 9}


def is_pds3(head: bytes) -> bool:
    s = head.lstrip()[:64].upper()
    return s.startswith(b"PDS_VERSION_ID") or s.startswith(b"ODL_VERSION_ID")


def read_label(path) -> dict:
    """The attached ODL label of a PDS3 product, parsed."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            head = f.read(65536)
            if not head:
                raise LabelError(path, "empty file (0 bytes)")
            if not is_pds3(head):
                raise LabelError(path, "not a PDS3 product (no PDS_VERSION_ID at the start)", field="label")
            rb = _head_int(head, b"RECORD_BYTES")
            lr = _head_int(head, b"LABEL_RECORDS")
            if rb and lr:
                f.seek(0)
                raw = f.read(min(rb * lr, _MAX_LABEL))
                if len(raw) < rb * lr:
                    raise LabelError(path, f"truncated label: {len(raw)} of {rb * lr} bytes", field="LABEL_RECORDS")
            else:
                raw = head + f.read(_MAX_LABEL - len(head))
    except OSError as e:
        raise LabelError(path, f"cannot read: {e.strerror or e}") from None
    text = raw.decode("latin-1")
    m = re.search(r"(?m)^\s*END\s*$", text)
    if m:
        text = text[: m.start()]
    return parse_label(text, path)


def _head_int(head: bytes, key: bytes):
    m = re.search(rb"(?m)^\s*" + key + rb"\s*=\s*(\d+)", head)
    return int(m.group(1)) if m else None


def read_vicar_frame(path) -> FrameMeta:
    """FrameMeta of a PDS3 ``.IMG`` with an attached label (pixels described, not read)."""
    path = os.fspath(path)
    label = read_label(path)
    image = label.get("IMAGE")
    if not isinstance(image, dict):
        raise LabelError(path, "no IMAGE object in the label", field="IMAGE")
    layout = pixel_layout(label, path)
    width, height = layout.samples, layout.lines

    model, model_frame = None, ROVER_NAV_FRAME
    cm = label.get("GEOMETRIC_CAMERA_MODEL")
    if cm is not None:
        model, model_frame = _camera_model(cm, path)

    attitude = rover_position = None
    rcs = label.get("ROVER_COORDINATE_SYSTEM")
    if isinstance(rcs, dict):
        ref = str(rcs.get("REFERENCE_COORD_SYSTEM_NAME", "SITE_FRAME")).upper()
        if ref == "SITE_FRAME":
            attitude = fields.quaternion(
                rcs.get("ORIGIN_ROTATION_QUATERNION"), path, "ROVER_COORDINATE_SYSTEM.ORIGIN_ROTATION_QUATERNION"
            )
            rover_position = fields.vector(
                rcs.get("ORIGIN_OFFSET_VECTOR"), path, "ROVER_COORDINATE_SYSTEM.ORIGIN_OFFSET_VECTOR", optional=True
            )

    mast_az = mast_el = None
    rdg = label.get("ROVER_DERIVED_GEOMETRY_PARMS")
    if isinstance(rdg, dict):
        mast_az = fields.number(rdg.get("INSTRUMENT_AZIMUTH"), path, "ROVER_DERIVED_GEOMETRY_PARMS.INSTRUMENT_AZIMUTH", optional=True)
        mast_el = fields.number(rdg.get("INSTRUMENT_ELEVATION"), path, "ROVER_DERIVED_GEOMETRY_PARMS.INSTRUMENT_ELEVATION", optional=True)
    extra = {"raw_layout": layout, "format": "PDS3"}
    sdg = label.get("SITE_DERIVED_GEOMETRY_PARMS")
    if isinstance(sdg, dict):
        az = fields.number(sdg.get("INSTRUMENT_AZIMUTH"), path, "SITE_DERIVED_GEOMETRY_PARMS.INSTRUMENT_AZIMUTH", optional=True)
        el = fields.number(sdg.get("INSTRUMENT_ELEVATION"), path, "SITE_DERIVED_GEOMETRY_PARMS.INSTRUMENT_ELEVATION", optional=True)
        if az is not None and el is not None:
            extra["site_instrument_azel"] = (az, el)

    isp = label.get("INSTRUMENT_STATE_PARMS") if isinstance(label.get("INSTRUMENT_STATE_PARMS"), dict) else {}
    dw = fields.integer(isp.get("PIXEL_AVERAGING_WIDTH", 1), path, "INSTRUMENT_STATE_PARMS.PIXEL_AVERAGING_WIDTH")
    dh = fields.integer(isp.get("PIXEL_AVERAGING_HEIGHT", 1), path, "INSTRUMENT_STATE_PARMS.PIXEL_AVERAGING_HEIGHT")
    if dw < 1 or dh < 1:
        raise LabelError(path, f"pixel averaging must be >= 1, got {dw}x{dh}", field="INSTRUMENT_STATE_PARMS.PIXEL_AVERAGING_WIDTH")
    fs = fields.integer(image.get("FIRST_LINE_SAMPLE", 1), path, "IMAGE.FIRST_LINE_SAMPLE", optional=True) or 1
    fl = fields.integer(image.get("FIRST_LINE", 1), path, "IMAGE.FIRST_LINE", optional=True) or 1
    subframe = (fs, fl, width * dw, height * dh)

    site, drive = _motion_counter(label, path)
    sclk = fields.number(label.get("SPACECRAFT_CLOCK_START_COUNT"), path, "SPACECRAFT_CLOCK_START_COUNT", optional=True)
    mask = image.get("SAMPLE_BIT_MASK")
    if isinstance(mask, int) and mask > 0:
        extra["valid_bits"] = int(mask).bit_length()
    ident = fields.text(label.get("PRODUCT_ID"), path, "PRODUCT_ID") or Path(path).stem
    instrument = fields.text(label.get("INSTRUMENT_ID"), path, "INSTRUMENT_ID") or "UNKNOWN"
    return FrameMeta(
        id=ident,
        instrument=instrument,
        width=width,
        height=height,
        model=model,
        model_frame=model_frame,
        attitude=attitude,
        rover_position=rover_position,
        mast_az=mast_az,
        mast_el=mast_el,
        subframe=subframe,
        downsample=dw if dw == dh else max(dw, dh),
        site=site,
        drive=drive,
        sclk=sclk,
        source=path,
        image=path,
        bands=layout.bands,
        bit_depth=8 * np.dtype(layout.dtype).itemsize,
        extra=extra,
    )


def _camera_model(cm, path):
    if not isinstance(cm, dict):
        raise LabelError(path, "not a group", field="GEOMETRIC_CAMERA_MODEL")
    g = "GEOMETRIC_CAMERA_MODEL"
    mtype = fields.text(cm.get("MODEL_TYPE"), path, f"{g}.MODEL_TYPE", optional=False).upper()
    if mtype not in _MODEL_COUNTS:
        raise LabelError(path, f"unknown camera model type {mtype!r}", field=f"{g}.MODEL_TYPE")
    comps = []
    for k in range(1, _MODEL_COUNTS[mtype] + 1):
        key = f"MODEL_COMPONENT_{k}"
        value = cm.get(key)
        if value is None:
            raise LabelError(path, "missing", field=f"{g}.{key}")
        if k <= 7:
            comps.append(fields.vector(value, path, f"{g}.{key}"))
        else:
            comps.append(fields.number(value, path, f"{g}.{key}"))
    frame_name = str(cm.get("REFERENCE_COORD_SYSTEM_NAME", "ROVER_NAV_FRAME")).upper()
    if frame_name not in FRAME_NAMES:
        raise LabelError(path, f"unsupported model frame {frame_name!r}", field=f"{g}.REFERENCE_COORD_SYSTEM_NAME")
    model = fields.camera_model(mtype, comps, path, g)
    return model, FRAME_NAMES[frame_name]


def _motion_counter(label, path):
    values = label.get("ROVER_MOTION_COUNTER")
    names = label.get("ROVER_MOTION_COUNTER_NAME")
    if not isinstance(values, tuple) or not isinstance(names, tuple):
        return None, None
    got = {}
    for n, v in zip(names, values):
        if str(n).upper() in ("SITE", "DRIVE"):
            got[str(n).upper()] = fields.integer(v, path, f"ROVER_MOTION_COUNTER.{n}")
    return got.get("SITE"), got.get("DRIVE")


def pixel_layout(label: dict, path) -> RawLayout:
    """Where the IMAGE object's pixels are, from ``^IMAGE`` and the IMAGE object."""
    image = label["IMAGE"]
    ptr = label.get("^IMAGE")
    if ptr is None:
        raise LabelError(path, "missing", field="^IMAGE")
    file = path
    if isinstance(ptr, tuple):
        # ("FILE.IMG", n): pixels detached into a file beside the label.
        if len(ptr) != 2 or not isinstance(ptr[0], str):
            raise LabelError(path, f"unsupported pointer {ptr!r}", field="^IMAGE")
        file = os.path.join(os.path.dirname(path), ptr[0])
        ptr = ptr[1]
    start = fields.integer(ptr, path, "^IMAGE")
    if _pointer_in_bytes(path):
        offset = start - 1
    else:
        rb = fields.integer(label.get("RECORD_BYTES"), path, "RECORD_BYTES")
        offset = (start - 1) * rb
    if offset < 0:
        raise LabelError(path, f"negative image offset ({start})", field="^IMAGE")
    lines = fields.integer(fields.require(image, "LINES", path, "IMAGE.LINES"), path, "IMAGE.LINES")
    samples = fields.integer(fields.require(image, "LINE_SAMPLES", path, "IMAGE.LINE_SAMPLES"), path, "IMAGE.LINE_SAMPLES")
    bands = fields.integer(image.get("BANDS", 1), path, "IMAGE.BANDS")
    bits = fields.integer(fields.require(image, "SAMPLE_BITS", path, "IMAGE.SAMPLE_BITS"), path, "IMAGE.SAMPLE_BITS")
    stype = fields.text(fields.require(image, "SAMPLE_TYPE", path, "IMAGE.SAMPLE_TYPE"), path, "IMAGE.SAMPLE_TYPE", optional=False)
    if min(lines, samples, bands) < 1:
        raise LabelError(path, f"empty image {samples}x{lines}x{bands}", field="IMAGE.LINES")
    kind = SAMPLE_TYPES.get(stype.upper())
    if kind is None:
        raise LabelError(path, f"unsupported sample type {stype!r}", field="IMAGE.SAMPLE_TYPE")
    if bits not in (8, 16, 32, 64) or (kind[0] == "f" and bits not in (32, 64)):
        raise LabelError(path, f"unsupported sample size {bits} bits for {stype}", field="IMAGE.SAMPLE_BITS")
    dtype = f"{kind[1] if bits > 8 else '|'}{kind[0]}{bits // 8}"
    storage = STORAGE.get(str(image.get("BAND_STORAGE_TYPE", "BAND_SEQUENTIAL")).upper())
    if storage is None:
        raise LabelError(path, f"unsupported band storage {image.get('BAND_STORAGE_TYPE')!r}", field="IMAGE.BAND_STORAGE_TYPE")
    prefix = fields.integer(image.get("LINE_PREFIX_BYTES", 0), path, "IMAGE.LINE_PREFIX_BYTES")
    suffix = fields.integer(image.get("LINE_SUFFIX_BYTES", 0), path, "IMAGE.LINE_SUFFIX_BYTES")
    return RawLayout(file, offset, dtype, lines, samples, bands, storage, prefix, suffix)


def _pointer_in_bytes(path) -> bool:
    # ``^IMAGE = 43009 <BYTES>`` counts bytes (1-based); the parser drops units, so look again.
    try:
        with open(path, "rb") as f:
            head = f.read(8192)
    except OSError:
        return False
    return re.search(rb"(?m)^\s*\^IMAGE\s*=\s*[^\r\n]*<BYTES>", head, re.IGNORECASE) is not None


def read_pixels(meta_or_path):
    """Pixels of a PDS3 product (a FrameMeta from ``read_vicar_frame`` or a path to the .IMG)."""
    if isinstance(meta_or_path, FrameMeta):
        layout = meta_or_path.extra.get("raw_layout")
        if layout is None:
            raise LabelError(meta_or_path.source, "no raw pixel layout in this frame's label", field="^IMAGE")
    else:
        path = os.fspath(meta_or_path)
        label = read_label(path)
        if not isinstance(label.get("IMAGE"), dict):
            raise LabelError(path, "no IMAGE object in the label", field="IMAGE")
        layout = pixel_layout(label, path)
    return read_raw(layout)
