"""Raw-image JSON records: the public feed's record and the ``-metadata.json`` amateur tools write.

Public record (values are strings)::

    {"imageid": "NLF_...", "sol": 670, "site": 32, "drive": 604,
     "attitude": "(s,x,y,z)",                         # rover -> SITE, scalar first
     "camera": {"instrument": "NAVCAM_LEFT", "camera_model_type": "CAHVORE",
                "camera_model_component_list": "(C);(A);(H);(V);(O);(R);(E);T;P",
                "camera_position": "(x,y,z)", "camera_vector": "(x,y,z)"},
     "extended": {"mastAz": "1.19", "mastEl": "-33.9", "sclk": "726421425.133",
                  "scaleFactor": "1" | "UNK", "xyz": "(x,y,z)",
                  "subframeRect": "(x0,y0,w,h)", "dimension": "(w,h)"}}

The ``-metadata.json`` shape (mars-raw-utils) flattens ``camera`` and ``extended`` into snake_case
keys (``camera_model_component_list``, ``mast_az``, ``subframe_rect`` [list], ``scale_factor``
[number], ``xyz``, ``dimension``, ...) and has no ``attitude``. Both shapes are accepted, key by
key: a value is looked up under its snake_case name, its camelCase name, then inside
``camera``/``extended``. ``"UNK"`` means unknown (None).

The model is in ROVER_NAV_FRAME and already in the delivered product's pixel grid.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import LabelError
from ..meta import ROVER_NAV_FRAME, FrameMeta
from . import fields
from .raster import image_header

#: snake_case name -> (public feed name, the sub-object that holds it in the public feed)
_KEYS = {
    "imageid": ("imageid", None),
    "instrument": ("instrument", "camera"),
    "camera_model_type": ("camera_model_type", "camera"),
    "camera_model_component_list": ("camera_model_component_list", "camera"),
    "camera_position": ("camera_position", "camera"),
    "camera_vector": ("camera_vector", "camera"),
    "mast_az": ("mastAz", "extended"),
    "mast_el": ("mastEl", "extended"),
    "sclk": ("sclk", "extended"),
    "scale_factor": ("scaleFactor", "extended"),
    "xyz": ("xyz", "extended"),
    "subframe_rect": ("subframeRect", "extended"),
    "dimension": ("dimension", "extended"),
    "attitude": ("attitude", None),
    "site": ("site", None),
    "drive": ("drive", None),
    "sol": ("sol", None),
}


def load_record(path) -> dict:
    """The JSON object in ``path`` (LabelError if unreadable, not JSON, or not an object)."""
    path = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise LabelError(path, f"cannot read: {e.strerror or e}") from None
    if not raw.strip():
        raise LabelError(path, "empty file")
    try:
        rec = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise LabelError(path, f"not valid JSON: {e}") from None
    if not isinstance(rec, dict):
        raise LabelError(path, f"expected a JSON object, got {type(rec).__name__}")
    return rec


def looks_like_record(rec: dict) -> bool:
    """Whether a JSON object is a raw-image record (and not, say, a solution or STAC item)."""
    return isinstance(rec, dict) and any(
        k in rec for k in ("imageid", "camera_model_component_list", "camera", "camera_model_type")
    )


def _get(rec: dict, key: str, path):
    """(value, field name as written in the file) of a record key in either shape."""
    feed, parent = _KEYS[key]
    for name in (key, feed):
        if name in rec:
            return rec[name], name
    if parent is not None and parent in rec:
        sub = rec[parent]
        if not isinstance(sub, dict):
            raise LabelError(path, f"expected an object, got {type(sub).__name__}", field=parent)
        for name in (feed, key):
            if name in sub:
                return sub[name], f"{parent}.{name}"
        return None, f"{parent}.{feed}"
    return None, key


#: A Mars 2020 raw-feed product name: instrument, sol, spacecraft clock, milliseconds.
_FEED_NAME = re.compile(r"^[A-Z][A-Z0-9]{2}_\d{4}_\d{10}_\d{3}")


def read_json_frame(path, image=None) -> FrameMeta:
    """FrameMeta from a raw-image JSON record; ``image`` is the pixel file it describes, if any."""
    path = os.fspath(path)
    rec = load_record(path)
    if not looks_like_record(rec):
        raise LabelError(path, "not a raw-image record (no imageid, camera or camera model)", field="camera_model_component_list")

    def get(key):
        return _get(rec, key, path)

    model = None
    ctype, ctype_field = get("camera_model_type")
    comps, comps_field = get("camera_model_component_list")
    if not fields.is_unknown(comps):
        if fields.is_unknown(ctype):
            raise LabelError(path, "missing (a component list needs its model type)", field=ctype_field)
        model = fields.camera_model(
            fields.text(ctype, path, ctype_field, optional=False).upper(),
            _components(comps, path, comps_field),
            path,
            comps_field,
        )

    scale, scale_field = get("scale_factor")
    downsample = fields.integer(scale, path, scale_field, optional=True)
    if downsample is not None and downsample < 1:
        raise LabelError(path, f"must be >= 1, got {downsample}", field=scale_field)
    rect, rect_field = get("subframe_rect")
    subframe = fields.vector(rect, path, rect_field, n=4, optional=True)
    if subframe is not None:
        if any(v != int(v) for v in subframe) or subframe[0] < 1 or subframe[1] < 1 or min(subframe[2:]) < 1:
            raise LabelError(path, f"expected 1-based (x0, y0, width, height), got {subframe}", field=rect_field)
        subframe = tuple(int(v) for v in subframe)
    dim, dim_field = get("dimension")
    dims = fields.vector(dim, path, dim_field, n=2, optional=True)
    if dims is not None and (min(dims) < 1 or any(v != int(v) for v in dims)):
        raise LabelError(path, f"expected positive integer (width, height), got {dims}", field=dim_field)

    width = height = bands = depth = None
    if image is not None:
        width, height, bands, depth = image_header(image)
        if dims is not None and (int(dims[0]), int(dims[1])) != (width, height):
            raise LabelError(path, f"says {int(dims[0])}x{int(dims[1])}, the image {image} is {width}x{height}", field=dim_field)
    elif dims is not None:
        width, height = int(dims[0]), int(dims[1])
    elif subframe is not None:
        s = downsample or 1
        width, height = subframe[2] // s, subframe[3] // s
    else:
        raise LabelError(path, "no image beside the record and no dimension in it", field=dim_field)

    att, att_field = get("attitude")
    xyz, xyz_field = get("xyz")
    az, az_field = get("mast_az")
    el, el_field = get("mast_el")
    sclk, sclk_field = get("sclk")
    site, site_field = get("site")
    drive, drive_field = get("drive")
    instrument, inst_field = get("instrument")
    ident, id_field = get("imageid")
    if image is not None and not fields.is_unknown(ident) and _FEED_NAME.match(Path(image).name):
        # A record copied beside another frame's image would pose that image with the wrong
        # model. The feed names its files after the imageid (plus a version suffix); an image
        # renamed to something else (tile.png) is the user's choice and is not checked.
        if not Path(image).stem.startswith(str(ident)):
            raise LabelError(path, f"describes frame {ident}, not the image {Path(image).name} beside it",
                             field=id_field)
    extra = {"format": "JSON"}
    cpos, cpos_field = get("camera_position")
    cvec, cvec_field = get("camera_vector")
    cpos = fields.vector(cpos, path, cpos_field, optional=True)
    cvec = fields.vector(cvec, path, cvec_field, optional=True)
    if cpos is not None:
        extra["camera_position"] = cpos
    if cvec is not None:
        extra["camera_vector"] = cvec
    return FrameMeta(
        id=fields.text(ident, path, id_field) or Path(image or path).stem.removesuffix("-metadata"),
        instrument=fields.text(instrument, path, inst_field) or "UNKNOWN",
        width=int(width),
        height=int(height),
        model=model,
        model_frame=ROVER_NAV_FRAME,
        attitude=fields.quaternion(att, path, att_field),
        rover_position=fields.vector(xyz, path, xyz_field, optional=True),
        mast_az=fields.number(az, path, az_field, optional=True),
        mast_el=fields.number(el, path, el_field, optional=True),
        subframe=subframe,
        downsample=downsample or 1,
        site=fields.integer(site, path, site_field, optional=True),
        drive=fields.integer(drive, path, drive_field, optional=True),
        sclk=fields.number(sclk, path, sclk_field, optional=True),
        source=path,
        image=None if image is None else os.fspath(image),
        bands=bands,
        bit_depth=depth,
        extra=extra,
    )


def _components(value, path, field):
    """``"(C);(A);(H);(V);...;T;P"`` (or a list) -> vectors as 3-tuples and scalars as floats."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(";")]
    elif isinstance(value, list):
        parts = value
    else:
        raise LabelError(path, f"expected 'C;A;H;V;...' text, got {type(value).__name__}", field=field)
    out = []
    for i, p in enumerate(parts):
        name = f"{field}[{i}]"
        is_vec = isinstance(p, (list, tuple)) or (isinstance(p, str) and p.startswith("("))
        out.append(fields.vector(p, path, name) if is_vec else fields.number(p, path, name))
    if len(out) >= 4 and any(not isinstance(v, tuple) for v in out[: min(len(out), 7)]):
        bad = next(i for i, v in enumerate(out[:7]) if not isinstance(v, tuple))
        raise LabelError(path, f"component {bad} should be a vector (x,y,z)", field=field)
    return out
