"""Generate a synthetic Jezero scene with ground truth (frames, records, true models, DEM).

Frames are ray cast against a seeded terrain (regolith plain, rocks, craters, a scarp on the
horizon) through the nominal Navcam / Mastcam-Z models posed by the mast, with the true pointing
0.5-1 degree off the reported one, exposure differences, vignetting, noise and 8-bit companding;
on request the troubles of real frames: a veiling sun glare, dark borders, 12-bit linear data
(the truth of each is in scene.json). The same arguments give the same bytes.

Scenes: navcam-360, navcam-stereo, mastcamz-pan, mastcamz-360.

Example:

    mosaic synth out/scene --scene navcam-360 --seed 1 --scale 8
    mosaic synth out/rough --scene navcam-360 --scale 8 --glare 3000 --dark-borders --bits 12
    mosaic eval out/stitch --truth out/scene
"""

from __future__ import annotations

import logging
import time

from calib.errors import InputError

from . import writer
from .render import Photometry
from .scenes import SCENES

log = logging.getLogger("mosaic.synth")


def add_arguments(p):
    p.add_argument("out", help="output folder (created)")
    p.add_argument("--scene", required=True, choices=sorted(SCENES), help="which scene")
    p.add_argument("--seed", type=int, default=0, help="terrain and perturbation seed (default 0)")
    p.add_argument("--scale", type=int, default=None,
                   help="downsample factor of the frames (default: 4 for Navcam scenes, 1 for Mastcam-Z)")
    p.add_argument("--zoom", type=float, default=None, help="Mastcam-Z focal length in mm (default 34)")
    p.add_argument("--tiles", action="store_true",
                   help="write Navcam frames as raw-feed tiles of 1288x968 with subframeRect (scale < 4)")
    p.add_argument("--jobs", type=int, default=None, help="render processes (default: all cores)")
    p.add_argument("--exposure", type=float, default=0.15, metavar="E",
                   help="per-frame exposure uniform in [1-E, 1+E] (default 0.15)")
    p.add_argument("--vignetting", type=float, default=0.3, metavar="V",
                   help="radial vignetting 1 - V r^2, r over the sensor's half diagonal (default 0.3)")
    p.add_argument("--glare", type=float, default=0.0, metavar="DN",
                   help="veiling glare of frames aimed near the sun, DN at the sun (12-bit; default 0: none)")
    p.add_argument("--dark-borders", action="store_true",
                   help="blank and dim edge rows and columns, as linearised Curiosity Navcam products have")
    p.add_argument("--bits", type=int, choices=(8, 12), default=8,
                   help="8: square-root companded 8-bit PNG (default); 12: linear 12-bit DN in 16-bit PNG")


def run(args) -> int:
    if args.scale is not None and not 1 <= args.scale <= 64:
        raise InputError(None, f"scale must be 1-64, got {args.scale}", field="--scale")
    if args.seed < 0:
        raise InputError(None, f"seed must be >= 0, got {args.seed}", field="--seed")
    if not 0 <= args.exposure < 1:
        raise InputError(None, f"exposure spread must be in [0, 1), got {args.exposure}", field="--exposure")
    if not 0 <= args.vignetting < 1:
        raise InputError(None, f"vignetting must be in [0, 1), got {args.vignetting}", field="--vignetting")
    if args.glare < 0:
        raise InputError(None, f"glare must be >= 0, got {args.glare}", field="--glare")
    phot = Photometry(exposure=args.exposure, vignetting=args.vignetting, glare=args.glare,
                      dark_borders=args.dark_borders, response="linear12" if args.bits == 12 else "sqrt8")
    t0 = time.perf_counter()
    params, timing = writer.synthesise(args.out, args.scene, seed=args.seed, scale=args.scale,
                                       zoom_mm=args.zoom, tiles=args.tiles, jobs=args.jobs, photometry=phot)
    log.info("synth: %s, %d frames at 1/%d, seed %d -> %s in %.1f s (terrain %.1f s, render %.1f s)",
             args.scene, len(params["frames"]), params["scale"], params["seed"], args.out,
             time.perf_counter() - t0, timing["terrain_s"], timing["render_s"])
    return 0
