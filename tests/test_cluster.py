"""Distributed runs: an existing dask cluster (``dask scheduler`` + ``dask worker`` processes on
loopback) gives the same bytes as the embedded one, even when a worker is SIGKILLed mid-run; the
embedded cluster takes its size from the flags."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from synth_cache import QUICK_360, QUICK_STEREO, REPO, digest, scene

from mosaic.runtime import cluster

DASK = Path(sys.executable).parent / "dask"
TERRAIN_ARGS = ["--gsd", "0.1", "--radius", "8", "--no-web"]


def _env(**extra):
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("MOSAIC_SCHEDULER", None)
    env.update(extra)
    return env


def _spawn(args, log):
    # Own process group: the test can kill the whole thing whatever it started.
    return subprocess.Popen(args, cwd=REPO, env=_env(), stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def _stop(p):
    if p.poll() is None:
        with __import__("contextlib").suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)


def _wait(cond, what, timeout=120.0):
    t_end = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > t_end:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.02)


def _mosaic(*args, env=None, check=True):
    r = subprocess.run([sys.executable, "-m", "mosaic", "-q", *map(str, args)], cwd=REPO, env=env or _env(),
                       capture_output=True, text=True, timeout=600)
    if check:
        assert r.returncode == 0, r.stderr[-3000:]
    return r


def _n_workers(address):
    from distributed import Client

    with Client(address, timeout="20s") as c:
        return len(c.scheduler_info(n_workers=-1)["workers"])


@pytest.mark.slow
def test_external_cluster_with_a_killed_worker_gives_the_embedded_bytes(tmp_path):
    pano_in = scene("navcam-360", keep=QUICK_360)
    stereo_in = scene("navcam-stereo", keep=QUICK_STEREO)
    ref, ext = tmp_path / "embedded", tmp_path / "external"
    _mosaic("stitch", pano_in, "-o", ref / "pano", "--workers", "1", "--threads-per-worker", "2")
    _mosaic("terrain", stereo_in, "-o", ref / "site", *TERRAIN_ARGS)

    sfile = tmp_path / "scheduler.json"
    procs = []
    log = open(tmp_path / "cluster.log", "w")
    try:
        procs.append(_spawn([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                             "--scheduler-file", str(sfile)], log))
        _wait(lambda: sfile.exists() and sfile.stat().st_size > 0, "the scheduler file")
        address = json.loads(sfile.read_text())["address"]
        for k in range(2):
            # --no-nanny: the worker process itself is what gets killed (a nanny would restart it).
            procs.append(_spawn([str(DASK), "worker", "--scheduler-file", str(sfile), "--nthreads", "1",
                                 "--no-nanny", "--no-dashboard", "--local-directory", str(tmp_path / f"w{k}")], log))
        _wait(lambda: _n_workers(address) == 2, "two workers")

        stitch = subprocess.Popen([sys.executable, "-m", "mosaic", "-q", "stitch", str(pano_in), "-o",
                                   str(ext / "pano"), "--scheduler", address], cwd=REPO, env=_env(),
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                                  start_new_session=True)
        procs.append(stitch)
        # Kill a worker once the features stage has produced its first result (others in flight).
        _wait(lambda: any((ext / "pano" / "work" / "features").glob("*.npz")) or stitch.poll() is not None,
              "the features stage")
        assert stitch.poll() is None, "the stitch ended before the worker was killed"
        os.killpg(procs[1].pid, signal.SIGKILL)
        procs[1].wait(timeout=30)
        _, err = stitch.communicate(timeout=600)
        assert stitch.returncode == 0, err[-3000:]
        assert _n_workers(address) == 1

        # The surviving worker, reached through MOSAIC_SCHEDULER this time.
        _mosaic("terrain", stereo_in, "-o", ext / "site", *TERRAIN_ARGS, env=_env(MOSAIC_SCHEDULER=address))
    finally:
        for p in reversed(procs):
            _stop(p)
        log.close()

    for name in ("solution.json", "panorama.tif", "preview.jpg"):
        assert digest(ext / "pano" / name) == digest(ref / "pano" / name), name
    for name in ("dem.tif", "ortho.tif", "solution.json"):
        assert digest(ext / "site" / name) == digest(ref / "site" / name), name
    assert json.loads((ext / "pano" / "report.json").read_text())["scheduler"] == address


def test_scheduler_address_prefers_the_flag_then_the_environment(monkeypatch):
    monkeypatch.delenv("MOSAIC_SCHEDULER", raising=False)
    assert cluster.scheduler_address(None) is None
    monkeypatch.setenv("MOSAIC_SCHEDULER", "tcp://10.0.0.5:8786")
    assert cluster.scheduler_address(None) == "tcp://10.0.0.5:8786"
    assert cluster.scheduler_address("tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"


def test_embedded_cluster_takes_its_size_from_the_flags(monkeypatch):
    monkeypatch.delenv("MOSAIC_SCHEDULER", raising=False)
    with cluster.client(workers=2, threads_per_worker=1, memory_limit="1GB") as c:
        assert isinstance(c, cluster.LocalExecutor)
        assert sorted(c.nthreads().values()) == [1, 1]
        assert c.memory_limit == 10**9
        # Two threads run at once: each task waits until the other has started.
        both = threading.Barrier(2, timeout=30)
        assert c.gather([c.submit(both.wait, pure=False) for _ in range(2)]) in ([0, 1], [1, 0])


def test_cli_passes_cluster_flags_through(monkeypatch, tmp_path):
    """--workers/--threads-per-worker/--memory-limit reach the embedded cluster for both commands."""
    from mosaic import cli

    seen = []

    class Stop(Exception):
        pass

    def fake_client(scheduler=None, workers=None, threads_per_worker=None, memory_limit=None, processes=False):
        seen.append((scheduler, workers, threads_per_worker, memory_limit))
        raise Stop

    monkeypatch.setattr(cluster, "client", fake_client)
    frames = scene("navcam-360", keep=QUICK_360)
    flags = ["--workers", "3", "--threads-per-worker", "2", "--memory-limit", "2GB"]
    for argv in (["stitch", str(frames), "-o", str(tmp_path / "a"), *flags],
                 ["terrain", str(scene("navcam-stereo", keep=QUICK_STEREO)), "-o", str(tmp_path / "b"), *flags]):
        assert cli.main(["-q", *argv]) == 1  # Stop: an internal error, after the flags were seen
    assert seen == [(None, 3, 2, "2GB")] * 2


def test_a_local_stitch_imports_neither_distributed_nor_scipy_optimize(tmp_path):
    """The default executor is threads in this process: a local run pays neither the import of
    ``distributed`` nor a scheduler's start and close; the Hugin project's lens fit does without
    ``scipy.optimize`` (0.13-0.29 s to import), the seam cut without ``scipy.ndimage`` (0.075 s)."""
    frames = scene("navcam-360", keep=QUICK_360)
    code = ("import sys; from mosaic.stitch import stitch; "
            f"r = stitch([{str(frames)!r}], {str(tmp_path / 'pan')!r}); assert 'panorama' in r, r; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'distributed' or m in ('scipy.optimize', "
            "'scipy.ndimage')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=_env(), capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "pan" / "panorama.pto").exists()
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_the_local_executor_keeps_openblas_to_one_thread_while_its_threads_run():
    """Its task threads already fill the cores; OpenBLAS threads on top only oversubscribe. While
    a multi-threaded LocalExecutor runs, numpy's OpenBLAS runs one thread; after, as before."""
    import numpy  # noqa: F401 -- loads numpy's OpenBLAS

    calls = cluster.openblas_threads()
    if not calls:
        pytest.skip("no OpenBLAS found in this process")
    get, put = calls[0]
    before = int(get())
    put(2)
    if get() < 2:
        put(before)
        pytest.skip("OpenBLAS here runs one thread at most")
    try:
        with cluster.LocalExecutor(workers=1, threads_per_worker=2) as ex:
            assert ex.submit(lambda: [int(g()) for g, _ in cluster.openblas_threads()]).result() == [1] * len(calls)
        assert get() == 2
    finally:
        put(before)


