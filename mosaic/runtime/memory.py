"""Resident memory of a whole process tree, for report.json and the benchmarks alike.

Native allocations (OpenCV, GDAL) and dask worker processes are invisible to tracemalloc and to
``ru_maxrss`` of one process, so the tree's resident set sizes are summed from /proc. Reading each
process's ``children`` file walks only the tree, not all of /proc (psutil's ``children()`` scans
every process: 3.6 CPU-ms a call, measured). Off Linux the figures are 0.
"""

from __future__ import annotations

import ctypes
import os
import threading

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


def trim_freed() -> bool:
    """Give memory that is free but still held by the C allocator back to the system (glibc's
    ``malloc_trim``, all arenas); False where there is no glibc. Large native work in threads
    (SIFT's pyramids, image decodes) leaves freed memory in per-thread arenas that the process
    keeps resident, and would otherwise count towards every later stage's peak."""
    try:
        trim = ctypes.CDLL(None).malloc_trim  # this process's own symbols: glibc's, on Linux
    except (OSError, AttributeError):
        return False
    trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    trim(0)
    return True


def tree_rss(pid: int | None = None) -> int:
    """Resident bytes of process ``pid`` (default: this one) and all its descendants."""
    total, stack, seen = 0, [os.getpid() if pid is None else pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += _rss(p)
        stack.extend(_children(p))
    return total


class PeakMemory:
    """Peak resident memory of a process tree (default: this one) while the block runs, sampled
    every ``every`` seconds in a thread."""

    def __init__(self, every: float = 0.2, pid: int | None = None):
        self.every, self.pid, self.peak = every, pid, 0
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss(self.pid))
            self._stop.wait(self.every)

    def __enter__(self):
        self.peak = tree_rss(self.pid)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, tree_rss(self.pid))
