"""Faults: a worker process killed mid-render does not change the panorama's bytes (dask retries
its tasks; tiles come back to the process that writes them); an internal failure exits 1 with the
log and leaves the output folder as it was, keeping finished tiles in the workspace for the next
run."""

from __future__ import annotations

import contextlib

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
from synth_cache import QUICK_360, QUICK_STEREO, digest, listing, scene

from mosaic.formats.cog import read_journal
from mosaic.runtime import cluster


def _reported_solution(frames) -> dict:
    """A solution of the frames' reported models (absolute image paths): something to render."""
    from calib.labels import discover
    from mosaic.formats.solution import frame_entry

    metas = discover([str(frames)])
    return {"frames": [frame_entry({"id": m.id, "image": str(m.image), "width": m.width, "height": m.height},
                                   m.model_local_level(), True) for m in metas]}


def journaled(folder) -> list:
    """The tiles a render's work folder records as written (mosaic.formats.cog's journal)."""
    return [at for j in Path(folder).glob("**/journal.jsonl") for at in read_journal(j.parent)[1]]


@pytest.mark.slow
def test_worker_killed_mid_render_gives_the_same_bytes(tmp_path, monkeypatch):
    from mosaic.formats import cog
    from mosaic.render import render_panorama

    sol = _reported_solution(scene("navcam-360", keep=QUICK_360))
    kw = dict(resolution=0.4, tile=128, gains=False)
    with cluster.client(workers=1, threads_per_worker=2) as c:
        ref = render_panorama(sol, tmp_path / "ref", client=c, **kw)

    monkeypatch.setattr(cog, "CHECKPOINT_S", 0.0)  # every tile journaled as it arrives
    # The kill comes when the first tile is journaled; on a loaded machine the render may still
    # finish first, and then the fault was not injected: try again (at most three times).
    for attempt in range(3):
        work = tmp_path / f"work{attempt}"
        killed, finished = [], threading.Event()
        with cluster.client(workers=2, threads_per_worker=1, processes=True) as c:
            pids = c.run(os.getpid)

            def kill_one_worker():
                while not journaled(work) and not finished.wait(0.005):
                    pass
                n = len(journaled(work))
                if not finished.is_set():
                    addr, pid = sorted(pids.items())[0]
                    os.kill(pid, signal.SIGKILL)
                    killed.append(n)

            killer = threading.Thread(target=kill_one_worker, daemon=True)
            killer.start()
            got = render_panorama(sol, tmp_path / "got", client=c, work_dir=work, **kw)
            finished.set()
            killer.join(timeout=10)
        if killed and killed[0] < got["tiles_with_frames"]:
            break
    assert killed and killed[0] < got["tiles_with_frames"], "no worker was killed mid-render"
    assert got["tiles_rendered"] == got["tiles_with_frames"] == ref["tiles_with_frames"] > 4
    assert list(work.iterdir()) == [], "the finished render left its intermediate behind"
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
    assert len(journaled(out / "work" / "render")) == 2  # the tiles that finished stay for the next run

    monkeypatch.setattr(panorama, "render_tile", real)
    assert main(["-q", "stitch", str(frames), "-o", str(out), "--workers", "1", "--threads-per-worker", "1"]) == 0
    import json

    counts = json.loads((out / "report.json").read_text())["stages"]["render"]["counts"]
    assert counts["tiles_resumed"] == 2 and counts["tiles_rendered"] == counts["tiles_with_frames"] - 2
    assert (out / "panorama.tif").exists() and (out / "solution.json").exists()


# -- two runs into one output folder -------------------------------------------------------------

@contextlib.contextmanager
def _lock_held_elsewhere(*outs):
    """Other processes holding each OUT's lock (as a running stitch does) for the block; yields
    them (their pids name the owner), killed at its end."""
    import subprocess
    import sys

    holders = []
    try:
        for out in outs:
            p = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom mosaic.runtime import lock\n"
                                  f"with lock.held({str(out)!r}, command='stitch'):\n    print('held', flush=True)\n"
                                  "    time.sleep(600)\n"], stdout=subprocess.PIPE, text=True,
                                 cwd=Path(__file__).resolve().parents[1])
            holders.append(p)
            assert p.stdout.readline().strip() == "held"
        yield holders
    finally:
        for p in holders:
            p.kill()
            p.wait()
            p.stdout.close()


def _write_lock(out, host, pid):
    import json

    out.mkdir(parents=True, exist_ok=True)
    (out / ".mosaic.lock").write_text(json.dumps({"host": host, "pid": pid, "command": "stitch",
                                                  "started": time.time() - 60}))


def _stitch(frames, out, capsys, *extra):
    from mosaic.cli import main

    capsys.readouterr()
    rc = main(["-q", "stitch", str(frames), "-o", str(out), "--no-render", "--workers", "1", *extra])
    return rc, [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]


