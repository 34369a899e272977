"""The terrain pipeline: stereo frames -> DEM and orthoimage of the site, georeferenced.

Stages (each a dask task graph; artefacts under ``OUT/work``, skipped when already done):

1. pairs: frames are read (``calib.labels.discover``) and paired (``stereo_pairs.find_pairs``);
2. points, one task per pair: rectify (``rectify``), match (``disparity``), triangulate
   (``triangulate``), move the points into SITE and map coordinates and save them bucketed by
   output tile (``grid.save_points``); a task returns only counts;
3. grid, one task per output tile: read that tile's point files, merge and fill
   (``grid.grid_tile``); the arrays come back to the client, which writes them into the COGs;
4. products: ``dem.tif`` (float32, nodata -32768, metres above the IAU 2015 Mars sphere),
   ``ortho.tif`` (8-bit gray + alpha), web tiles of both (``mosaic.webtiles``), ``item.json``
   (``mosaic.stac``) and ``index.html`` (``mosaic.webmap``), all on the same grid.

Frames: points live in LOCAL_LEVEL of their frame (rover origin, north-east-down), plus the
rover's position in SITE; the SITE origin is the map's anchor (``site_origin``: the label's, then
``--site-origin``, else the landing site), with elevation = origin elevation - z_down.
"""

from __future__ import annotations

import datetime
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from calib.errors import InputError, ModelError

from . import grid as gridmod
from .disparity import MatchSettings, disparity
from .rectify import rectify_image, rectify_pair, remap_maps
from .stereo_pairs import StereoPair, find_pairs
from .triangulate import triangulate

log = logging.getLogger("mosaic")

DEM_NODATA = -32768.0


@dataclass(frozen=True)
class TerrainSettings:
    gsd: float = 0.02              # metres per DEM cell
    radius: float = 20.0           # metres around the rover
    min_range: float = 1.0         # nearest range matched (sets the disparity search)
    max_range: float = 60.0
    min_angle_deg: float = 0.3     # triangulation angle limit
    sigma_disparity: float = 0.3   # px, matching noise assumed for sample weights
    max_pixels: int = 4_000_000    # rectified image area cap
    max_disparity: int = 512       # px, cap on the disparity search
    tile: int = 1024               # output tile (cells)
    fill: int = 16                 # largest gap filled (cells)
    block: int = 5
    max_dt: float = 1.0            # s, clock difference of a pair
    refine_pair: bool = True       # correct the right eye's rotation from sparse matches


def _gray01(image, bit_depth) -> np.ndarray:
    """Gray float32 in [0, 1] (RGB averaged; scaled by the frame's bit depth)."""
    a = np.asarray(image)
    if a.ndim == 3:
        a = a[..., :3].mean(axis=2) if a.shape[2] >= 3 else a[..., 0]
    if np.issubdtype(np.asarray(image).dtype, np.floating):
        return a.astype(np.float32)
    depth = bit_depth or (8 if np.asarray(image).dtype == np.uint8 else 16)
    return (a.astype(np.float32) / float(2 ** int(depth) - 1)).astype(np.float32)


def _site_offset(meta) -> np.ndarray:
    return np.zeros(3) if meta.rover_position is None else np.asarray(meta.rover_position, float)


