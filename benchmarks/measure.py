"""Wall time and peak memory of a whole process tree, measured the same way for us and the peers.

Peak memory is the largest sum of resident set sizes over the process and all its descendants,
sampled from /proc every few milliseconds (ru_maxrss alone misses children that overlap in time
and counts only the largest single process).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass

PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _children(pid: int) -> list[int]:
    out = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                out.extend(int(c) for c in f.read().split())
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        pass
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * PAGE
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return 0


def tree_rss(pid: int) -> int:
    total, stack, seen = 0, [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss(p)
        stack.extend(_children(p))
    return total


@dataclass
class Measure:
    wall_s: float
    peak_bytes: int
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / 2**20


def run(cmd, *, cwd=None, env=None, timeout=None, interval=0.01) -> Measure:
    """Run ``cmd`` (a list), polling the process tree's memory until it ends."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = [0]
    done = threading.Event()

    def poll():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss(proc.pid))
            time.sleep(interval)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        done.set()
        th.join()
    return Measure(time.perf_counter() - t0, peak[0], proc.returncode, out, err)


def python(code: str, **kw) -> Measure:
    """Run Python source in a fresh interpreter (the same one running the benchmark)."""
    return run([sys.executable, "-c", code], **kw)


def repeat(fn, n: int):
    """Median wall time and max peak over n runs of fn() -> Measure; raises on a failed run."""
    ms = []
    for _ in range(n):
        m = fn()
        if m.returncode != 0:
            raise RuntimeError(f"benchmark run failed ({m.returncode}): {m.stderr.strip()[-2000:]}")
        ms.append(m)
    return statistics.median(m.wall_s for m in ms), max(m.peak_bytes for m in ms), ms[-1]
