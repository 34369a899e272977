"""The registration: its stages run in order into a workspace, and what it hands down.

``mosaic stitch`` and ``mosaic terrain --register`` both register their frames here
(:func:`run_stages`: ingest -> features -> pairs -> matches -> adjust, :mod:`mosaic.pipeline.stages`),
each into its own workspace; the adjusted models are ``adjust/solution.json``
(:mod:`mosaic.formats.solution`) and the tie points are the verified matches (:func:`tie_points`), which
the render's photometric fit, the seamlessness measure and the Hugin project take from here.
"""

from __future__ import annotations

import importlib
import logging
import time

import numpy as np

from mosaic.formats.workspace import Workspace
from mosaic.pipeline.stages import ORDER
from mosaic.pipeline.stages import features as features_stage
from mosaic.pipeline.stages import matches as matches_stage
from mosaic.runtime.memory import PeakMemory

log = logging.getLogger("mosaic")


def _finished(ws: Workspace, stage: str):
    return ws.read_json("stages", f"{stage}.json").get("finished") if ws.exists("stages", f"{stage}.json") else None


def run_stages(ws: Workspace, config, client, after: dict | None = None) -> dict:
    """Run every registration stage in order (``config``: a StitchConfig); returns the per-stage
    report. ``after``: {stage name: callable(its report)} called once that stage is done."""
    stages = {}
    for name in ORDER:
        mod = importlib.import_module(f"mosaic.pipeline.stages.{name}")
        t0, c0 = time.perf_counter(), time.process_time()
        before = _finished(ws, name)
        with PeakMemory() as mem:
            counts = mod.run(ws, config, client)
        wall = time.perf_counter() - t0
        # CPU seconds of this process (every thread): on a shared machine wall time also measures
        # the neighbours. A cluster's workers are not counted.
        stages[name] = {"wall_s": round(wall, 4), "cpu_s": round(time.process_time() - c0, 4),
                        "peak_rss_mib": round(mem.peak / 2**20, 1),
                        "skipped": before is not None and _finished(ws, name) == before, "counts": counts}
        log.info("%s: %.2f s, peak %.0f MiB %s", name, wall, mem.peak / 2**20,
                 "(skipped: unchanged)" if stages[name]["skipped"] else "")
        if after and name in after:
            after[name](stages[name])
    return stages


def tie_points(workspace, frame_ids) -> list:
    """(i, j, xi, yi, xj, yj) for every verified match between frames in ``frame_ids`` (their
    index in that list), in pixels of the frames as delivered (centre convention, as Hugin's),
    pair by pair in the matches stage's order; [] before the matches stage has run."""
    ws = workspace if isinstance(workspace, Workspace) else Workspace(workspace)
    if not ws.exists("matches", "summary.json"):
        return []
    index = {fid: k for k, fid in enumerate(frame_ids)}
    xy = {}
    out = []
    for s in ws.read_json("matches", "summary.json")["pairs"]:
        a, b = s["a"], s["b"]
        if s.get("inliers", 0) <= 0 or a not in index or b not in index:
            continue
        m = matches_stage.load(ws, a, b)
        ia, ib = m["ia"].astype(int), m["ib"].astype(int)
        if not len(ia):
            continue
        for fid in (a, b):
            if fid not in xy:
                xy[fid] = features_stage.load(ws, fid)["xy"]
        pa, pb = xy[a][ia], xy[b][ib]
        i, j = index[a], index[b]
        out.extend((i, j, float(p[0]), float(p[1]), float(q[0]), float(q[1])) for p, q in zip(pa, pb))
    return out


def per_pair(ties, most: int | None) -> list:
    """At most ``most`` of each pair's tie points (``ties`` as :func:`tie_points` orders them),
    evenly spread over the pair's list, in order; None: all.

    >>> per_pair([(0, 1, 0, 0, 0, 0), (0, 1, 1, 1, 1, 1), (0, 1, 2, 2, 2, 2), (1, 2, 5, 5, 5, 5)], 2)
    [(0, 1, 0, 0, 0, 0), (0, 1, 2, 2, 2, 2), (1, 2, 5, 5, 5, 5)]
    """
    ties = list(ties)
    if most is None:
        return ties
    out, start = [], 0
    for k in range(1, len(ties) + 1):
        if k == len(ties) or ties[k][:2] != ties[start][:2]:
            n = k - start
            pick = np.unique(np.linspace(0, n - 1, min(most, n)).round().astype(int))
            out.extend(ties[start + p] for p in pick)
            start = k
    return out
