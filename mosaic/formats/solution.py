"""solution.json: the registration's result (contract, DESIGN.md "Files").

``{"frames": [{"id", "image", "width", "height", "used", "model": {...}, "frame": "LOCAL_LEVEL",
"residual_px": {"rms", "n"}[, "reason"][, "correction_deg"]}], "stats": {"rms_px", "tie_points",
"pairs", ...}}``. Every input frame is listed; one the adjustment could not place has
``"used": false`` and a ``"reason"`` (its model, when it had one, is the reported one, unadjusted;
a plain photo that could not be placed has ``"model": null``). Residuals are in pixels of the
frame as delivered; ``rms`` is the root mean square of the 2D reprojection error's length.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from calib.errors import InputError
from calib.models import model_from_dict
from mosaic.runtime import atomic

log = logging.getLogger("mosaic")

FRAME = "LOCAL_LEVEL"


def frame_entry(rec: dict, model, used: bool, rms: float | None = None, n: int = 0, reason: str | None = None,
                **extra) -> dict:
    out = {
        "id": rec["id"],
        "image": rec["image"],
        "width": int(rec["width"]),
        "height": int(rec["height"]),
        "used": bool(used),
        "model": None if model is None else model.to_dict(),
        "frame": FRAME,
        "residual_px": {"rms": None if rms is None or not math.isfinite(rms) else round(float(rms), 6), "n": int(n)},
    }
    if reason:
        out["reason"] = reason
    out.update(extra)
    return out


def write(path, frames: list[dict], stats: dict) -> Path:
    ids = [f["id"] for f in frames]
    if len(set(ids)) != len(ids):
        raise ValueError("solution.json: duplicate frame ids")
    return atomic.write_json(path, {"frames": frames, "stats": stats})


def load(path) -> dict:
    """solution.json as written (``path``: the file or its folder), its models as dicts: the one
    place that parses the file. InputError naming the file when it is missing, unreadable, not
    JSON or has no ``frames`` list."""
    path = Path(path)
    if path.is_dir():
        path = path / "solution.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(path, "solution file not found") from None
    except OSError as e:
        raise InputError(path, f"cannot read solution: {e.strerror or e}") from None
    except ValueError as e:
        raise InputError(path, f"not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise InputError(path, "no 'frames' list", field="frames")
    return data


def read(path) -> dict:
    """The solution as written, with each frame's ``model`` parsed into a camera model (or None)."""
    data = load(path)
    path = Path(path)
    for f in data["frames"]:
        if not isinstance(f, dict) or "id" not in f:
            raise InputError(path, "a frame without 'id'", field="frames")
        f["model"] = None if f.get("model") is None else model_from_dict(f["model"], source=path)
    return data


def summary(solution: dict) -> dict:
    """The few facts a page shows in its corner: frames used of all, and the RMS.

    >>> summary({"frames": [{"used": True}, {"used": False}], "stats": {"rms_px": 0.4123}})
    {'frames': '1 of 2', 'RMS': '0.41 px'}
    """
    frames = solution.get("frames") or []
    meta = {"frames": f"{sum(1 for f in frames if f.get('used'))} of {len(frames)}"}
    rms = (solution.get("stats") or {}).get("rms_px")
    if isinstance(rms, (int, float)):
        meta["RMS"] = f"{rms:.2f} px"
    return meta


#: Why a frame with a camera model may be left out of the adjustment yet still be rendered at its
#: reported pointing: it overlaps nothing (a tie point would be needed to correct it).
_UNMATCHED = ("no predicted overlap", "no verified matches")


def render_input(solution: dict, warn: bool = True) -> dict:
    """The solution the panorama is rendered from: the adjusted frames, plus the frames with a
    model that overlap nothing, at their reported pointing (with a warning)."""
    frames = []
    for f in solution["frames"]:
        if not f.get("used") and f.get("model") and str(f.get("reason", "")).startswith(_UNMATCHED):
            if warn:
                log.warning("%s: %s; rendered from its reported pointing", f["id"], f["reason"])
            f = {**f, "used": True}
        frames.append(f)
    return {**solution, "frames": frames}
