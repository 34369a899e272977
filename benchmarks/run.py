"""`make bench`: mosaic stitch against cv2.Stitcher and Hugin on the same inputs; docs/benchmarks.md.

    .venv/bin/python -m benchmarks.run                      # everything, 3 runs each -> docs/benchmarks.md
    .venv/bin/python -m benchmarks.run --runs 1 --sets boat,scaling
    .venv/bin/python -m benchmarks.run --smoke               # CI: budapest, 1 run, ours + cv2, temp file

Every command is a fresh process measured by ``benchmarks.measure.run`` (median wall time of
``--runs``, peak resident memory of the whole process tree, polled from /proc), ours as
``python -m mosaic stitch`` exactly as the peers are ``python -c <cv2.Stitcher>`` and the Hugin
shell chain. Sets: ``boat``, ``budapest`` (OpenCV's sample photos), ``navcam360`` (the committed
sample pan), ``mcz360`` (a synthetic 126-frame Mastcam-Z pan, made once into ``--cache``),
``scaling`` (registration of half and all of ``mcz360``), ``render`` (``bench_render``'s >= 1
gigapixel panorama). Each finished row is saved under ``--cache``/results and reused by the
next run with the same inputs (and, for ours, the same commit), so an interrupted run resumes;
``--fresh`` measures everything again. The markdown keeps whatever follows its
``HUMAN`` marker (the hand-written analysis) and regenerates the rest.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from benchmarks import measure, peers

REPO = Path(__file__).resolve().parents[1]
PEERDATA = REPO.parent / "shared" / "peerdata" / "opencv_stitching"
SETS = ("boat", "budapest", "navcam360", "mcz360", "scaling", "render")
HUMAN = "<!-- Everything below this line is written by hand; benchmarks/run.py keeps it. -->"
MCZ = {"scene": "mastcamz-360", "zoom": 63, "scale": 4, "seed": 0}


# --------------------------------------------------------------------------- environment

def ensure_hugin(log) -> str:
    """Install hugin-tools and enblend from Debian when missing and we may; a note either way."""
    if peers.hugin_available():
        return "installed"
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        log("Hugin: hugin-tools/enblend missing and not root (or no apt-get): Hugin rows skipped")
        return "missing (not root: not installed)"
    log("Hugin: apt-get install -y hugin-tools enblend")
    r = subprocess.run(["apt-get", "install", "-y", "-q", "hugin-tools", "enblend"], capture_output=True, text=True,
                       env={**os.environ, "DEBIAN_FRONTEND": "noninteractive"})
    if r.returncode != 0 or not peers.hugin_available():
        log(f"Hugin: install failed ({r.stderr.strip().splitlines()[-1:] or r.returncode}): Hugin rows skipped")
        return "missing (apt-get install failed)"
    return "installed by make bench"


def _first_line(cmd) -> str:
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not installed"
    text = (r.stdout + r.stderr).strip()
    return text.splitlines()[0] if text else "unknown"


def machine() -> dict:
    import cv2
    import dask
    import numpy

    cpu = "unknown"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    with open("/proc/meminfo") as f:
        mem_kib = int(f.readline().split()[1])
    hugin = _first_line(["dpkg-query", "-W", "-f=${Version}", "hugin-tools"])
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gib": round(mem_kib / 2**20, 1),
            "os": platform.platform(), "python": platform.python_version(), "numpy": numpy.__version__,
            "opencv": cv2.__version__, "dask": dask.__version__,
            "hugin": hugin if "no packages" not in hugin.lower() else _first_line(["nona", "--help"]),
            "enblend": _first_line(["enblend", "--version"]), "commit": _commit()}


def _commit() -> str:
    r = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "mosaic", "calib"], cwd=REPO,
                           capture_output=True, text=True).stdout.strip()
    return (r.stdout.strip() or "unknown") + ("+dirty" if dirty else "")


def _load() -> float:
    return round(os.getloadavg()[0], 1)


def _children_cpu() -> float:
    """CPU seconds (user + system) of all waited-for descendants so far: on a shared machine wall
    time measures the neighbours too, CPU time does not."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def _with_cpu(make, runs: int):
    """``make()``'s row plus ``cpu_s``: the mean CPU time of one run."""
    c0 = _children_cpu()
    row = make()
    if row is not None and "wall_s" in row:
        row["cpu_s"] = (_children_cpu() - c0) / runs
    return row


# --------------------------------------------------------------------------- runners

