"""Ingest: every input frame's metadata, read once, as ``ingest/frames.json``.

Each record holds what the later stages need and nothing they would have to re-derive: the input
path (workers re-read pixels from it), the size, the camera model in LOCAL_LEVEL (None for a plain
photo), the pivot that pointing corrections rotate about, and for plain photos the horizontal field
of view when one is known (``--hfov``, else the EXIF focal length and focal-plane resolution).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from calib.errors import InputError
from calib.labels import discover
from calib.mast import mast_pivot
from mosaic.formats.workspace import digest, file_digest
from mosaic.pipeline.stages import code_key
from mosaic.runtime import progress

#: A camera whose centre lies this close to the Mars 2020 RSM pivot rides on the mast head and is
#: re-pointed about the pivot (JPL's pointing correction); any other camera about its own centre.
MAST_HEAD_RADIUS_M = 0.35


def _pivot_local_level(meta, model_ll) -> list:
    """The point pointing corrections rotate about, in LOCAL_LEVEL."""
    if meta.model is None:
        return [0.0, 0.0, 0.0]
    pivot_rnav = mast_pivot()
    c_rnav = None
    if meta.model_frame == "ROVER_NAV_FRAME":
        c_rnav = np.asarray(meta.model.C, float)
    elif meta.attitude is not None:
        r = meta.rover_to_local_level()
        c_rnav = r.T @ np.asarray(model_ll.C, float)
    if c_rnav is not None and np.linalg.norm(c_rnav - pivot_rnav) < MAST_HEAD_RADIUS_M:
        return [float(v) for v in meta.rover_to_local_level() @ pivot_rnav]
    return [float(v) for v in model_ll.C]


def common_pivot(centres) -> np.ndarray:
    """One pivot for cameras re-pointed by the same mast when its geometry is not known: the
    centre of the horizontal circle through their centres (the azimuth axis), at their mean
    height; their mean when they do not spread (or spread along a line).

    A pivot common to a pan makes a rotation of the whole pan about it an exact gauge freedom,
    which the pointing priors then fix: groups of frames that share no tie point keep their
    reported relative pointing. With a pivot per frame, near-field parallax would make the
    absolute pointing of each group weakly (and wrongly) observable.
    """
    c = np.asarray(centres, float)
    mean = c.mean(axis=0)
    if len(c) < 3 or np.ptp(c[:, :2], axis=0).max() < 1e-3:
        return mean
    a = np.column_stack([c[:, 0], c[:, 1], np.ones(len(c))])
    rhs = -(c[:, 0] ** 2 + c[:, 1] ** 2)
    sol, _, rank, sv = np.linalg.lstsq(a, rhs, rcond=None)
    if rank < 3 or sv[-1] < 1e-6 * sv[0]:
        return mean
    centre = np.array([-sol[0] / 2, -sol[1] / 2, mean[2]])
    return centre if np.linalg.norm(centre - mean) < 1.0 else mean


def exif_hfov(path) -> float | None:
    """Horizontal field of view (degrees) from EXIF FocalLength and FocalPlaneXResolution, or the
    35 mm-equivalent focal length; None when the file does not say."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            width = im.size[0]
            exif = im.getexif().get_ifd(0x8769)
    except (OSError, ValueError, SyntaxError):
        return None
    focal = exif.get(37386)
    xres, unit = exif.get(41486), exif.get(41488, 2)
    mm_per_unit = {2: 25.4, 3: 10.0, 4: 1.0, 5: 0.001}.get(int(unit) if unit else 2)
    try:
        if focal and xres and mm_per_unit:
            # The focal-plane resolution refers to the sensor's full width; a downsized file keeps it.
            sensor_mm = width / float(xres) * mm_per_unit
            return math.degrees(2 * math.atan(sensor_mm / 2 / float(focal)))
        f35 = exif.get(41989)
        if f35:
            return math.degrees(2 * math.atan(36.0 / 2 / float(f35)))
    except (TypeError, ValueError, ZeroDivisionError):
        return None
    return None


def frame_record(meta, hfov: float | None) -> dict:
    model_ll = meta.model_local_level()
    rec = {
        "id": meta.id,
        "path": str(meta.source or meta.image),
        "image": str(meta.image),
        "width": int(meta.width),
        "height": int(meta.height),
        "instrument": meta.instrument,
        "bit_depth": meta.bit_depth,
        "model": None if model_ll is None else model_ll.to_dict(),
        "pivot": _pivot_local_level(meta, model_ll),
        "mast_pivot": False,
        "site": meta.site,
        "drive": meta.drive,
        "hfov": None,
    }
    if model_ll is not None:
        rec["mast_pivot"] = bool(np.linalg.norm(np.asarray(rec["pivot"]) - model_ll.C) > 1e-9)
    if model_ll is None:
        rec["hfov"] = hfov if hfov is not None else exif_hfov(meta.image)
    return rec


def run(ws, config, client=None) -> dict:
    inputs = sorted(str(p) for p in ws.read_json("inputs.json"))
    key = digest("ingest", code_key(__name__), file_digest(inputs), config.key_of("hfov"))
    if ws.stage_done("ingest", key):
        return ws.stage_report("ingest")
    metas = discover([Path(p) for p in inputs])
    if not metas:
        raise InputError(inputs[0] if inputs else None, "no frames found in the inputs")
    metas = sorted(metas, key=lambda m: (m.id, str(m.image)))
    ids = [m.id for m in metas]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        raise InputError(None, f"frame ids occur more than once: {', '.join(dup[:5])}")
    with progress.stage("ingest", len(metas)) as bar:
        records = []
        for m in metas:
            records.append(frame_record(m, config.hfov))
            bar.advance()
    groups = {}
    for r in records:
        if r["model"] is not None and not r["mast_pivot"]:
            groups.setdefault((r["instrument"], r["site"], r["drive"]), []).append(r)
    for members in groups.values():
        pivot = common_pivot([r["model"]["C"] for r in members])
        for r in members:
            r["pivot"] = [float(v) for v in pivot]
    ws.write_json({"frames": records}, "ingest", "frames.json")
    report = {"frames": len(records), "with_model": sum(r["model"] is not None for r in records),
              "plain_photos": sum(r["model"] is None for r in records)}
    ws.mark_done("ingest", key, report)
    return report
