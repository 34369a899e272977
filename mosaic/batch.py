"""Run many stitch and terrain jobs on one dask cluster; a failed job does not stop the others.

JOBS is either a TOML file of ``[[job]]`` tables or a folder of sequences, each subfolder of
which is one ``stitch`` job written to ``OUT/<subfolder>``. One dask client (the embedded
cluster, or ``--scheduler``/``MOSAIC_SCHEDULER``) is started once and handed to every job, so a
cluster's workers stay warm across jobs. Every job's workspace resumes as ``mosaic stitch`` and
``mosaic terrain`` do, so re-running a batch after a crash redoes only what had not finished.
Each job locks its output folder as ``mosaic stitch`` does (mosaic.runtime.lock): a folder another run is
writing into makes that job ``bad-input`` with a line naming the owner, and the other jobs run.
At the end ``OUT/batch-summary.json`` lists each job (status ``ok``, ``bad-input`` or
``failed``, seconds, the error line, key numbers) and the same table is printed.

Exit status: 0 when every job succeeded, 1 when any job failed (the others still ran), 2 when
the jobs file itself is unusable (nothing runs).

Jobs file (paths are relative to the file's folder; ``out`` defaults to ``OUT/<name>``, ``name``
to the out folder's name; ``options`` are ``mosaic stitch`` options (StitchConfig fields) or
``mosaic terrain`` arguments; a ``[defaults.stitch]`` / ``[defaults.terrain]`` table applies to
every job of that command)::

    [defaults.stitch]
    max_keypoints = 2000

    [[job]]
    command = "stitch"
    inputs = ["seq1/"]
    out = "out/seq1"
    [job.options]
    hfov = 48

    [[job]]
    command = "terrain"
    name = "site-0100"
    inputs = ["stereo/"]
    [job.options]
    gsd = 0.05
    radius = 10

Examples:

    mosaic batch jobs.toml -o out/
    mosaic batch sequences/ -o out/ --hfov 48 --scheduler tcp://10.0.0.5:8786
"""

from __future__ import annotations

import argparse
import inspect
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from calib.errors import InputError
from mosaic.runtime import atomic, cluster
from mosaic.runtime.config import StitchConfig, read_toml
from mosaic.runtime.lock import output_folder

from .stitch import stitch
from .terrain.pipeline import TerrainSettings, terrain

log = logging.getLogger("mosaic")

COMMANDS = ("stitch", "terrain")
_JOB_KEYS = {"command", "inputs", "out", "name", "options"}
_CLUSTER_OPTIONS = {"scheduler", "workers", "threads_per_worker", "memory_limit"}
#: terrain() parameters a job may not set: the batch owns the cluster and the paths.
_TERRAIN_RESERVED = {"inputs", "out", "client"} | _CLUSTER_OPTIONS


@dataclass
class Job:
    name: str
    command: str
    inputs: list[str]
    out: str
    options: dict = field(default_factory=dict)


def _terrain_option_names() -> set:
    params = set(inspect.signature(terrain).parameters) - {"options"}
    return (params | set(TerrainSettings.__dataclass_fields__)) - _TERRAIN_RESERVED


def _check_options(job: Job, source) -> None:
    """Reject unknown or invalid options before anything runs (a typo must not cost a night)."""
    where = f"job {job.name!r}"
    if job.command == "stitch":
        opts = dict(job.options)
        opts.pop("force", None)
        cluster = sorted(set(opts) & _CLUSTER_OPTIONS)
        if cluster:
            raise InputError(source, f"{where}: {', '.join(cluster)}: jobs share the batch's cluster; "
                             "set it on the mosaic batch command line")
        try:
            StitchConfig.from_mapping(opts)
        except InputError as e:
            raise InputError(source, f"{where}: {e.problem}", field=e.field) from None
    else:
        unknown = sorted(set(job.options) - _terrain_option_names() - {"force"})
        if unknown:
            raise InputError(source, f"{where}: unknown terrain option(s): {', '.join(unknown)}")


def read_jobs(path, out_root, defaults: dict | None = None) -> list[Job]:
    """The jobs of a TOML file or of a folder of sequences (see the module docstring)."""
    path, out_root = Path(path), Path(out_root)
    if not path.exists():
        raise InputError(path, "no such jobs file or folder")
    if path.is_dir():
        subs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not subs:
            raise InputError(path, "no sequence subfolders (each subfolder is one stitch job)")
        jobs = [Job(p.name, "stitch", [str(p)], str(out_root / p.name), dict(defaults or {})) for p in subs]
    else:
        jobs = _read_toml(path, out_root, defaults)
    names = [j.name for j in jobs]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise InputError(path, f"job names occur more than once: {', '.join(dup)}")
    outs = [str(Path(j.out).resolve()) for j in jobs]
    same = sorted({o for o in outs if outs.count(o) > 1})
    if same:
        raise InputError(path, f"jobs share an output folder: {', '.join(same)}")
    for j in jobs:
        _check_options(j, path)
    return jobs


