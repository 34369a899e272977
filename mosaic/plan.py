"""``--dry-run``: what ``mosaic stitch`` / ``mosaic terrain`` would do, without doing it.

Reads the inputs' labels (cheap: headers and records, no pixels), predicts the frame pairs from
the camera models, sizes the output with the renderer's or the gridder's own planner, and
estimates wall time and peak memory from per-item constants measured on this project's
benchmarks. Nothing is written, no cluster is started.

The constants are rough by nature (they were measured on 2 shared CPU cores; time scales down
with cores, roughly, for the parallel stages): they tell a 2-minute job from a 2-hour one and
a laptop job from a cluster one, not the exact second.
"""

from __future__ import annotations

from calib.errors import InputError
from calib.labels import discover
from mosaic.formats.geo import parse_site_origin
from mosaic.pipeline import preflight
from mosaic.pipeline.stages.features import CONFIG_FIELDS, scales
from mosaic.pipeline.stages.ingest import frame_record
from mosaic.pipeline.stages.pairs import pairs_from_models
from mosaic.runtime.cluster import usable_cpus

from .terrain import grid as gridmod
from .terrain import pipeline
from .terrain.stereo_pairs import find_pairs

# -- measured constants ---------------------------------------------------------------------------
# Stitch: fitted by benchmarks/bench_plan.py (which prints the estimate beside the run and the
# constants its runs suggest) on sample_tiles/navcam_360 (10 posed frames of 1280 x 960, 25 pairs,
# 4672 x 2336 x 2 bands out: features 3.0 s, matches 2.0 s, adjust 2.0 s, render 4.0 s, 14.3 s in
# all) and OpenCV's 6 boat photos (10 MP; features 1.4 s, matches 1.4 s, adjust 1.4 s, render of
# 10880 x 2688 x 4 bands 14.3 s, 21.1 s in all), an embedded cluster of 2 threads on 2 shared cores
# (load ~3). Times are per thread (the plan divides the parallel stages by the cluster's threads).
#: features: seconds per frame (decode, mask, write) and per megapixel at detection resolution (SIFT).
STITCH_S_PER_FRAME = 0.35
STITCH_S_PER_WORK_MP = 0.24
#: matches: seconds per predicted pair (guided ratio matching and verification).
STITCH_S_PER_PAIR = 0.17
#: adjust: seconds per frame (serial bundle adjustment).
STITCH_S_PER_FRAME_ADJUST = 0.21
#: render: seconds per output megapixel per band (gains, warp, seams, multi-band blend, COG,
#: preview, quality picture, Hugin project) and fixed.
STITCH_S_PER_OUTPUT_BAND_MP = 0.22
STITCH_S_RENDER_FIXED = 1.7
#: the process: imports, the input checks, starting and closing the cluster.
STITCH_S_FIXED = 2.9
#: plain photos' panorama before their focal lengths are solved: this fraction of their pixels
#: (overlapping photos of a strip; the boat set's window holds 0.47 of them).
PHOTO_WINDOW_FRACTION = 0.5
#: process, dask and OpenCV before any data, bytes.
BASE_BYTES = 100 * 2**20
#: features: bytes per working-resolution pixel of a frame in flight (grey copy, SIFT scale space).
FEATURE_BYTES_PER_PX = 240
#: features: bytes per full-resolution pixel of a frame being decoded (RGB + grey + mask).
DECODE_BYTES_PER_PX = 8
#: render: bytes per output pixel beyond the tiles in flight (COG writer and overviews, preview).
RENDER_BYTES_PER_OUTPUT_PX = 55
# Terrain: benchmarks/bench_plan.py on sample_tiles/navcam_stereo (5 pairs of 640 x 480, a 2001 x
# 2001 grid at 2 cm; 2 threads on 2 shared cores): points 7.4 s, grid and web 9.4 s, 18.6 s in all
# at load ~6 (the runs suggest 9.7 thread-s per pair-megapixel and 2.8e-6 s per cell).
#: stereo: seconds per pair per megapixel of the left frame (rectify, SGBM twice, triangulate).
TERRAIN_S_PER_PAIR_MP = 12.0
#: gridding, tiles and hillshade: seconds per DEM cell.
TERRAIN_S_PER_CELL = 3.5e-6
#: a pair task's memory per megapixel of the left frame, bytes.
TERRAIN_BYTES_PER_PAIR_MP = 490 * 2**20


