"""Compare a stitcher's solution (and terrain products) with a synthetic scene's truth, and measure
how seamless its panorama is.

Pointing: per frame, the angle of the rotation between the solved and the true camera axes, in
degrees and in full-resolution pixels (the true model's angular pixel divided by its downsample
factor), absolute and after removing the best common rotation (the chordal L2 mean of the
per-frame rotations: a solution that is right up to a rigid turn of the whole pan scores zero
there). Terrain: if the output holds ``dem.tif``, its error against ``truth/dem.tif`` (median and
90th percentile of the absolute error by distance from the rover) and its horizontal offset
(least-squares shift of the truth DEM that best explains the difference).

Example:

    mosaic synth out/scene --scene navcam-360 --scale 8
    mosaic stitch out/scene -o out/stitch
    mosaic eval out/stitch --truth out/scene          # prints a table, writes out/stitch/eval.json
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from calib.errors import InputError
from calib.instruments import instrument
from calib.meta import LOCAL_LEVEL
from calib.models import model_from_dict
from calib.rotation import matrix_to_rotvec
from mosaic.formats import geo
from mosaic.formats import solution as solution_io
from mosaic.products import seamless
from mosaic.products.quality import ownership
from mosaic.runtime.atomic import write_json

from .render.panorama import read_record

#: Distance bands (metres from the rover) for the DEM figures.
DEM_BANDS = (0.0, 5.0, 10.0, 20.0, math.inf)
#: A DEM cell further than this from the truth is a blunder (m).
BLUNDER_M = 1.0
#: Radius of the disc around the rover whose coverage is reported (m).
COVER_RADIUS_M = 10.0
#: dem_sigma.tif is honest in a band when this share of cells lies within 2 sigma of the truth
#: and the median sigma is within these factors of the median true error.
SIGMA_WITHIN_2 = 0.85
SIGMA_RATIO = (0.5, 3.0)


def _solution_path(path: Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "solution.json"
    if not p.is_file():
        raise InputError(path, "no solution.json here")
    return p


def _truth_dir(path: Path) -> Path:
    p = Path(path)
    for cand in (p / "truth", p):
        if (cand / "solution.json").is_file():
            return cand
    raise InputError(path, "no truth/solution.json (expected the output folder of 'mosaic synth')")


def load_solution(path) -> dict:
    """id -> frame dict of a solution.json (contract schema), models in LOCAL_LEVEL."""
    path = Path(path)
    sol = solution_io.load(path)
    out = {}
    for i, f in enumerate(sol["frames"]):
        if not isinstance(f, dict) or "id" not in f:
            raise InputError(path, "frame without an id", field=f"frames[{i}]")
        if f.get("used", True) and f.get("model") is not None:
            if f.get("frame", LOCAL_LEVEL) != LOCAL_LEVEL:
                raise InputError(path, f"model in {f.get('frame')!r}, expected {LOCAL_LEVEL}", field=f"frames[{i}].frame")
            f = dict(f, _model=model_from_dict(f["model"], source=path))
        out[str(f["id"])] = f
    return out


def camera_rotation(model) -> np.ndarray:
    """World -> camera rotation (rows: camera x right, y down, z = A) of a model's linear part."""
    return model.to_opencv()[1]


def angle_deg(rot) -> float:
    return float(np.degrees(np.linalg.norm(matrix_to_rotvec(rot))))


def mean_rotation(rots) -> np.ndarray:
    """The rotation nearest (Frobenius) to the mean of ``rots``: the chordal L2 mean."""
    u, _, vt = np.linalg.svd(np.sum(rots, axis=0))
    d = np.sign(np.linalg.det(u @ vt))
    return u @ np.diag([1.0, 1.0, d]) @ vt