def _fail(x):
    raise ValueError(f"bad {x}")


def test_local_executor_futures_finish_in_any_order_and_carry_errors():
    gate = threading.Event()
    with cluster.LocalExecutor(1, 2) as ex:
        slow = ex.submit(gate.wait, 30, key="slow")
        fast = ex.submit(sum, [1, 2], key="fast")
        done = cluster.as_completed([slow, fast])
        first = next(iter(done))
        assert first.key == "fast" and first.result() == 3
        gate.set()
        done.add(ex.submit(_fail, 7))
        rest = list(done)
        assert {f.key for f in rest} == {"slow", "_fail-0"}
        bad = next(f for f in rest if f.key.startswith("_fail"))
        with pytest.raises(ValueError, match="bad 7"):
            bad.result()
        assert ex.gather(ex.map(pow, [2, 3], [3, 2])) == [8, 9]
        fast.release()
        assert fast.result() is None  # the result is dropped, the future stays usable


def test_local_executor_memory_limit_runs_one_task_at_a_time():
    """Above the limit a task starts only when none runs: two tasks that wait for each other
    cannot meet (under no limit they do: test_embedded_cluster_takes_its_size_from_the_flags)."""
    with cluster.LocalExecutor(1, 2, memory_limit=1) as ex:
        both = threading.Barrier(2, timeout=2)
        futures = [ex.submit(both.wait, pure=False) for _ in range(2)]
        with pytest.raises(threading.BrokenBarrierError):
            ex.gather(futures)


def test_closing_the_local_executor_cancels_queued_tasks():
    started, gate = threading.Event(), threading.Event()

    def hold():
        started.set()
        return gate.wait(30)

    ex = cluster.LocalExecutor(1, 1)
    running = ex.submit(hold)
    queued = ex.submit(sum, [1])
    assert started.wait(30)  # close() would cancel it too if it had not started yet
    closer = threading.Thread(target=ex.close)
    closer.start()
    _wait(lambda: ex._closed, "close() to begin")
    gate.set()  # the running task ends after close() began: the queued one must not start
    closer.join(timeout=30)
    assert running.result() is True
    with pytest.raises(RuntimeError, match="cancelled"):
        queued.result()
