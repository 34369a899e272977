"""Wall time and peak memory of a whole process tree, measured the same way for us and the peers.

Peak memory is the largest sum of resident set sizes over the process and all its descendants
(``mosaic.runtime.memory.tree_rss``, the same measure report.json uses), sampled every few milliseconds.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from mosaic.runtime.memory import PeakMemory


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
    with PeakMemory(every=interval, pid=proc.pid) as mem:
        out, err = proc.communicate(timeout=timeout)
    return Measure(time.perf_counter() - t0, mem.peak, proc.returncode, out, err)


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