def pointing_errors(solution: dict, truth: dict) -> dict:
    """Per-frame and summary pointing errors of ``solution`` against ``truth`` (id -> frame)."""
    rows, rots, missing = [], [], []
    # A solution may name frames by their file rather than the record's imageid.
    by_image = {Path(str(f.get("image", ""))).name: f for f in solution.values() if f.get("image")}
    for fid, tf in truth.items():
        sf = solution.get(fid) or by_image.get(Path(str(tf.get("image", ""))).name)
        if sf is None or "_model" not in sf:
            missing.append(fid)
            continue
        mt, ms = tf["_model"], sf["_model"]
        # Maps a world direction seen by a pixel in the truth to the one the solution gives it.
        d = camera_rotation(ms).T @ camera_rotation(mt)
        full_px = mt.angular_pixel() / float(tf.get("downsample", 1) or 1)
        rots.append(d)
        rows.append({"id": fid, "error_deg": angle_deg(d), "full_px_rad": full_px,
                     "centre_offset_m": float(np.linalg.norm(ms.C - mt.C))})
    summary = {"frames": len(rows), "missing": missing}
    if rows:
        q = mean_rotation(np.array(rots))
        for row, d in zip(rows, rots):
            row["error_px"] = math.radians(row["error_deg"]) / row["full_px_rad"]
            row["residual_deg"] = angle_deg(q.T @ d)
            row["residual_px"] = math.radians(row["residual_deg"]) / row["full_px_rad"]
            del row["full_px_rad"]
        for key in ("error_deg", "error_px", "residual_deg", "residual_px", "centre_offset_m"):
            v = np.array([r[key] for r in rows])
            summary[f"{key}_rms"] = float(np.sqrt(np.mean(v**2)))
            summary[f"{key}_max"] = float(v.max())
        summary["common_rotation_deg"] = angle_deg(q)
        summary["common_rotvec_rad"] = [float(v) for v in matrix_to_rotvec(q)]
    return {"frames": rows, "summary": summary}


#: cells further from the rover than this do not inform the horizontal offset
OFFSET_RADIUS_M = 10.0


def _read_grid(path, what):
    """(values float64 with NaN for nodata, transform, crs) of band 1 of a raster."""
    import rasterio

    try:
        with rasterio.open(path) as ds:
            return ds.read(1, masked=True).astype(np.float64).filled(np.nan), ds.transform, ds.crs
    except rasterio.errors.RasterioIOError as e:
        raise InputError(path, f"cannot read {what}: {e}") from None


def sample_bilinear(grid, transform, east, north) -> np.ndarray:
    """Bilinear values of ``grid`` (NaN = no data) at map points; NaN where a neighbour is missing."""
    from scipy import ndimage

    col, row = ~transform @ (np.asarray(east, float), np.asarray(north, float))
    coords = [np.ravel(row) - 0.5, np.ravel(col) - 0.5]
    have = np.isfinite(grid)
    v = ndimage.map_coordinates(np.where(have, grid, 0.0), coords, order=1, cval=0.0)
    # Any missing corner pulls the weight below 1: such samples are not truth.
    w = ndimage.map_coordinates(have.astype(np.float64), coords, order=1, cval=0.0)
    return np.where(w > 1 - 1e-9, v, np.nan).reshape(np.shape(east))


def sigma_check(err, sigma) -> dict:
    """Is a predicted 1-sigma honest for these errors? Share within 2 sigma, and the ratio of
    median sigma to median |error| (a constant sigma fails it in some band)."""
    a, s = np.abs(err), np.asarray(sigma)
    within = float(np.mean(a <= 2 * s))
    med_err, med_s = float(np.median(a)), float(np.median(s))
    ratio = med_s / med_err if med_err > 0 else math.inf
    return {"n": int(a.size), "within_2sigma": within, "median_sigma_m": med_s, "median_abs_m": med_err,
            "ratio": ratio, "honest": bool(within >= SIGMA_WITHIN_2 and SIGMA_RATIO[0] <= ratio <= SIGMA_RATIO[1])}