def test_a_second_run_into_a_locked_folder_refuses_naming_the_owner(tmp_path, capsys):
    import socket

    frames = scene("navcam-360", keep=QUICK_360)
    out = tmp_path / "out"
    out.mkdir()
    with _lock_held_elsewhere(out) as (holder,):
        for extra in ([], ["--force"]):  # --force does not break a live run's lock on this host
            rc, lines = _stitch(frames, out, capsys, *extra)
            assert rc == 2 and len(lines) == 1, lines
            assert f"pid {holder.pid} on host {socket.gethostname()}" in lines[0] and str(out) in lines[0], lines
        assert not (out / "work").exists()  # refused before any work
    # The holder was killed: its lock file stays, naming a dead pid of this host: stale, taken over.
    assert (out / ".mosaic.lock").exists()
    rc, lines = _stitch(frames, out, capsys)
    assert rc == 0, lines
    assert (out / "solution.json").exists() and not (out / ".mosaic.lock").exists()


def test_a_stale_lock_of_this_host_is_taken_over_and_another_hosts_lock_needs_force(tmp_path, capsys):
    import socket
    import subprocess
    import sys

    frames = scene("navcam-360", keep=QUICK_360)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    out = tmp_path / "stale"
    _write_lock(out, socket.gethostname(), int(gone))
    rc, lines = _stitch(frames, out, capsys)
    assert rc == 0 and not (out / ".mosaic.lock").exists(), lines

    out = tmp_path / "foreign"
    _write_lock(out, "rover-ops-07.example", 4242)
    rc, lines = _stitch(frames, out, capsys)
    assert rc == 2 and len(lines) == 1 and "pid 4242 on host rover-ops-07.example" in lines[0], lines
    assert "--force" in lines[0] and not (out / "work").exists()
    rc, lines = _stitch(frames, out, capsys, "--force")
    assert rc == 0 and (out / "solution.json").exists() and not (out / ".mosaic.lock").exists(), lines


def test_batch_locks_each_job_folder(tmp_path, capsys):
    import json

    from mosaic.cli import main

    pano, stereo = scene("navcam-360", keep=QUICK_360), scene("navcam-stereo", keep=QUICK_STEREO)
    out = tmp_path / "out"
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[defaults.stitch]\nrender = false\n\n'
                    f'[[job]]\ncommand = "stitch"\nname = "busy"\ninputs = ["{pano}"]\n\n'
                    f'[[job]]\ncommand = "stitch"\nname = "free"\ninputs = ["{pano}"]\n\n'
                    f'[[job]]\ncommand = "terrain"\nname = "site"\ninputs = ["{stereo}"]\n'
                    f'[job.options]\ngsd = 0.1\nradius = 8\nweb = false\n')
    (out / "busy").mkdir(parents=True)
    (out / "site").mkdir(parents=True)
    with _lock_held_elsewhere(out / "busy", out / "site") as holders:
        rc = main(["-q", "batch", str(jobs), "-o", str(out), "--workers", "1"])
    assert rc == 1
    rows = {r["name"]: r for r in json.loads((out / "batch-summary.json").read_text())["jobs"]}
    assert rows["free"]["status"] == "ok"
    for name, h in (("busy", holders[0]), ("site", holders[1])):
        assert rows[name]["status"] == "bad-input" and f"pid {h.pid} on host" in rows[name]["error"], rows[name]
        assert not (out / name / "work").exists() and not (out / name / "dem.tif").exists()


# -- a full output device --------------------------------------------------------------------------

def _products(out) -> dict:
    return {p.name: digest(p) for p in sorted(Path(out).iterdir()) if p.is_file()}


def test_a_full_disk_while_publishing_is_one_line_and_keeps_the_earlier_set(registered, tmp_path, monkeypatch,
                                                                              capsys):
    """ENOSPC raised by a product writer (a tmpfs test below fills a real device): exit 1, one line
    naming the folder and the cause, the earlier run's products untouched, nothing half-written;
    into a fresh folder: nothing of ours."""
    import errno

    from mosaic.cli import main
    from mosaic.products import quality

    frames = scene("navcam-360", keep=QUICK_360)
    out = tmp_path / "out"
    shutil.copytree(registered / "work", out / "work")
    argv = ["-q", "stitch", str(frames), "-o", str(out), "--workers", "1", "--threads-per-worker", "1"]
    assert main(argv) == 0
    before = _products(out)
    assert {"panorama.tif", "preview.jpg", "quality.png", "index.html", "solution.json"} <= set(before)

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device", str(out / ".staging.x" / "quality.png"))

    monkeypatch.setattr(quality, "write_quality", full)
    files_before = listing(out)
    for target in (out, tmp_path / "fresh"):
        capsys.readouterr()
        rc = main([*argv[:3], str(frames), "-o", str(target), *argv[5:], "--resolution", "0.5"])
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert rc == 1 and len(lines) == 1, lines
        assert lines[0].startswith(f"mosaic stitch: error: {target}: no space left on device"), lines
        # Never a new panorama beside an old preview; no temporary or staging files.
        assert listing(target) == (files_before if target == out else {})
        assert not [p for p in Path(target).iterdir() if p.name.startswith(".")]
    assert _products(out) == before


