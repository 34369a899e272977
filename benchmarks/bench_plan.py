"""``--dry-run`` against the real run: each set's estimated time and peak memory beside the measured.

Goal: every estimate within a factor of 2 of the run (docs/user-guide.md "Dry runs"). For each set
the plan comes from ``mosaic.plan`` (what ``--dry-run`` prints), then the command runs in a fresh
process measured by benchmarks.measure (wall time and peak memory of the whole process tree), with
the per-stage times from its report.json. The script prints both, their ratios, and the per-item
constants (thread-seconds) each run suggests for mosaic/plan.py; ``--write-docs`` rewrites the
user guide's example (between its ``bench_plan`` markers) from the same numbers, so the figures
there are generated, never typed. Not a test: it prints numbers.

    .venv/bin/python -m benchmarks.bench_plan                     # every set (boat, budapest need ../shared)
    .venv/bin/python -m benchmarks.bench_plan --sets navcam360,terrain --write-docs
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import sys
import tempfile
import time
from pathlib import Path

from benchmarks import measure

REPO = Path(__file__).resolve().parents[1]
PEERDATA = REPO.parent / "shared" / "peerdata" / "opencv_stitching"
SETS = ("navcam360", "boat", "budapest", "terrain")
GUIDE = REPO / "docs" / "user-guide.md"
BEGIN, END = "<!-- bench_plan: begin -->", "<!-- bench_plan: end -->"


#: Each set's output folder in the documented command (the README's names).
OUT_NAMES = {"navcam360": "out/navcam_360", "terrain": "out/navcam_stereo"}


def _inputs(name):
    if name == "navcam360":
        return [REPO / "sample_tiles" / "navcam_360"], "stitch"
    if name == "terrain":
        return [REPO / "sample_tiles" / "navcam_stereo"], "terrain"
    photos = sorted(PEERDATA.glob(f"{name}[0-9].jpg"))
    return (photos or None), "stitch"


def _command_line(command, inputs, out):
    shown = [os.path.relpath(p, REPO) if str(p).startswith(str(REPO)) else str(p) for p in inputs]
    if command == "stitch" and len(shown) > 1:
        shown = [os.path.join(os.path.dirname(shown[0]), re.sub(r"\d\.jpg$", "?.jpg", os.path.basename(shown[0])))]
    return f"mosaic {command} {' '.join(shown)} -o {out} --dry-run"


def measure_set(name: str, work: Path) -> dict | None:
    from mosaic import plan
    from mosaic.runtime.config import StitchConfig

    inputs, command = _inputs(name)
    if not inputs:
        return None
    out = work / name
    if command == "stitch":
        p = plan.stitch_plan(inputs, StitchConfig())
    else:
        p = plan.terrain_plan(inputs)
    text = plan.format_plan(p)
    load0 = os.getloadavg()[0]
    c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    m = measure.run([sys.executable, "-m", "mosaic", "-q", command, *map(str, inputs), "-o", str(out)], cwd=REPO)
    c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu_s = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
    if m.returncode != 0:
        raise RuntimeError(f"{name}: the run failed: {m.stderr.strip()[-2000:]}")
    report = json.loads((out / "report.json").read_text())
    stages = {k: round(v.get("wall_s", v.get("seconds", 0.0)), 2)  # stitch's report, terrain's
              for k, v in report.get("stages", {}).items() if isinstance(v, dict)}
    return {"name": name, "command": command, "inputs": [str(i) for i in inputs], "plan": p, "text": text,
            "dry_run": _command_line(command, inputs, OUT_NAMES.get(name, f"out/{name}")), "wall_s": m.wall_s, "peak_mib": m.peak_mib,
            "cpu_s": cpu_s, "load": (load0 + os.getloadavg()[0]) / 2,
            "stages_s": stages, "report": report}


def _suggest(r: dict) -> dict:
    """Per-item thread-seconds the run suggests for mosaic/plan.py's constants."""
    p, st, threads = r["plan"], r["stages_s"], r["plan"].get("threads") or 1
    out = {}
    if r["command"] == "stitch":
        pairs = p["predicted_pairs"] + p["photo_pairs_at_most"]
        if pairs and "matches" in st:
            out["STITCH_S_PER_PAIR"] = st["matches"] * threads / pairs
        if "adjust" in st:
            out["STITCH_S_PER_FRAME_ADJUST"] = st["adjust"] / p["frames"]
        if "features" in st:
            out["features thread-s per frame"] = st["features"] * threads / p["frames"]
        counts = r["report"]["stages"].get("render", {}).get("counts", {})
        if "render" in st and counts.get("width"):
            band_mp = counts["width"] * counts["height"] * (counts.get("bands") or 1) / 1e6
            out["render thread-s per band-MP (incl. fixed)"] = st["render"] * threads / band_mp
        out["STITCH_S_FIXED"] = r["wall_s"] - sum(v for v in st.values() if isinstance(v, (int, float)))
    else:
        g, threads = p["grid"], p.get("threads") or 1
        pair_mp = p["estimate_seconds"]["stereo"] * threads / _plan().TERRAIN_S_PER_PAIR_MP
        if pair_mp and "points" in st:
            out["TERRAIN_S_PER_PAIR_MP"] = st["points"] * threads / pair_mp
        out["TERRAIN_S_PER_CELL"] = (r["wall_s"] - st.get("points", 0.0)) / g["cells"]
    return out