def dem_errors(dem_path, truth_dem_path, rover_site_xy, origin, sigma_path=None) -> dict:
    """Error of a DEM against the truth DEM, cell by cell on the DEM's own grid (the truth sampled
    bilinearly at each valid cell's centre): by band of distance from the rover, the blunder share
    (cells more than ``BLUNDER_M`` off), coverage of the ``COVER_RADIUS_M`` disc, and, given a
    ``sigma_path`` (dem_sigma.tif), whether its sigma is honest in every band."""
    truth, t_transform, t_crs = _read_grid(truth_dem_path, "truth DEM")
    dem, transform, _ = _read_grid(dem_path, "DEM")
    rows, cols = np.mgrid[0:dem.shape[0], 0:dem.shape[1]]
    east, north = transform @ (cols + 0.5, rows + 0.5)
    re, rn = geo.local_level_to_map(rover_site_xy[0], rover_site_xy[1], origin)
    dist = np.hypot(east - float(re), north - float(rn))
    ref = sample_bilinear(truth, t_transform, east, north)
    known = np.isfinite(ref)
    ok = known & np.isfinite(dem)
    diff = dem - ref
    sigma = None
    if sigma_path is not None:
        sigma, s_transform, _ = _read_grid(sigma_path, "DEM sigma")
        if sigma.shape != dem.shape or s_transform != transform:
            raise InputError(sigma_path, "not on the DEM's grid")
    disc = known & (dist < COVER_RADIUS_M)
    out = {"valid_cells": int(np.isfinite(dem).sum()), "compared_cells": int(ok.sum()),
           "coverage_10m": float((ok & disc).sum() / max(disc.sum(), 1)), "bins": []}
    if not ok.any():
        return out
    a = np.abs(diff[ok])
    blunders = int((a > BLUNDER_M).sum())
    out.update(median_abs_m=float(np.median(a)), p90_abs_m=float(np.percentile(a, 90)),
               p99_abs_m=float(np.percentile(a, 99)), max_abs_m=float(a.max()),
               blunders={"threshold_m": BLUNDER_M, "cells": blunders, "fraction": blunders / a.size},
               vertical_bias_m=float(np.median(diff[ok])))
    if sigma is not None:
        out["sigma"] = dict(sigma_check(diff[ok], sigma[ok]), path=str(sigma_path),
                            missing=int((ok & ~(sigma > 0)).sum()))
    for lo, hi in zip(DEM_BANDS[:-1], DEM_BANDS[1:]):
        band = known & (dist >= lo) & (dist < hi)
        sel = ok & band
        if not sel.any():
            continue
        ab = np.abs(diff[sel])
        b = {"from_m": lo, "to_m": None if math.isinf(hi) else hi, "n": int(sel.sum()),
             "coverage": float(sel.sum() / band.sum()), "median_abs_m": float(np.median(ab)),
             "p90_abs_m": float(np.percentile(ab, 90)), "blunder_fraction": float(np.mean(ab > BLUNDER_M))}
        if sigma is not None:
            b["sigma"] = sigma_check(diff[sel], sigma[sel])
        out["bins"].append(b)
    if sigma is not None:
        out["sigma"]["honest_in_every_band"] = bool(out["sigma"]["honest"]
                                                    and all(b["sigma"]["honest"] for b in out["bins"]))
    out["horizontal_offset_m"] = _horizontal_offset(dem_path, truth, t_transform, t_crs, rover_site_xy, origin)
    return out


def _horizontal_offset(dem_path, truth, transform, crs, rover_site_xy, origin) -> dict:
    """Least-squares shift s (m) and bias c with dem(p) ~ truth(p - s) + c, on the truth's grid."""
    import rasterio
    from rasterio.warp import Resampling, reproject
    from scipy import ndimage

    with rasterio.open(dem_path) as src:
        solved = np.full(truth.shape, np.nan)
        reproject(rasterio.band(src, 1), solved, src_nodata=src.nodata, dst_transform=transform, dst_crs=crs,
                  dst_nodata=np.nan, resampling=Resampling.bilinear)
    rows, cols = np.mgrid[0:truth.shape[0], 0:truth.shape[1]]
    east, north = transform @ (cols + 0.5, rows + 0.5)
    re, rn = geo.local_level_to_map(rover_site_xy[0], rover_site_xy[1], origin)
    dist = np.hypot(east - float(re), north - float(rn))
    ok = np.isfinite(solved - truth)
    # Gauss-Newton on the truth's gradients, re-sampling the shifted truth at each step. Robust:
    # only cells within OFFSET_RADIUS_M of the rover (far stereo is noise at the metre level) and
    # Huber weights, so a few wild cells cannot drag the estimate by metres.
    gsd = abs(transform.a)
    s = np.zeros(2)
    filled = np.where(np.isfinite(truth), truth, np.nanmedian(truth))
    near = ok & (dist < OFFSET_RADIUS_M)
    if near.sum() < 100:
        near = ok
    if not near.any():
        return {"east": math.nan, "north": math.nan, "total": math.nan}
    for _ in range(10):
        shifted = ndimage.shift(filled, s, order=1, mode="nearest")
        g_row, g_col = np.gradient(shifted)
        r = (solved - shifted)[near]
        dev = np.abs(r - np.median(r))
        k = 1.345 * max(1.4826 * float(np.median(dev)), 1e-6)
        w = np.sqrt(np.minimum(1.0, k / np.maximum(dev, 1e-12)))
        jac = np.column_stack([-g_row[near], -g_col[near], np.ones(near.sum())])
        step, *_ = np.linalg.lstsq(jac * w[:, None], r * w, rcond=None)
        s += step[:2]
        if np.abs(step[:2]).max() < 1e-3:
            break
    return {"east": float(s[1] * gsd), "north": float(-s[0] * gsd), "total": float(np.hypot(*s) * gsd)}


