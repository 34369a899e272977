"""solution.json: the registration's result (contract, DESIGN.md "Files").

``{"frames": [{"id", "image", "width", "height", "used", "model": {...}, "frame": "LOCAL_LEVEL",
"residual_px": {"rms", "n"}[, "reason"][, "correction_deg"]}], "stats": {"rms_px", "tie_points",
"pairs", ...}}``. Every input frame is listed; one the adjustment could not place has
``"used": false`` and a ``"reason"`` (its model, when it had one, is the reported one, unadjusted;
a plain photo that could not be placed has ``"model": null``). Residuals are in pixels of the
frame as delivered; ``rms`` is the root mean square of the 2D reprojection error's length.
"""

from __future__ import annotations

import math
from pathlib import Path

from calib.errors import InputError
from calib.models import model_from_dict

from . import atomic

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


def read(path) -> dict:
    """The solution as written, with each frame's ``model`` parsed into a camera model (or None)."""
    import json

    path = Path(path)
    if path.is_dir():
        path = path / "solution.json"
    try:
        data = json.loads(path.read_text())
    except OSError as e:
        raise InputError(path, f"cannot read solution: {e.strerror or e}") from None
    except ValueError as e:
        raise InputError(path, f"not valid JSON: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("frames"), list):
        raise InputError(path, "no 'frames' list", field="frames")
    for f in data["frames"]:
        if not isinstance(f, dict) or "id" not in f:
            raise InputError(path, "a frame without 'id'", field="frames")
        f["model"] = None if f.get("model") is None else model_from_dict(f["model"], source=path)
    return data
