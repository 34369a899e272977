"""Faults: a worker process killed mid-render does not change the panorama's bytes (dask retries
its tasks; every tile part is written atomically); an internal failure exits 1 with the log and
leaves the output folder as it was, keeping finished tiles in the workspace for the next run."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest

from mosaic import cluster
from synth_cache import QUICK_360, digest, listing, scene


def _reported_solution(frames) -> dict:
    """A solution of the frames' reported models (absolute image paths): something to render."""
    from calib.labels import discover
    from mosaic.solution import frame_entry

    metas = discover([str(frames)])
    return {"frames": [frame_entry({"id": m.id, "image": str(m.image), "width": m.width, "height": m.height},
                                   m.model_local_level(), True) for m in metas]}


@pytest.mark.slow
def test_worker_killed_mid_render_gives_the_same_bytes(tmp_path):
    from mosaic.render import render_panorama

    sol = _reported_solution(scene("navcam-360", keep=QUICK_360))
    kw = dict(resolution=0.4, tile=128, gains=False)
    with cluster.client(workers=1, threads_per_worker=2) as c:
        ref = render_panorama(sol, tmp_path / "ref", client=c, **kw)

    parts = tmp_path / "parts"
    killed = []
    with cluster.client(workers=2, threads_per_worker=1, processes=True) as c:
        pids = c.run(os.getpid)

        def kill_one_worker():
            t_end = time.monotonic() + 120
            while not any(parts.glob("tile_*.json")) and time.monotonic() < t_end:
                time.sleep(0.005)
            addr, pid = sorted(pids.items())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(addr)

        killer = threading.Thread(target=kill_one_worker, daemon=True)
        killer.start()
        got = render_panorama(sol, tmp_path / "got", client=c, parts_dir=parts, **kw)
        killer.join(timeout=10)
    assert killed, "no worker was killed"
    assert got["tiles_rendered"] == got["tiles_with_frames"] == ref["tiles_with_frames"] > 4
    assert 0 < len(list(parts.glob("tile_*.json"))) == got["tiles_with_frames"]
    assert not list(parts.glob(".*")), "a temporary part file was left behind"
    for name in ("panorama.tif", "preview.jpg"):
        assert digest(tmp_path / "got" / name) == digest(tmp_path / "ref" / name), name


@pytest.fixture(scope="module")
def registered(tmp_path_factory):
    """A finished registration (OUT/work of stitch --no-render) to copy: the render runs alone."""
    from mosaic.stitch import stitch

    out = tmp_path_factory.mktemp("registered")
    stitch([scene("navcam-360", keep=QUICK_360)], out, render=False, workers=1, threads_per_worker=2)
    return out


def test_internal_failure_exits_1_with_one_line_and_leaves_out_untouched(registered, tmp_path, monkeypatch, capsys):
    from mosaic.cli import main
    from mosaic.render import panorama

    out = tmp_path / "out"
    shutil.copytree(registered / "work", out / "work")
    (out / "notes.txt").write_text("the user's file")
    before = listing(out)
    real, calls = panorama.render_tile, []

    def flaky(job):
        calls.append(job.core)
        if len(calls) > 2:
            raise RuntimeError("simulated crash in a tile task")
        return real(job)

    monkeypatch.setattr(panorama, "render_tile", flaky)
    frames = scene("navcam-360", keep=QUICK_360)
    capsys.readouterr()
    rc = main(["-q", "stitch", str(frames), "-o", str(out), "--workers", "1", "--threads-per-worker", "1"])
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 1
    # One line of ours (no "Compute Failed" from distributed, no traceback); the traceback is kept.
    assert len(lines) == 1 and "internal error: RuntimeError: simulated crash in a tile task" in lines[0], lines
    import re

    log_file = re.search(r"traceback in (\S+);", lines[0]).group(1)
    assert "Traceback" in Path(log_file).read_text() and "flaky" in Path(log_file).read_text()
    Path(log_file).unlink()
    assert listing(out) == before  # no panorama, no solution.json, no temporary files
    done = list((out / "work" / "render").glob("*/tile_*.json"))
    assert len(done) == 2  # the tiles that finished stay for the next run

    monkeypatch.setattr(panorama, "render_tile", real)
    assert main(["-q", "stitch", str(frames), "-o", str(out), "--workers", "1", "--threads-per-worker", "1"]) == 0
    import json

    counts = json.loads((out / "report.json").read_text())["stages"]["render"]["counts"]
    assert counts["tiles_resumed"] == 2 and counts["tiles_rendered"] == counts["tiles_with_frames"] - 2
    assert (out / "panorama.tif").exists() and (out / "solution.json").exists()
