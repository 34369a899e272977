"""Stitch frames into a panorama: register them (features, pairs, matches, bundle adjustment) and render.

Inputs are image files, labels or folders (Mars frames with their labels/records, or plain photos);
the output folder, even inside an input folder, is never read as input. Every input is checked
before any work: a bad one stops the run with one line naming the file (exit status 2). Writes:

  OUT/panorama.tif    the panorama, a Cloud Optimized GeoTIFF (equirectangular full sphere by default)
  OUT/preview.jpg     the panorama at most 4096 pixels wide
  OUT/index.html      a 360-degree viewer over the preview: open it in a browser, or `mosaic view OUT`
  OUT/quality.png     which frame fills each pixel, the seams, and the residual per frame
  OUT/panorama.pto    a Hugin project of the solved panorama (with control points)
  OUT/solution.json   the adjusted camera models (LOCAL_LEVEL), residuals, statistics
  OUT/report.json     time, counts and peak memory per stage

The products appear together when the run ends (a failed run, or a full disk, leaves the earlier
run's set as it was). Intermediate artefacts live in OUT/work/; a stage whose inputs and options
are unchanged is skipped, so an interrupted run resumes. One run writes into a folder at a time
(OUT/.mosaic.lock names it); a second refuses (exit status 2).

Examples:

    mosaic stitch frames/ -o out/pan
    mosaic stitch photos/*.jpg -o out/boat --hfov 48
    mosaic stitch frames/ -o out/pan --scheduler tcp://10.0.0.5:8786
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import resource
import shutil
import time
from pathlib import Path

from calib.errors import InputError
from mosaic.formats import pixels
from mosaic.formats import solution as solution_io
from mosaic.formats.solution import render_input
from mosaic.formats.workspace import Workspace, digest, file_digest
from mosaic.pipeline import preflight
from mosaic.pipeline.registration import run_stages, tie_points
from mosaic.pipeline.stages import code_key
from mosaic.runtime import atomic, cluster, lock
from mosaic.runtime.config import FEATURES, PROJECTIONS, StitchConfig, render_options
from mosaic.runtime.memory import PeakMemory, trim_freed

from .products import write_products
from .render import render_panorama
from .render.panorama import preload

log = logging.getLogger("mosaic")


def _maxrss_bytes() -> int:
    """Lifetime peak RSS of self and waited-for children (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    kids = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return int(max(own, kids) * 1024)


#: What ``mosaic stitch`` writes into OUT, published as one set (atomic.Products): the rendered
#: products, then the solution and the report.
RENDERED = ("panorama.tif", "preview.jpg", "index.html", "quality.png", "panorama.pto")
PRODUCTS = RENDERED + ("solution.json", "report.json")


def stitch(inputs, out, config: StitchConfig | None = None, *, client=None, force: bool = False,
           **options) -> dict:
    """Register ``inputs`` into ``out``; returns {"solution", "report"[, "panorama"], "stats"}.

    ``options`` are StitchConfig fields (e.g. ``hfov=48``, ``scheduler="tcp://..."``), applied
    over ``config``. ``client``: an existing dask client to run on (``mosaic batch`` shares one);
    None starts one from the config. ``force``: drop the workspace and recompute everything, and
    take over a lock left by another host (mosaic.runtime.lock).

    Every input is checked first, in this process (mosaic.pipeline.preflight): bad input raises InputError
    before a cluster starts or a byte is written. Then OUT is locked for the run, and the products
    are published together at the end (atomic.Products); a full disk raises atomic.OutputError
    and leaves OUT's earlier products as they were.

    >>> stitch(["frames/"], "out/pan", render=False)["stats"]["rms_px"]  # doctest: +SKIP
    """
    config = (config or StitchConfig()).replace(**options) if options else (config or StitchConfig())
    out = Path(out)
    atomic.check_output_dir(out)
    lock.check(out, force=force)  # a busy folder refuses before the inputs are read
    try:
        checked = preflight.check(inputs, out, config)
        try:
            atomic.output_dir(out)
            with lock.held(out, force=force, command="stitch"):
                return _run(checked, out, config, client, force)
        except atomic.OutputError:
            raise
        except Exception as e:
            full = atomic.disk_full(e, out)
            if full is None:
                raise
            raise atomic.OutputError(out, f"{atomic.full_message(full)}; the folder keeps the products of the "
                                          "earlier run, if any (nothing of this run was published)") from e
    finally:
        pixels.CACHE.clear()


def _run(checked, out: Path, config: StitchConfig, client, force: bool) -> dict:
    """The run after the checks, with OUT locked: the stages, the render, the products."""
    atomic.remove_stale(out, PRODUCTS + (atomic.Products.STAGING,))
    if force:
        shutil.rmtree(out / "work", ignore_errors=True)
    ws = Workspace(out / "work")
    # The frames' own files (labels and images), not the folders named: the output folder may
    # sit inside an input folder, and a frame rewritten in place must change the ingest key.
    if not ws.exists("inputs.json") or ws.read_json("inputs.json") != checked.files:
        ws.write_json(checked.files, "inputs.json")
    if not log.isEnabledFor(logging.DEBUG):
        # The embedded scheduler and workers log every connection at INFO.
        for name in ("distributed", "distributed.scheduler", "distributed.worker", "distributed.core"):
            logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger(name).level))
    t0 = time.perf_counter()
    session = (contextlib.nullcontext(client) if client is not None else
               cluster.client(config.scheduler, workers=config.workers, threads_per_worker=config.threads_per_worker,
                              memory_limit=config.memory_limit))
    with session as client, atomic.Products(out, PRODUCTS) as products:
        # The render's first imports go on in the background while registration runs (not
        # before features ends: see panorama.preload); joined before the render's threads start.
        # Not when features was skipped: an unchanged rerun skips the render too, and would
        # only wait for the import.
        preloading = []

        def after_features(report):
            if not report["skipped"]:
                preloading.append(preload())

        hooks = {"features": after_features} if config.render else None
        stages = run_stages(ws, config, client, after=hooks)
        for t in preloading:
            t.join()
        # Only the features stage reads the checked pixels: the render need not carry them
        # (boat: six 2.5 MP grey decodes).
        pixels.CACHE.clear()
        result = {}
        solution = solution_io.load(ws.path("adjust", "solution.json"))  # read once, handed down
        st = solution["stats"]
        if st.get("mode") == "photos" and not st.get("frames_used"):
            raise InputError(checked.inputs[0], f"none of the {st['frames']} plain photos overlaps another (no "
                             f"verified matches in {st.get('pairs_tried', 0)} pairs tried); give overlapping "
                             "photos, or --hfov")
        data = ws.path("adjust", "solution.json").read_bytes()
        same = (out / "solution.json").exists() and (out / "solution.json").read_bytes() == data
        rendered_from = render_input(solution, warn=config.render)
        if config.render and any(f["used"] for f in rendered_from["frames"]):
            # The registration's tie points over the frames rendered: the photometric fit's best
            # samples (a share held out) and the Hugin project's control points.
            ties = tie_points(ws, [f["id"] for f in rendered_from["frames"] if f.get("used", True)])
            rendered = _render(out, ws, config, client, products, rendered_from, ties)
            trim_freed()  # the render's freed decodes and pyramids: boat's products peaked 507 -> 413 MiB
            if rendered is not None:
                stages["render"] = rendered.pop("stage")
                result.update(rendered)
                made = write_products(products.dir, ws, solution=solution, ties=ties,
                                      render=stages["render"]["counts"])
                result["products"] = {k: (str(out / Path(v).name) if isinstance(v, str) else v)
                                      for k, v in made.items()}
        elif same:
            # Not rendered this time, but the earlier products show this very solution.
            for name in RENDERED:
                products.keep(name)
        if same:
            products.keep("solution.json")  # an unchanged output keeps its mtime
        else:
            atomic.write_bytes(products.path("solution.json"), data)
        report = {"total_s": round(time.perf_counter() - t0, 4), "stages": stages,
                  "peak_rss_mib": round(max([s["peak_rss_mib"] for s in stages.values()] +
                                            [_maxrss_bytes() / 2**20]), 1),
                  "frames": st["frames"], "frames_used": st["frames_used"],
                  "scheduler": config.scheduler or "embedded",
                  "checks": {"seconds": checked.seconds, "frames_kept": checked.kept}}
        atomic.write_json(products.path("report.json"), report)
        products.publish()
    result.update(solution=str(out / "solution.json"), report=str(out / "report.json"), stats=st)
    if "panorama" in result:
        result["panorama"] = str(out / "panorama.tif")
    return result


