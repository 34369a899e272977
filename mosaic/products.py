"""Everything written beside a rendered panorama: the viewer page, the quality picture and a Hugin
project.

``write_products(out, workspace)`` runs after ``render_panorama`` has written ``OUT/panorama.tif``
and ``OUT/preview.jpg`` and adds:

- ``OUT/index.html`` — the 360-degree viewer (:func:`mosaic.viewer.write_viewer`) over the
  preview, with the frame count and RMS in its corner; opens from disk.
- ``OUT/quality.png`` — which frame fills each pixel, the seams, and the residual per frame
  (:mod:`mosaic.quality`).
- ``OUT/panorama.pto`` — a Hugin project of the solved panorama (:mod:`mosaic.hugin`): every used
  frame with a lens fitted to its adjusted model, the panorama's size and projection, and control
  points from the registration's verified matches (``work/matches/*.npz`` over
  ``work/features/*.npz``), so ``nona OUT/panorama.pto`` re-renders our geometry and Hugin can
  open, inspect and re-optimise it.

Each product is independent: one that fails is logged and skipped (the panorama is still good),
and the result says which were written.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

log = logging.getLogger("mosaic")

#: Control points written per frame pair (evenly subsampled from the verified matches): enough for
#: Hugin's optimiser and its control-point table, small enough to keep the project readable.
MAX_POINTS_PER_PAIR = 40


def control_points(workspace, frame_ids, per_pair: int | None = MAX_POINTS_PER_PAIR):
    """(i, j, xi, yi, xj, yj) for the verified matches between frames in ``frame_ids`` (their
    index in that list), in pixels of the frames as delivered (centre convention, as Hugin's);
    at most ``per_pair`` per pair, evenly spread (None: all), in a fixed order."""
    from .stages import features as features_stage
    from .stages import matches as matches_stage
    from .workspace import Workspace

    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if not ws.exists("matches", "summary.json"):
        return []
    index = {fid: k for k, fid in enumerate(frame_ids)}
    xy = {}
    out = []
    for s in ws.read_json("matches", "summary.json")["pairs"]:
        a, b = s["a"], s["b"]
        if s.get("inliers", 0) <= 0 or a not in index or b not in index:
            continue
        m = matches_stage.load(ws, a, b)
        ia, ib = m["ia"].astype(int), m["ib"].astype(int)
        if not len(ia):
            continue
        for fid in (a, b):
            if fid not in xy:
                xy[fid] = features_stage.load(ws, fid)["xy"]
        pick = np.arange(len(ia)) if per_pair is None else \
            np.unique(np.linspace(0, len(ia) - 1, min(per_pair, len(ia))).round().astype(int))
        pa, pb = xy[a][ia[pick]], xy[b][ib[pick]]
        i, j = index[a], index[b]
        out.extend((i, j, float(p[0]), float(p[1]), float(q[0]), float(q[1])) for p, q in zip(pa, pb))
    return out


def solution_path(out, workspace=None) -> Path:
    """The solution the panorama was rendered from: the workspace's ``adjust/solution.json`` (stitch
    copies it to ``OUT/solution.json`` once everything is written), else ``OUT/solution.json``."""
    if workspace is not None:
        p = Path(getattr(workspace, "root", workspace)) / "adjust" / "solution.json"
        if p.exists():
            return p
    return Path(out) / "solution.json"


def write_pto(out, workspace=None, width: int | None = None, height: int | None = None) -> Path:
    """``OUT/panorama.pto`` from the solution (:func:`solution_path`); the panorama size defaults to
    ``OUT/panorama.tif``'s (an equirect full sphere, as Hugin's ``p f2 v360``)."""
    from . import hugin
    from .render.panorama import frames_of

    out = Path(out)
    window = None
    if width is None:
        import rasterio

        with rasterio.open(out / "panorama.tif") as ds:
            width, height, t = ds.width, ds.height, ds.transform
        full = int(round(360.0 / t.a))
        if full != width:  # a cropped panorama: a window of the full-sphere grid (contract transform)
            window = (int(round(t.c / t.a)), int(round((90.0 - t.f) / t.a)), width, height)
            width, height = full, full // 2
    frames = frames_of(solution_path(out, workspace))
    items = [{"image": str(Path(f.path).resolve()), "width": f.width, "height": f.height, "model": f.model}
             for f in frames]
    cps = control_points(workspace if workspace is not None else out / "work", [f.id for f in frames])
    return hugin.write_pto(out / "panorama.pto", items, int(width), int(height or width // 2), cps, window)


def _viewer_meta(solution: Path) -> dict:
    sol = json.loads(solution.read_text())
    meta = {"frames": f"{sum(1 for f in sol['frames'] if f.get('used'))} of {len(sol['frames'])}"}
    rms = (sol.get("stats") or {}).get("rms_px")
    if isinstance(rms, (int, float)):
        meta["RMS"] = f"{rms:.2f} px"
    return meta


def write_products(out, workspace=None, viewer: bool = True, quality: bool = True, pto: bool = True) -> dict:
    """Write the products beside ``OUT/panorama.tif``; returns {name: path} of those written and
    {"failed": {name: message}} for any that could not be."""
    from .quality import write_quality
    from .viewer import write_viewer

    out = Path(out)
    workspace = workspace if workspace is not None else out / "work"
    sol = solution_path(out, workspace)
    jobs = {
        "viewer": (viewer and (out / "preview.jpg").exists(), lambda: write_viewer(out, meta=_viewer_meta(sol))),
        "quality": (quality, lambda: write_quality(sol, out / "quality.png")["path"]),
        "pto": (pto and (out / "panorama.tif").exists(), lambda: write_pto(out, workspace)),
    }
    done, failed = {}, {}
    for name, (wanted, make) in jobs.items():
        if not wanted:
            continue
        try:
            done[name] = str(make())
        except Exception as e:  # noqa: BLE001 -- a missing extra must not cost the user the panorama
            from .atomic import disk_full

            if disk_full(e):  # ...but a full disk must stop the set from being published
                raise
            log.warning("%s: not written (%s: %s)", name, type(e).__name__, e)
            failed[name] = f"{type(e).__name__}: {e}"
    if failed:
        done["failed"] = failed
    return done
