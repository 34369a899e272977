"""`make bench`: mosaic stitch against cv2.Stitcher and Hugin on the same inputs; docs/benchmarks.md.

    .venv/bin/python -m benchmarks.run                      # everything, 3 runs each -> docs/benchmarks.md
    .venv/bin/python -m benchmarks.run --runs 1 --sets boat,scaling
    .venv/bin/python -m benchmarks.run --smoke               # CI: budapest, 1 run, ours + cv2, temp file

Every command is a fresh process measured by ``benchmarks.measure.run`` (median wall time of
``--runs``, peak resident memory of the whole process tree, polled from /proc), ours as
``python -m mosaic stitch`` exactly as the peers are ``python -c <cv2.Stitcher>`` and the Hugin
shell chain. Ours and cv2.Stitcher alternate (ours, cv2, cv2, ours, ours, cv2, ...), so both see
the same machine; each run first waits (up to ``--load-wait`` seconds) for the 1-minute load to
fall to ``--max-load`` and records the load it ran at. Our packages are compiled to bytecode
first, as an installed copy is. Sets: ``boat``, ``budapest`` (OpenCV's sample photos), ``navcam360`` (the committed
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


def compile_bytecode(log=print) -> None:
    """Our packages' bytecode, as ``pip install`` writes it (and an editable install's first run
    does): where PYTHONDONTWRITEBYTECODE is set, as on some CI images, every measured run would
    compile our ~85 modules from source again (budapest: 0.3-0.6 s of its wall time), a cost no
    installed copy pays and the peers, whose libraries come compiled, do not."""
    import compileall

    for pkg in ("calib", "mosaic"):
        if not compileall.compile_dir(REPO / pkg, quiet=1):
            raise RuntimeError(f"could not compile {pkg} to bytecode")
    log("bytecode of calib and mosaic compiled (as an installed copy has it)")


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


def _settle(max_load: float | None, wait_s: float, log) -> float:
    """Wait until the 1-minute load is at most ``max_load`` (at most ``wait_s`` seconds); the load."""
    import time

    t_end = time.monotonic() + wait_s
    if max_load is not None and _load() > max_load:
        log(f"load {_load()} > {max_load}: waiting up to {wait_s:.0f} s")
        while _load() > max_load and time.monotonic() < t_end:
            time.sleep(5)
    return _load()


def measured_run(cmd, max_load=None, wait_s=0.0, log=print) -> measure.Measure:
    """One run of ``cmd`` (fresh process) with its CPU seconds and the load it ran at."""
    load0 = _settle(max_load, wait_s, log)
    c0 = _children_cpu()
    m = measure.run(cmd, cwd=REPO)
    m.cpu_s = _children_cpu() - c0
    m.load = max(load0, _load())
    return m


def alternate(tools: dict, runs: int, max_load=None, wait_s=0.0, log=print) -> dict:
    """``runs`` runs of each tool, interleaved: round k runs them in order, round k + 1 in reverse
    (ours, cv2, cv2, ours, ...), so a change of load or a warm cache favours neither. ``tools``:
    name -> a function that prepares a run and returns its command. Returns name -> [Measure]."""
    out = {name: [] for name in tools}
    names = list(tools)
    for k in range(runs):
        for name in (names if k % 2 == 0 else names[::-1]):
            m = measured_run(tools[name](), max_load, wait_s, log)
            if m.returncode != 0:
                raise RuntimeError(f"{name} failed ({m.returncode}): {m.stderr.strip()[-2000:]}")
            out[name].append(m)
    return out


def _summary(ms: list) -> dict:
    """Median wall time, the largest peak, mean CPU seconds and the highest load of the runs."""
    return {"wall_s": statistics.median(m.wall_s for m in ms), "peak_mib": max(m.peak_bytes for m in ms) / 2**20,
            "cpu_s": statistics.mean(m.cpu_s for m in ms), "load": max(m.load for m in ms),
            "walls_s": [round(m.wall_s, 3) for m in ms]}


def _with_cpu(make, runs: int):
    """``make()``'s row plus ``cpu_s``: the mean CPU time of one run."""
    c0 = _children_cpu()
    row = make()
    if row is not None and "wall_s" in row:
        row["cpu_s"] = (_children_cpu() - c0) / runs
    return row


# --------------------------------------------------------------------------- runners

