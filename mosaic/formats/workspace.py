"""The workspace: every stage's artefacts in one folder, and the record of which stages are done.

Each stage is a function ``run(ws, config)`` that reads what the stage before wrote and writes its
own artefacts through this object (OpenSfM's DataSet pattern). A stage records a key, a hash of
its inputs and settings, when it finishes; a later run with the same key skips it, so an
interrupted run resumes and a re-run is cheap.
"""

from __future__ import annotations

import hashlib
import io
import json
import time
from pathlib import Path

import numpy as np

from mosaic.runtime import atomic, progress


def digest(*parts) -> str:
    """A stable hash of JSON-able values (sorted keys), for stage keys."""
    h = hashlib.sha256()
    for p in parts:
        h.update(json.dumps(p, sort_keys=True, default=str).encode())
    return h.hexdigest()[:20]


def file_digest(paths) -> list:
    """Cheap identity of input files: name, size and mtime (content hashing costs a full read)."""
    out = []
    for p in sorted(str(x) for x in paths):
        st = Path(p).stat()
        out.append([p, st.st_size, int(st.st_mtime_ns)])
    return out


def task_key(stage: str, name: str, key: str) -> str:
    """A dask key that is unique per stage, item and stage key, and readable on a dashboard."""
    return f"{stage}-{name}-{key[:10]}"


def recorded(task, record: str, key: str, *args, **kwargs):
    """Run ``task(*args, **kwargs)`` (which writes its artefact atomically), then record its small
    report in ``record`` under ``key``. Runs on a worker; the record is written last, so it never
    describes a missing artefact, and a task killed half-way leaves no record."""
    report = task(*args, **kwargs)
    atomic.write_json(record, {"key": key, "report": report})
    return report


def resumable(ws: "Workspace", client, stage: str, key: str, items) -> tuple[list, int]:
    """Run a stage's per-item tasks, skipping the items a killed run already finished.

    ``items``: (name, task, args) per item; each task writes its artefact and returns a small
    JSON-able report. Returns (the reports in item order, how many were resumed from records).
    """
    reports = {name: ws.item_report(stage, name, key) for name, _, _ in items}
    todo = [(name, task, args) for name, task, args in items if reports[name] is None]
    futures = [client.submit(recorded, task, str(ws.path(stage, "done", f"{name}.json")), key, *args,
                             key=task_key(stage, name, key)) for name, task, args in todo]
    for (name, _, _), report in zip(todo, progress.track_futures(stage, futures, client)):
        reports[name] = report
    return [reports[name] for name, _, _ in items], len(items) - len(todo)


class Workspace:
    def __init__(self, root):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts) -> Path:
        p = self.root.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def exists(self, *parts) -> bool:
        return self.root.joinpath(*parts).exists()

    # JSON and arrays, always written atomically.
    def read_json(self, *parts):
        return json.loads(self.root.joinpath(*parts).read_text())

    def write_json(self, obj, *parts) -> Path:
        return atomic.write_json(self.path(*parts), obj)

    def save_arrays(self, arrays: dict, *parts) -> Path:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return atomic.write_bytes(self.path(*parts), buf.getvalue())

    def load_arrays(self, *parts) -> dict:
        with np.load(self.root.joinpath(*parts), allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    # Stage bookkeeping.
    def item_report(self, stage: str, name: str, key: str):
        """The report a finished item of ``stage`` recorded under ``key`` (see ``recorded``), or None."""
        try:
            rec = json.loads((self.root / stage / "done" / f"{name}.json").read_text())
        except (OSError, ValueError):
            return None
        return rec.get("report") if isinstance(rec, dict) and rec.get("key") == key else None

    def stage_done(self, stage: str, key: str) -> bool:
        p = self.root / "stages" / f"{stage}.json"
        if not p.exists():
            return False
        try:
            return json.loads(p.read_text()).get("key") == key
        except (OSError, ValueError):
            return False

    def mark_done(self, stage: str, key: str, report: dict) -> None:
        self.write_json({"key": key, "finished": time.time(), "report": report}, "stages", f"{stage}.json")

    def stage_report(self, stage: str) -> dict | None:
        p = self.root / "stages" / f"{stage}.json"
        return json.loads(p.read_text()).get("report") if p.exists() else None

    def invalidate(self, stage: str) -> None:
        (self.root / "stages" / f"{stage}.json").unlink(missing_ok=True)
