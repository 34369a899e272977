"""PDS3 products with attached ODL labels (MER/MSL ``.IMG``) and bare VICAR files.

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

A bare VICAR file (``LBLSIZE=`` first; the label PDS3 products carry after their ODL label)
states the same items in ``PROPERTY`` sections and the pixels in its system label (``NL``,
``NS``, ``NB``, ``FORMAT``, ``ORG``, ``INTFMT``/``REALFMT``, ``NLB``, ``NBB``, ``RECSIZE``); it
is read into the same shape and then the same way.
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
from .raster import RawLayout, raw_frame, read_raw

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


def is_vicar(head: bytes) -> bool:
    return head.startswith(b"LBLSIZE=")


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
    """FrameMeta of a PDS3 ``.IMG`` with an attached label, or of a bare VICAR file (pixels
    described, not read)."""
    path = os.fspath(path)
    label, layout = read_label_and_layout(path)
    image = label["IMAGE"]
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
    extra = {"raw_layout": layout, "format": label.get("_format", "PDS3")}
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
    return raw_frame(layout, id=ident, instrument=instrument, model=model, model_frame=model_frame,
                     attitude=attitude, rover_position=rover_position, mast_az=mast_az, mast_el=mast_el,
                     subframe=subframe, downsample=dw if dw == dh else max(dw, dh), site=site, drive=drive,
                     sclk=sclk, source=path, image=path, extra=extra)


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
    if prefix < 0 or suffix < 0:
        raise LabelError(path, f"negative line prefix/suffix ({prefix}, {suffix})", field="IMAGE.LINE_PREFIX_BYTES")
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
    """Pixels of a PDS3/VICAR product (a FrameMeta from ``read_vicar_frame`` or a path to the .IMG)."""
    if isinstance(meta_or_path, FrameMeta):
        layout = meta_or_path.extra.get("raw_layout")
        if layout is None:
            raise LabelError(meta_or_path.source, "no raw pixel layout in this frame's label", field="^IMAGE")
    else:
        _, layout = read_label_and_layout(os.fspath(meta_or_path))
    return read_raw(layout)


def read_label_and_layout(path):
    """(label in the PDS3 shape, RawLayout) of a PDS3 product or a bare VICAR file."""
    head = _read_head(path)
    if is_vicar(head):
        return read_vicar_label(path)
    label = read_label(path)
    if not isinstance(label.get("IMAGE"), dict):
        raise LabelError(path, "no IMAGE object in the label", field="IMAGE")
    return label, pixel_layout(label, path)


def _read_head(path, n=64):
    try:
        with open(path, "rb") as f:
            return f.read(n)
    except OSError as e:
        raise LabelError(path, f"cannot read: {e.strerror or e}") from None


# -- bare VICAR files -----------------------------------------------------------------------------

#: VICAR FORMAT -> numpy kind and size; the byte order comes from INTFMT / REALFMT.
VICAR_FORMATS = {"BYTE": ("u", 1), "HALF": ("i", 2), "WORD": ("i", 2), "FULL": ("i", 4), "LONG": ("i", 4),
                 "REAL": ("f", 4), "DOUB": ("f", 8)}
_VICAR_TOKEN = re.compile(r"\s*([A-Za-z0-9_]+)=\s*('(?:[^']|'')*'|\((?:[^()']|'(?:[^']|'')*')*\)|[^\s]+)")


def parse_vicar_label(text: str, path=None) -> tuple[dict, dict]:
    """(system items, {property name: items}) of a VICAR label string.

    Items before the first PROPERTY/TASK are the system label (LBLSIZE, FORMAT, NL, ...). A
    ``PROPERTY='NAME'`` item opens a property; history (``TASK=``) items are skipped.
    """
    system: dict = {}
    props: dict = {}
    current = system
    pos = 0
    text = text.rstrip("\0 ")
    while pos < len(text):
        m = _VICAR_TOKEN.match(text, pos)
        if not m:
            if not text[pos:].strip(" \0"):
                break
            raise LabelError(path, f"VICAR label: cannot parse {text[pos:pos + 30]!r}", field="label")
        pos = m.end()
        key, raw = m.group(1).upper(), m.group(2)
        value = _vicar_value(raw)
        if key == "PROPERTY":
            current = props.setdefault(str(value), {})
        elif key == "TASK":
            current = {}
        else:
            current.setdefault(key, value)
    return system, props


def _vicar_value(raw: str):
    if raw.startswith("'"):
        return raw[1:-1].replace("''", "'")
    if raw.startswith("("):
        items = re.findall(r"'(?:[^']|'')*'|[^,()\s]+", raw[1:-1])
        return tuple(_vicar_value(i) for i in items)
    for conv in (int, float):
        try:
            return conv(raw)
        except ValueError:
            pass
    return raw


def read_vicar_label(path):
    """(label in the PDS3 shape, RawLayout) of a bare VICAR file (``LBLSIZE=`` first)."""
    head = _read_head(path, 64)
    m = re.match(rb"LBLSIZE=\s*(\d+)", head)
    if not m:
        raise LabelError(path, "not a VICAR file (no LBLSIZE at the start)", field="LBLSIZE")
    size = int(m.group(1))
    if not 0 < size <= _MAX_LABEL:
        raise LabelError(path, f"implausible label size {size}", field="LBLSIZE")
    try:
        with open(path, "rb") as f:
            raw = f.read(size)
    except OSError as e:
        raise LabelError(path, f"cannot read: {e.strerror or e}") from None
    if len(raw) < size:
        raise LabelError(path, f"truncated label: {len(raw)} of {size} bytes", field="LBLSIZE")
    system, props = parse_vicar_label(raw.decode("latin-1"), path)

    def need(key):
        return fields.integer(fields.require(system, key, path), path, key)

    nl, ns, nb = need("NL"), need("NS"), need("NB") if "NB" in system else 1
    recsize, nlb = need("RECSIZE"), fields.integer(system.get("NLB", 0), path, "NLB")
    nbb = fields.integer(system.get("NBB", 0), path, "NBB")
    if nlb < 0 or nbb < 0:
        raise LabelError(path, f"negative binary header/prefix ({nlb}, {nbb})", field="NLB")
    fmt = fields.text(system.get("FORMAT"), path, "FORMAT", optional=False).upper()
    if fmt not in VICAR_FORMATS:
        raise LabelError(path, f"unsupported pixel format {fmt!r}", field="FORMAT")
    kind, nbytes = VICAR_FORMATS[fmt]
    if kind == "f":
        realfmt = str(system.get("REALFMT", "IEEE")).upper()
        if realfmt not in ("IEEE", "RIEEE"):
            raise LabelError(path, f"unsupported real format {realfmt!r}", field="REALFMT")
        order = ">" if realfmt == "IEEE" else "<"
    else:
        order = "<" if str(system.get("INTFMT", "HIGH")).upper() == "LOW" else ">"
    dtype = f"{'|' if nbytes == 1 else order}{kind}{nbytes}"
    storage = str(system.get("ORG", "BSQ")).upper()
    if storage not in ("BSQ", "BIL", "BIP") or min(nl, ns, nb) < 1:
        raise LabelError(path, f"unsupported organisation {storage} {ns}x{nl}x{nb}", field="ORG")
    line_bytes = ns * nbytes * (nb if storage == "BIP" else 1)
    if recsize != nbb + line_bytes:
        raise LabelError(path, f"RECSIZE {recsize} is not NBB {nbb} + {line_bytes} bytes of pixels", field="RECSIZE")
    layout = RawLayout(os.fspath(path), size + nlb * recsize, dtype, nl, ns, nb, storage, prefix=nbb)

    # The PDS3 shape read_vicar_frame expects: the IMAGE object, property groups by name and
    # identification items (PRODUCT_ID, INSTRUMENT_ID, ...) at the top.
    label: dict = {}
    for name, items in props.items():
        label.setdefault(name, items)
        for k, v in items.items():
            label.setdefault(k, v)
    image = dict(props.get("IMAGE_DATA", {}))
    image.update(LINES=nl, LINE_SAMPLES=ns, BANDS=nb, SAMPLE_BITS=8 * nbytes)
    label["IMAGE"] = image
    label["_format"] = "VICAR"
    return label, layout
