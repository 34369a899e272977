"""PDS4 XML labels (Mars 2020 raw products), read with namespace-agnostic element names.

Fields read (see docs/formats.md; "//" = anywhere below):

- model: ``//Geometry_Lander[1]//Camera_Model_Parameters`` -> ``model_type`` and one of
  ``CAHV_Model``, ``CAHVOR_Model``, ``CAHVORE_Model`` with ``Vector_Center``, ``Vector_Axis``,
  ``Vector_Horizontal``, ``Vector_Vertical``, ``Vector_Optical`` (x/y/z children: ``x_position``,
  ``x_unit``, ``x_pixel``, ...), ``Radial_Terms``/``Entrance_Terms`` (c0..c2),
  ``cahvore_model_type``, ``cahvore_model_parameter``; its frame from
  ``Coordinate_Space_Reference//coordinate_space_frame_type``;
- rover pose: the ``Coordinate_Space_Definition`` whose ``local_identifier`` starts with
  ``ROVER_NAV_FRAME`` and which refers to a ``SITE_FRAME``: ``Vector_Origin_Offset`` and
  ``Quaternion_Plus_Direction`` (qcos, qsin1..3);
- mast: ``Articulation_Device_Parameters`` with ``device_id`` RSM, ``Device_Angle_Index``
  ``AZIMUTH/ELEVATION FINAL-RESOLVER`` (joint angles, radians) minus the RSM home
  (3.161115, 1.588138 rad) -> mast_az/mast_el in degrees;
- ``img:Subframe`` (first_sample, first_line, samples, lines), ``img:Downsampling``
  (``Pixel_Averaging_Dimensions``), ``Array_3D_Image`` / ``Array_2D_Image`` (size, offset,
  data type, axis order) and the pixel file's name in ``File_Area_Observational/File``;
- ``Motion_Counter`` SITE/DRIVE, ``spacecraft_clock_start``, the instrument from ``img:frame_id``
  plus the observing system's instrument name, ``Derived_Geometry`` kept in ``extra``.
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

from ..errors import LabelError
from ..mast import joint_to_mast
from ..meta import LOCAL_LEVEL, ROVER_NAV_FRAME, SITE, FrameMeta
from . import fields
from .raster import RawLayout, image_header, raw_frame

#: Mars 2020 RSM joint angles of the mast's home (pointing straight ahead, level), radians.

FRAME_TYPES = {"ROVER_NAV_FRAME": ROVER_NAV_FRAME, "SITE_FRAME": SITE, "LOCAL_LEVEL_FRAME": LOCAL_LEVEL}

DATA_TYPES = {
    "UnsignedByte": "|u1",
    "SignedByte": "|i1",
    "UnsignedMSB2": ">u2",
    "UnsignedLSB2": "<u2",
    "SignedMSB2": ">i2",
    "SignedLSB2": "<i2",
    "UnsignedMSB4": ">u4",
    "UnsignedLSB4": "<u4",
    "SignedMSB4": ">i4",
    "SignedLSB4": "<i4",
    "IEEE754MSBSingle": ">f4",
    "IEEE754LSBSingle": "<f4",
    "IEEE754MSBDouble": ">f8",
    "IEEE754LSBDouble": "<f8",
}

_VECTORS = ("Vector_Center", "Vector_Axis", "Vector_Horizontal", "Vector_Vertical", "Vector_Optical")


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _children(el, name):
    return [c for c in el if _local(c.tag) == name]


def _child(el, name):
    for c in el:
        if _local(c.tag) == name:
            return c
    return None


def _find(el, name):
    """First descendant (depth first, document order) with this local name."""
    for d in el.iter():
        if d is not el and _local(d.tag) == name:
            return d
    return None


def _findall(el, name):
    return [d for d in el.iter() if d is not el and _local(d.tag) == name]


def _text(el, name):
    c = _child(el, name) if el is not None else None
    return None if c is None or c.text is None else c.text.strip()


def is_pds4(head: bytes) -> bool:
    return b"<Product_Observational" in head or b"pds.nasa.gov/pds4" in head


def parse_xml(path):
    path = os.fspath(path)
    try:
        if os.path.getsize(path) == 0:
            raise LabelError(path, "empty file (0 bytes)")
        root = ET.parse(path).getroot()
    except LabelError:
        raise
    except ET.ParseError as e:
        raise LabelError(path, f"not well-formed XML: {e}") from None
    except OSError as e:
        raise LabelError(path, f"cannot read: {e.strerror or e}") from None
    return root


def read_pds4_frame(path, image=None) -> FrameMeta:
    """FrameMeta from a PDS4 XML label; ``image`` overrides the pixel file the label names."""
    path = os.fspath(path)
    root = parse_xml(path)
    if _local(root.tag) != "Product_Observational":
        raise LabelError(path, f"not a PDS4 observational product (root <{_local(root.tag)}>)", field="Product_Observational")

    geometry = _findall(root, "Geometry_Lander")
    cmp_ = None
    for g in geometry:
        cmp_ = _find(g, "Camera_Model_Parameters")
        if cmp_ is not None:
            break
    model, model_frame = (None, ROVER_NAV_FRAME) if cmp_ is None else _camera_model(cmp_, path)

    attitude, rover_position = _rover_pose(root, path)
    mast_az, mast_el = _mast(root, path)

    extra = {"format": "PDS4"}
    for dg in _findall(root, "Derived_Geometry"):
        ref = _find(dg, "local_identifier_reference")
        az = fields.number(_text(dg, "instrument_azimuth"), path, "Derived_Geometry.instrument_azimuth", optional=True)
        el = fields.number(_text(dg, "instrument_elevation"), path, "Derived_Geometry.instrument_elevation", optional=True)
        if ref is not None and ref.text and az is not None and el is not None:
            key = "site_instrument_azel" if ref.text.strip().startswith("SITE_FRAME") else "rover_instrument_azel"
            extra.setdefault(key, (az, el))

    subframe = None
    sf = _find(root, "Subframe")
    if sf is not None and _child(sf, "first_sample") is not None:
        subframe = tuple(
            fields.integer(_text(sf, k), path, f"Subframe.{k}") for k in ("first_sample", "first_line", "samples", "lines")
        )
    downsample = 1
    ds = _find(root, "Downsampling")
    if ds is not None:
        pad = _find(ds, "Pixel_Averaging_Dimensions")
        if pad is not None:
            w = fields.integer(_text(pad, "width_pixels"), path, "Downsampling.width_pixels", optional=True) or 1
            h = fields.integer(_text(pad, "height_pixels"), path, "Downsampling.height_pixels", optional=True) or 1
            if w < 1 or h < 1:
                raise LabelError(path, f"pixel averaging must be >= 1, got {w}x{h}", field="Downsampling")
            downsample = max(w, h)

    layout = _layout(root, path)
    if layout is None:
        raise LabelError(path, "no Array_2D_Image or Array_3D_Image", field="File_Area_Observational")
    if image is None and os.path.exists(layout.file):
        image = layout.file
    if image is not None and os.path.normcase(os.path.abspath(image)) == os.path.normcase(os.path.abspath(layout.file)):
        extra["raw_layout"] = layout
    elif image is not None:
        w, h, _, _ = image_header(image)
        if (w, h) != (layout.samples, layout.lines):
            raise LabelError(path, f"label says {layout.samples}x{layout.lines}, the image {image} is {w}x{h}", field="Array_Image")

    site = drive = None
    mc = _find(root, "Motion_Counter")
    if mc is not None:
        for idx in _children(mc, "Motion_Counter_Index"):
            name = (_text(idx, "index_id") or "").upper()
            if name in ("SITE", "DRIVE"):
                v = fields.integer(_text(idx, "index_value_number"), path, f"Motion_Counter.{name}")
                site, drive = (v, drive) if name == "SITE" else (site, v)
    sclk_el = _find(root, "spacecraft_clock_start")
    sclk = fields.number(None if sclk_el is None else sclk_el.text, path, "spacecraft_clock_start", optional=True)

    ident = None
    for alias in _findall(root, "alternate_id"):
        ident = (alias.text or "").strip() or None
        break
    if ident is None:
        lid = _find(root, "logical_identifier")
        ident = (lid.text or "").strip().rsplit(":", 1)[-1] if lid is not None and lid.text else Path(path).stem
    instrument = _instrument(root)
    return raw_frame(layout, id=ident, instrument=instrument, model=model, model_frame=model_frame,
                     attitude=attitude, rover_position=rover_position, mast_az=mast_az, mast_el=mast_el,
                     subframe=subframe, downsample=downsample, site=site, drive=drive, sclk=sclk, source=path,
                     image=None if image is None else os.fspath(image), extra=extra)


def _xyz(el, path, field):
    """(x, y, z) of a vector element whose children are x_*, y_*, z_* (or x, y, z)."""
    vals = {}
    for c in el:
        name = _local(c.tag)
        axis = name.split("_", 1)[0]
        if axis in ("x", "y", "z") and axis not in vals:
            vals[axis] = fields.number(c.text, path, f"{field}.{name}")
    missing = [a for a in "xyz" if a not in vals]
    if missing:
        raise LabelError(path, f"missing {', '.join(missing)} component", field=field)
    return (vals["x"], vals["y"], vals["z"])


def _terms(el, path, field):
    vals = []
    for k in ("c0", "c1", "c2"):
        t = _text(el, k)
        if t is None:
            raise LabelError(path, "missing", field=f"{field}.{k}")
        vals.append(fields.number(t, path, f"{field}.{k}"))
    return tuple(vals)


def _camera_model(cmp_, path):
    base = "Camera_Model_Parameters"
    mtype = fields.text(_text(cmp_, "model_type"), path, f"{base}.model_type", optional=False).upper()
    if mtype not in ("CAHV", "CAHVOR", "CAHVORE"):
        raise LabelError(path, f"unknown camera model type {mtype!r}", field=f"{base}.model_type")
    el = _child(cmp_, f"{mtype}_Model")
    if el is None:
        raise LabelError(path, "missing", field=f"{base}.{mtype}_Model")
    field = f"{mtype}_Model"
    names = _VECTORS[: 4 if mtype == "CAHV" else 5]
    comps = []
    for n in names:
        v = _child(el, n)
        if v is None:
            raise LabelError(path, "missing", field=f"{field}.{n}")
        comps.append(_xyz(v, path, f"{field}.{n}"))
    if mtype != "CAHV":
        r = _child(el, "Radial_Terms")
        if r is None:
            raise LabelError(path, "missing", field=f"{field}.Radial_Terms")
        comps.append(_terms(r, path, f"{field}.Radial_Terms"))
    if mtype == "CAHVORE":
        e = _child(el, "Entrance_Terms")
        if e is None:
            raise LabelError(path, "missing", field=f"{field}.Entrance_Terms")
        comps.append(_terms(e, path, f"{field}.Entrance_Terms"))
        comps.append(fields.number(_text(el, "cahvore_model_type"), path, f"{field}.cahvore_model_type"))
        comps.append(fields.number(_text(el, "cahvore_model_parameter"), path, f"{field}.cahvore_model_parameter"))
    frame = ROVER_NAV_FRAME
    ref = _child(cmp_, "Coordinate_Space_Reference")
    if ref is not None:
        ft = _find(ref, "coordinate_space_frame_type")
        if ft is not None and ft.text:
            name = ft.text.strip().upper()
            if name not in FRAME_TYPES:
                raise LabelError(path, f"unsupported model frame {name!r}", field=f"{base}.coordinate_space_frame_type")
            frame = FRAME_TYPES[name]
    return fields.camera_model(mtype, comps, path, field), frame


def _rover_pose(root, path):
    """Quaternion and offset of the rover nav frame in its SITE frame, or (None, None)."""
    for csd in _findall(root, "Coordinate_Space_Definition"):
        ids = [(c.text or "").strip() for c in _children(csd, "local_identifier")]
        if not any(i.startswith("ROVER_NAV_FRAME") for i in ids):
            continue
        ref = _child(csd, "Coordinate_Space_Reference")
        target = _find(ref, "local_identifier_reference") if ref is not None else None
        ftype = _find(ref, "coordinate_space_frame_type") if ref is not None else None
        name = ((target.text if target is not None else None) or (ftype.text if ftype is not None else None) or "").strip()
        if not name.upper().startswith("SITE_FRAME"):
            continue
        field = "Coordinate_Space_Definition[ROVER_NAV_FRAME]"
        q = _child(csd, "Quaternion_Plus_Direction")
        off = _child(csd, "Vector_Origin_Offset")
        if q is None:
            raise LabelError(path, "missing", field=f"{field}.Quaternion_Plus_Direction")
        parts = [_text(q, k) for k in ("qcos", "qsin1", "qsin2", "qsin3")]
        if any(p is None for p in parts):
            raise LabelError(path, "expected qcos, qsin1, qsin2, qsin3", field=f"{field}.Quaternion_Plus_Direction")
        direction = (_text(q, "rotation_direction") or "Forward").strip().lower()
        quat = fields.quaternion(parts, path, f"{field}.Quaternion_Plus_Direction", optional=False)
        if direction == "backward":
            # A backward quaternion rotates parent into child: conjugate it.
            quat = (quat[0], -quat[1], -quat[2], -quat[3])
        pos = None if off is None else _xyz(off, path, f"{field}.Vector_Origin_Offset")
        return quat, pos
    return None, None


def _mast(root, path):
    for adp in _findall(root, "Articulation_Device_Parameters"):
        if (_text(adp, "device_id") or "").upper() != "RSM":
            continue
        angles = {}
        for idx in _findall(adp, "Device_Angle_Index"):
            name = (_text(idx, "index_id") or "").upper()
            angles.setdefault(name, _text(idx, "index_value_angle"))
        az = angles.get("AZIMUTH FINAL-RESOLVER", angles.get("AZIMUTH FINAL-ENCODER"))
        el = angles.get("ELEVATION FINAL-RESOLVER", angles.get("ELEVATION FINAL-ENCODER"))
        f = "Articulation_Device_Parameters[RSM]"
        az = fields.number(az, path, f"{f}.AZIMUTH FINAL-RESOLVER", optional=True)
        el = fields.number(el, path, f"{f}.ELEVATION FINAL-RESOLVER", optional=True)
        if az is None or el is None:
            return None, None
        return joint_to_mast(az, el)
    return None, None


def _layout(root, path):
    area = _find(root, "File_Area_Observational")
    if area is None:
        return None
    file_el = _find(area, "file_name")
    if file_el is None or not (file_el.text or "").strip():
        raise LabelError(path, "missing", field="File_Area_Observational.file_name")
    file = os.path.join(os.path.dirname(path), os.path.basename(file_el.text.strip()))
    arr = None
    for name in ("Array_3D_Image", "Array_2D_Image", "Array_3D_Spectrum"):
        arr = _child(area, name)
        if arr is not None:
            break
    if arr is None:
        return None
    f = _local(arr.tag)
    offset = fields.integer(_text(arr, "offset"), path, f"{f}.offset")
    if offset < 0:
        raise LabelError(path, f"negative offset {offset}", field=f"{f}.offset")
    ea = _child(arr, "Element_Array")
    dt = _text(ea, "data_type") if ea is not None else None
    if dt not in DATA_TYPES:
        raise LabelError(path, f"unsupported data type {dt!r}", field=f"{f}.Element_Array.data_type")
    order = (_text(arr, "axis_index_order") or "Last Index Fastest").strip()
    if order != "Last Index Fastest":
        raise LabelError(path, f"unsupported axis order {order!r}", field=f"{f}.axis_index_order")
    axes = []
    for ax in _children(arr, "Axis_Array"):
        name = (_text(ax, "axis_name") or "").strip().capitalize()
        n = fields.integer(_text(ax, "elements"), path, f"{f}.Axis_Array[{name}].elements")
        seq = fields.integer(_text(ax, "sequence_number") or len(axes) + 1, path, f"{f}.Axis_Array[{name}].sequence_number")
        if n < 1:
            raise LabelError(path, f"must be >= 1, got {n}", field=f"{f}.Axis_Array[{name}].elements")
        axes.append((seq, name, n))
    axes.sort()
    names = tuple(a[1] for a in axes)
    size = {a[1]: a[2] for a in axes}
    storage = {("Band", "Line", "Sample"): "BSQ", ("Line", "Band", "Sample"): "BIL", ("Line", "Sample", "Band"): "BIP",
               ("Line", "Sample"): "BSQ"}.get(names)
    if storage is None:
        raise LabelError(path, f"unsupported axes {names}", field=f"{f}.Axis_Array")
    return RawLayout(file, offset, DATA_TYPES[dt], size["Line"], size["Sample"], size.get("Band", 1), storage)


def _instrument(root):
    """NAVCAM_LEFT-style name from the observing system and ``img:frame_id``."""
    name = None
    for comp in _findall(root, "Observing_System_Component"):
        if (_text(comp, "type") or "").lower() == "instrument":
            name = _text(comp, "name")
            break
    frame = _find(root, "frame_id")
    side = (frame.text or "").strip().upper() if frame is not None else ""
    if name:
        base = name.upper()
        for word in ("LEFT", "RIGHT"):
            base = base.replace(word, "").strip()
        base = {"NAVIGATION CAMERA": "NAVCAM"}.get(base, base.replace(" ", "_"))
        return f"{base}_{side}" if side in ("LEFT", "RIGHT") else base
    return "UNKNOWN"
