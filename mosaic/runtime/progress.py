"""Progress: a bar per stage on a terminal, plain log lines otherwise."""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from mosaic.runtime.cluster import as_completed

log = logging.getLogger("mosaic")


class _Lines:
    """Plain log lines at most every few seconds, and at the end."""

    def __init__(self, name, total, every=5.0):
        self.name, self.total, self.every = name, total, every
        self.done, self.t0, self.last = 0, time.monotonic(), 0.0

    def advance(self, n=1):
        self.done += n
        now = time.monotonic()
        if now - self.last >= self.every and self.done < (self.total or 0):
            self.last = now
            log.info("%s: %d/%s", self.name, self.done, self.total if self.total is not None else "?")

    def close(self):
        dt = time.monotonic() - self.t0
        rate = self.done / dt if dt > 0 else 0.0
        log.info("%s: %d done in %.1f s (%.1f/s)", self.name, self.done, dt, rate)


class _Bar:
    def __init__(self, name, total):
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.p = Progress(TextColumn("{task.description:<10}"), BarColumn(), MofNCompleteColumn(),
                          TimeElapsedColumn(),
                          TimeRemainingColumn(), transient=False)
        self.p.start()
        self.task = self.p.add_task(name, total=total)

    def advance(self, n=1):
        self.p.advance(self.task, n)

    def close(self):
        self.p.stop()


_quiet = False


def set_quiet(q: bool) -> None:
    global _quiet
    _quiet = q


@contextlib.contextmanager
def stage(name: str, total: int | None = None):
    """``with stage("features", n) as bar: ... bar.advance()``."""
    tty = sys.stderr.isatty() and not _quiet
    bar = _Bar(name, total) if tty else _Lines(name, total)
    try:
        yield bar
    finally:
        bar.close()


def track_futures(name, futures, client=None):
    """Advance a stage bar as futures (of any executor, :mod:`mosaic.runtime.cluster`) finish; returns
    their results in order."""
    index = {f.key: i for i, f in enumerate(futures)}
    out = [None] * len(futures)
    with stage(name, len(futures)) as bar:
        for fut in as_completed(futures):
            out[index[fut.key]] = fut.result()
            bar.advance()
    return out