#: The code the render runs (every module :mod:`mosaic.render.panorama` imports, directly or not,
#: tests/test_architecture.py checks): a change to any of it renders again.
RENDER_CODE = ("calib", "mosaic.render", "mosaic.formats.solution", "mosaic.formats.cog", "mosaic.runtime.atomic", "mosaic.runtime.cluster",
               "mosaic.runtime.progress", "mosaic.runtime.memory")


def _render(out: Path, ws: Workspace, config: StitchConfig, client, products, solution: dict,
            ties: list) -> dict:
    """Render ``solution`` (as :func:`mosaic.formats.solution.render_input` gives it) into the staged
    ``products`` (atomic.Products), the photometric fit sampling ``ties`` first.

    Finished tiles are kept in ``work/render/KEY/`` until the panorama is written, so a killed
    run renders only the missing tiles when started again; a finished render with the same key
    (solution, input files, renderer code) and its outputs present in OUT is skipped, and those
    outputs join the new set unchanged.
    """
    photos = all(r["model"] is None for r in ws.read_json("ingest", "frames.json")["frames"])
    options = render_options(config, photos)
    key = digest("render", hashlib.sha256(json.dumps(solution, sort_keys=True).encode()).hexdigest(),
                 options,
                 code_key(*RENDER_CODE),
                 file_digest([f["image"] for f in solution["frames"] if f.get("used") and Path(f["image"]).exists()]))
    t0 = time.perf_counter()
    if ws.stage_done("render", key) and (out / "panorama.tif").exists() and (out / "preview.jpg").exists():
        products.keep("panorama.tif")
        products.keep("preview.jpg")
        stage = {"wall_s": round(time.perf_counter() - t0, 4), "peak_rss_mib": 0.0, "skipped": True,
                 "counts": ws.stage_report("render")}
        log.info("render: skipped (unchanged)")
        return {"stage": stage, "panorama": str(out / "panorama.tif")}
    ws.invalidate("render")
    with PeakMemory() as mem:
        produced = render_panorama(solution, products.dir, client=client, work_dir=ws.root / "render" / key,
                                   ties=ties,
                                   **options)
    counts = produced if isinstance(produced, dict) else {}
    # The renderer wrote into the staging folder; the products' paths are OUT's once published.
    counts = json.loads(json.dumps(counts, default=str).replace(json.dumps(str(products.dir))[1:-1],
                                                                json.dumps(str(out))[1:-1]))
    ws.mark_done("render", key, counts)
    # The tiles live on in panorama.tif; other keys' folders are stale.
    shutil.rmtree(ws.root / "render", ignore_errors=True)
    stage = {"wall_s": round(time.perf_counter() - t0, 4), "peak_rss_mib": round(mem.peak / 2**20, 1),
             "skipped": False, "counts": counts}
    res = {"stage": stage}
    if products.path("panorama.tif").exists():
        res["panorama"] = str(out / "panorama.tif")
    return res


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = StitchConfig()
    p.add_argument("inputs", nargs="+", metavar="IN", help="frames, labels or folders")
    p.add_argument("-o", "--out", required=True, help="output folder")
    p.add_argument("--config", metavar="TOML", help="options from a TOML file ([stitch] table); flags override it")
    p.add_argument("--hfov", type=float, help="horizontal field of view (deg) of plain photos (default: EXIF or estimated)")
    p.add_argument("--feature", choices=FEATURES, help=f"feature detector (default {d.feature})")
    p.add_argument("--work-megapixels", type=float, help=f"working resolution for features (default {d.work_megapixels})")
    p.add_argument("--min-scale", type=float,
                   help=f"never detect below this fraction of the frame size (default {d.min_scale}; 0: speed over precision)")
    p.add_argument("--max-keypoints", type=int, help=f"keypoints per frame (default {d.max_keypoints})")
    p.add_argument("--margin-deg", type=float, help=f"pointing uncertainty for overlap and guided matching (default {d.margin_deg})")
    p.add_argument("--prior-deg", type=float, help=f"sigma of the prior on reported pointing (default {d.prior_deg})")
    p.add_argument("--seed", type=int, help="RANSAC seed (default 0)")
    cluster.add_arguments(p)
    p.add_argument("--force", action="store_true",
                   help="recompute every stage (drop OUT/work), and take over a lock left by another host")
    p.add_argument("--no-render", action="store_true", help="stop after solution.json")
    p.add_argument("--projection", choices=PROJECTIONS, help=f"output projection (default {d.projection})")
    p.add_argument("--resolution", type=float, metavar="DEG",
                   help="degrees per output pixel (metres for vertical; default: the finest input pixel)")
    p.add_argument("--crop", action=argparse.BooleanOptionalAction, default=None,
                   help="equirect: only the covered window of the sphere (default: for plain photos only)")
    p.add_argument("--max-megapixels", type=float, metavar="MP",
                   help=f"refuse a larger panorama before allocating anything (default {d.max_megapixels:g})")


def run(args) -> int:
    flags = {"hfov": args.hfov, "feature": args.feature, "work_megapixels": args.work_megapixels, "min_scale": args.min_scale,
             "max_keypoints": args.max_keypoints, "margin_deg": args.margin_deg, "prior_deg": args.prior_deg,
             "seed": args.seed, "scheduler": args.scheduler, "workers": args.workers,
             "threads_per_worker": args.threads_per_worker, "memory_limit": args.memory_limit,
             "render": False if args.no_render else None, "projection": args.projection,
             "resolution": args.resolution, "max_megapixels": args.max_megapixels, "crop": args.crop}
    if args.config:
        config = StitchConfig.from_toml(args.config, **flags)
    else:
        config = StitchConfig.from_mapping({k: v for k, v in flags.items() if v is not None})
    result = stitch(args.inputs, args.out, config, force=args.force)
    s = result["stats"]
    log.info("stitch: %d of %d frames used, %s tie points, RMS %s px -> %s", s["frames_used"], s["frames"],
             s["tie_points"], s["rms_px"], os.fspath(args.out))
    return 0
