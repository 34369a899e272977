"""Everything written beside a rendered panorama: the viewer page, the quality picture and a Hugin
project.

``write_products(out, workspace, solution=..., ties=..., render=...)`` runs after
``render_panorama`` has written ``OUT/panorama.tif`` and ``OUT/preview.jpg`` and adds:

- ``OUT/index.html`` — the 360-degree viewer (:func:`mosaic.formats.viewer.write_viewer`) over the
  preview, with the frame count and RMS in its corner; opens from disk.
- ``OUT/quality.png`` — which frame fills each pixel, the seams, and the residual per frame
  (:mod:`mosaic.products.quality`).
- ``OUT/panorama.pto`` — a Hugin project of the solved panorama (:mod:`mosaic.formats.hugin`): every used
  frame with a lens fitted to its adjusted model, the panorama's size and projection, and control
  points from the registration's verified matches (the tie points the render was given, or
  :func:`mosaic.pipeline.registration.tie_points` from the workspace), so ``nona OUT/panorama.pto``
  re-renders our geometry and Hugin can open, inspect and re-optimise it.

Each product is independent: one that fails is logged and skipped (the panorama is still good),
and the result says which were written.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path

from mosaic.formats import hugin
from mosaic.formats import solution as solution_io
from mosaic.formats.viewer import write_viewer
from mosaic.pipeline import registration
from mosaic.products import quality as quality_picture
from mosaic.render.panorama import frames_of
from mosaic.runtime.atomic import disk_full

log = logging.getLogger("mosaic")

#: Control points written per frame pair (evenly subsampled from the verified matches): enough for
#: Hugin's optimiser and its control-point table, small enough to keep the project readable.
MAX_POINTS_PER_PAIR = 40


def control_points(workspace, frame_ids, per_pair: int | None = MAX_POINTS_PER_PAIR):
    """(i, j, xi, yi, xj, yj) for the verified matches between frames in ``frame_ids`` (their
    index in that list), in pixels of the frames as delivered (centre convention, as Hugin's);
    at most ``per_pair`` per pair, evenly spread (None: all), in a fixed order
    (:func:`mosaic.pipeline.registration.tie_points`)."""
    return registration.per_pair(registration.tie_points(workspace, frame_ids), per_pair)


def solution_path(out, workspace=None) -> Path:
    """The solution the panorama was rendered from: the workspace's ``adjust/solution.json`` (stitch
    copies it to ``OUT/solution.json`` once everything is written), else ``OUT/solution.json``."""
    if workspace is not None:
        p = Path(getattr(workspace, "root", workspace)) / "adjust" / "solution.json"
        if p.exists():
            return p
    return Path(out) / "solution.json"


def write_pto(out, workspace=None, width: int | None = None, height: int | None = None, *, solution=None,
              ties=None, render: dict | None = None) -> Path:
    """``OUT/panorama.pto`` from the solution (a dict as rendered, else :func:`solution_path`); the
    panorama size is the render's (``render``: what ``render_panorama`` returned), else
    ``OUT/panorama.tif``'s (an equirect full sphere, as Hugin's ``p f2 v360``, or a window of it).
    ``ties``: the registration's tie points over the solution's used frames (all of them;
    default: read from the workspace)."""
    out = Path(out)
    window = None
    if width is None and render and render.get("projection") == "equirect":
        width, height = render["width"], render["height"]
        if render.get("window"):  # a cropped panorama: a window of the full-sphere grid
            x0, y0, full_width, full_height = render["window"]
            window, width, height = (x0, y0, width, height), full_width, full_height
    elif width is None:
        import rasterio

        with rasterio.open(out / "panorama.tif") as ds:
            width, height, t = ds.width, ds.height, ds.transform
        full = int(round(360.0 / t.a))
        if full != width:  # a cropped panorama: a window of the full-sphere grid (contract transform)
            window = (int(round(t.c / t.a)), int(round((90.0 - t.f) / t.a)), width, height)
            width, height = full, full // 2
    frames = frames_of(solution if solution is not None else solution_path(out, workspace))
    items = [{"image": str(Path(f.path).resolve()), "width": f.width, "height": f.height, "model": f.model}
             for f in frames]
    if ties is None:
        cps = control_points(workspace if workspace is not None else out / "work", [f.id for f in frames])
    else:
        cps = registration.per_pair(ties, MAX_POINTS_PER_PAIR)
    return hugin.write_pto(out / "panorama.pto", items, int(width), int(height or width // 2), cps, window)


def write_products(out, workspace=None, viewer: bool = True, quality: bool = True, pto: bool = True, *,
                   solution=None, ties=None, render: dict | None = None) -> dict:
    """Write the products beside ``OUT/panorama.tif``; returns {name: path} of those written and
    {"failed": {name: message}} for any that could not be. ``solution``: the solution as adjusted
    (a dict; default: read from :func:`solution_path`); the quality picture and the Hugin project
    show the frames the render used (:func:`mosaic.formats.solution.render_input`). ``ties``: the
    registration's tie points over those frames (default: read from the workspace); ``render``: what
    the render returned (the panorama's size and window; default: read from ``panorama.tif``)."""
    out = Path(out)
    workspace = workspace if workspace is not None else out / "work"

    @functools.cache
    def adjusted():  # read on need: without a solution, only the products that need it fail
        return solution if solution is not None else solution_io.load(solution_path(out, workspace))

    def rendered():
        return solution_io.render_input(adjusted(), warn=False)

    jobs = {
        "viewer": (viewer and (out / "preview.jpg").exists(),
                   lambda: write_viewer(out, meta=solution_io.summary(adjusted()))),
        # The picture of a run leaves the overlap agreement to `mosaic eval OUT`: it decodes every
        # frame again at full resolution, boat's peak 482-507 -> 569-598 MiB.
        "quality": (quality, lambda: quality_picture.write_quality(rendered(), out / "quality.png",
                                                                     agreement=False)["path"]),
        "pto": (pto and (out / "panorama.tif").exists(),
                lambda: write_pto(out, workspace, solution=rendered(), ties=ties, render=render)),
    }
    done, failed = {}, {}
    for name, (wanted, make) in jobs.items():
        if not wanted:
            continue
        try:
            done[name] = str(make())
        except Exception as e:  # noqa: BLE001 -- a missing extra must not cost the user the panorama
            if disk_full(e):  # ...but a full disk must stop the set from being published
                raise
            log.warning("%s: not written (%s: %s)", name, type(e).__name__, e)
            failed[name] = f"{type(e).__name__}: {e}"
    if failed:
        done["failed"] = failed
    return done