def ours_command(inputs, out: Path, extra=()):
    """A function preparing one ``python -m mosaic stitch`` run: a fresh output folder each time
    (no stage is skipped)."""
    def prepare():
        shutil.rmtree(out, ignore_errors=True)
        return [sys.executable, "-m", "mosaic", "-q", "stitch", *map(str, inputs), "-o", str(out), *extra]

    return prepare


def ours(inputs, runs: int, work: Path, extra=(), max_load=None, wait_s=0.0, log=print) -> dict:
    """``python -m mosaic stitch``, ``runs`` times on its own (the scaling rows)."""
    out = work / "ours"
    return ours_row(alternate({"ours": ours_command(inputs, out, extra)}, runs, max_load, wait_s, log)["ours"], out)


def ours_row(ms: list, out: Path) -> dict:
    """Our row from the runs' measures and the last run's report.json and solution.json."""
    report = json.loads((out / "report.json").read_text())
    stats = json.loads((out / "solution.json").read_text())["stats"]
    row = {"tool": "mosaic stitch", **_summary(ms),
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


def cv2_row(ms: list, images) -> dict:
    return {**peers.opencv_result(ms[-1].stdout, len(images)), **_summary(ms)}


def ours_and_cv2(ours_inputs, images, runs: int, work: Path, max_load=None, wait_s=0.0, log=print) -> dict:
    """Our stitch and cv2.Stitcher on the same images, alternating (see :func:`alternate`)."""
    out = work / "ours"
    work.mkdir(parents=True, exist_ok=True)
    ms = alternate({"ours": ours_command(ours_inputs, out),
                    "cv2": lambda: peers.opencv_command(images, work / "cv2.jpg")}, runs, max_load, wait_s, log)
    return {"ours": ours_row(ms["ours"], out), "cv2": cv2_row(ms["cv2"], images)}


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
            self._save(path, key, row, load0)
        return row

    def get_many(self, names: dict, key: dict, make, log) -> dict:
        """Rows measured together (``make()`` returns {tool: row}); reused only all together.
        ``names``: tool -> file name."""
        paths = {tool: self.dir / f"{name}.json" for tool, name in names.items()}
        saved = {tool: json.loads(p.read_text()) for tool, p in paths.items() if p.exists()}
        if not self.fresh and len(saved) == len(paths) and all(v.get("key") == key for v in saved.values()):
            log(f"{', '.join(names.values())}: reused ({next(iter(saved.values()))['row'].get('measured')})")
            return {tool: v["row"] for tool, v in saved.items()}
        log(f"{', '.join(names.values())}: measuring, alternating (load {_load()})")
        load0 = _load()
        rows = make()
        for tool, row in rows.items():
            self._save(paths[tool], key, row, load0)
        return rows

    @staticmethod
    def _save(path, key, row, load0):
        from mosaic.runtime.atomic import write_json

        row.update(measured=datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                   runs=key.get("runs"))
        row["load"] = max(row.get("load", 0.0), load0)
        write_json(path, {"key": key, "row": row})


# --------------------------------------------------------------------------- the benchmark

def run_sets(sets, runs: int, cache: Path, results: Results, hugin: bool, log, commit: str,
             gigapixels: float, max_load=None, wait_s=0.0) -> dict:
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
            rows = results.get_many({"ours": f"{name}__ours", "cv2": f"{name}__cv2"}, {**key, "commit": commit},
                                    lambda: ours_and_cv2(ours_inputs, images, runs, work / name, max_load, wait_s,
                                                         log), log)
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
                                                                              ["--no-render"], max_load, wait_s, log),
                                          log)
            out[name] = rows
        elif name == "render":
            out[name] = {"ours": results.get("render__ours", {"gigapixels": gigapixels, "commit": commit},
                                             lambda: render_row(cache, gigapixels, log, max_load, wait_s), log)}
        else:
            raise ValueError(f"unknown set {name!r} (known: {', '.join(SETS)})")
    return out