def process_pair(pair: StereoPair, points_root: str, spec: dict, origin, settings: TerrainSettings) -> dict:
    """One pair: rectify, match, triangulate, bucket; returns counts and diagnostics (small)."""
    from calib.labels import read_image

    from mosaic.geo import local_level_to_map

    t0 = time.perf_counter()
    s = settings
    left, right = pair.left, pair.right
    ml, mr = left.model_local_level(), right.model_local_level()
    lsize, rsize = (left.width, left.height), (right.width, right.height)
    try:
        rp = rectify_pair(ml, mr, lsize, rsize, max_pixels=s.max_pixels)
    except ModelError as e:
        # One pair whose geometry cannot be rectified (no overlap, eyes swapped) must not sink
        # a whole pan: it is reported and left out.
        return {"id": pair.id, "left": left.id, "right": right.id, "skipped": e.problem, "points": 0,
                "matched": 0, "match_fraction": 0.0, "tiles": {}, "seconds": time.perf_counter() - t0}
    gl = _gray01(read_image(left), left.bit_depth)
    gr = _gray01(read_image(right), right.bit_depth)
    relative = None
    if s.refine_pair:
        relative = _refine_right(ml, mr, gl, gr, rp)
        if relative is not None and relative.rms_after_px < relative.rms_before_px:
            mr = mr.moved(relative.rotation)
            rp = rectify_pair(ml, mr, lsize, rsize, max_pixels=s.max_pixels)
    lx, ly, err_l = remap_maps(ml, rp.left, rp.width, rp.height, lsize)
    rx, ry, err_r = remap_maps(mr, rp.right, rp.width, rp.height, rsize)
    il, vl = rectify_image(gl, lx, ly, *lsize)
    ir, vr = rectify_image(gr, rx, ry, *rsize)
    del gl, gr
    del lx, ly, rx, ry
    max_disp = min(s.max_disparity, rp.focal * rp.baseline / s.min_range)
    disp = disparity(il, ir, vl, vr, max_disp, MatchSettings(block=s.block))
    pts = triangulate(rp, disp, min_range=s.min_range, max_range=s.max_range,
                      min_angle_deg=s.min_angle_deg, sigma_disparity=s.sigma_disparity)
    site = pts.xyz + _site_offset(left)
    east, north = local_level_to_map(site[:, 0], site[:, 1], origin)
    g = gridmod.GridSpec.from_dict(spec)
    col, row = g.cells(east, north)
    px = pts.pixels.astype(np.int64)
    fields = {"col": col, "row": row, "height": -site[:, 2], "value": il[px[:, 1], px[:, 0]],
              "sigma": pts.sigma}
    counts = gridmod.save_points(points_root, pair.id, g, fields)
    matched = int(np.isfinite(disp).sum())
    return {
        "id": pair.id, "left": left.id, "right": right.id,
        "rectified": [rp.width, rp.height], "focal_px": rp.focal, "baseline_m": rp.baseline,
        "remap_error_px": max(err_l, err_r), "matched": matched,
        "match_fraction": matched / float(vl.sum() or 1), "points": len(pts),
        "median_range_m": float(np.median(pts.range)) if len(pts) else None,
        "relative_orientation": None if relative is None else relative.to_dict(),
        "right_model": mr.to_dict(),
        "tiles": counts, "seconds": time.perf_counter() - t0,
    }


def _refine_right(ml, mr, gl, gr, rp):
    """The right eye's rotation from SIFT matches (``relative``), or None without enough of them."""
    from .disparity import to_uint8
    from .relative import fit_right_rotation, sift_matches

    hc, _, hs, _ = rp.left.intrinsics()
    hp = (rp.left.H - hc * rp.left.A) / hs
    pl, pr = sift_matches(to_uint8(gl, np.ones(gl.shape, bool)), to_uint8(gr, np.ones(gr.shape, bool)))
    return fit_right_rotation(ml, mr, pl, pr, hp, rp.left.A)


def grid_one_tile(points_root: str, spec: dict, tile_index, fill: int):
    """One output tile: (tile_index, (height, value, sigma) arrays), or (tile_index, None) when no
    point falls in it."""
    g = gridmod.GridSpec.from_dict(spec)
    pts = gridmod.load_points(points_root, tile_index)
    if pts.shape[1] == 0:
        return tile_index, None
    return tile_index, gridmod.grid_tile(g, tile_index, pts, fill=fill)


def _site_origin(frames, site_origin):
    from mosaic.geo import DEFAULT_SITE_ORIGIN, SiteOrigin, parse_site_origin

    if site_origin is not None:
        return site_origin if isinstance(site_origin, SiteOrigin) else parse_site_origin(site_origin)
    for f in frames:
        o = f.extra.get("site_origin") if f.extra else None
        if o is not None:
            return SiteOrigin(*(float(v) for v in o))
    return DEFAULT_SITE_ORIGIN


def _write_products(out: Path, spec: gridmod.GridSpec, origin, tiles, settings, report):
    from mosaic.cog import CogWriter
    from mosaic.geo import site_crs_wkt

    crs = site_crs_wkt()
    tags = {"UNITS": "metre", "VERTICAL_DATUM": "IAU 2015 Mars sphere, R = 3396190 m",
            "SITE_ORIGIN": f"{origin.lat},{origin.lon},{origin.elev}", "GSD_M": f"{settings.gsd}"}
    cells = 0
    with CogWriter(out / "dem.tif", spec.width, spec.height, 1, "float32", transform=spec.transform,
                   crs=crs, nodata=DEM_NODATA, tags=tags) as dem_w, \
         CogWriter(out / "ortho.tif", spec.width, spec.height, 2, "uint8", transform=spec.transform,
                   crs=crs, alpha=True, tags={"SITE_ORIGIN": tags["SITE_ORIGIN"]}) as ortho_w:
        for tile_index, arrays in tiles:
            if arrays is None:
                continue
            height, value, _sigma = arrays
            row0, col0, _, _ = spec.window(tile_index)
            have = np.isfinite(height)
            cells += int(have.sum())
            dem = np.where(have, height + origin.elev, DEM_NODATA).astype(np.float32)
            dem_w.write((row0, col0), dem)
            gray = np.clip(np.nan_to_num(value) * 255.0 + 0.5, 0, 255).astype(np.uint8)
            ortho_w.write((row0, col0), np.stack([np.where(have, gray, 0), have.astype(np.uint8) * 255]))
    report["cells"] = cells
    report["coverage"] = cells / float(spec.width * spec.height)