def ours(inputs, runs: int, work: Path, extra=()) -> dict:
    """``python -m mosaic stitch`` in a fresh output folder per run (no stage is skipped)."""
    walls, peaks = [], []
    c0 = _children_cpu()
    for k in range(runs):
        out = work / "ours"
        shutil.rmtree(out, ignore_errors=True)
        m = measure.run([sys.executable, "-m", "mosaic", "-q", "stitch", *map(str, inputs), "-o", str(out), *extra],
                        cwd=REPO)
        if m.returncode != 0:
            raise RuntimeError(f"mosaic stitch failed ({m.returncode}): {m.stderr.strip()[-2000:]}")
        walls.append(m.wall_s)
        peaks.append(m.peak_bytes)
    report = json.loads((out / "report.json").read_text())
    stats = json.loads((out / "solution.json").read_text())["stats"]
    row = {"tool": "mosaic stitch", "wall_s": statistics.median(walls), "peak_mib": max(peaks) / 2**20,
           "cpu_s": (_children_cpu() - c0) / runs,
           "frames_used": report["frames_used"], "frames": report["frames"], "rms_px": stats.get("rms_px"),
           "stages_s": {k: v["wall_s"] for k, v in report["stages"].items()}, "in_process_s": report["total_s"]}
    render = report["stages"].get("render", {}).get("counts", {})
    if "width" in render:
        w, h = render["width"], render["height"]
        row.update(output=f"{w}x{h}", output_mp=w * h / 1e6, covered_mp=render.get("covered_px", 0) / 1e6,
                   render_s=render.get("seconds", {}))
    pairs = report["stages"].get("matches", {}).get("counts", {})
    row["pairs"] = pairs.get("verified_pairs")
    return row


def cv2_row(images, runs: int) -> dict:
    return _with_cpu(lambda: peers.opencv_stitcher(images, runs), runs)


def hugin_row(images, runs: int, hfov) -> dict | None:
    return _with_cpu(lambda: peers.hugin_chain(images, runs, hfov), runs)


# --------------------------------------------------------------------------- inputs

def peer_set(name: str) -> list[Path]:
    imgs = sorted(PEERDATA.glob(f"{name}[0-9].jpg"))
    if not imgs:
        raise FileNotFoundError(f"{PEERDATA}: no {name}*.jpg (the peer photo sets are not beside the repository; "
                                "--peerdata names another folder)")
    return imgs


def synth_scene(cache: Path, log) -> Path:
    """The 126-frame Mastcam-Z 360 pan, made once (the same arguments give the same bytes)."""
    scene = cache / f"{MCZ['scene']}-z{MCZ['zoom']}-s{MCZ['scale']}"
    if (scene / "scene.json").exists():
        return scene
    log(f"synth: {MCZ} -> {scene} (once; a few minutes)")
    tmp = scene.with_name(scene.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "mosaic", "-q", "synth", str(tmp), "--scene", MCZ["scene"],
                    "--zoom", str(MCZ["zoom"]), "--scale", str(MCZ["scale"]), "--seed", str(MCZ["seed"])],
                   cwd=REPO, check=True)
    tmp.rename(scene)
    return scene