def _mount_namespace() -> list | None:
    """A command prefix that runs a command in its own mount namespace, where it may mount a
    tmpfs (as root, or as a user through a user namespace); None where neither is allowed."""
    import subprocess

    if shutil.which("unshare") is None:
        return None
    for prefix in (["unshare", "-m"], ["unshare", "-U", "-r", "-m"]):
        try:
            ok = subprocess.run([*prefix, "sh", "-c", "mount -t tmpfs -o size=1m tmpfs /mnt 2>/dev/null || "
                                 "mount -t tmpfs -o size=1m tmpfs \"$HOME\" 2>/dev/null"],
                                capture_output=True, timeout=20).returncode == 0
        except (OSError, subprocess.SubprocessError):
            ok = False
        if ok:
            return prefix
    return None


_FULL_DISK_DRIVER = r'''
import hashlib, json, os, subprocess, sys
frames, disk = sys.argv[1], sys.argv[2]
def run(out, *extra):
    r = subprocess.run([sys.executable, "-m", "mosaic", "-q", "stitch", frames, "-o", out, "--workers", "1", *extra],
                       capture_output=True, text=True)
    return r.returncode, r.stderr
def files(out):
    if not os.path.isdir(out):
        return {}
    return {n: hashlib.sha256(open(os.path.join(out, n), "rb").read()).hexdigest()
            for n in sorted(os.listdir(out)) if os.path.isfile(os.path.join(out, n))}
res = {}
pan = os.path.join(disk, "pan")
res["good"] = run(pan)
res["before"] = files(pan)
st = os.statvfs(disk)
with open(os.path.join(disk, "filler"), "wb") as f:  # leave 100 KiB
    f.write(b"\0" * max(0, st.f_bavail * st.f_frsize - 100 * 1024))
res["full"] = run(pan, "--resolution", "0.25")
res["after"] = files(pan)
res["hidden"] = [n for n in os.listdir(pan) if n.startswith(".")]
fresh = os.path.join(disk, "fresh")
res["fresh"] = run(fresh)
res["fresh_files"] = files(fresh)
print(json.dumps(res))
'''


@pytest.mark.slow
def test_a_full_tmpfs_is_one_line_and_keeps_the_earlier_set(tmp_path):
    """The output device fills up mid-run (an 8 MiB tmpfs): exit 1 with one line naming the folder
    and the cause, no traceback, no partial panorama; the folder keeps the earlier run's complete
    products, or (a fresh folder) nothing of ours."""
    import json
    import subprocess
    import sys

    prefix = _mount_namespace()
    if prefix is None:
        pytest.skip("cannot mount a tmpfs here (unshare -m, or -U -r -m, not permitted)")
    disk = tmp_path / "disk"
    disk.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(_FULL_DISK_DRIVER)
    cmd = [*prefix, "sh", "-c", 'mount -t tmpfs -o size=8m tmpfs "$1" && shift && exec "$@"', "sh", str(disk),
           sys.executable, str(driver), str(scene("navcam-360", keep=QUICK_360)), str(disk)]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=Path(__file__).resolve().parents[1],
                       env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout)
    assert res["good"][0] == 0, res["good"][1]
    assert {"panorama.tif", "preview.jpg", "quality.png", "solution.json", "report.json"} <= set(res["before"])
    for case in ("full", "fresh"):
        rc, err = res[case]
        lines = [ln for ln in err.splitlines() if ln.strip()]
        assert rc == 1 and len(lines) == 1 and "no space left on device" in lines[0] and "Traceback" not in err, err
        assert str(disk / ("pan" if case == "full" else "fresh")) in lines[0], lines
    assert res["after"] == res["before"]  # the earlier set, byte for byte: no new panorama beside it
    assert res["hidden"] == []  # no staging folder, no temporary file, no lock
    assert res["fresh_files"] == {}  # nothing of ours


def test_terrain_into_a_locked_folder_refuses_naming_the_owner(tmp_path, capsys):
    from mosaic.cli import main

    stereo = scene("navcam-stereo", keep=QUICK_STEREO)
    out = tmp_path / "site"
    out.mkdir()
    with _lock_held_elsewhere(out) as (holder,):
        capsys.readouterr()
        rc = main(["-q", "terrain", str(stereo), "-o", str(out), "--gsd", "0.1", "--radius", "8", "--no-web"])
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert rc == 2 and len(lines) == 1 and f"pid {holder.pid}" in lines[0], lines
    assert not (out / "work").exists()  # refused before any work
