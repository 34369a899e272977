"""Build a georeferenced DEM, its error map and an orthoimage of the site from stereo frames.

Adjusts the frames' pointing with mosaic stitch's registration (unless --no-register), finds the
left/right frames taken together, rectifies each pair the JPL way (one shared linear model per
pair), matches them with OpenCV's semi-global matcher (mirrored left-right check), triangulates,
and fuses the points of all pairs robustly into a DEM (float32, metres above the IAU 2015 Mars
sphere), its predicted 1-sigma error per cell, and an orthoimage (pairs balanced by a gain each)
on the same north-up grid in the site map projection (+proj=eqc +lat_ts=18.4663 +lon_0=0
+R=3396190). Writes into OUT: dem.tif, dem_sigma.tif and ortho.tif (COGs), tiles/, hillshade/ and
sigma/ ({z}/{x}/{y}.png, Mars tile matrix set), item.json (STAC), index.html (Leaflet map that
opens from disk) and report.json. A rerun with the same inputs and options skips what is done.

Example:

    mosaic terrain frames/ -o site/ --gsd 0.02 --radius 15
    mosaic terrain NLF_*.png NRF_*.png -o site/ --site-origin 18.44463,77.45089,-2569.91
    mosaic terrain scene/ -o site/ --solution pano/solution.json   # models adjusted by mosaic stitch
    mosaic terrain scene/ -o site/ --no-register  # map with the labels' pointing as it is
"""

from __future__ import annotations

import argparse
import json
import logging

from mosaic.pipeline.preflight import check
from mosaic.runtime import cluster
from mosaic.runtime.lock import output_folder

from .pipeline import terrain

log = logging.getLogger("mosaic")


def add_arguments(p) -> None:
    p.add_argument("inputs", nargs="+", metavar="IN", help="frames (image + sidecar label) or folders")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    p.add_argument("--gsd", type=float, default=0.02, metavar="METRES", help="DEM cell size (default 0.02)")
    p.add_argument("--radius", type=float, default=20.0, metavar="METRES",
                   help="half-width of the mapped square around the rover (default 20)")
    p.add_argument("--site-origin", metavar="LAT,LON,ELEV",
                   help="SITE frame origin: planetocentric latitude, east longitude (degrees), elevation (m); "
                        "default: from the labels, else the landing site 18.44463,77.45089,-2569.91")
    p.add_argument("--solution", metavar="JSON",
                   help="solution.json whose adjusted models replace the labels' (e.g. from mosaic stitch)")
    p.add_argument("--register", action=argparse.BooleanOptionalAction, default=True,
                   help="first adjust the frames' pointing with mosaic stitch's registration and use it "
                        "(default; not with --solution): label pointing is off by up to a degree")
    p.add_argument("--min-range", type=float, default=1.0, metavar="METRES", help="nearest range matched")
    p.add_argument("--max-range", type=float, default=None, metavar="METRES",
                   help="farthest range kept (default: no fixed limit; points are capped by their expected error)")
    p.add_argument("--no-pair-refinement", action="store_true",
                   help="use the models' relative orientation of each pair as given (no SIFT fit)")
    cluster.add_arguments(p)
    p.add_argument("--force", action="store_true", help="recompute everything (drop the workspace)")
    p.add_argument("--workspace", metavar="DIR", help="intermediate files (default OUT/work)")
    p.add_argument("--keep-points", action="store_true", help="keep the per-pair point files")
    p.add_argument("--no-web", action="store_true", help="skip tiles, item.json and index.html")
    p.add_argument("--json", action="store_true", help="print the run report as JSON")


def run(args) -> int:
    check(args.inputs, args.out)  # labels, camera models, every image whole: bad input before any work
    with output_folder(args.out, force=args.force, command="terrain"):  # one run per folder, as stitch
        report = _terrain(args)
    if args.json:
        print(json.dumps(report, indent=1, default=str))
    else:
        pts = report["stages"]["points"]["points"]
        done = [k for k in ("points", "grid") if report["stages"][k].get("skipped")]
        print(f"{report['stages']['pairs']['pairs']} stereo pairs, {pts} points, "
              f"{100 * report['coverage']:.1f}% of the grid covered, {report['seconds']:.1f} s -> {args.out}"
              + (f" ({' and '.join('stereo' if k == 'points' else k for k in done)} unchanged: skipped)" if done else ""))
    return 0


def _terrain(args) -> dict:
    return terrain(args.inputs, args.out, gsd=args.gsd, radius=args.radius, site_origin=args.site_origin,
                   scheduler=args.scheduler, workspace=args.workspace, keep_points=args.keep_points,
                   web=not args.no_web, solution=args.solution, register=args.register, min_range=args.min_range,
                   max_range=args.max_range, refine_pair=not args.no_pair_refinement, workers=args.workers,
                   threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit, force=args.force)
