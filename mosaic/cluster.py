"""The one place that owns the dask client.

Default: an embedded LocalCluster sized to the machine, threads in one process (OpenCV and numpy
release the GIL, and a threaded cluster starts in a fraction of a second). ``--scheduler ADDRESS``
or ``MOSAIC_SCHEDULER`` attaches to an existing cluster instead; tasks carry paths and small
arrays, so the same graph runs unchanged on either and gives the same bytes.
"""

from __future__ import annotations

import contextlib
import logging
import os

log = logging.getLogger("mosaic")


def usable_cpus() -> int:
    """CPUs this process may run on: under taskset or a container's cpuset that is fewer than
    os.cpu_count(), and sizing the cluster by the latter oversubscribes threads and memory (a boat
    stitch pinned to 2 of 16 cores ran 16 threads and peaked at 3769 MiB instead of 1301)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def scheduler_address(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("MOSAIC_SCHEDULER") or None


@contextlib.contextmanager
def client(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int | None = None,
           memory_limit: str | None = None, processes: bool = False):
    """Yield a connected ``distributed.Client``; close what this call started."""
    # Import-time notices (the dashboard's proxy asks for jupyter-server-proxy) are not ours to show.
    logging.getLogger("distributed.http.proxy").setLevel(logging.WARNING)
    from distributed import Client, LocalCluster

    address = scheduler_address(scheduler)
    if address:
        c = Client(address, timeout="30s")
        log.info("dask: using cluster at %s (dashboard %s)", address, c.dashboard_link)
        try:
            yield c
        finally:
            c.close()
        return
    ncpu = usable_cpus()
    if processes:
        n, tpw = workers or ncpu, threads_per_worker or 1
    else:
        n, tpw = workers or 1, threads_per_worker or ncpu
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=tpw, processes=processes, memory_limit=memory_limit or "auto",
        dashboard_address=":0", silence_logs=logging.ERROR,
    )
    c = Client(cluster)
    log.info("dask: embedded cluster, %d %s x %d thread(s)%s", n, "processes" if processes else "worker(s)", tpw,
             f" (dashboard {c.dashboard_link})" if cluster.scheduler.http_server and c.dashboard_link else "")
    try:
        yield c
    finally:
        c.close()
        cluster.close()