def _read_toml(path: Path, out_root: Path, extra: dict | None) -> list[Job]:
    data = read_toml(path, "jobs file")
    unknown = sorted(set(data) - {"job", "defaults"})
    if unknown:
        raise InputError(path, f"unknown top-level key(s) {', '.join(unknown)} (expected [[job]] and [defaults])")
    tables = data.get("job")
    if not isinstance(tables, list) or not tables:
        raise InputError(path, "no [[job]] tables")
    defaults = data.get("defaults", {})
    if not isinstance(defaults, dict) or set(defaults) - set(COMMANDS):
        raise InputError(path, "[defaults] may only hold [defaults.stitch] and [defaults.terrain]", field="defaults")
    base = path.parent
    jobs = []
    for i, t in enumerate(tables, 1):
        where = f"job {i}"
        if not isinstance(t, dict):
            raise InputError(path, f"{where}: not a table")
        bad = sorted(set(t) - _JOB_KEYS)
        if bad:
            raise InputError(path, f"{where}: unknown key(s) {', '.join(bad)} (expected {', '.join(sorted(_JOB_KEYS))})")
        command = t.get("command")
        if command not in COMMANDS:
            raise InputError(path, f"{where}: command must be one of {', '.join(COMMANDS)}, got {command!r}")
        inputs = t.get("inputs")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not isinstance(inputs, list) or not inputs or not all(isinstance(x, str) for x in inputs):
            raise InputError(path, f"{where}: inputs must be a non-empty list of paths")
        options = t.get("options", {})
        if not isinstance(options, dict):
            raise InputError(path, f"{where}: options must be a table")
        name = t.get("name")
        out = t.get("out")
        if out is not None and not isinstance(out, str) or name is not None and not isinstance(name, str):
            raise InputError(path, f"{where}: name and out must be strings")
        if out is None and name is None:
            name = f"{command}-{i}"
        out = base / out if out is not None else out_root / name
        name = name or Path(out).name
        merged = {**defaults.get(command, {}), **((extra or {}) if command == "stitch" else {}), **options}
        jobs.append(Job(name, command, [str(base / x) for x in inputs], str(out), merged))
    return jobs


def run_job(job: Job, client) -> dict:
    """Run one job on ``client``; returns its summary row (never raises for a job's failure)."""
    t0 = time.perf_counter()
    row = {"name": job.name, "command": job.command, "out": job.out, "status": "ok", "error": None}
    try:
        opts = dict(job.options)
        force = bool(opts.pop("force", False))
        if job.command == "stitch":
            res = stitch(job.inputs, job.out, StitchConfig.from_mapping(opts), client=client, force=force)
            s = res["stats"]
            row["result"] = {"frames": s.get("frames"), "frames_used": s.get("frames_used"),
                             "rms_px": s.get("rms_px"), "panorama": res.get("panorama")}
        else:
            with output_folder(job.out, force=force, command="terrain"):  # stitch() locks its own
                rep = terrain(job.inputs, job.out, client=client, force=force, **opts)
            row["result"] = {"pairs": rep["stages"]["pairs"]["pairs"], "points": rep["stages"]["points"]["points"],
                             "coverage": rep.get("coverage")}
    except InputError as e:
        row.update(status="bad-input", error=str(e))
        log.error("batch: %s: %s", job.name, e)
    except Exception as e:  # one job's crash must not end the batch; its log is kept
        row.update(status="failed", error=f"{type(e).__name__}: {e}".splitlines()[0])
        log.exception("batch: %s: internal error", job.name)
    row["seconds"] = round(time.perf_counter() - t0, 3)
    return row


def run_batch(jobs: list[Job], out_root, client=None, scheduler=None, workers=None, threads_per_worker=None,
              memory_limit=None) -> dict:
    """Run ``jobs`` one after another on one client; writes and returns the summary."""
    import contextlib

    out_root = atomic.output_dir(out_root)
    t0 = time.perf_counter()
    rows = []
    cm = (contextlib.nullcontext(client) if client is not None else
          cluster.client(scheduler, workers=workers, threads_per_worker=threads_per_worker, memory_limit=memory_limit))
    with cm as c:
        for k, job in enumerate(jobs, 1):
            log.info("batch: job %d/%d %s (%s) -> %s", k, len(jobs), job.name, job.command, job.out)
            rows.append(run_job(job, c))
    summary = {"jobs": rows, "ok": sum(r["status"] == "ok" for r in rows),
               "failed": sum(r["status"] != "ok" for r in rows), "seconds": round(time.perf_counter() - t0, 3)}
    atomic.write_json(out_root / "batch-summary.json", summary)
    return summary


def format_table(summary: dict) -> str:
    rows = [("job", "command", "status", "seconds", "detail")]
    for r in summary["jobs"]:
        if r["status"] != "ok":
            detail = r["error"]
        elif r["command"] == "stitch":
            res = r["result"]
            detail = f"{res['frames_used']}/{res['frames']} frames, RMS {res['rms_px']} px"
        else:
            res = r["result"]
            detail = f"{res['pairs']} pairs, {res['points']} points"
        rows.append((r["name"], r["command"], r["status"], f"{r['seconds']:.1f}", detail or ""))
    widths = [max(len(str(row[i])) for row in rows) for i in range(4)]
    lines = ["  ".join(str(v).ljust(w) for v, w in zip(row[:4], widths)) + "  " + row[4] for row in rows]
    lines.append(f"{summary['ok']} ok, {summary['failed']} failed, {summary['seconds']:.1f} s")
    return "\n".join(lines)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("jobs", metavar="JOBS", help="jobs TOML file, or a folder whose subfolders are stitch jobs")
    p.add_argument("-o", "--out", required=True, help="folder for batch-summary.json and default job outputs")
    p.add_argument("--hfov", type=float, help="stitch jobs: horizontal field of view (deg) of plain photos")
    p.add_argument("--force", action="store_true",
                   help="recompute every job from scratch, and take over job folders locked by another host")
    cluster.add_arguments(p)


def run(args) -> int:
    extra = {"hfov": args.hfov} if args.hfov is not None else {}
    jobs = read_jobs(args.jobs, args.out, extra)
    if args.force:
        for j in jobs:
            j.options["force"] = True
    summary = run_batch(jobs, args.out, scheduler=args.scheduler, workers=args.workers,
                        threads_per_worker=args.threads_per_worker, memory_limit=args.memory_limit)
    print(format_table(summary))
    return 0 if summary["failed"] == 0 else 1
