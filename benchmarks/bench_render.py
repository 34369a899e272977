"""Benchmark: render a >= 1 gigapixel equirectangular panorama; peak memory and throughput.

    .venv/bin/python -m benchmarks.bench_render                 # 1 GP, ~270 Mastcam-Z-like frames
    .venv/bin/python -m benchmarks.bench_render --gigapixels 0.1 --keep /tmp/bench

Frames are synthesised in-process from the procedural world of ``mosaic.render.truthworld``
(1600 x 1200 JPEGs at the panorama's own resolution, a band of rows from -20 to +20 degrees
elevation round the horizon, 20-25% overlaps, +-10% exposures), then ``render_panorama`` runs in
a child process (the embedded dask cluster, threads) while ``benchmarks.measure`` polls the
whole process tree's resident memory, and the child's CPU time is read from ``getrusage`` (on a
shared machine wall time measures the neighbours too; CPU seconds per megapixel do not). Printed: output size, covered pixels, wall time per phase,
throughput in output megapixels per second (all pixels, and covered pixels, which is what costs),
and peak memory. For scale, OpenCV's compositing (``cv2.detail`` spherical warper + multi-band
blender, the part of ``cv2.Stitcher`` after registration) and ours run on the same small subset
of frames, compared by covered output megapixels per second.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from benchmarks import measure

FW, FH = 1600, 1200
EL_BAND = 40.0  # degrees of elevation covered, centred on the horizon


def make_frames(out_dir: Path, gigapixels: float, seed: int = 7):
    """Frames covering elevations -30..+30 at the resolution of a ``gigapixels`` panorama."""
    from mosaic.render import truthworld as tw

    width = int(np.ceil(np.sqrt(gigapixels * 1e9 * 2) / 32) * 32)
    res = 360.0 / width
    focal = 1.0 / np.radians(res)  # one frame pixel = one panorama pixel on the axis
    hfov = np.degrees(2 * np.arctan(FW / 2 / focal))
    vfov = np.degrees(2 * np.arctan(FH / 2 / focal))
    ncol = int(np.ceil(360.0 / (0.78 * hfov)))
    nrow = int(np.ceil(EL_BAND / (0.78 * vfov)))
    rng = np.random.default_rng(seed)
    world = tw.world(1024, seed=seed)
    specs = []
    for r in range(nrow):
        el = -EL_BAND / 2 + vfov / 2 + r * (EL_BAND - vfov) / max(1, nrow - 1)
        for c in range(ncol):
            # Mostly CAHV (fast to synthesise); every fifth a CAHVORE, which costs the renderer more.
            m = tw.pointing_model(360.0 * c / ncol + 3.0 * r, el, FW, FH, focal,
                                  kind="CAHVORE" if (r + c) % 5 == 0 else "CAHV", distortion=(0.0, -0.01, 0.0))
            specs.append({"model": m, "width": FW, "height": FH, "gain": float(rng.uniform(0.9, 1.1))})
    t0 = time.perf_counter()
    sol = tw.write_frames(out_dir, world, specs, ext=".jpg")
    return sol, {"frames": len(specs), "rows": nrow, "cols": ncol, "resolution_deg": res,
                 "frame_fov_deg": [hfov, vfov], "synth_s": time.perf_counter() - t0}


_CHILD = r"""
import json, sys
from mosaic.render import render_panorama
sol, out, tile = sys.argv[1], sys.argv[2], int(sys.argv[3])
res = float(sys.argv[4]) if len(sys.argv) > 4 else None
r = render_panorama(sol, out, tile=tile, resolution=res)
print("RESULT " + json.dumps(r))
"""


def run_ours(sol, out_dir, tile, resolution=None):
    cmd = [sys.executable, "-c", _CHILD, str(sol), str(out_dir), str(tile)]
    if resolution is not None:
        cmd.append(repr(resolution))
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = measure.run(cmd, cwd=str(Path(__file__).resolve().parents[1]))
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    m.cpu_s = (after.ru_utime + after.ru_stime) - (before.ru_utime + before.ru_stime)
    if m.returncode != 0:
        raise RuntimeError(f"render failed:\n{m.stderr[-3000:]}")
    line = [ln for ln in m.stdout.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[7:]), m


def opencv_composite(sol_path: Path, ids, num_bands=5):
    """cv2.detail spherical warp + MultiBandBlender over the frames ``ids`` (true models)."""
    sol = json.loads(sol_path.read_text())
    from calib.models import model_from_dict

    # LOCAL_LEVEL (north, east, down) -> the warper's world (x right = east, y down, z = north).
    M = np.array([[0.0, 1, 0], [0, 0, 1], [1, 0, 0]])
    frames = [f for f in sol["frames"] if f["id"] in ids]
    imgs, ks, rs = [], [], []
    for f in frames:
        k, rot, _ = model_from_dict(f["model"]).to_opencv()
        imgs.append(cv2.imread(str(sol_path.parent / f["image"])))
        ks.append(k.astype(np.float32))
        rs.append((M @ rot.T).astype(np.float32))
    t0, p0 = time.perf_counter(), time.process_time()
    warper = cv2.PyRotationWarper("spherical", float(ks[0][0, 0]))
    corners, warped, masks = [], [], []
    for img, k, r in zip(imgs, ks, rs):
        c, w = warper.warp(img, k, r, cv2.INTER_LINEAR, cv2.BORDER_REFLECT)
        _, m = warper.warp(np.full(img.shape[:2], 255, np.uint8), k, r, cv2.INTER_NEAREST, cv2.BORDER_CONSTANT)
        corners.append(c)
        warped.append(w.astype(np.int16))
        masks.append(m)
    t1 = time.perf_counter()
    # Seams: OpenCV's Voronoi seam finder on the warped masks, as its stitcher's cheapest option.
    sizes = [(w.shape[1], w.shape[0]) for w in warped]
    finder = cv2.detail.SeamFinder_createDefault(cv2.detail.SeamFinder_VORONOI_SEAM)
    masks = finder.find([w.astype(np.float32) for w in warped], corners, masks)
    blender = cv2.detail_MultiBandBlender(0, num_bands)
    blender.prepare(cv2.detail.resultRoi(corners=corners, sizes=sizes))
    for w, m, c in zip(warped, masks, corners):
        blender.feed(w, m, c)
    result, rmask = blender.blend(None, None)
    t2, p2 = time.perf_counter(), time.process_time()
    covered = int((rmask > 0).sum())
    return {"frames": len(frames), "out_px": int(result.shape[0] * result.shape[1]), "covered_px": covered,
            "warp_s": t1 - t0, "seam_blend_s": t2 - t1, "total_s": t2 - t0, "cpu_s": p2 - p0,
            "covered_mp_per_s": covered / 1e6 / (t2 - t0)}


def subset_solution(sol_path: Path, n: int, out: Path):
    sol = json.loads(sol_path.read_text())
    frames = sol["frames"][:n]
    for f in frames:
        f["image"] = str((sol_path.parent / f["image"]).resolve())
    out.write_text(json.dumps({"frames": frames, "stats": sol["stats"]}))
    return out, [f["id"] for f in frames]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--gigapixels", type=float, default=1.0)
    p.add_argument("--tile", type=int, default=1024)
    p.add_argument("--subset", type=int, default=6, help="frames for the OpenCV comparison")
    p.add_argument("--keep", help="work folder to keep (default: a temporary one, removed)")
    args = p.parse_args(argv)
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_render."))
    work.mkdir(parents=True, exist_ok=True)
    try:
        sol, info = make_frames(work / "frames", args.gigapixels)
        print(f"frames: {info['frames']} x {FW}x{FH} JPEG ({info['rows']} rows x {info['cols']}), "
              f"{info['resolution_deg'] * 3600:.1f} arcsec/px, synthesised in {info['synth_s']:.0f} s")
        r, m = run_ours(sol, work / "out", args.tile)
        out_mp = r["width"] * r["height"] / 1e6
        cov_mp = r["covered_px"] / 1e6
        s = r["seconds"]
        print(f"ours: {r['width']} x {r['height']} = {out_mp / 1e3:.2f} GP ({cov_mp:.0f} MP covered), "
              f"tile {args.tile}, {r['tiles']} tiles ({r['tiles_written']} written)")
        print(f"  wall {m.wall_s:.1f} s (gains {s['gains']:.1f}, warp+blend {s['render']:.1f}, "
              f"COG {s['cog']:.1f}, preview {s['preview']:.1f}); peak memory (process tree) {m.peak_mib:.0f} MiB")
        print(f"  warp+blend throughput: {out_mp / s['render']:.1f} output MP/s, {cov_mp / s['render']:.1f} covered MP/s;"
              f" end to end {out_mp / m.wall_s:.1f} output MP/s")
        c = r["cpu_seconds"]
        print(f"  CPU time (child, all threads) {m.cpu_s:.0f} s (gains {c['gains']:.0f}, warp+blend {c['render']:.0f}, "
              f"COG {c['cog']:.0f}): warp+blend {cov_mp / c['render']:.2f} covered MP per CPU-second, i.e. "
              f"{2 * cov_mp / c['render']:.1f} covered ({2 * out_mp / c['render']:.1f} output) MP/s on 2 fully "
              f"available cores; end to end {2 * cov_mp / m.cpu_s:.1f} covered MP/s on 2 cores")
        sub, ids = subset_solution(sol, args.subset, work / "subset.json")
        cv = opencv_composite(sol, ids)
        cv_cov = cv["covered_px"] / 1e6
        print(f"OpenCV cv2.detail (spherical warp + Voronoi seams + MultiBandBlender), {cv['frames']} frames: "
              f"{cv_cov:.1f} MP covered of {cv['out_px'] / 1e6:.1f} MP output in {cv['total_s']:.2f} s "
              f"(warp {cv['warp_s']:.2f}, seams+blend {cv['seam_blend_s']:.2f}) = {cv['covered_mp_per_s']:.1f} covered MP/s "
              f"wall; {cv_cov / cv['cpu_s']:.2f} covered MP per CPU-second, i.e. {2 * cv_cov / cv['cpu_s']:.1f} covered "
              f"({2 * cv['out_px'] / 1e6 / cv['cpu_s']:.1f} output) MP/s on 2 cores")
        r2, m2 = run_ours(sub, work / "out_subset", args.tile, r["resolution"])
        cov2, cpu2 = r2["covered_px"] / 1e6, r2["cpu_seconds"]["render"]
        print(f"ours, same {cv['frames']} frames: {cov2:.1f} MP covered of {r2['width'] * r2['height'] / 1e6:.0f} MP "
              f"output, warp+blend {r2['seconds']['render']:.2f} s = {cov2 / r2['seconds']['render']:.1f} covered MP/s wall; "
              f"{cov2 / cpu2:.2f} covered MP per CPU-second, i.e. {2 * cov2 / cpu2:.1f} covered MP/s on 2 cores "
              f"(whole run: wall {m2.wall_s:.1f} s with cluster start, gains and COG; peak {m2.peak_mib:.0f} MiB)")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
