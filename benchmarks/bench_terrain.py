"""Terrain throughput: stereo pairs per minute and peak memory of ``mosaic terrain`` on the sample scene.

The sample scene is ``mosaic synth --scene navcam-stereo`` (5 Navcam pairs around the rover) at
``--scale`` (default 8: 640 x 480 frames; 4 gives the scene's default 1280 x 960), made once into
``--scene-dir`` (default a temporary folder). ``mosaic terrain`` then runs in a fresh process per
repeat, measured with benchmarks.measure (wall time and peak RSS of the whole process tree), and
the per-stage times come from its report.json. Not a test: it prints numbers.

    .venv/bin/python -m benchmarks.bench_terrain [--scale 8] [--gsd 0.02] [--radius 15] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
from pathlib import Path

from benchmarks import measure


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=int, default=8)
    ap.add_argument("--gsd", type=float, default=0.02)
    ap.add_argument("--radius", type=float, default=15.0)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--scene-dir", default=None, help="reuse/keep the synthetic scene here")
    ap.add_argument("--out", default=None, help="keep the terrain output here (and score it with mosaic eval)")
    args = ap.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="bench_terrain_") as tmp:
        scene = Path(args.scene_dir) if args.scene_dir else Path(tmp) / "scene"
        if not (scene / "truth" / "solution.json").exists():
            m = measure.run([sys.executable, "-m", "mosaic", "-q", "synth", str(scene), "--scene", "navcam-stereo",
                             "--scale", str(args.scale)])
            if m.returncode:
                print(m.stderr, file=sys.stderr)
                return 1
            print(f"synth navcam-stereo scale {args.scale}: {m.wall_s:.1f} s")
        out = Path(args.out) if args.out else Path(tmp) / "out"
        cmd = [sys.executable, "-m", "mosaic", "-q", "terrain", str(scene), "-o", str(out), "--gsd", str(args.gsd),
               "--radius", str(args.radius), "--solution", str(scene / "truth" / "solution.json")]
        cpu0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        wall, peak, last = measure.repeat(lambda: measure.run(cmd), args.repeat)
        cpu1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (cpu1.ru_utime + cpu1.ru_stime - cpu0.ru_utime - cpu0.ru_stime) / args.repeat
        report = json.loads((out / "report.json").read_text())
        pairs = report["stages"]["pairs"]["pairs"]
        points = report["stages"]["points"]
        grid = report["grid"]
        print(f"mosaic terrain: {pairs} pairs, {points['points']} points, grid {grid['width']}x{grid['height']} "
              f"at {args.gsd} m")
        print(f"  wall {wall:.1f} s (median of {args.repeat}), CPU {cpu:.1f} s a run, peak memory {peak / 2**20:.0f} MiB"
              f" (load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        print(f"  pairs per minute (whole run): {60.0 * pairs / wall:.1f}")
        print(f"  pairs per minute (stereo stage): {60.0 * pairs / points['seconds']:.1f}")
        for name, st in report["stages"].items():
            print(f"  stage {name:<8} {st['seconds']:.2f} s")
        per_pair = sorted(p["seconds"] for p in report["pairs"])
        print(f"  one pair (in a task): median {per_pair[len(per_pair) // 2]:.2f} s, "
              f"rectified {report['pairs'][0]['rectified'][0]}x{report['pairs'][0]['rectified'][1]}")
        if args.out:
            from mosaic.evaluate import evaluate

            dem = evaluate(out, scene)["dem"]
            print("  DEM median |dz| by distance: " + ", ".join(
                f"{b['from_m']:g}-{b['to_m'] if b['to_m'] is not None else 'inf'} m {100 * b['median_abs_m']:.2f} cm"
                for b in dem["bins"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