def scene_frames(scene: Path, half: bool = False) -> tuple[list[Path], list[Path]]:
    """(records, images) of a synthetic scene; ``half``: the frames of the first 180 degrees of azimuth."""
    params = json.loads((scene / "scene.json").read_text())
    frames = params["frames"]
    if half:
        azs = sorted({round(f["mast_az"] % 360.0, 6) for f in frames})
        keep = set(azs[: len(azs) // 2])
        frames = [f for f in frames if round(f["mast_az"] % 360.0, 6) in keep]
    records = [scene / (f["id"] + "01.json") for f in frames]
    return records, [r.with_suffix(".png") for r in records]


# --------------------------------------------------------------------------- cache

class Results:
    """One JSON file per (set, tool) row under ``dir``; a row is reused while its key is unchanged."""

    def __init__(self, dir: Path, fresh: bool):
        self.dir, self.fresh = dir, fresh
        dir.mkdir(parents=True, exist_ok=True)

    def get(self, name: str, key: dict, make, log):
        path = self.dir / f"{name}.json"
        if not self.fresh and path.exists():
            saved = json.loads(path.read_text())
            if saved.get("key") == key:
                log(f"{name}: reused ({saved['row'].get('measured')})")
                return saved["row"]
        log(f"{name}: measuring (load {_load()})")
        load0 = _load()
        row = make()
        if row is not None:
            row.update(measured=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                       load=max(load0, _load()), runs=key.get("runs"))
            from mosaic.atomic import write_json

            write_json(path, {"key": key, "row": row})
        return row


# --------------------------------------------------------------------------- the benchmark

def run_sets(sets, runs: int, cache: Path, results: Results, hugin: bool, log, commit: str,
             gigapixels: float) -> dict:
    out = {}
    work = cache / "work"
    for name in sets:
        if name in ("boat", "budapest", "navcam360", "mcz360"):
            if name in ("boat", "budapest"):
                images = peer_set(name)
                ours_inputs, hfov = images, (48.0 if name == "boat" else None)
            elif name == "navcam360":
                ours_inputs = sorted((REPO / "sample_tiles" / "navcam_360").glob("*01.json"))
                images, hfov = [p.with_suffix(".png") for p in ours_inputs], 96.5
            else:
                from mosaic.synth.scenes import _mcz_fov

                ours_inputs, images = scene_frames(synth_scene(cache, log))
                hfov = round(_mcz_fov(MCZ["zoom"])[0], 2)  # the PNGs carry no EXIF for Hugin
            key = {"inputs": [str(p) for p in images], "runs": runs}
            rows = {"ours": results.get(f"{name}__ours", {**key, "commit": commit},
                                        lambda: ours(ours_inputs, runs, work / name), log),
                    "cv2": results.get(f"{name}__cv2", key, lambda: cv2_row(images, runs), log)}
            if hugin:
                # Hugin takes minutes a set: its median is of at most 3 runs.
                rows["hugin"] = results.get(f"{name}__hugin", {**key, "runs": min(runs, 3), "hfov": hfov},
                                            lambda: hugin_row(images, min(runs, 3), hfov), log)
            out[name] = rows
        elif name == "scaling":
            scene = synth_scene(cache, log)
            rows = {}
            for label, half in (("N", True), ("2N", False)):
                recs, _ = scene_frames(scene, half)
                rows[label] = results.get(f"scaling__{label}", {"inputs": [str(p) for p in recs], "runs": runs,
                                                                 "commit": commit},
                                          lambda recs=recs, label=label: ours(recs, runs, work / f"scaling{label}",
                                                                              ["--no-render"]), log)
            out[name] = rows
        elif name == "render":
            out[name] = {"ours": results.get("render__ours", {"gigapixels": gigapixels, "commit": commit},
                                             lambda: render_row(cache, gigapixels, log), log)}
        else:
            raise ValueError(f"unknown set {name!r} (known: {', '.join(SETS)})")
    return out


def render_row(cache: Path, gigapixels: float, log) -> dict:
    from benchmarks import bench_render

    frames = cache / f"render-{gigapixels:g}gp"
    sol = frames / "truth" / "solution.json"
    if not sol.exists():
        log(f"render: synthesising the frames of a {gigapixels:g} GP panorama (once)")
        shutil.rmtree(frames, ignore_errors=True)
        sol, info = bench_render.make_frames(frames, gigapixels)
        (frames / "info.json").write_text(json.dumps(info))
    info = json.loads((frames / "info.json").read_text())
    out = cache / "work" / "render"
    shutil.rmtree(out, ignore_errors=True)
    r, m = bench_render.run_ours(sol, out, 1024)
    shutil.rmtree(out, ignore_errors=True)
    out_mp, cov_mp = r["width"] * r["height"] / 1e6, r["covered_px"] / 1e6
    s = r["seconds"]
    return {"tool": "render_panorama", "frames": info["frames"], "frames_used": r.get("frames", info["frames"]),
            "output": f"{r['width']}x{r['height']}", "output_mp": out_mp, "covered_mp": cov_mp,
            "wall_s": m.wall_s, "peak_mib": m.peak_mib, "cpu_s": m.cpu_s, "render_s": s,
            "warp_blend_mp_s": out_mp / s["render"], "warp_blend_covered_mp_s": cov_mp / s["render"],
            "covered_mp_per_cpu_s": cov_mp / m.cpu_s}


# --------------------------------------------------------------------------- the page

def _f(v, fmt="{:.1f}", none="—"):
    return none if v is None else fmt.format(v)


def goals(res: dict) -> list[tuple]:
    """(goal, measured, met: True/False/None when not measured)."""
    out = []
    boat = res.get("boat", {})
    o, cv, hu = boat.get("ours"), boat.get("cv2"), boat.get("hugin")
    if o and cv:
        out.append(("boat end to end >= 3x faster than cv2.Stitcher",
                    f"{cv['wall_s'] / o['wall_s']:.2f}x ({o['wall_s']:.1f} s vs {cv['wall_s']:.1f} s)",
                    cv["wall_s"] / o["wall_s"] >= 3))
        out.append(("boat peak memory <= 1/2 of cv2.Stitcher's",
                    f"{o['peak_mib'] / cv['peak_mib']:.2f} ({o['peak_mib']:.0f} vs {cv['peak_mib']:.0f} MiB)",
                    o["peak_mib"] <= 0.5 * cv["peak_mib"]))
    if o and hu and "wall_s" in hu:
        out.append(("boat end to end >= 10x faster than Hugin",
                    f"{hu['wall_s'] / o['wall_s']:.2f}x ({o['wall_s']:.1f} s vs {hu['wall_s']:.1f} s)",
                    hu["wall_s"] / o["wall_s"] >= 10))
    if o:
        out.append(("boat: every frame used", f"{o['frames_used']} of {o['frames']}", o["frames_used"] == o["frames"]))
    r = res.get("render", {}).get("ours")
    if r:
        out.append(("warp+blend >= 20 output MP/s on 2 cores",
                    f"{r['warp_blend_mp_s']:.1f} output MP/s wall ({r['warp_blend_covered_mp_s']:.1f} covered MP/s); "
                    f"CPU-bound rate on 2 free cores {2 * r['covered_mp_per_cpu_s']:.1f} covered MP/s end to end",
                    r["warp_blend_mp_s"] >= 20))
        out.append((">= 1 GP equirect panorama under 2 GiB peak",
                    f"{r['output_mp'] / 1e3:.2f} GP, peak {r['peak_mib']:.0f} MiB",
                    r["output_mp"] >= 1000 and r["peak_mib"] < 2048))
    sc = res.get("scaling", {})
    if sc.get("N") and sc.get("2N"):
        n, n2 = sc["N"], sc["2N"]
        # CPU seconds when both rows have them (the load may change between the rows), else the
        # wall time of the registration stages (no process start).
        cpu = bool(n.get("cpu_s") and n2.get("cpu_s"))
        reg = (lambda row: row["cpu_s"]) if cpu else (lambda row: sum(row["stages_s"].values()))  # noqa: E731
        unit = "CPU-s" if cpu else "s (stage wall time)"
        out.append(("registration time(2N) <= 2 x time(N)",
                    f"{n['frames']} frames {reg(n):.1f} {unit}, {n2['frames']} frames {reg(n2):.1f}: ratio "
                    f"{reg(n2) / reg(n):.2f} for {n2['frames'] / n['frames']:.2f}x the frames",
                    reg(n2) <= 2 * reg(n) * n2["frames"] / (2 * n["frames"])))
    return out


def page(res: dict, info: dict, human: str) -> str:
    runs = sorted({str(r.get("runs")) for rows in res.values() for r in rows.values() if r and r.get("runs")})
    L = ["# Benchmarks", "",
         "Generated by `make bench` (`benchmarks/run.py`; see benchmarks/README.md). Every tool runs as a fresh "
         "process on the same image files; wall time is the median of the runs, peak memory the largest sum of "
         "resident set sizes over the whole process tree (sampled from /proc every 10 ms), for us and the peers "
         "alike. *load* is the 1-minute load average while the row was measured: with more runnable processes "
         "than cores, absolute times are inflated and only ratios measured at the same load mean much.", "",
         f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram_gib']} GiB RAM, {info['os']}. ",
         f"Versions: Python {info['python']}, NumPy {info['numpy']}, OpenCV {info['opencv']}, dask {info['dask']}, "
         f"Hugin {info['hugin']}, {info['enblend']}. Commit {info['commit']}. Runs per row (median of): "
         f"{', '.join(runs) or '?'} (Hugin: at most 3).", ""]
    stitch_sets = [s for s in ("boat", "budapest", "navcam360", "mcz360") if s in res]
    if stitch_sets:
        L += ["## Stitching, end to end", "",
              "| set | tool | frames used | wall (s) | CPU (s) | peak (MiB) | output (px) | output MP | RMS (px) "
              "| ours: times faster (wall, CPU) | ours: memory ratio | measured (load) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
        for s in stitch_sets:
            o = res[s].get("ours")
            for tool in ("ours", "cv2", "hugin"):
                row = res[s].get(tool)
                if tool == "hugin" and tool in res[s] and row is None:
                    L.append(f"| {s} | Hugin | not installed | | | | | | | | | |")
                if row is None:
                    continue
                if "error" in row:
                    L.append(f"| {s} | {row['tool']} | failed: {' '.join(row['error'])[:80]} | | | | | | | | | |")
                    continue
                speed = mem = ""
                if tool != "ours" and o:
                    speed = f"{row['wall_s'] / o['wall_s']:.2f}x"
                    if row.get("cpu_s") and o.get("cpu_s"):
                        speed += f", {row['cpu_s'] / o['cpu_s']:.2f}x"
                    mem = f"{o['peak_mib'] / row['peak_mib']:.2f}"
                out_mp = _f(row.get("output_mp"))
                if row.get("covered_mp"):
                    out_mp += f" ({row['covered_mp']:.1f} covered)"
                used = row["frames_used"]
                L.append(f"| {s} | {row['tool']} | {'?' if used < 0 else used} of {row['frames']} "
                         f"| {row['wall_s']:.1f} | {_f(row.get('cpu_s'))} | {row['peak_mib']:.0f} "
                         f"| {row.get('output', '—')} | {out_mp} "
                         f"| {_f(row.get('rms_px'), '{:.2f}')} | {speed} | {mem} | {row['measured']} ({row['load']}) |")
        L += ["", "Our stages (seconds, in-process, from report.json; the rest of the wall time is interpreter and "
              "dask cluster start):", "", "| set | " + " | ".join(("ingest", "features", "pairs", "matches", "adjust",
                                                                   "render")) + " | verified pairs |",
              "|---|---|---|---|---|---|---|---|"]
        for s in stitch_sets:
            o = res[s].get("ours")
            if o:
                st = o["stages_s"]
                L.append(f"| {s} | " + " | ".join(_f(st.get(k)) for k in ("ingest", "features", "pairs", "matches",
                                                                          "adjust", "render"))
                         + f" | {_f(o.get('pairs'), '{}')} |")
        L.append("")
    sc = res.get("scaling", {})
    if sc.get("N") and sc.get("2N"):
        L += ["## Registration scaling (`--no-render`)", "",
              f"Synthetic `{MCZ['scene']}` pan (zoom {MCZ['zoom']} mm, scale 1/{MCZ['scale']}, seed {MCZ['seed']}): "
              "N = the frames of the first 180 degrees of azimuth (all three tiers), 2N = all of them.", "",
              "| frames | verified pairs | wall (s) | CPU (s) | registration stages (s) | features | matches | adjust "
              "| peak (MiB) | RMS (px) | measured (load) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
        for k in ("N", "2N"):
            r = sc[k]
            st = r["stages_s"]
            L.append(f"| {r['frames_used']} of {r['frames']} | {_f(r.get('pairs'), '{}')} | {r['wall_s']:.1f} "
                     f"| {_f(r.get('cpu_s'))} "
                     f"| {sum(st.values()):.1f} | {_f(st.get('features'))} | {_f(st.get('matches'))} "
                     f"| {_f(st.get('adjust'))} | {r['peak_mib']:.0f} | {_f(r.get('rms_px'), '{:.2f}')} "
                     f"| {r['measured']} ({r['load']}) |")
        L.append("")
    r = res.get("render", {}).get("ours")
    if r:
        s = r["render_s"]
        L += ["## Rendering a >= 1 gigapixel panorama (`benchmarks/bench_render.py`)", "",
              f"{r['frames']} synthetic 1600 x 1200 frames -> {r['output']} equirect ({r['output_mp'] / 1e3:.2f} GP, "
              f"{r['covered_mp']:.0f} MP covered), measured {r['measured']} (load {r['load']}):", "",
              "| wall (s) | gains | warp+blend | COG | preview | peak (MiB) | output MP/s (warp+blend) "
              "| covered MP/s (warp+blend) | CPU (s) | covered MP per CPU-s |", "|---|---|---|---|---|---|---|---|---|---|",
              f"| {r['wall_s']:.0f} | {s['gains']:.0f} | {s['render']:.0f} | {s['cog']:.0f} | {s['preview']:.0f} "
              f"| {r['peak_mib']:.0f} | {r['warp_blend_mp_s']:.1f} | {r['warp_blend_covered_mp_s']:.1f} "
              f"| {r['cpu_s']:.0f} | {r['covered_mp_per_cpu_s']:.2f} |", ""]
    g = goals(res)
    if g:
        L += ["## Goals", "", "| goal | measured | met |", "|---|---|---|"]
        L += [f"| {name} | {measured} | {'yes' if ok else 'no'} |" for name, measured, ok in g]
        L.append("")
    return "\n".join(L) + "\n" + HUMAN + "\n" + human


def main(argv=None) -> int:
    global PEERDATA
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3, help="runs per row; the median wall time is reported (default 3)")
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated subset of {','.join(SETS)}")
    ap.add_argument("--out", help="markdown to write (default docs/benchmarks.md; --smoke: a temporary file)")
    ap.add_argument("--cache", default=str(REPO / "bench-out"), help="synthetic scenes, results, work (default bench-out/)")
    ap.add_argument("--fresh", action="store_true", help="measure every row again instead of reusing saved ones")
    ap.add_argument("--no-hugin", action="store_true", help="skip the Hugin chain")
    ap.add_argument("--gigapixels", type=float, default=1.0, help="size of the render benchmark (default 1)")
    ap.add_argument("--smoke", action="store_true", help="CI check: budapest, 1 run, ours + cv2, temporary output")
    ap.add_argument("--report-only", action="store_true", help="measure nothing: rewrite the page from saved rows")
    ap.add_argument("--peerdata", default=str(PEERDATA), help="folder of OpenCV's boat*.jpg, budapest*.jpg")
    args = ap.parse_args(argv)
    PEERDATA = Path(args.peerdata)
    log = lambda msg: print(f"[bench {datetime.datetime.now():%H:%M:%S}] {msg}", file=sys.stderr, flush=True)  # noqa: E731
    sets = [s.strip() for s in args.sets.split(",") if s.strip()]
    unknown = sorted(set(sets) - set(SETS))
    if unknown:
        ap.error(f"unknown set(s) {', '.join(unknown)} (known: {', '.join(SETS)})")
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    tmp, failed = None, []
    if args.smoke:
        tmp = tempfile.TemporaryDirectory(prefix="bench-smoke.")
        sets, args.runs, hugin, cache, fresh = ["budapest"], 1, False, Path(tmp.name), True
        out = Path(args.out) if args.out else Path(tmp.name) / "benchmarks.md"
    else:
        hugin = not args.no_hugin and ensure_hugin(log).startswith("installed")
        cache, fresh = Path(args.cache), args.fresh
        out = Path(args.out) if args.out else REPO / "docs" / "benchmarks.md"
    try:
        info = machine()
        results = Results(cache / "results", fresh)
        from mosaic.atomic import write_text

        def write_page(res):
            shown = dict(res)
            if not args.smoke:
                # Rows of the other sets saved by earlier runs stay on the page (each row says when).
                for s in SETS:
                    if s not in shown:
                        shown.update(_saved(s, results))
            # Read the hand-written part just before writing: it may have been edited during the run.
            human = out.read_text().split(HUMAN, 1)[1].lstrip("\n") if out.exists() and HUMAN in out.read_text() else ""
            write_text(out, page({s: shown[s] for s in SETS if s in shown}, info, human))
            log(f"wrote {out}")

        res = {}
        if args.report_only:
            write_page(res)
        for name in [] if args.report_only else sets:
            # The page is rewritten after every set, so an interrupted run still shows what it measured.
            try:
                res.update(run_sets([name], args.runs, cache, results, hugin, log, info["commit"], args.gigapixels))
            except (RuntimeError, OSError, subprocess.CalledProcessError) as e:
                if args.smoke:
                    raise
                failed.append(name)
                log(f"{name}: FAILED, going on with the other sets: {e}")
                continue
            write_page(res)
        if args.smoke:
            print(out.read_text())
    finally:
        if tmp is not None:
            tmp.cleanup()
    return 1 if failed else 0


def _saved(name: str, results: Results) -> dict:
    """The rows of set ``name`` saved by earlier runs (whatever their key)."""
    rows = {}
    for p in sorted(results.dir.glob(f"{name}__*.json")):
        saved = json.loads(p.read_text())
        rows[p.stem.split("__", 1)[1]] = {"runs": saved["key"].get("runs"), **saved["row"]}
    return {name: rows} if rows else {}


if __name__ == "__main__":
    sys.exit(main())