def render_row(cache: Path, gigapixels: float, log, max_load=None, wait_s=0.0) -> dict:
    from benchmarks import bench_render

    frames = cache / f"render-{gigapixels:g}gp"
    sol = frames / "solution.json"  # bench_render.make_frames writes it last: its presence means done
    if not (sol.exists() and (frames / "info.json").exists()):
        log(f"render: synthesising the frames of a {gigapixels:g} GP panorama (once)")
        shutil.rmtree(frames, ignore_errors=True)
        sol, info = bench_render.make_frames(frames, gigapixels)
        (frames / "info.json").write_text(json.dumps(info))
    info = json.loads((frames / "info.json").read_text())
    out = cache / "work" / "render"
    shutil.rmtree(out, ignore_errors=True)
    load0 = _settle(max_load, wait_s, log)
    r, m = bench_render.run_ours(sol, out, 1024)
    shutil.rmtree(out, ignore_errors=True)
    out_mp, cov_mp = r["width"] * r["height"] / 1e6, r["covered_px"] / 1e6
    s = r["seconds"]
    return {"tool": "render_panorama", "frames": info["frames"], "frames_used": r.get("frames", info["frames"]),
            "output": f"{r['width']}x{r['height']}", "output_mp": out_mp, "covered_mp": cov_mp,
            "wall_s": m.wall_s, "peak_mib": m.peak_mib, "cpu_s": m.cpu_s, "render_s": s, "load": max(load0, _load()),
            "warp_blend_mp_s": out_mp / s["render"], "warp_blend_covered_mp_s": cov_mp / s["render"],
            "covered_mp_per_cpu_s": cov_mp / m.cpu_s}


# --------------------------------------------------------------------------- the page

def _f(v, fmt="{:.1f}", none="—"):
    return none if v is None else fmt.format(v)


#: Issue 16's table: per set, the least speed ratio (cv2's wall time / ours), the stretch speed,
#: the largest memory ratio (our peak / cv2's) and what the row's set is.
TARGETS = {
    "boat": {"speed": 1.2, "stretch": 1.5, "memory": 0.5, "label": "boat (6 × 10 MP)"},
    "budapest": {"speed": 0.7, "memory": 2.0, "label": "budapest (6 small photos)"},
    "navcam360": {"speed": 0.5, "all_frames": True, "label": "sample navcam_360 (10 frames)"},
}
RENDER_TARGET = {"wall_s": 60.0, "peak_mib": 1024.0}


def _ratios(o: dict, cv: dict) -> tuple[float, float, float | None]:
    """(speed, memory, CPU speed) of ours against cv2: cv2's wall / ours, our peak / cv2's."""
    cpu = cv["cpu_s"] / o["cpu_s"] if cv.get("cpu_s") and o.get("cpu_s") else None
    return cv["wall_s"] / o["wall_s"], o["peak_mib"] / cv["peak_mib"], cpu


def goals(res: dict) -> list[tuple]:
    """(goal, measured, met: True/False) for every goal whose rows were measured."""
    out = []
    for name, t in TARGETS.items():
        o, cv = res.get(name, {}).get("ours"), res.get(name, {}).get("cv2")
        if not (o and cv) or "error" in cv:
            continue
        speed, mem, cpu = _ratios(o, cv)
        cpu_txt = f", CPU {cpu:.2f}x" if cpu else ""
        goal = f"{name}: >= {t['speed']}x cv2.Stitcher's speed"
        if t.get("stretch"):
            goal += f" (stretch {t['stretch']}x)"
        if t.get("all_frames"):
            goal += ", every frame used"
        measured = f"{speed:.2f}x ({o['wall_s']:.1f} s vs {cv['wall_s']:.1f} s{cpu_txt}; load {o['load']})"
        if t.get("all_frames"):
            measured += f", {o['frames_used']} of {o['frames']} frames (cv2 {cv['frames_used']})"
        out.append((goal, measured, speed >= t["speed"] and (not t.get("all_frames") or o["frames_used"] == o["frames"])))
        if "memory" in t:
            out.append((f"{name}: peak memory <= {t['memory']}x cv2.Stitcher's",
                        f"{mem:.2f}x ({o['peak_mib']:.0f} vs {cv['peak_mib']:.0f} MiB)", mem <= t["memory"]))
    for name in ("boat", "budapest", "navcam360", "mcz360"):
        o = res.get(name, {}).get("ours")
        if o:
            out.append((f"{name}: every frame used", f"{o['frames_used']} of {o['frames']}",
                        o["frames_used"] == o["frames"]))
    r = res.get("render", {}).get("ours")
    if r:
        out.append((f"1 GP render <= {RENDER_TARGET['wall_s']:.0f} s and peak < 1 GiB",
                    f"{r['output_mp'] / 1e3:.2f} GP in {r['wall_s']:.0f} s, peak {r['peak_mib']:.0f} MiB (load {r['load']})",
                    r["output_mp"] >= 1000 and r["wall_s"] <= RENDER_TARGET["wall_s"]
                    and r["peak_mib"] < RENDER_TARGET["peak_mib"]))
        out.append(("warp+blend >= 20 output MP/s on 2 cores",
                    f"{r['warp_blend_mp_s']:.1f} output MP/s wall ({r['warp_blend_covered_mp_s']:.1f} covered MP/s); "
                    f"CPU-bound rate on 2 free cores {2 * r['covered_mp_per_cpu_s']:.1f} covered MP/s end to end",
                    r["warp_blend_mp_s"] >= 20))
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


