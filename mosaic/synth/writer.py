"""Write a synthetic scene: frames (PNG + raw-image JSON record), truth and parameters.

Layout of ``OUT``::

    <imageid>01.png, <imageid>01.json   one per frame: 8-bit grey PNG, public-feed record with the
                                        *reported* model (RNAV) and the rover attitude
    scene.json                          every parameter, per-frame pointing errors and exposures
    truth/solution.json                 true models in LOCAL_LEVEL, the stitcher's schema
    truth/dem.tif, truth/albedo.tif     the terrain on a north-up site-map grid (float32)

Frames render in a process pool; each frame draws from its own generator seeded by
(seed, frame index), so the bytes do not depend on the number of workers or their order.
"""

from __future__ import annotations

import concurrent.futures as cf
import math
import multiprocessing
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from calib.instruments import instrument
from calib.mast import mast_pivot
from calib.meta import LOCAL_LEVEL
from calib.models import model_from_dict
from calib.rotation import matrix_to_quat
from mosaic.formats import geo
from mosaic.runtime import progress
from mosaic.runtime.atomic import atomic_path, write_json

from . import render, scenes
from .terrain import jezero_floor

#: Sol, site and drive written into the records (any plausible values).
SOL, SITE_INDEX, DRIVE = 100, 3, 120
SCLK0 = 667000000.0
DEM_HALF_M = 25.0


@dataclass(frozen=True)
class FramePlan:
    index: int
    shot: scenes.Shot
    imageid: str
    subframe: tuple
    tile: int
    downsample: int
    pointing: int
    error_rot: np.ndarray
    error_rotvec: np.ndarray
    exposure: float
    sclk: float


_PREFIX = {"NAVCAM_LEFT": ("NLF", "NCAM"), "NAVCAM_RIGHT": ("NRF", "NCAM"),
           "MCZ_LEFT": ("ZL0", "ZCAM"), "MCZ_RIGHT": ("ZR0", "ZCAM")}


def _imageid(shot, sclk, tile, downsample, seq_index):
    cam, seq = _PREFIX[shot.instrument]
    whole = int(sclk)
    frac = int(round((sclk - whole) * 1000)) % 1000
    return (f"{cam}_{SOL:04d}_{whole:010d}_{frac:03d}ECM_N{SITE_INDEX:03d}{DRIVE:04d}"
            f"{seq}{shot.sequence:03d}{seq_index:02d}_{tile:02d}_{shot.tier:01d}{downsample:02d}J")


def plan_frames(scene, seed, scale, zoom_mm=None, tiles=False, exposure_spread=0.15):
    """Every frame of the scene with its perturbation, exposure and name (deterministic)."""
    shots = scenes.scene_shots(scene, zoom_mm)
    plans = []
    k = 0
    pointings: dict[tuple, int] = {}
    for j, shot in enumerate(shots):
        inst = instrument(shot.instrument)
        if tiles and shot.instrument.startswith("NAVCAM"):
            subs = scenes.navcam_tiles(inst.width, inst.height, scale)
        else:
            subs = [(1, 1, inst.width, inst.height)]
        # The error is the mast's: one per commanded pointing, shared by the tiles and by both
        # cameras of a stereo pair (rigid on the same head), which also share the clock.
        pointing = pointings.setdefault((shot.sequence, shot.mast_az, shot.mast_el), len(pointings))
        rot, rotvec = scenes.pointing_error(np.random.default_rng([seed, 1, pointing]))
        exposure = float(np.random.default_rng([seed, 4, j]).uniform(1.0 - exposure_spread, 1.0 + exposure_spread))
        for t, sub in enumerate(subs):
            sclk = SCLK0 + 37.25 * pointing + 0.125 * t + (seed % 1000) * 1000.0
            ident = _imageid(shot, sclk, t + 1 if len(subs) > 1 else 0, scale, pointing % 100)
            plans.append(FramePlan(k, shot, ident, sub, t, scale, pointing, rot, rotvec, exposure, sclk))
            k += 1
    return plans


def _fmt(v):
    return "(" + ",".join(f"{float(x):.9g}" for x in np.ravel(v)) + ")"


def _components(model):
    d = model.to_dict()
    parts = [_fmt(d[n]) for n in ("C", "A", "H", "V", "O", "R", "E") if n in d]
    if model.type == "CAHVORE":
        parts += [str(int(d["T"])), f"{float(d['P']):.9g}"]
    return ";".join(parts)


