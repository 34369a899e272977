"""The terrain pipeline: stereo frames -> DEM, its error and an orthoimage of the site, georeferenced.

Stages (each a dask task graph; artefacts under ``OUT/work``; a stage whose key, a hash of its
inputs, its options and the code it runs, is unchanged is skipped, so an unchanged rerun redoes
neither stereo nor gridding, and an upgrade of any module a stage runs redoes it):

1. pairs: frames are read (``calib.labels.discover``) and paired (``stereo_pairs.find_pairs``);
2. register (default on): the registration stages of ``mosaic stitch`` (features, pairs, matches,
   bundle adjustment; ``mosaic.pipeline.registration.run_stages``) on the same dask client, into
   ``OUT/work/registration``; the frames take its adjusted models. The labels' pointing is off by
   up to a degree, which tilts each pair's surface about the mast: on our synthetic scenes it is
   the largest error of the DEM near the rover (docs/terrain.md);
3. stereo, one task per pair (``stereo.process_pair``): rectify, match, triangulate, bucket the
   points by output tile; a pair that yields nothing is reported by name and left out;
4. gains (``ortho.solve_gains``): one brightness gain per pair from the overlaps of their orthos;
5. grid, one task per output tile (``fuse.grid_tile``): robust fusion, honest holes, sigma; each
   tile's arrays are saved in the workspace;
6. products: ``dem.tif`` (float32, nodata -32768, metres above the IAU 2015 Mars sphere),
   ``dem_sigma.tif`` (float32, each valid cell's predicted 1-sigma height error, m),
   ``ortho.tif`` (8-bit gray + alpha), then web tiles of the ortho, a hillshade and the sigma
   (``mosaic.formats.webtiles``), ``item.json`` (``mosaic.formats.stac``) and ``index.html`` (``mosaic.formats.webmap``),
   all on the same grid.

Frames: points live in LOCAL_LEVEL of their frame (rover origin, north-east-down), plus the
rover's position in SITE; the SITE origin is the map's anchor (``site_origin``: the label's, then
``--site-origin``, else the landing site), with elevation = origin elevation - z_down.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from calib.errors import InputError
from calib.labels import discover
from calib.meta import LOCAL_LEVEL
from calib.models import model_from_dict
from mosaic.formats import solution, stac
from mosaic.formats.cog import CogWriter
from mosaic.formats.geo import DEFAULT_SITE_ORIGIN, SiteOrigin, parse_site_origin, site_crs_wkt
from mosaic.formats.webmap import WEB, write_map
from mosaic.formats.webtiles import SIGMA_LEGEND, write_tiles
from mosaic.formats.workspace import Workspace, digest, file_digest, resumable
from mosaic.pipeline.registration import run_stages
from mosaic.pipeline.stages import code_key
from mosaic.runtime import atomic, cluster
from mosaic.runtime.config import StitchConfig

from . import fuse as fusemod
from . import grid as gridmod
from . import ortho
from .stereo import StereoSettings, process_pair, site_offset
from .stereo_pairs import find_pairs

log = logging.getLogger("mosaic")

DEM_NODATA = -32768.0
#: What a run writes into OUT (and removes the temporary leftovers of).
OUTPUTS = ("dem.tif", "dem_sigma.tif", "ortho.tif", "solution.json", "report.json", "item.json", "index.html")
#: The code each stage runs: a change to any of it re-runs the stage.
STEREO_CODE = ("calib", "mosaic.formats.geo", "mosaic.terrain.stereo", "mosaic.terrain.rectify", "mosaic.terrain.relative",
               "mosaic.terrain.disparity", "mosaic.terrain.triangulate", "mosaic.terrain.grid", "mosaic.terrain.ortho")
GRID_CODE = ("mosaic.terrain.fuse", "mosaic.terrain.grid", "mosaic.terrain.ortho")
PRODUCTS_CODE = ("mosaic.terrain.pipeline", "mosaic.formats.cog", "mosaic.formats.webtiles", "mosaic.formats.webmap", "mosaic.formats.stac",
                 "mosaic.formats.solution")


@dataclass(frozen=True)
class TerrainSettings:
    gsd: float = 0.02              # metres per DEM cell
    radius: float = 20.0           # metres around the rover
    min_range: float = 1.0         # nearest depth matched: the disparity search reaches f b / min_range
    max_range: float | None = None  # farthest range kept (None: capped by max_sigma only)
    max_sigma: float = 2.0         # m: points whose predicted error along the ray exceeds this are dropped
    min_angle_deg: float = 0.3     # triangulation angle limit
    lr_tolerance: float = 1.5      # px, left-right check
    max_pixels: int = 4_000_000    # rectified image area cap
    max_disparity: int = 512       # px, cap on the disparity search
    tile: int = 512                # output tile (cells): a grid task holds one tile's points
    fill: int = 16                 # widest gap filled (cells)
    jump_m: float = 0.10           # a gap whose sides differ by more than max(3 sigma, jump_m) stays open
    outlier_m: float = 0.5         # neighbourhood test: samples this far (or 3 sigma) from the local median go
    gross_m: float = 5.0           # ...and samples this far from the median of the widest neighbourhood (4.8 m)
    block_m: float = 0.2           # block of the neighbourhood test (m)
    max_cell_sigma: float = 0.25   # m: a cell whose samples leave it less certain than this stays empty
    pointing_sigma_deg: float = 0.45  # per-axis 1-sigma pointing error of the labels' models (one per pointing)
    block: int = 5                 # SGBM block (px)
    max_dt: float = 1.0            # s, clock difference of a pair
    refine_pair: bool = True       # correct the right eye's rotation from sparse matches

    def stereo(self) -> StereoSettings:
        return StereoSettings(**{k: getattr(self, k) for k in StereoSettings.__dataclass_fields__})

    def fuse(self, pointing_sigma_deg: float) -> fusemod.FuseSettings:
        return fusemod.FuseSettings(fill=self.fill, jump_m=self.jump_m, outlier_m=self.outlier_m,
                                    gross_m=self.gross_m, block_m=self.block_m, max_sigma=self.max_cell_sigma,
                                    pointing_sigma_deg=pointing_sigma_deg)

    def halo(self) -> int:
        """Cells a tile reads beyond its edges: the widest gap and the 3 x 3 blocks of the test.
        The points are bucketed with it, so it does not shrink below the default fill's: a
        narrower fill then changes the grid stage only."""
        return max(max(self.fill, 16) + 1, 2 * max(1, int(round(self.block_m / self.gsd))))


def grid_one_tile(points_root: str, spec: dict, tile_index, fuse: fusemod.FuseSettings, gains, dest: str) -> dict:
    """One output tile, saved into ``dest`` (an .npz of height, value, sigma, filled) when any
    point falls in it; returns its counts."""
    g = gridmod.GridSpec.from_dict(spec)
    pts = gridmod.load_points(points_root, tile_index)
    if pts.shape[1] == 0:
        return {"tile": list(tile_index), "cells": 0, "filled": 0}
    a = fusemod.grid_tile(g, tile_index, pts, fuse, gains)
    with atomic.atomic_path(dest) as tmp, open(tmp, "wb") as f:
        np.savez(f, **a)
    valid = np.isfinite(a["height"])
    return {"tile": list(tile_index), "cells": int(valid.sum()), "filled": int((a["filled"] & valid).sum()),
            "file": dest}


def _site_origin(frames, site_origin):
    if site_origin is not None:
        return site_origin if isinstance(site_origin, SiteOrigin) else parse_site_origin(site_origin)
    for f in frames:
        o = f.extra.get("site_origin") if f.extra else None
        if o is not None:
            return SiteOrigin(*(float(v) for v in o))
    return DEFAULT_SITE_ORIGIN


def _register(ws, inputs, frames, client):
    """The frames with the models of ``mosaic stitch``'s registration run on ``client`` into the
    workspace's ``registration/`` (skipped stage by stage when unchanged); (frames, report), or
    (frames, None) when the frames cannot be registered (the labels' models are kept)."""
    t = time.perf_counter()
    reg = Workspace(ws.root / "registration")
    paths = sorted(str(Path(p).resolve()) for p in inputs)
    if not reg.exists("inputs.json") or reg.read_json("inputs.json") != paths:
        reg.write_json(paths, "inputs.json")
    try:
        stages = run_stages(reg, StitchConfig(render=False), client)
        path = reg.path("adjust", "solution.json")
        frames, n = apply_solution(frames, path)
    except InputError as e:
        log.warning("terrain: registration failed (%s); mapping with the labels' pointing", e)
        return frames, None
    stats = reg.read_json("adjust", "solution.json")["stats"]
    return frames, {"path": str(path), "frames": n, "registered": stats, "seconds": time.perf_counter() - t,
                    "skipped": all(st.get("skipped") for st in stages.values())}


def apply_solution(frames, path):
    """Frames with the models of a ``solution.json`` (e.g. from ``mosaic stitch``'s adjustment),
    matched by id or image name; frames it does not place keep their label's model."""
    sol = solution.read(path)
    by_key = {}
    for f in sol["frames"]:
        if f.get("used", True) and f.get("model") is not None:
            if f.get("frame", LOCAL_LEVEL) != LOCAL_LEVEL:
                raise InputError(path, f"model of {f['id']} in {f.get('frame')!r}, expected LOCAL_LEVEL", field="frame")
            by_key[f["id"]] = f["model"]
            if f.get("image"):
                by_key[Path(f["image"]).name] = f["model"]
    out, n = [], 0
    for m in frames:
        model = by_key.get(m.id) or (by_key.get(Path(m.image).name) if m.image else None)
        if model is not None:
            m = m.with_(model=model, model_frame=LOCAL_LEVEL)
            n += 1
        out.append(m)
    if n == 0:
        raise InputError(path, "no frame of the inputs is in this solution", field="frames")
    return out, n


def _write_solution(out: Path, pairs, pair_stats) -> None:
    stats_by_id = {p["id"]: p for p in pair_stats}
    frames = []
    for p in pairs:
        st = stats_by_id.get(p.id, {})
        for f in (p.left, p.right):
            rec = {"id": f.id, "image": Path(f.image).name if f.image else None, "width": f.width, "height": f.height}
            model = f.model_local_level()
            if f is p.right and st.get("right_model"):
                model = model_from_dict(st["right_model"])
            frames.append(solution.frame_entry(rec, model, True, stereo_pair=p.id, points=st.get("points"),
                                               relative_orientation=st.get("relative_orientation")
                                               if f is p.right else None))
    solution.write(out / "solution.json", frames, {"pairs": len(pairs), "source": "terrain (models used)"})


def _pointing_sigma(settings: TerrainSettings, adjusted: bool, pairs) -> float:
    """Per-axis pointing uncertainty (deg) of the models the DEM is made with. The labels' error
    is the mast's, one per pointing; an adjustment ties the pointings together and leaves their
    common rotation, which no image can observe: the mean of the pointings' errors."""
    if not adjusted:
        return settings.pointing_sigma_deg
    return settings.pointing_sigma_deg / math.sqrt(max(1, len(pairs)))


def _stereo_stage(ws, client, pairs, spec, origin, settings, key, points_root) -> tuple[list, bool]:
    """Run (or resume) the pair tasks; returns their reports and whether the stage was skipped."""
    record = ws.stage_report("terrain-stereo") if ws.stage_done("terrain-stereo", key) else None
    if record is not None and record.get("points_kept") and points_root.is_dir():
        return record["pairs"], True
    # Point files of other inputs or settings are stale: a workspace holds one run.
    for old in points_root.parent.glob("*"):
        if old != points_root:
            shutil.rmtree(old, ignore_errors=True)
    if not points_root.is_dir():
        # The pairs' records would vouch for point files that are gone (removed after the last run).
        shutil.rmtree(ws.root / "terrain-stereo" / "done", ignore_errors=True)
    points_root.mkdir(parents=True, exist_ok=True)
    items = [(f"pair-{i:04d}", process_pair, (p, i, str(points_root), spec.to_dict(), origin, settings.stereo()))
             for i, p in enumerate(pairs)]
    pair_stats, _ = resumable(ws, client, "terrain-stereo", key, items)
    ws.mark_done("terrain-stereo", key, {"pairs": pair_stats, "points_kept": True})
    return pair_stats, False


def _grid_stage(ws, client, spec, settings, fuse, gains, key, points_root) -> tuple[list, bool]:
    """Run (or resume) the tile tasks into ``grid/KEY/``; returns their reports and whether skipped."""
    if ws.stage_done("terrain-grid", key):
        tiles = ws.stage_report("terrain-grid")["tiles"]
        if all(not t.get("file") or Path(t["file"]).exists() for t in tiles):
            return tiles, True
    root = ws.root / "grid" / key
    for old in (ws.root / "grid").glob("*"):
        if old != root:
            shutil.rmtree(old, ignore_errors=True)
    if not root.is_dir():
        shutil.rmtree(ws.root / "terrain-grid" / "done", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    items = [(f"tile-{ti[0]:04d}-{ti[1]:04d}", grid_one_tile,
              (str(points_root), spec.to_dict(), ti, fuse, gains, str(root / f"{ti[0]:04d}_{ti[1]:04d}.npz")))
             for ti in spec.tiles()]
    tiles, _ = resumable(ws, client, "terrain-grid", key, items)
    return tiles, False


def terrain(inputs, out, gsd: float = 0.02, radius: float = 20.0, site_origin=None, scheduler=None,
            workspace=None, keep_points: bool = False, web: bool = True, solution=None, *, client=None,
            workers=None, threads_per_worker=None, memory_limit=None, force: bool = False, register: bool = True,
            **options) -> dict:
    """Build ``dem.tif``, ``dem_sigma.tif``, ``ortho.tif``, tiles, ``item.json`` and ``index.html``
    under ``out``.

    ``inputs``: frame files or folders. ``site_origin``: "LAT,LON,ELEV" or a SiteOrigin.
    ``solution``: a solution.json whose (adjusted) models replace the labels' ones.
    ``register`` (default True): without a ``solution``, first adjust the frames' pointing with
    ``mosaic stitch``'s registration stages (no render; into the workspace) and use its solution:
    the labels' pointing is off by up to a degree, which tilts the DEM by centimetres per metre of
    distance. ``client``: an existing dask client (``mosaic batch`` shares one); else one is
    started from ``scheduler`` or an embedded cluster of ``workers`` x ``threads_per_worker``
    (``memory_limit`` each); one run starts at most one. ``force``: drop the workspace and
    recompute everything. ``keep_points``: keep the per-pair point files (a later run with other
    grid options then skips stereo). ``options``: other ``TerrainSettings`` fields. Returns the run
    report (also ``report.json``).
    """
    t_start = time.perf_counter()
    unknown = set(options) - set(TerrainSettings.__dataclass_fields__)
    if unknown:
        raise TypeError(f"unknown terrain options: {', '.join(sorted(unknown))}")
    settings = TerrainSettings(gsd=float(gsd), radius=float(radius), **options)
    if not settings.gsd > 0 or not settings.radius > 0:
        raise InputError(None, f"gsd ({gsd}) and radius ({radius}) must be positive", field="grid")
    if (2 * settings.radius / settings.gsd) ** 2 > 4e9:
        raise InputError(None, f"a {2 * settings.radius:g} m square at {settings.gsd:g} m is over 4e9 cells; "
                         "raise --gsd or lower --radius", field="grid")
    out = Path(out)
    atomic.output_dir(out)
    atomic.remove_stale(out, OUTPUTS)
    if force:
        shutil.rmtree(workspace or out / "work", ignore_errors=True)
    ws = Workspace(workspace or out / "work")
    report: dict = {"settings": asdict(settings), "stages": {}}

    if isinstance(site_origin, str):  # bad text fails before any work
        site_origin = parse_site_origin(site_origin, source="--site-origin")
    t = time.perf_counter()
    frames = discover([str(p) for p in inputs], exclude=[out])  # outputs never become inputs
    if solution is not None:
        frames, n = apply_solution(frames, solution)
        report["solution"] = {"path": str(solution), "frames": n}
    pairs = find_pairs(frames, max_dt=settings.max_dt)
    if not pairs:
        raise InputError(str(inputs[0]) if inputs else None,
                         f"no stereo pairs among {len(frames)} frames (need left/right frames taken together)")
    report["stages"]["pairs"] = {"frames": len(frames), "pairs": len(pairs), "seconds": time.perf_counter() - t}

    dask_client = (contextlib.nullcontext(client) if client is not None else
                   cluster.client(scheduler, workers=workers, threads_per_worker=threads_per_worker,
                                  memory_limit=memory_limit))
    with dask_client as client:
        adjusted = solution is not None
        if register and solution is None:
            frames, reg = _register(ws, inputs, frames, client)
            if reg is not None:
                adjusted = True
                pairs = find_pairs(frames, max_dt=settings.max_dt)
                report["solution"] = {k: reg[k] for k in ("path", "frames", "registered")}
                report["stages"]["register"] = {"seconds": reg["seconds"], "skipped": reg["skipped"]}
        origin = _site_origin(frames, site_origin)
        centre = np.median([site_offset(p.left) for p in pairs], axis=0)
        spec = gridmod.grid_spec(origin, centre[0], centre[1], settings.radius, settings.gsd,
                                 tile=settings.tile, halo=settings.halo())
        report["site_origin"] = list(origin)
        report["grid"] = spec.to_dict()
        log.info("terrain: %d frames, %d stereo pairs, grid %dx%d at %g m", len(frames), len(pairs),
                 spec.width, spec.height, settings.gsd)

        # Keys: what each stage reads (frames with the models used, options, grid) and its code.
        stereo_key = digest("terrain-stereo", code_key(*STEREO_CODE), asdict(settings.stereo()), list(origin),
                            spec.to_dict(), [[p.to_dict(), p.left.model_local_level().to_dict(),
                                              p.right.model_local_level().to_dict()] for p in pairs],
                            file_digest([f.image for p in pairs for f in (p.left, p.right) if f.image]))
        fuse = settings.fuse(_pointing_sigma(settings, adjusted, pairs))
        grid_key = digest("terrain-grid", code_key(*GRID_CODE), stereo_key, asdict(fuse))
        points_root = ws.root / "points" / stereo_key

        t = time.perf_counter()
        grid_done = ws.stage_done("terrain-grid", grid_key) and ws.stage_done("terrain-stereo", stereo_key)
        if grid_done:
            pair_stats, skipped = ws.stage_report("terrain-stereo")["pairs"], True
        else:
            pair_stats, skipped = _stereo_stage(ws, client, pairs, spec, origin, settings, stereo_key, points_root)
        report["stages"]["points"] = {"seconds": time.perf_counter() - t, "skipped": skipped,
                                      "points": int(sum(p["points"] for p in pair_stats)),
                                      "pairs_left_out": [p["id"] for p in pair_stats if p.get("skipped")]}
        for p in pair_stats:
            if p.get("skipped"):
                log.warning("terrain: pair %s (%s + %s) left out: %s", p["id"], p["left"], p["right"], p["skipped"])
        report["pairs"] = pair_stats

        t = time.perf_counter()
        if grid_done:
            balance = ws.stage_report("terrain-grid")["gains"]
        else:
            gains, balance = ortho.solve_gains([ortho.load_summary(points_root, p.id) for p in pairs])
        report["gains"] = balance
        tiles, skipped = _grid_stage(ws, client, spec, settings, fuse, balance["gains"], grid_key, points_root)
        if not skipped:
            ws.mark_done("terrain-grid", grid_key, {"tiles": tiles, "gains": balance})
        cells = sum(t["cells"] for t in tiles)
        report["stages"]["grid"] = {"seconds": time.perf_counter() - t, "tiles": len(tiles), "skipped": skipped,
                                    "filled": sum(t["filled"] for t in tiles)}
    if cells == 0:
        names = ", ".join(p["id"] for p in pair_stats)
        raise InputError(str(inputs[0]) if inputs else None,
                         f"no valid DEM cell from {len(pairs)} stereo pair(s) ({names}): nothing written")

    t = time.perf_counter()
    products_key = digest("terrain-products", code_key(*PRODUCTS_CODE), grid_key, bool(web),
                          (WEB / "map.html").read_text())
    outputs = ["dem.tif", "dem_sigma.tif", "ortho.tif", "solution.json"]
    if web:
        outputs += ["item.json", "index.html"]
    if ws.stage_done("terrain-products", products_key) and all((out / k).exists() for k in outputs):
        report.update(ws.stage_report("terrain-products"))
        report["stages"]["products"] = {"seconds": time.perf_counter() - t, "skipped": True}
    else:
        products = {}
        _write_products(out, spec, origin, tiles, settings, products)
        _write_solution(out, pairs, pair_stats)
        if web:
            products["web"] = _write_web(out, spec, origin, frames, pairs)
        ws.mark_done("terrain-products", products_key, products)
        report.update(products)
        report["stages"]["products"] = {"seconds": time.perf_counter() - t, "skipped": False}
    if not keep_points and points_root.is_dir():
        shutil.rmtree(points_root, ignore_errors=True)
        rec = ws.stage_report("terrain-stereo")
        if rec is not None and ws.stage_done("terrain-stereo", stereo_key):
            ws.mark_done("terrain-stereo", stereo_key, dict(rec, points_kept=False))
    report["seconds"] = time.perf_counter() - t_start
    report["outputs"] = {k: str(out / k) for k in OUTPUTS if k != "report.json" and (out / k).exists()}
    atomic.write_json(out / "report.json", _jsonable(report))
    return report


def _write_products(out: Path, spec: gridmod.GridSpec, origin, tiles, settings, report):
    """dem.tif, dem_sigma.tif and ortho.tif from the grid stage's tiles (one tile in memory)."""
    crs = site_crs_wkt()
    tags = {"UNITS": "metre", "VERTICAL_DATUM": "IAU 2015 Mars sphere, R = 3396190 m",
            "SITE_ORIGIN": f"{origin.lat},{origin.lon},{origin.elev}", "GSD_M": f"{settings.gsd}"}
    sigma_tags = dict(tags, DESCRIPTION="predicted 1-sigma error of the DEM's height (m), per valid cell")
    cells = filled = 0
    with CogWriter(out / "dem.tif", spec.width, spec.height, 1, "float32", transform=spec.transform,
                   crs=crs, nodata=DEM_NODATA, tags=tags) as dem_w, \
         CogWriter(out / "dem_sigma.tif", spec.width, spec.height, 1, "float32", transform=spec.transform,
                   crs=crs, nodata=DEM_NODATA, tags=sigma_tags) as sig_w, \
         CogWriter(out / "ortho.tif", spec.width, spec.height, 2, "uint8", transform=spec.transform,
                   crs=crs, alpha=True, tags={"SITE_ORIGIN": tags["SITE_ORIGIN"]}) as ortho_w:
        for tile in tiles:
            if not tile.get("file"):
                continue
            with np.load(tile["file"]) as a:
                height, value, sigma, fill = a["height"], a["value"], a["sigma"], a["filled"]
            row0, col0, _, _ = spec.window(tuple(tile["tile"]))
            have = np.isfinite(height)
            cells += int(have.sum())
            filled += int((fill & have).sum())
            dem_w.write((row0, col0), np.where(have, height + origin.elev, DEM_NODATA).astype(np.float32))
            sig_w.write((row0, col0), np.where(have, sigma, DEM_NODATA).astype(np.float32))
            gray = np.clip(np.nan_to_num(value) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            ortho_w.write((row0, col0), np.stack([np.where(have, gray, 0), have.astype(np.uint8) * 255]))
    report["cells"] = cells
    report["filled_cells"] = filled
    report["coverage"] = cells / float(spec.width * spec.height)


#: Mars 2020 / MSL spacecraft clocks count seconds from J2000 (2000-01-01T11:58:55.816 UTC); without
#: the clock's correlation file this lands within ~10 minutes of the true time (measured on
#: NLF_0670_0726421423: 03:42:41 against the record's 03:53:04), enough for a STAC datetime.
_SCLK_EPOCH = datetime.datetime(2000, 1, 1, 11, 58, 55, 816000, tzinfo=datetime.timezone.utc)


def acquisition_time(frames) -> datetime.datetime:
    """The earliest frame's time: its spacecraft clock, else its image file's modification time."""
    clocks = [f.sclk for f in frames if f.sclk is not None]
    if clocks:
        return _SCLK_EPOCH + datetime.timedelta(seconds=float(min(clocks)))
    mtimes = [Path(f.image).stat().st_mtime for f in frames if f.image and Path(f.image).exists()]
    return datetime.datetime.fromtimestamp(min(mtimes) if mtimes else 0.0, tz=datetime.timezone.utc)


def _write_web(out: Path, spec, origin, frames, pairs) -> dict:
    """Web tiles of the ortho, a hillshade and the DEM's sigma, the STAC item and the Leaflet page."""
    ts = write_tiles(out / "ortho.tif", out_dir=out, hillshade_dem=out / "dem.tif", sigma=out / "dem_sigma.tif")
    layers = [("Orthoimage", ts.layers["tiles"])]
    if "hillshade" in ts.layers:
        layers.append(("Hillshade", ts.layers["hillshade"], {"opacity": 0.6, "visible": False}))
    if "sigma" in ts.layers:
        layers.append(("DEM error (1 sigma)", ts.layers["sigma"],
                       {"opacity": 0.7, "visible": False, "legend": SIGMA_LEGEND}))
    write_map(out, ts.center_lonlat, ts.zooms, layers, title="Jezero terrain: DEM and orthoimage",
              bounds_lonlat=ts.bounds_lonlat, marker=((origin.lon, origin.lat), "site origin"))
    item_id = f"terrain-{pairs[0].left.id}" if pairs else "terrain"
    assets = {
        "dem": ("dem.tif", ["data", "elevation"], stac.MEDIA_COG,
                "DEM, metres above the IAU 2015 Mars sphere (R = 3396190 m)"),
        "dem_sigma": ("dem_sigma.tif", ["data", "uncertainty"], stac.MEDIA_COG,
                      "Predicted 1-sigma height error of each DEM cell (m)"),
        "ortho": ("ortho.tif", ["data", "visual"], stac.MEDIA_COG, "Orthoimage, 8-bit gray + alpha"),
        "tiles": (ts.layers["tiles"], ["tiles"], stac.MEDIA_PNG, "Orthoimage XYZ tiles (MarsWebMercatorSphere)"),
        "map": ("index.html", ["overview"], stac.MEDIA_HTML, "Leaflet map"),
        "report": ("report.json", ["metadata"], stac.MEDIA_JSON),
    }
    if "hillshade" in ts.layers:
        assets["hillshade"] = (ts.layers["hillshade"], ["tiles"], stac.MEDIA_PNG, "Hillshade XYZ tiles")
    if "sigma" in ts.layers:
        assets["sigma_tiles"] = (ts.layers["sigma"], ["tiles", "uncertainty"], stac.MEDIA_PNG,
                                 "DEM 1-sigma error XYZ tiles (colour ramp)")
    item = stac.stac_item(
        item_id, assets, ts.bounds_lonlat, datetime=acquisition_time([f for p in pairs for f in (p.left, p.right)]),
        proj_wkt2=site_crs_wkt(), proj_shape=[spec.height, spec.width], proj_transform=spec.transform,
        gsd=spec.transform.a,
        properties={"instruments": sorted({p.left.instrument for p in pairs}),
                    "mosaic:site_origin": [origin.lat, origin.lon, origin.elev],
                    "mosaic:stereo_pairs": len(pairs)},
    )
    stac.write_item(out / "item.json", item)
    return {"zooms": ts.zooms, "bounds_lonlat": list(ts.bounds_lonlat), "layers": ts.layers,
            "tiles": ts.counts}


def _jsonable(o):
    if isinstance(o, dict):
        return {str(k): _jsonable(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_jsonable(v) for v in o]
    if isinstance(o, (np.floating, float)):
        v = float(o)
        return v if math.isfinite(v) else None
    if isinstance(o, np.integer):
        return int(o)
    return o