def issue_table(res: dict) -> list[str]:
    """Issue 16's table from this page's rows: ours and cv2.Stitcher side by side, with ratios."""
    L = ["## Against cv2.Stitcher: the goals of issue 16", "",
         "speed = cv2.Stitcher's wall time / ours (higher is better), memory = our peak / cv2.Stitcher's "
         "(lower is better); each cell is the median of the alternating runs, at the load shown.", "",
         "| set | mosaic stitch | cv2.Stitcher | speed (wall; CPU) | memory | must reach | met | measured (load) |",
         "|---|---|---|---|---|---|---|---|"]
    for name, t in TARGETS.items():
        o, cv = res.get(name, {}).get("ours"), res.get(name, {}).get("cv2")
        if not (o and cv) or "error" in cv:
            continue
        speed, mem, cpu = _ratios(o, cv)
        need = f"speed ≥ ×{t['speed']}" + (f" (stretch ×{t['stretch']})" if t.get("stretch") else "")
        need += f", memory ≤ ×{t['memory']}" if "memory" in t else ""
        need += " with all frames" if t.get("all_frames") else ""
        met = speed >= t["speed"] and mem <= t.get("memory", float("inf")) and \
            (not t.get("all_frames") or o["frames_used"] == o["frames"])
        L.append(f"| {t['label']} | {o['wall_s']:.1f} s, {o['peak_mib']:.0f} MiB, {o['frames_used']} of {o['frames']} "
                 f"| {cv['wall_s']:.1f} s, {cv['peak_mib']:.0f} MiB, {cv['frames_used']} of {cv['frames']} "
                 f"| ×{speed:.2f}{f'; ×{cpu:.2f}' if cpu else ''} | ×{mem:.2f} | {need} | {'yes' if met else 'no'} "
                 f"| {o['measured']} ({o['load']}, {cv['load']}) |")
    r = res.get("render", {}).get("ours")
    if r:
        met = r["wall_s"] <= RENDER_TARGET["wall_s"] and r["peak_mib"] < RENDER_TARGET["peak_mib"]
        L.append(f"| 1 GP render (`bench_render.py`) | {r['wall_s']:.0f} s, {r['peak_mib']:.0f} MiB | — | — | — "
                 f"| ≤ {RENDER_TARGET['wall_s']:.0f} s, < 1 GiB | {'yes' if met else 'no'} | {r['measured']} ({r['load']}) |")
    return L + [""]


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
    if any(s in res for s in (*TARGETS, "render")):
        L += issue_table(res)
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
        L += ["", "Our stages (seconds, in-process, from report.json; the rest of the wall time is the interpreter "
              "and its imports):", "", "| set | " + " | ".join(("ingest", "features", "pairs", "matches", "adjust",
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
    ap.add_argument("--max-load", type=float, default=3.0,
                    help="before each run, wait for the 1-minute load to fall to this (default 3; 0: do not wait)")
    ap.add_argument("--load-wait", type=float, default=600.0,
                    help="longest wait for --max-load before a run, seconds (default 600; the row records the load)")
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
    max_load = args.max_load if args.max_load > 0 and not args.smoke else None
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
        from mosaic.runtime.atomic import write_text

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
        else:
            compile_bytecode(log)
        for name in [] if args.report_only else sets:
            # The page is rewritten after every set, so an interrupted run still shows what it measured.
            try:
                res.update(run_sets([name], args.runs, cache, results, hugin, log, info["commit"], args.gigapixels,
                                    max_load, args.load_wait))
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