def apply_solution(frames, path):
    """Frames with the models of a ``solution.json`` (e.g. from ``mosaic stitch``'s adjustment),
    matched by id or image name; frames it does not place keep their label's model."""
    from calib.meta import LOCAL_LEVEL

    from mosaic import solution

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
    from mosaic import solution

    stats_by_id = {p["id"]: p for p in pair_stats}
    frames = []
    for p in pairs:
        st = stats_by_id.get(p.id, {})
        from calib.models import model_from_dict

        for f in (p.left, p.right):
            rec = {"id": f.id, "image": Path(f.image).name if f.image else None, "width": f.width, "height": f.height}
            model = f.model_local_level()
            if f is p.right and st.get("right_model"):
                model = model_from_dict(st["right_model"])
            frames.append(solution.frame_entry(rec, model, True, stereo_pair=p.id, points=st.get("points"),
                                               relative_orientation=st.get("relative_orientation")
                                               if f is p.right else None))
    solution.write(out / "solution.json", frames, {"pairs": len(pairs), "source": "terrain (models used)"})


def terrain(inputs, out, gsd: float = 0.02, radius: float = 20.0, site_origin=None, scheduler=None,
            workspace=None, keep_points: bool = False, web: bool = True, solution=None, *, client=None,
            workers=None, threads_per_worker=None, memory_limit=None, force: bool = False, register: bool = False,
            **options) -> dict:
    """Build ``dem.tif``, ``ortho.tif``, tiles, ``item.json`` and ``index.html`` under ``out``.

    ``inputs``: frame files or folders. ``site_origin``: "LAT,LON,ELEV" or a SiteOrigin.
    ``solution``: a solution.json whose (adjusted) models replace the labels' ones.
    ``register``: without a ``solution``, first adjust the frames' pointing with ``mosaic stitch``'s
    registration (no render; into the workspace) and use its solution: the labels' pointing is off
    by up to a degree, which tilts the DEM by centimetres per metre of range.
    ``client``: an existing dask client (``mosaic batch`` shares one); else one is started from
    ``scheduler`` or an embedded cluster of ``workers`` x ``threads_per_worker`` (``memory_limit``
    each). ``force``: drop the workspace and recompute everything.
    ``options``: other ``TerrainSettings`` fields. Returns the run report (also ``report.json``).
    """
    from calib.labels import discover

    from mosaic import atomic, cluster, progress
    from mosaic.workspace import Workspace, digest, file_digest

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
    atomic.remove_stale(out, ("dem.tif", "ortho.tif", "solution.json", "report.json", "item.json", "index.html"))
    if force:
        shutil.rmtree(workspace or out / "work", ignore_errors=True)
    ws = Workspace(workspace or out / "work")
    report: dict = {"settings": asdict(settings), "stages": {}}

    if isinstance(site_origin, str):  # bad text fails before any work
        from mosaic.geo import parse_site_origin

        site_origin = parse_site_origin(site_origin, source="--site-origin")
    t = time.perf_counter()
    frames = discover([str(p) for p in inputs])
    if solution is not None:
        frames, n = apply_solution(frames, solution)
        report["solution"] = {"path": str(solution), "frames": n}
    pairs = find_pairs(frames, max_dt=settings.max_dt)
    if not pairs:
        raise InputError(str(inputs[0]) if inputs else None,
                         f"no stereo pairs among {len(frames)} frames (need left/right frames taken together)")
    if register and solution is None:
        from mosaic.stitch import stitch

        t = time.perf_counter()
        reg = stitch(inputs, ws.path("registration", ".keep").parent, render=False, client=client,
                     scheduler=scheduler, workers=workers, threads_per_worker=threads_per_worker,
                     memory_limit=memory_limit)
        frames, n = apply_solution(frames, reg["solution"])
        pairs = find_pairs(frames, max_dt=settings.max_dt)
        report["solution"] = {"path": reg["solution"], "frames": n, "registered": reg["stats"]}
        report["stages"]["register"] = {"seconds": time.perf_counter() - t}
    origin = _site_origin(frames, site_origin)
    centre = np.median([_site_offset(p.left) for p in pairs], axis=0)
    spec = gridmod.grid_spec(origin, centre[0], centre[1], settings.radius, settings.gsd,
                             tile=settings.tile, halo=max(settings.fill, 1))
    report["stages"]["pairs"] = {"frames": len(frames), "pairs": len(pairs), "seconds": time.perf_counter() - t}
    report["site_origin"] = list(origin)
    report["grid"] = spec.to_dict()
    log.info("terrain: %d frames, %d stereo pairs, grid %dx%d at %g m", len(frames), len(pairs),
             spec.width, spec.height, settings.gsd)

    key = digest(asdict(settings), list(origin), spec.to_dict(),
                 [p.to_dict() for p in pairs],
                 file_digest([f.image for p in pairs for f in (p.left, p.right) if f.image]))
    points_root = ws.path("points", key, ".keep").parent
    import contextlib

    dask_client = (contextlib.nullcontext(client) if client is not None else
                   cluster.client(scheduler, workers=workers, threads_per_worker=threads_per_worker,
                                  memory_limit=memory_limit))
    with dask_client as client:
        t = time.perf_counter()
        if ws.stage_done("terrain-points", key):
            pair_stats = ws.stage_report("terrain-points")["pairs"]
        else:
            # Point files of other inputs or settings are stale: a workspace holds one run.
            shutil.rmtree(points_root.parent, ignore_errors=True)
            points_root.mkdir(parents=True, exist_ok=True)
            futures = [client.submit(process_pair, p, str(points_root), spec.to_dict(), origin, settings,
                                     key=f"terrain-pair-{i}-{key}", pure=False) for i, p in enumerate(pairs)]
            pair_stats = progress.track_futures("stereo", futures)
            ws.mark_done("terrain-points", key, {"pairs": pair_stats})
        report["stages"]["points"] = {"seconds": time.perf_counter() - t,
                                      "points": int(sum(p["points"] for p in pair_stats)),
                                      "skipped": [p["id"] for p in pair_stats if p.get("skipped")]}
        for p in pair_stats:
            if p.get("skipped"):
                log.warning("terrain: pair %s skipped: %s", p["id"], p["skipped"])
        report["pairs"] = pair_stats

        t = time.perf_counter()
        tile_list = spec.tiles()
        futures = [client.submit(grid_one_tile, str(points_root), spec.to_dict(), ti, settings.fill,
                                 key=f"terrain-tile-{ti[0]}-{ti[1]}-{key}", pure=False) for ti in tile_list]
        from mosaic.cluster import as_completed

        def results():
            with progress.stage("grid", len(futures)) as bar:
                for fut in as_completed(futures):
                    res = fut.result()
                    fut.release()
                    bar.advance()
                    yield res

        _write_products(out, spec, origin, results(), settings, report)
        report["stages"]["grid"] = {"seconds": time.perf_counter() - t, "tiles": len(tile_list)}
    _write_solution(out, pairs, pair_stats)

    if web:
        t = time.perf_counter()
        report["web"] = _write_web(out, spec, origin, frames, pairs)
        report["stages"]["web"] = {"seconds": time.perf_counter() - t}
    if not keep_points:
        shutil.rmtree(points_root, ignore_errors=True)
        ws.invalidate("terrain-points")
    report["seconds"] = time.perf_counter() - t_start
    report["outputs"] = {k: str(out / k) for k in ("dem.tif", "ortho.tif", "item.json", "index.html", "solution.json")
                         if (out / k).exists()}
    atomic.write_json(out / "report.json", _jsonable(report))
    return report


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
    """Web tiles of the ortho and a hillshade, the STAC item and the Leaflet page."""
    from mosaic import stac
    from mosaic.geo import site_crs_wkt
    from mosaic.webmap import write_map
    from mosaic.webtiles import write_tiles

    ts = write_tiles(out / "ortho.tif", out_dir=out, hillshade_dem=out / "dem.tif")
    layers = [("Orthoimage", ts.layers["tiles"])]
    if "hillshade" in ts.layers:
        layers.append(("Hillshade", ts.layers["hillshade"], {"opacity": 0.6, "visible": False}))
    write_map(out, ts.center_lonlat, ts.zooms, layers, title="Jezero terrain: DEM and orthoimage",
              bounds_lonlat=ts.bounds_lonlat, marker=((origin.lon, origin.lat), "site origin"))
    item_id = f"terrain-{pairs[0].left.id}" if pairs else "terrain"
    assets = {
        "dem": ("dem.tif", ["data", "elevation"], stac.MEDIA_COG,
                "DEM, metres above the IAU 2015 Mars sphere (R = 3396190 m)"),
        "ortho": ("ortho.tif", ["data", "visual"], stac.MEDIA_COG, "Orthoimage, 8-bit gray + alpha"),
        "tiles": (ts.layers["tiles"], ["tiles"], stac.MEDIA_PNG, "Orthoimage XYZ tiles (MarsWebMercatorSphere)"),
        "map": ("index.html", ["overview"], stac.MEDIA_HTML, "Leaflet map"),
        "report": ("report.json", ["metadata"], stac.MEDIA_JSON),
    }
    if "hillshade" in ts.layers:
        assets["hillshade"] = (ts.layers["hillshade"], ["tiles"], stac.MEDIA_PNG, "Hillshade XYZ tiles")
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