def _threads(workers, threads_per_worker=None) -> int:
    """Threads of the embedded cluster (mosaic.runtime.cluster.client's defaults)."""
    return max(1, (workers or 1) * (threads_per_worker or usable_cpus()))


def stitch_plan(inputs, config, out=None) -> dict:
    """The plan of ``mosaic stitch inputs -o out`` with ``config`` (a StitchConfig): the labels
    are checked as the run checks them (mosaic.pipeline.preflight), the pixels are not read."""
    paths = preflight.resolve_inputs(inputs, out)
    metas = preflight.frames(paths, out)
    preflight.check_frames(metas)
    records = [frame_record(m, config.hfov) for m in metas]
    posed = [r for r in records if r["model"] is not None]
    photos = [r for r in records if r["model"] is None]
    pairs = pairs_from_models(posed, config.margin_deg, config.min_overlap) if len(posed) > 1 else []
    # Plain photos are paired after feature detection (similarity ranking): at most this many.
    photo_pairs = min(len(photos) * config.neighbours, len(photos) * (len(photos) - 1) // 2)
    options = config.key_of(*CONFIG_FIELDS)

    def scale(r):  # the features stage's detection scale
        return scales(r, options)[0]

    work_mp = sum(r["width"] * r["height"] * scale(r) ** 2 for r in records) / 1e6
    out = preflight.output_plan(records, config)
    threads = _threads(config.workers, getattr(config, "threads_per_worker", None)) if not config.scheduler else None
    par = threads or 1
    seconds = {"start": STITCH_S_FIXED,
               "features": (len(records) * STITCH_S_PER_FRAME + work_mp * STITCH_S_PER_WORK_MP) / par,
               "matches": (len(pairs) + photo_pairs) * STITCH_S_PER_PAIR / par,
               "adjust": len(records) * STITCH_S_PER_FRAME_ADJUST}
    if out is None and photos and config.render:
        # Colour photos (3 bands + alpha) in a window of about this many pixels.
        band_mp = PHOTO_WINDOW_FRACTION * sum(r["width"] * r["height"] for r in photos) / 1e6 * 4
        seconds["render"] = STITCH_S_RENDER_FIXED + band_mp * STITCH_S_PER_OUTPUT_BAND_MP / par
    # A frame in flight: its decoded pixels (full resolution) and SIFT's scale space (working resolution).
    in_flight = max(r["width"] * r["height"] * (DECODE_BYTES_PER_PX + FEATURE_BYTES_PER_PX * scale(r) ** 2)
                    for r in records)
    memory = BASE_BYTES + min(par, len(records)) * in_flight
    if out is not None:
        npx = out["width"] * out["height"]
        seconds["render"] = STITCH_S_RENDER_FIXED + npx / 1e6 * out["bands"] * STITCH_S_PER_OUTPUT_BAND_MP / par
        memory = max(memory, BASE_BYTES + par * out["tile_bytes_estimate"] + npx * RENDER_BYTES_PER_OUTPUT_PX)
    return {
        "command": "stitch", "inputs": paths, "frames": len(records), "with_model": len(posed),
        "plain_photos": len(photos), "predicted_pairs": len(pairs),
        "photo_pairs_at_most": photo_pairs if len(photos) > 1 else 0,
        "output": out, "render": bool(config.render), "threads": threads, "scheduler": config.scheduler or "embedded",
        "estimate_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "estimate_total_seconds": round(sum(seconds.values()), 1),
        "estimate_peak_bytes": int(memory),
    }


def terrain_plan(inputs, gsd=0.02, radius=20.0, site_origin=None, solution=None, workers=None,
                 threads_per_worker=None, scheduler=None, max_dt=None) -> dict:
    """The plan of ``mosaic terrain inputs``: stereo pairs, the DEM grid, time and memory."""
    if not (gsd > 0 and radius > 0):
        raise InputError(None, f"gsd ({gsd}) and radius ({radius}) must be positive", field="grid")
    frames = discover([str(p) for p in inputs])
    if not frames:
        raise InputError(" ".join(map(str, inputs)), "no frames found in the inputs")
    if solution is not None:
        frames, _ = pipeline.apply_solution(frames, solution)
    pairs = find_pairs(frames) if max_dt is None else find_pairs(frames, max_dt=max_dt)
    if not pairs:
        raise InputError(str(inputs[0]), f"no stereo pairs among {len(frames)} frames "
                                         "(need left/right frames taken together)")
    if isinstance(site_origin, str):
        site_origin = parse_site_origin(site_origin, source="--site-origin")
    origin = pipeline._site_origin(frames, site_origin)
    # The grid exactly as the pipeline lays it (centred on the rover, snapped to gsd).
    import numpy as np

    settings = pipeline.TerrainSettings(gsd=float(gsd), radius=float(radius))
    centre = np.median([pipeline.site_offset(p.left) for p in pairs], axis=0)
    spec = gridmod.grid_spec(origin, centre[0], centre[1], settings.radius, settings.gsd,
                             tile=settings.tile, halo=settings.halo())
    cells = spec.width * spec.height
    pair_mp = [p.left.width * p.left.height / 1e6 for p in pairs]
    threads = _threads(workers, threads_per_worker) if not scheduler else None
    par = threads or 1
    seconds = {"stereo": sum(pair_mp) * TERRAIN_S_PER_PAIR_MP / par, "grid": cells * TERRAIN_S_PER_CELL}
    memory = BASE_BYTES + min(par, len(pairs)) * max(pair_mp) * TERRAIN_BYTES_PER_PAIR_MP + cells * 4 * 3
    return {
        "command": "terrain", "frames": len(frames), "pairs": len(pairs),
        "grid": {"width": spec.width, "height": spec.height, "gsd": gsd, "radius": radius, "cells": cells},
        "site_origin": list(origin), "threads": threads, "scheduler": scheduler or "embedded",
        "estimate_seconds": {k: round(v, 1) for k, v in seconds.items()},
        "estimate_total_seconds": round(sum(seconds.values()), 1),
        "estimate_peak_bytes": int(memory),
    }


def _mib(b) -> str:
    return f"{b / 2**20:,.0f} MiB" if b < 2**30 else f"{b / 2**30:,.1f} GiB"


def _duration(s) -> str:
    return f"{s:.0f} s" if s < 120 else (f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h")


def format_plan(p: dict) -> str:
    """The plan as a few lines of text."""
    lines = []
    if p["command"] == "stitch":
        lines.append(f"frames: {p['frames']} ({p['with_model']} with camera models, {p['plain_photos']} plain photos)")
        lines.append(f"pairs: {p['predicted_pairs']} predicted from the models"
                     + (f", up to {p['photo_pairs_at_most']} among the photos" if p["photo_pairs_at_most"] else ""))
        o = p["output"]
        if o:
            lines.append(f"output: panorama.tif {o['width']} x {o['height']} {o['projection']}, "
                         f"{o['bands']} bands {o['dtype']}, {o['tiles']} tiles, ~{_mib(o['bytes_estimate'])} uncompressed")
        elif not p["render"]:
            lines.append("output: solution.json only (no rendering asked)")
        else:
            lines.append("output: panorama size is known once the photos' focal lengths are solved (the estimate "
                         f"assumes {PHOTO_WINDOW_FRACTION:g} of their pixels)")
    else:
        g = p["grid"]
        lines.append(f"frames: {p['frames']}, stereo pairs: {p['pairs']}")
        lines.append(f"output: dem.tif and ortho.tif {g['width']} x {g['height']} at {g['gsd']:g} m "
                     f"({2 * g['radius']:g} m square)")
    par = f"{p['threads']} thread(s)" if p["threads"] else f"cluster {p['scheduler']}"
    per = ", ".join(f"{k} {_duration(v)}" for k, v in p["estimate_seconds"].items())
    lines.append(f"estimate: ~{_duration(p['estimate_total_seconds'])} on {par} ({per}), "
                 f"peak memory ~{_mib(p['estimate_peak_bytes'])}")
    lines.append("dry run: nothing computed or written")
    return "\n".join(lines)
