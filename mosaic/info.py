"""List frames: instrument, size, camera model, field of view, pointing and predicted overlaps.

Directories are searched recursively. Pointing is the image centre's ray in LOCAL_LEVEL
(azimuth clockwise from north, elevation up); a frame whose label has no rover attitude is
marked "*" and its azimuth is relative to the rover's heading. Overlaps are predicted from the
camera models (rays to a 50 m sphere); only pairs that overlap are listed.

Example:
    mosaic info ../shared/realdata/mer-b-navcam-p0706
    mosaic info frames/ --json > frames.json
"""

from __future__ import annotations

import json
import os
import sys

from calib.errors import InputError
from calib.frames import boresight_azel
from calib.labels import discover
from calib.overlap import overlapping_pairs


def add_arguments(p):
    p.add_argument("paths", nargs="+", metavar="PATH", help="frames: images, labels or directories")
    p.add_argument("--json", action="store_true", help="print one JSON document (see docs/formats.md)")
    p.add_argument("--no-recursive", dest="recursive", action="store_false", help="do not descend into subdirectories")
    p.add_argument("--radius", type=float, default=50.0, help="range (m) of the sphere rays are cast to for overlaps")


def describe(metas, radius: float = 50.0) -> dict:
    """The ``mosaic info --json`` document (contract, DESIGN.md) for a list of FrameMeta."""
    frames = []
    for m in metas:
        entry = {
            "id": m.id,
            "path": m.image or m.source,
            "instrument": m.instrument,
            "width": int(m.width),
            "height": int(m.height),
            "model": None,
            "model_frame": m.model_frame if m.model is not None else None,
            "fov_deg": None,
            "boresight_deg": None,
        }
        if m.model is not None:
            entry["model"] = m.model.to_dict()
            h, v = m.model.fov(m.width, m.height)
            entry["fov_deg"] = [round(h, 4), round(v, 4)]
            az, el = boresight_azel(m)
            entry["boresight_deg"] = {"azimuth": round(az, 4), "elevation": round(el, 4)}
        frames.append(entry)
    overlaps = [
        {"a": metas[a].id, "b": metas[b].id, "fraction": round(f, 4)}
        for a, b, f in overlapping_pairs(metas, radius=radius)
    ]
    return {"frames": frames, "overlaps": overlaps}


def format_table(doc: dict, metas) -> str:
    """The human-readable listing of a ``describe`` document."""
    rows = [("id", "instrument", "size", "model", "fov h x v", "az", "el")]
    flagged = False
    for f, m in zip(doc["frames"], metas):
        size = f"{f['width']}x{f['height']}"
        if f["model"] is None:
            rows.append((f["id"], f["instrument"], size, "-", "-", "-", "-"))
            continue
        mark = ""
        if m.attitude is None and m.model_frame == "ROVER_NAV_FRAME":
            mark, flagged = "*", True
        fov = f"{f['fov_deg'][0]:.1f} x {f['fov_deg'][1]:.1f}"
        az = f"{f['boresight_deg']['azimuth']:.1f}{mark}"
        el = f"{f['boresight_deg']['elevation']:.1f}"
        rows.append((f["id"], f["instrument"], size, f["model"]["type"], fov, az, el))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    right = {2, 4, 5, 6}
    lines = []
    for k, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))]
        lines.append("  ".join(cells).rstrip())
        if k == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"{len(metas)} frame(s)")
    if flagged:
        lines.append("* no rover attitude in the label: azimuth is relative to the rover's heading")
    if doc["overlaps"]:
        lines.append("")
        lines.append("predicted overlaps (share of the smaller footprint seen by the other frame):")
        for o in doc["overlaps"]:
            lines.append(f"  {o['a']}  {o['b']}  {100 * o['fraction']:.1f}%")
    else:
        lines.append("no predicted overlaps")
    return "\n".join(lines)


def run(args) -> int:
    metas = discover(args.paths, recursive=args.recursive)
    if not metas:
        raise InputError(" ".join(args.paths), "no frames found (images, .IMG, JSON records or PDS4 labels)")
    doc = describe(metas, radius=args.radius)
    text = json.dumps(doc, indent=2) if args.json else format_table(doc, metas)
    try:
        print(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # `mosaic info ... | head`: the reader has gone; not an error of ours. Point stdout at
        # /dev/null so that the interpreter's final flush does not complain either.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return 0
