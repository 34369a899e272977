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
from calib.meta import LOCAL_LEVEL
from calib.models import model_from_dict
from calib.rotation import matrix_to_rotvec

from .atomic import write_json

#: Distance bins (metres from the rover) for the DEM error.
DEM_BINS = (0.0, 2.0, 5.0, 10.0, 20.0, 50.0, math.inf)


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
    try:
        sol = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise InputError(path, f"cannot read solution: {e}") from None
    if not isinstance(sol, dict) or not isinstance(sol.get("frames"), list):
        raise InputError(path, "not a solution (no 'frames' list)", field="frames")
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


def dem_errors(dem_path, truth_dem_path, rover_site_xy, origin) -> dict:
    """Error of a DEM against the truth DEM on the truth's grid, by distance from the rover."""
    import rasterio
    from rasterio.warp import Resampling, reproject
    from scipy import ndimage

    from . import geo

    with rasterio.open(truth_dem_path) as t:
        truth = t.read(1, masked=True).astype(np.float64).filled(np.nan)
        transform, crs = t.transform, t.crs
    try:
        src = rasterio.open(dem_path)
    except rasterio.errors.RasterioIOError as e:
        raise InputError(dem_path, f"cannot read DEM: {e}") from None
    with src:
        solved = np.full(truth.shape, np.nan)
        reproject(rasterio.band(src, 1), solved, src_nodata=src.nodata, dst_transform=transform, dst_crs=crs,
                  dst_nodata=np.nan, resampling=Resampling.bilinear)
    rows, cols = np.mgrid[0:truth.shape[0], 0:truth.shape[1]]
    east = transform.c + transform.a * (cols + 0.5)
    north = transform.f + transform.e * (rows + 0.5)
    re, rn = geo.local_level_to_map(rover_site_xy[0], rover_site_xy[1], origin)
    dist = np.hypot(east - float(re), north - float(rn))
    diff = solved - truth
    ok = np.isfinite(diff)
    out = {"valid_cells": int(ok.sum()), "truth_cells": int(np.isfinite(truth).sum()), "bins": []}
    if not ok.any():
        return out
    for lo, hi in zip(DEM_BINS[:-1], DEM_BINS[1:]):
        sel = ok & (dist >= lo) & (dist < hi)
        cover = np.isfinite(truth) & (dist >= lo) & (dist < hi)
        if not sel.any():
            continue
        a = np.abs(diff[sel])
        out["bins"].append({"from_m": lo, "to_m": None if math.isinf(hi) else hi, "n": int(sel.sum()),
                            "coverage": float(sel.sum() / max(cover.sum(), 1)),
                            "median_abs_m": float(np.median(a)), "p90_abs_m": float(np.percentile(a, 90))})
    a = np.abs(diff[ok])
    out.update(median_abs_m=float(np.median(a)), p90_abs_m=float(np.percentile(a, 90)))
    # Horizontal offset s (pixels) and vertical bias c: solved(p) ~ truth(p - s) + c, solved by
    # Gauss-Newton on the truth's gradients, re-sampling the shifted truth at each step. Robust:
    # only cells within OFFSET_RADIUS_M of the rover (far stereo is noise at the metre level) and
    # Huber weights, so a few wild cells cannot drag the estimate by metres.
    gsd = abs(transform.a)
    s = np.zeros(2)
    filled = np.where(np.isfinite(truth), truth, np.nanmedian(truth))
    near = ok & (dist < OFFSET_RADIUS_M)
    if near.sum() < 100:
        near = ok
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
    out["horizontal_offset_m"] = {"east": float(s[1] * gsd), "north": float(-s[0] * gsd),
                                  "total": float(np.hypot(*s) * gsd)}
    out["vertical_bias_m"] = float(np.median(diff[ok]))
    return out


def photometry_errors(record_path, truth_dir) -> dict | None:
    """Recovered exposures and vignetting of a render (``render.json``) against a synthetic scene's
    truth (``scene.json``: exposures, vignetting ``1 - v r^2`` over the full sensor's half
    diagonal, the response's exponent), in the scene's linear signal: a frame's recovered
    attenuation at a pixel is exp(-(log gain + spatial field) / exponent). Exposure: the
    attenuation at the frame's centre against exposure x vignetting there, both over their
    geometric mean over the frames (the common scale); vignetting: each corner's attenuation
    over the centre's, against the truth's. None without both files."""
    from calib.instruments import instrument

    from .render.photometry import tone_from_dict

    scene_path = Path(truth_dir).parent / "scene.json"
    record_path = Path(record_path)
    if not scene_path.is_file() or not record_path.is_file():
        return None
    scene = json.loads(scene_path.read_text())
    # Scenes written before the troubles were options carry the defaults (sqrt companding, 0.3).
    phot = scene.get("photometry") or {"vignetting": 0.3, "response_gamma": 0.5}
    gamma, v = float(phot.get("response_gamma", 0.5)), float(phot.get("vignetting", 0.3))
    tones = {fid: tone_from_dict(t) for fid, t in json.loads(record_path.read_text())["frames"].items()}
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
    """Seamlessness of the panorama in ``out_dir`` (:mod:`mosaic.seamless`) and the frames it
    uses; None when there is no panorama.tif."""
    from . import seamless
    from .quality import ownership

    out_dir = Path(out_dir)
    sol = out_dir / "solution.json"
    if not (out_dir / "panorama.tif").is_file() or not sol.is_file():
        return None
    edge = seamless.edge_visibility(out_dir / "panorama.tif", sol)
    agree = seamless.overlap_agreement(out_dir, sol)
    frames = json.loads(sol.read_text())["frames"]
    label, used = ownership(sol, out_dir=out_dir)
    shown = np.unique(label[label >= 0])
    return {"edge_visibility": {k: v for k, v in edge.items() if k != "frames"},
            "overlap_agreement": agree,
            "frames": {"total": len(frames), "used": sum(1 for f in frames if f.get("used")),
                       "rendered": len(used), "visible": int(len(shown))}}


def evaluate(out, truth=None, dem=None) -> dict:
    """The comparison of output ``out`` (folder or solution.json) against ``truth`` (synth folder;
    None: only the panorama's own measures)."""
    from . import geo

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
        result["dem"] = dict(dem_errors(dem, tdir / "dem.tif", rover[:2], origin), path=str(dem))
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
        lines.append(f"DEM {d['path']}: {d['valid_cells']} cells compared")
        lines.append(f"{'distance m':<14} {'n':>9} {'cover':>6} {'median |dz| m':>14} {'p90 |dz| m':>11}")
        for b in d["bins"]:
            rng = f"{b['from_m']:g}-{'' if b['to_m'] is None else format(b['to_m'], 'g')}"
            lines.append(f"{rng:<14} {b['n']:9d} {b['coverage']:6.2f} {b['median_abs_m']:14.4f} {b['p90_abs_m']:11.4f}")
        if "horizontal_offset_m" in d:
            h = d["horizontal_offset_m"]
            lines.append(f"horizontal offset {h['total']:.4f} m (east {h['east']:.4f}, north {h['north']:.4f}); "
                         f"vertical bias {d['vertical_bias_m']:.4f} m")
    return "\n".join(lines)


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