def photometry_errors(record_path, truth_dir) -> dict | None:
    """Recovered exposures and vignetting of a render (``render.json``) against a synthetic scene's
    truth (``scene.json``: exposures, vignetting ``1 - v r^2`` over the full sensor's half
    diagonal, the response's exponent), in the scene's linear signal: a frame's recovered
    attenuation at a pixel is exp(-(log gain + spatial field) / exponent). Exposure: the
    attenuation at the frame's centre against exposure x vignetting there, both over their
    geometric mean over the frames (the common scale); vignetting: each corner's attenuation
    over the centre's, against the truth's. None without both files."""
    scene_path = Path(truth_dir).parent / "scene.json"
    record_path = Path(record_path)
    if not scene_path.is_file() or not record_path.is_file():
        return None
    scene = json.loads(scene_path.read_text())
    # Scenes written before the troubles were options carry the defaults (sqrt companding, 0.3).
    phot = scene.get("photometry") or {"vignetting": 0.3, "response_gamma": 0.5}
    gamma, v = float(phot.get("response_gamma", 0.5)), float(phot.get("vignetting", 0.3))
    tones = read_record(record_path, ())[0]
    truth = {f["id"]: f for f in scene.get("frames", [])}
    tframes = load_solution(Path(truth_dir) / "solution.json")
    ids = [fid for fid in tones if fid in truth and fid in tframes]
    if not ids:
        return None
    rows, centre_ratio = [], []
    for fid in ids:
        tf, tone = tframes[fid], tones[fid]
        w, h = int(tf["width"]), int(tf["height"])
        sub, ds = tf.get("subframe") or [1, 1, w, h], float(tf.get("downsample", 1) or 1)
        inst = instrument(tf.get("instrument", "NAVCAM_LEFT"))
        scx, scy = (inst.width - 1) / 2.0, (inst.height - 1) / 2.0
        pts = np.array([((w - 1) / 2.0, (h - 1) / 2.0), (0, 0), (w - 1, 0), (0, h - 1), (w - 1, h - 1)], np.float32)
        fx = (pts[:, 0] + 0.5) * ds - 0.5 + sub[0] - 1
        fy = (pts[:, 1] + 0.5) * ds - 0.5 + sub[1] - 1
        true_a = float(truth[fid]["exposure"]) * (1 - v * ((fx - scx) ** 2 + (fy - scy) ** 2) / (scx ** 2 + scy ** 2))
        log_gain = float(np.mean(np.log(tone.gain))) + tone.log_field(pts[:, 0], pts[:, 1]).astype(float)
        rec_a = np.exp(-log_gain / gamma)
        centre_ratio.append(rec_a[0] / true_a[0])
        corners = (rec_a[1:] / rec_a[0]) / (true_a[1:] / true_a[0]) - 1
        rows.append({"id": fid, "vignetting_corner_error": float(np.max(np.abs(corners)))})
    ratio = np.array(centre_ratio) / np.exp(np.mean(np.log(centre_ratio)))
    for row, r in zip(rows, ratio):
        row["exposure_error"] = float(r - 1)
    e = np.abs([r["exposure_error"] for r in rows])
    return {"frames": rows, "exposure_error_max": float(e.max()), "exposure_error_rms": float(np.sqrt(np.mean(e ** 2))),
            "vignetting_corner_error_max": float(max(r["vignetting_corner_error"] for r in rows)),
            "response_gamma": gamma}