def record(plan, reported, width, height, attitude_q, rover_pos, rnav_to_site):
    """The public raw-image feed record of a frame (values as strings, as the feed has them)."""
    shot = plan.shot
    x0, y0, w, h = plan.subframe
    return {
        "imageid": plan.imageid,
        "sol": SOL,
        "site": SITE_INDEX,
        "drive": DRIVE,
        "attitude": _fmt(attitude_q),
        "camera": {
            "instrument": shot.instrument,
            "filter_name": "UNK",
            "camera_model_type": reported.type,
            "camera_model_component_list": _components(reported),
            "camera_position": _fmt(reported.C),
            "camera_vector": _fmt(rnav_to_site @ reported.A),
        },
        "extended": {
            "mastAz": f"{shot.mast_az:.4f}",
            "mastEl": f"{shot.mast_el:.4f}",
            "sclk": f"{plan.sclk:.3f}",
            "scaleFactor": str(plan.downsample),
            "xyz": _fmt(rover_pos),
            "subframeRect": f"({x0},{y0},{w},{h})",
            "dimension": f"({width},{height})",
            "zoom": "UNK" if shot.zoom_mm is None else f"{shot.zoom_mm:g}",
        },
        "sample_type": "Full",
        "image_files": {"full_res": plan.imageid + "01.png"},
        "credit": "synthetic (mosaic synth)",
        "caption": "Synthetic Jezero scene rendered by ray casting; not a NASA image.",
    }


class _Job:
    """What a worker needs for every frame (inherited by fork, built once per process)."""

    terrain = None


def _render_one(args):
    plan, site_model_dict, width, height, sensor, seed, phot = args
    model_site = model_from_dict(site_model_dict)
    rad, _ = render.radiance(_Job.terrain, model_site, width, height)
    rng = np.random.default_rng([seed, 2, plan.index])
    veil = None
    if phot.glare > 0:
        yy, xx = np.mgrid[0:height, 0:width]
        _, dirs = model_site.backproject(np.stack([xx.ravel(), yy.ravel()], 1).astype(float))
        flip = np.array([1.0, 1.0, -1.0])  # SITE (down) -> north-east-up
        veil = render.veil(np.nan_to_num(dirs * flip), model_site.boresight(width, height) * flip,
                           _Job.terrain.sun_vector(), phot.glare).reshape(height, width)
    return render.expose(rad, sensor, plan.exposure, rng, photometry=phot, veil_dn=veil)


def _save_png(path, img):
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(img).save(tmp, format="PNG", compress_level=6)


def _write_grid_tif(path, data, transform, nodata, description):
    import rasterio

    with atomic_path(path) as tmp:
        with rasterio.open(tmp, "w", driver="GTiff", width=data.shape[1], height=data.shape[0], count=1,
                           dtype="float32", crs=geo.site_crs_wkt(), transform=transform, nodata=nodata,
                           compress="deflate", predictor=3, tiled=True, blockxsize=256, blockysize=256) as ds:
            ds.write(data.astype(np.float32), 1)
            ds.set_band_description(1, description)


def write_truth_rasters(terrain, truth_dir, gsd, half=DEM_HALF_M, origin=geo.DEFAULT_SITE_ORIGIN):
    """truth/dem.tif (elevation above the Mars sphere) and truth/albedo.tif, north-up, on the
    site map grid snapped to ``gsd`` and covering ``half`` metres around the rover."""
    rx, ry = terrain.rover_xy
    transform = geo.grid_transform(origin, ry - half, rx + half, gsd)
    n = int(math.ceil(2 * half / gsd)) + 1
    cols, rows = np.meshgrid(np.arange(n) + 0.5, np.arange(n) + 0.5)
    east = transform.c + transform.a * cols.ravel()
    north = transform.f + transform.e * rows.ravel()
    x, y = geo.map_to_local_level(east, north, origin)
    hup = terrain.height(np.asarray(x, float), np.asarray(y, float))
    alb = terrain.albedo(np.asarray(x, float), np.asarray(y, float), np.full(x.size, gsd))
    nodata = -32768.0
    dem = np.where(np.isfinite(hup), geo.elevation(-hup, origin), nodata).reshape(n, n)
    _write_grid_tif(truth_dir / "dem.tif", dem, transform, nodata, "elevation above the Mars sphere (m)")
    _write_grid_tif(truth_dir / "albedo.tif", np.where(np.isfinite(alb), alb, nodata).reshape(n, n), transform,
                    nodata, "albedo")
    return {"gsd_m": gsd, "size": [n, n], "transform": list(transform)[:6], "half_extent_m": half}