def _plan():
    from mosaic import plan

    return plan


def _fmt(s: float) -> str:
    return f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min"


def table(rows) -> str:
    lines = ["| set | estimate | run | ratio | run CPU | load | est. peak | run peak | ratio | per stage (s) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r["plan"]
        est, peak = p["estimate_total_seconds"], p["estimate_peak_bytes"] / 2**20
        per = ("estimate " + ", ".join(f"{k} {v:.1f}" for k, v in p["estimate_seconds"].items()) +
               "; run " + ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items()))
        lines.append(f"| {r['name']} | {_fmt(est)} | {_fmt(r['wall_s'])} | {est / r['wall_s']:.2f} | "
                     f"{r['cpu_s']:.1f} s | {r['load']:.1f} | {peak:.0f} MiB "
                     f"| {r['peak_mib']:.0f} MiB | {peak / r['peak_mib']:.2f} | {per} |")
    return "\n".join(lines)


def guide_block(rows, load: str) -> str:
    by = {r["name"]: r for r in rows}
    parts = [BEGIN, "<!-- generated by `python -m benchmarks.bench_plan --write-docs`: edit the script, not this -->"]
    main = by.get("navcam360")
    if main:
        parts += ["```", f"$ {main['dry_run']}", main["text"], "```", ""]
    notes = []
    for name, what in (("navcam360", "the sample pan above"), ("boat", "OpenCV's six boat photos (10 MP)"),
                       ("budapest", "the six budapest photos"), ("terrain", "`mosaic terrain sample_tiles/navcam_stereo`")):
        r = by.get(name)
        if not r:
            continue
        stages = ", ".join(f"{k} {v:.1f}" for k, v in r["stages_s"].items() if isinstance(v, (int, float)) and v >= 0.05)
        est, est_mib = r["plan"]["estimate_total_seconds"], r["plan"]["estimate_peak_bytes"] / 2**20
        notes.append(f"- {what}: estimated {_fmt(est)} and {est_mib:.0f} MiB; the run {_fmt(r['wall_s'])} "
                     f"({stages} s; {r['cpu_s']:.1f} CPU-s at load {r['load']:.1f}) and {r['peak_mib']:.0f} MiB: "
                     f"estimate / run {est / r['wall_s']:.2f} in time, {est_mib / r['peak_mib']:.2f} in memory")
    if notes:
        parts += [f"Estimates beside the runs ({load}; a busy machine stretches the runs' wall time):", ""]
        parts += notes
    parts.append(END)
    return "\n".join(parts)


def write_guide(block: str) -> None:
    from mosaic.runtime.atomic import write_text

    text = GUIDE.read_text()
    if BEGIN not in text or END not in text:
        raise SystemExit(f"{GUIDE}: no {BEGIN} ... {END} block to rewrite")
    head, rest = text.split(BEGIN, 1)
    write_text(GUIDE, head + block + rest.split(END, 1)[1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS), help=f"comma-separated, of {', '.join(SETS)}")
    ap.add_argument("--write-docs", action="store_true", help="rewrite the user guide's example block")
    args = ap.parse_args(argv)
    sets = [s for s in args.sets.split(",") if s]
    unknown = set(sets) - set(SETS)
    if unknown:
        ap.error(f"unknown set(s): {', '.join(sorted(unknown))}")
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_plan_") as tmp:
        for name in sets:
            print(f"{name}: ...", file=sys.stderr, flush=True)
            r = measure_set(name, Path(tmp))
            if r is None:
                print(f"{name}: skipped (no ../shared/peerdata)", file=sys.stderr)
                continue
            rows.append(r)
    load = f"{os.cpu_count()} CPUs, {time.strftime('%Y-%m-%d')}"
    print(table(rows))
    print(f"\n{load}\nconstants the runs suggest (thread-seconds; mosaic/plan.py):")
    for r in rows:
        print(f"  {r['name']}: " + ", ".join(f"{k} {v:.3g}" for k, v in _suggest(r).items()))
    worst = max((max(r["plan"]["estimate_total_seconds"] / r["wall_s"], r["wall_s"] / r["plan"]["estimate_total_seconds"])
                 for r in rows), default=1.0)
    print(f"\nworst time ratio (either way): {worst:.2f} (goal: <= 2)")
    busy = max((r["load"] for r in rows), default=0.0)
    if busy > (os.cpu_count() or 1):
        print(f"note: load average up to {busy:.1f} on {os.cpu_count()} CPUs: the runs shared the machine, so "
              "their wall times overstate an idle run (compare CPU seconds)")
    if args.write_docs:
        write_guide(guide_block(rows, load))
        print(f"rewrote the example in {GUIDE.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