def panorama_checks(out_dir) -> dict | None:
    """Seamlessness of the panorama in ``out_dir`` (:mod:`mosaic.products.seamless`) and the frames it
    uses; None when there is no panorama.tif."""
    out_dir = Path(out_dir)
    sol = out_dir / "solution.json"
    if not (out_dir / "panorama.tif").is_file() or not sol.is_file():
        return None
    edge = seamless.edge_visibility(out_dir / "panorama.tif", sol)
    agree = seamless.overlap_agreement(out_dir, sol)
    frames = solution_io.load(sol)["frames"]
    label, used = ownership(sol, out_dir=out_dir)
    shown = np.unique(label[label >= 0])
    return {"edge_visibility": {k: v for k, v in edge.items() if k != "frames"},
            "overlap_agreement": agree,
            "frames": {"total": len(frames), "used": sum(1 for f in frames if f.get("used")),
                       "rendered": len(used), "visible": int(len(shown))}}


def evaluate(out, truth=None, dem=None) -> dict:
    """The comparison of output ``out`` (folder or solution.json) against ``truth`` (synth folder;
    None: only the panorama's own measures)."""
    sol_path = _solution_path(Path(out))
    result = {"solution": str(sol_path)}
    pano = panorama_checks(sol_path.parent)
    if pano is not None:
        result["panorama"] = pano
    if truth is None:
        return result
    tdir = _truth_dir(Path(truth))
    result["truth"] = str(tdir)
    result["pointing"] = pointing_errors(load_solution(sol_path), load_solution(tdir / "solution.json"))
    phot = photometry_errors(sol_path.parent / "render.json", tdir)
    if phot is not None:
        result["photometry"] = phot
    dem = Path(dem) if dem else (sol_path.parent / "dem.tif")
    if dem.is_file():
        scene_path = tdir.parent / "scene.json"
        scene = json.loads(scene_path.read_text()) if scene_path.is_file() else {}
        rover = scene.get("rover", {}).get("position_site", [0.0, 0.0, 0.0])
        so = scene.get("site_origin")
        origin = geo.SiteOrigin(so["lat"], so["lon"], so["elev"]) if so else geo.DEFAULT_SITE_ORIGIN
        sigma = dem.with_name("dem_sigma.tif")
        result["dem"] = dict(dem_errors(dem, tdir / "dem.tif", rover[:2], origin,
                                        sigma_path=sigma if sigma.is_file() else None), path=str(dem))
    return result


def format_table(result) -> str:
    lines = []
    pano = result.get("panorama")
    if pano:
        e, a, fr = pano["edge_visibility"], pano["overlap_agreement"], pano["frames"]
        lines.append(f"frames: {fr['used']} of {fr['total']} used, {fr['visible']} visible in the panorama")
        lines.append(f"edge visibility ratio {e['ratio']:.3f} over {e['runs']} runs" if e.get("ratio") is not None
                     else "edge visibility: no frame edge inside another frame")
        if a.get("pairs"):
            lines.append(f"overlap agreement (held-out tie points, {len(a['pairs'])} pairs, {a['ties']} points): "
                         f"median {100 * a['median']:.2f} %, p90 {100 * a['p90']:.2f} %, worst {100 * a['worst']:.2f} % "
                         f"(noise ~{100 * a['noise']:.2f} %)")
        else:
            lines.append(f"overlap agreement: {a.get('reason', 'not measured')}")
    ph = result.get("photometry")
    if ph:
        lines.append(f"photometry vs truth: exposure error max {100 * ph['exposure_error_max']:.2f} % "
                     f"(rms {100 * ph['exposure_error_rms']:.2f} %)"
                     + (f", vignetting at corners max {100 * ph['vignetting_corner_error_max']:.2f} %"
                        if "vignetting_corner_error_max" in ph else ""))
    if "pointing" not in result:
        return "\n".join(lines)
    if lines:
        lines.append("")
    p = result["pointing"]
    lines.append(f"{'frame':<58} {'err deg':>8} {'err px':>8} {'res deg':>8} {'res px':>8}")
    for r in p["frames"]:
        lines.append(f"{r['id']:<58} {r['error_deg']:8.4f} {r['error_px']:8.2f} {r['residual_deg']:8.4f} "
                     f"{r['residual_px']:8.2f}")
    s = p["summary"]
    if s["frames"]:
        lines.append(f"{'RMS':<58} {s['error_deg_rms']:8.4f} {s['error_px_rms']:8.2f} {s['residual_deg_rms']:8.4f} "
                     f"{s['residual_px_rms']:8.2f}")
        lines.append(f"common rotation {s['common_rotation_deg']:.4f} deg; {s['frames']} frames compared, "
                     f"{len(s['missing'])} missing from the solution")
    else:
        lines.append(f"no frame of the truth in the solution ({len(s['missing'])} missing)")
    d = result.get("dem")
    if d:
        lines.append("")
        lines.extend(format_dem(d))
    return "\n".join(lines)


