"""The one place that owns the executor the stages run their tasks on.

Default: :class:`LocalExecutor`, threads in this process (OpenCV, numpy and GDAL release the GIL).
It has the small part of ``distributed.Client``'s interface the code uses, so the same task
functions and call sites run on either. ``distributed`` is imported only when a cluster is asked
for: ``--scheduler ADDRESS`` or ``MOSAIC_SCHEDULER`` attaches to an existing one, and
``client(processes=True)`` starts a ``LocalCluster`` of worker processes. Tasks carry paths and
small arrays and write their artefacts by name, so every executor gives the same bytes.

Why not an embedded ``distributed.LocalCluster`` for local runs: importing ``distributed`` and
starting and closing its scheduler took 0.5 s of a 4-5 s budapest stitch (0.45 CPU-s, measured
on 2 busy cores), and a local run uses none of what it offers.

The interface (what other code may use, on any executor)::

    ex.submit(fn, *args, key=None, pure=None, **kwargs) -> future
    ex.map(fn, *iterables, key=None, pure=None) -> [future]
    ex.gather(futures) -> [result]
    ex.nthreads() -> {worker: threads}            # sum(...values()): the parallelism
    future.result(), future.done(), future.release(), future.key
    as_completed(futures)                         # iterator of futures as they finish; .add(future)
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import queue
import threading

from mosaic.runtime.memory import tree_rss

log = logging.getLogger("mosaic")


def usable_cpus() -> int:
    """CPUs this process may run on: under taskset or a container's cpuset that is fewer than
    os.cpu_count(), and sizing the cluster by the latter oversubscribes threads and memory (a boat
    stitch pinned to 2 of 16 cores ran 16 threads and peaked at 3769 MiB instead of 1301)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def add_arguments(p) -> None:
    """The options of the cluster a command runs on (``mosaic stitch``, ``terrain``, ``batch``):
    ``client(args.scheduler, workers=args.workers, ...)``."""
    p.add_argument("--scheduler", metavar="ADDRESS", help="use this dask scheduler (default: an embedded local cluster)")
    p.add_argument("--workers", type=int, help="workers of the embedded cluster")
    p.add_argument("--threads-per-worker", type=int, metavar="N", help="threads of each embedded worker")
    p.add_argument("--memory-limit", metavar="BYTES", help='memory of each embedded worker, e.g. "4GB" (default: auto)')


#: OpenBLAS's thread-count calls, by the names each build exports: numpy's wheels (64-bit
#: integers), scipy's, and OpenCV's plain one.
_OPENBLAS_CALLS = (("scipy_openblas_get_num_threads64_", "scipy_openblas_set_num_threads64_"),
                   ("scipy_openblas_get_num_threads", "scipy_openblas_set_num_threads"),
                   ("openblas_get_num_threads", "openblas_set_num_threads"))


def openblas_threads() -> list:
    """(get, set) of every OpenBLAS loaded in this process (numpy's; scipy's and OpenCV's once
    imported); empty where there is none or no /proc (not Linux)."""
    import ctypes

    try:
        with open("/proc/self/maps") as f:
            paths = sorted({line.split()[-1] for line in f if "openblas" in line.lower() and "/" in line})
    except OSError:
        return []
    calls = []
    for path in paths:
        try:
            lib = ctypes.CDLL(path)  # the loaded copy: dlopen hands back the same library
        except OSError:
            continue
        for get, put in _OPENBLAS_CALLS:
            if hasattr(lib, get) and hasattr(lib, put):
                calls.append((getattr(lib, get), getattr(lib, put)))
                break
    return calls


def scheduler_address(explicit: str | None = None) -> str | None:
    return explicit or os.environ.get("MOSAIC_SCHEDULER") or None


class Future:
    """A task's result in this process: ``result()`` waits for it (and re-raises the task's
    exception); ``release()`` drops it, so a consumer that keeps the future keeps no pixels."""

    def __init__(self, key: str):
        self.key = key
        self._done = threading.Event()
        self._result = self._error = None
        self._callbacks: list = []
        self._lock = threading.Lock()

    def _finish(self, result=None, error=None) -> None:
        with self._lock:
            self._result, self._error = result, error
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(self)

    def add_done_callback(self, fn) -> None:
        with self._lock:
            if not self._done.is_set():
                self._callbacks.append(fn)
                return
        fn(self)

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout=None):
        if not self._done.wait(timeout):
            raise TimeoutError(f"task {self.key} not finished after {timeout} s")
        if self._error is not None:
            raise self._error
        return self._result

    def exception(self, timeout=None):
        self._done.wait(timeout)
        return self._error

    def release(self) -> None:
        self._result = None

    def __repr__(self):
        return f"<Future {self.key} {'finished' if self.done() else 'pending'}>"


def _parse_bytes(limit) -> int | None:
    if limit in (None, "auto", 0, "0"):
        return None
    if isinstance(limit, (int, float)):
        return int(limit)
    from dask.utils import parse_bytes  # dask's syntax ("4GB", "2GiB"), as LocalCluster took it

    return parse_bytes(limit)