def synthesise(out, scene, seed=0, scale=None, zoom_mm=None, tiles=False, jobs=None,
               photometry: render.Photometry = render.Photometry()):
    """Generate a scene into ``out``; returns (the parameters written to scene.json, timings in s).
    ``photometry``: exposure spread, vignetting, glare, dark borders and response of the frames."""
    out = Path(out)
    scenes.scene_shots(scene, zoom_mm)  # validates the name and zoom
    _, default_scale, description = scenes.SCENES[scene]
    scale = int(default_scale if scale is None else scale)
    t0 = time.perf_counter()
    terrain = jezero_floor(seed)
    t_terrain = time.perf_counter() - t0
    rover_pos = terrain.rover_position()
    rng = np.random.default_rng([seed, 3])
    rnav_to_site, heading, pitch, roll = scenes.rover_attitude(rng)
    quat = matrix_to_quat(rnav_to_site)
    pivot = mast_pivot()
    plans = plan_frames(scene, seed, scale, zoom_mm, tiles, photometry.exposure)

    tasks = []
    frames_truth = []
    frames_param = []
    out.mkdir(parents=True, exist_ok=True)
    for p in plans:
        inst = instrument(p.shot.instrument)
        reported = inst.model(p.shot.mast_az, p.shot.mast_el, zoom_mm=p.shot.zoom_mm,
                              downsample=p.downsample, subframe=p.subframe)
        true = reported.moved(p.error_rot, pivot=pivot)
        width, height = inst.product_size(p.downsample, p.subframe)
        site_model = true.transformed(rnav_to_site, rover_pos)
        sensor = render.Sensor(inst.width, inst.height, p.subframe, p.downsample)
        tasks.append((p, site_model.to_dict(), width, height, sensor, seed, photometry))
        write_json(out / (p.imageid + "01.json"), record(p, reported, width, height, quat, rover_pos, rnav_to_site))
        frames_truth.append({
            "id": p.imageid, "image": p.imageid + "01.png", "width": width, "height": height, "used": True,
            "model": true.transformed(rnav_to_site, np.zeros(3)).to_dict(), "frame": LOCAL_LEVEL,
            "residual_px": {"rms": 0.0, "n": 0},
            "instrument": p.shot.instrument, "downsample": p.downsample, "subframe": list(p.subframe),
        })
        frames_param.append({
            "id": p.imageid, "instrument": p.shot.instrument, "mast_az": p.shot.mast_az, "mast_el": p.shot.mast_el,
            "zoom_mm": p.shot.zoom_mm, "tier": p.shot.tier, "subframe": list(p.subframe),
            "pointing_error_rotvec_rnav": [float(v) for v in p.error_rotvec],
            "pointing_error_deg": float(np.degrees(np.linalg.norm(p.error_rotvec))),
            "pointing": p.pointing,
            "exposure": p.exposure,
        })
        if photometry.glare > 0:
            flip = np.array([1.0, 1.0, -1.0])
            b = site_model.boresight(width, height) * flip
            ab = float(np.arccos(np.clip(b @ terrain.sun_vector(), -1, 1)))
            frames_param[-1]["glare_dn"] = float(photometry.glare * np.exp(-ab / render.GLARE_FALLOFF))

    t1 = time.perf_counter()
    _Job.terrain = terrain
    jobs = max(1, int(jobs or os.cpu_count() or 1))
    with progress.stage(f"render {scene}", len(tasks)) as bar:
        if jobs > 1 and len(tasks) > 1:
            ctx = multiprocessing.get_context("fork")
            with cf.ProcessPoolExecutor(max_workers=min(jobs, len(tasks)), mp_context=ctx) as pool:
                for (p, *_), img in zip(tasks, pool.map(_render_one, tasks)):
                    _save_png(out / (p.imageid + "01.png"), img)
                    bar.advance()
        else:
            for task in tasks:
                _save_png(out / (task[0].imageid + "01.png"), _render_one(task))
                bar.advance()
    t_render = time.perf_counter() - t1

    truth = out / "truth"
    grid = write_truth_rasters(terrain, truth, gsd=0.0125 * max(scale, 2))
    write_json(truth / "solution.json", {
        "frames": frames_truth,
        "stats": {"rms_px": 0.0, "tie_points": 0, "pairs": 0, "frames": len(frames_truth), "source": "truth"},
    })
    params = {
        "scene": scene, "description": description, "seed": int(seed), "scale": scale, "zoom_mm": zoom_mm,
        "tiles": bool(tiles),
        "site_origin": {"lat": geo.DEFAULT_SITE_ORIGIN.lat, "lon": geo.DEFAULT_SITE_ORIGIN.lon,
                        "elev": geo.DEFAULT_SITE_ORIGIN.elev},
        "rover": {"position_site": [float(v) for v in rover_pos], "attitude": [float(v) for v in quat],
                  "heading_deg": heading, "pitch_deg": pitch, "roll_deg": roll},
        "terrain": {"generator": "jezero_floor", "sun_azel_deg": list(terrain.sun_azel),
                    "layers": [{"name": l.name, "cell_m": l.cell, "size": list(l.shape)} for l in terrain.layers],
                    "rock_sfd": "N(>D) = 0.002 D^-2.5 per m^2"},
        "truth_grid": grid,
        "photometry": photometry.to_dict(),
        "mast_pivot_rnav": [float(v) for v in pivot],
        "frames": frames_param,
    }
    write_json(out / "scene.json", params)
    return params, {"terrain_s": t_terrain, "render_s": t_render}