def format_dem(d) -> list[str]:
    """The DEM figures as table lines: error and coverage by distance band, blunders, sigma check."""
    lines = [f"DEM {d.get('path', '')}: {d['valid_cells']} valid cells, {d['compared_cells']} compared with the truth"]
    if not d["bins"]:
        return lines
    sig = "sigma" in d
    head = f"{'distance m':<10} {'cells':>9} {'cover':>6} {'median |dz|':>12} {'p90 |dz|':>10} {'> 1 m':>9}"
    if sig:
        head += f" {'median sigma':>13} {'<= 2 sigma':>11} {'sigma/|dz|':>10} honest"
    lines.append(head)
    rows = [(f"{b['from_m']:g}-{'' if b['to_m'] is None else format(b['to_m'], 'g')}", b) for b in d["bins"]]
    rows.append(("all", dict(d, n=d["compared_cells"], coverage=None, blunder_fraction=d["blunders"]["fraction"])))
    for name, b in rows:
        cover = "" if b["coverage"] is None else f"{100 * b['coverage']:5.1f}%"
        line = (f"{name:<10} {b['n']:9d} {cover:>6} {100 * b['median_abs_m']:9.2f} cm {100 * b['p90_abs_m']:7.2f} cm "
                f"{100 * b['blunder_fraction']:8.4f}%")
        if sig:
            s = b["sigma"]
            line += (f" {100 * s['median_sigma_m']:10.2f} cm {100 * s['within_2sigma']:10.1f}% {s['ratio']:10.2f} "
                     f"{'yes' if s['honest'] else 'NO'}")
        lines.append(line)
    bl = d["blunders"]
    lines.append(f"blunders (> {bl['threshold_m']:g} m off): {bl['cells']} cells, {100 * bl['fraction']:.4f}% "
                 f"(worst {d['max_abs_m']:.3f} m, p99 {d['p99_abs_m']:.3f} m); "
                 f"{100 * d['coverage_10m']:.1f}% of the {COVER_RADIUS_M:g} m disc valid")
    if sig:
        lines.append(f"sigma ({Path(d['sigma']['path']).name}): "
                     + ("honest in every band" if d["sigma"]["honest_in_every_band"] else "NOT honest in every band")
                     + f" (needs >= {100 * SIGMA_WITHIN_2:g}% within 2 sigma and median sigma "
                       f"{SIGMA_RATIO[0]:g}-{SIGMA_RATIO[1]:g}x the median |dz|)")
    h = d.get("horizontal_offset_m")
    if h:
        lines.append(f"horizontal offset {h['total']:.4f} m (east {h['east']:.4f}, north {h['north']:.4f}); "
                     f"vertical bias {d['vertical_bias_m']:.4f} m")
    return lines


def add_arguments(p):
    p.add_argument("out", help="stitcher / terrain output folder (or its solution.json)")
    p.add_argument("--truth", default=None,
                   help="the folder 'mosaic synth' wrote (or its truth/); without it, the panorama's own measures")
    p.add_argument("--dem", default=None, help="DEM to compare (default: dem.tif beside the solution)")
    p.add_argument("--json", default=None, help="where to write the JSON (default: eval.json beside the solution)")


def run(args) -> int:
    result = evaluate(args.out, args.truth, args.dem)
    print(format_table(result))
    dest = Path(args.json) if args.json else Path(result["solution"]).parent / "eval.json"
    write_json(dest, result)
    return 0