class LocalExecutor:
    """Tasks on ``workers`` x ``threads_per_worker`` threads of this process, first come first served.

    ``memory_limit`` (bytes or dask's syntax, per worker, as ``LocalCluster`` took it): while this
    process's resident memory is above ``workers`` times it, a task starts only when no other is
    running. The peak then grows by one task at a time, never by all threads' at once, and the run
    always makes progress (a paused dask worker waits for memory that may never be freed).
    """

    dashboard_link = None

    def __init__(self, workers: int = 1, threads_per_worker: int | None = None, memory_limit=None):
        self.workers = max(1, int(workers))
        self.threads_per_worker = max(1, int(threads_per_worker or usable_cpus()))
        self.memory_limit = _parse_bytes(memory_limit)
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._running = 0
        self._idle = threading.Condition()
        self._closed = False
        self._ids = itertools.count()
        self._blas_restore: list = []

    # -- the Client interface -------------------------------------------------------------

    def nthreads(self) -> dict:
        return {f"local-{w}": self.threads_per_worker for w in range(self.workers)}

    def submit(self, fn, *args, key=None, pure=None, **kwargs) -> Future:
        if self._closed:
            raise RuntimeError("submit on a closed executor")
        fut = Future(key or f"{getattr(fn, '__name__', 'task')}-{next(self._ids)}")
        self._start_threads()
        self._queue.put((fut, fn, args, kwargs))
        return fut

    def map(self, fn, *iterables, key=None, pure=None, **kwargs) -> list[Future]:
        keys = key if isinstance(key, (list, tuple)) else itertools.repeat(None)
        return [self.submit(fn, *args, key=k, **kwargs) for args, k in zip(zip(*iterables), keys)]

    def gather(self, futures):
        return [f.result() for f in futures]

    def close(self) -> None:
        """Finish the running tasks; queued ones are cancelled (their futures raise)."""
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join()
        for put, n in self._blas_restore:
            put(n)
        self._blas_restore = []
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if item is not None:
                item[0]._finish(error=RuntimeError(f"task {item[0].key} cancelled: the executor closed"))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    # -- the threads ----------------------------------------------------------------------

    def _start_threads(self) -> None:
        if self._threads:
            return
        n = self.workers * self.threads_per_worker
        if n > 1:
            # The task threads fill the cores; OpenBLAS's own threads on top of them only
            # oversubscribe the cores and spin while they wait (budapest on 2 cores: 4.0 s and
            # 3.45 CPU-s with them, 3.7 s and 3.2 CPU-s without; matches 0.66 -> 0.46 s). numpy's
            # copy is the one the stages' matrix products use; back as it was on close.
            for get, put in openblas_threads():
                self._blas_restore.append((put, int(get())))
                put(1)
        self._threads = [threading.Thread(target=self._work, name=f"mosaic-task-{k}", daemon=True) for k in range(n)]
        for t in self._threads:
            t.start()

    def _over_limit(self) -> bool:
        if self.memory_limit is None:
            return False
        return tree_rss() > self.workers * self.memory_limit

    def _work(self) -> None:
        while True:
            item = self._queue.get()
            if item is None or self._closed:
                if item is not None:
                    item[0]._finish(error=RuntimeError(f"task {item[0].key} cancelled: the executor closed"))
                return
            fut, fn, args, kwargs = item
            with self._idle:
                while self._running and self._over_limit():
                    self._idle.wait(0.05)
                self._running += 1
            try:
                fut._finish(fn(*args, **kwargs))
            except BaseException as e:  # the consumer re-raises it from result()
                fut._finish(error=e)
            finally:
                # Nothing of the task stays referenced by this thread while it waits for the next.
                del item, fut, fn, args, kwargs
                with self._idle:
                    self._running -= 1
                    self._idle.notify_all()


class _Completed:
    """Local futures in the order they finish; more may be added while iterating."""

    def __init__(self, futures=()):
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        for f in futures:
            self.add(f)

    def add(self, fut: Future) -> None:
        self._pending += 1
        fut.add_done_callback(self._queue.put)

    def __iter__(self):
        while self._pending:
            fut = self._queue.get()
            self._pending -= 1
            yield fut


def as_completed(futures=()):
    """Futures as they finish, from any executor; the iterator's ``add`` takes more."""
    futures = list(futures)
    if any(not isinstance(f, Future) for f in futures):
        from distributed import as_completed as distributed_as_completed

        return distributed_as_completed(futures)
    return _Completed(futures)


@contextlib.contextmanager
def client(scheduler: str | None = None, workers: int | None = None, threads_per_worker: int | None = None,
           memory_limit: str | None = None, processes: bool = False):
    """Yield an executor: a ``distributed.Client`` of the scheduler at ``scheduler`` (or
    ``MOSAIC_SCHEDULER``), or of a new ``LocalCluster`` of worker processes (``processes``), else
    a :class:`LocalExecutor` (threads here). Closes what this call started."""
    address = scheduler_address(scheduler)
    if not address and not processes:
        n, tpw = workers or 1, threads_per_worker or usable_cpus()
        ex = LocalExecutor(n, tpw, memory_limit)
        log.info("executor: %d thread(s) in this process", n * tpw)
        try:
            yield ex
        finally:
            ex.close()
        return
    # Import-time notices (the dashboard's proxy asks for jupyter-server-proxy) are not ours to show.
    logging.getLogger("distributed.http.proxy").setLevel(logging.WARNING)
    from distributed import Client, LocalCluster

    if address:
        c = Client(address, timeout="30s")
        log.info("dask: using cluster at %s (dashboard %s)", address, c.dashboard_link)
        try:
            yield c
        finally:
            c.close()
        return
    n, tpw = workers or usable_cpus(), threads_per_worker or 1
    cluster = LocalCluster(
        n_workers=n, threads_per_worker=tpw, processes=True, memory_limit=memory_limit or "auto",
        dashboard_address=":0", silence_logs=logging.ERROR,
    )
    c = Client(cluster)
    log.info("dask: local cluster, %d processes x %d thread(s) (dashboard %s)", n, tpw, c.dashboard_link)
    try:
        yield c
    finally:
        c.close()
        cluster.close()
