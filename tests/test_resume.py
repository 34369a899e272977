"""Resume: a stitch killed with SIGKILL mid-render and started again skips the finished stages and
tiles and ends with the same bytes as a clean run; ``--force`` recomputes everything."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from synth_cache import QUICK_360, REPO, digest, listing, scene

from mosaic.formats.cog import read_journal
from mosaic.runtime import atomic

OUTPUTS = ("solution.json", "panorama.tif", "preview.jpg")
#: one worker thread: tiles finish one at a time, so the kill lands between two of them
CLUSTER = ["--workers", "1", "--threads-per-worker", "1"]


def _cmd(frames, out, *extra):
    return [sys.executable, "-m", "mosaic", "-q", "stitch", str(frames), "-o", str(out), *CLUSTER, *extra]


def _env():
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _run(cmd):
    r = subprocess.run(cmd, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads((Path(cmd[cmd.index("-o") + 1]) / "report.json").read_text())


def _kill_when(cmd, ready, timeout=240.0):
    """Start ``cmd`` in its own process group and SIGKILL the group once ``ready()`` is true."""
    p = subprocess.Popen(cmd, cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                         start_new_session=True)
    try:
        t_end = time.monotonic() + timeout
        while not ready():
            if p.poll() is not None:
                pytest.fail(f"run ended (status {p.returncode}) before the kill point: {p.stderr.read()[-2000:]}")
            if time.monotonic() > t_end:
                pytest.fail("kill point not reached in time")
            time.sleep(0.01)
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(timeout=30)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait(timeout=30)
        p.stderr.close()
    return p.returncode


@pytest.mark.slow
def test_sigkill_mid_render_resumes_tiles_and_matches_clean_run(tmp_path):
    frames = scene("navcam-360", keep=QUICK_360)
    clean, out = tmp_path / "clean", tmp_path / "out"
    _run(_cmd(frames, clean))

    tiles = lambda: [at for d in out.glob("work/render/*") for at in read_journal(d)[1]]  # noqa: E731
    assert _kill_when(_cmd(frames, out), lambda: len(tiles()) >= 1) == -signal.SIGKILL
    done = tiles()
    assert done, "no tile had finished"
    assert not (out / "panorama.tif").exists() and not (out / "solution.json").exists()
    # what was journaled is whole: those tiles of the intermediate are the clean run's pixels
    import rasterio
    from rasterio.windows import Window

    (inter,) = out.glob("work/render/*/intermediate.tif")
    with rasterio.open(inter) as a, rasterio.open(clean / "panorama.tif") as b:
        for row0, col0 in done:
            win = Window(col0, row0, min(512, a.width - col0), min(512, a.height - row0))
            assert (a.read(window=win) == b.read(window=win)).all(), (row0, col0)

    rep = _run(_cmd(frames, out))
    for name in ("ingest", "features", "pairs", "matches", "adjust"):
        assert rep["stages"][name]["skipped"], name
    counts = rep["stages"]["render"]["counts"]
    assert counts["tiles_resumed"] == len(done)
    assert counts["tiles_rendered"] == counts["tiles_with_frames"] - len(done) > 0
    for name in OUTPUTS:
        assert digest(out / name) == digest(clean / name), name
    # nothing left behind by the killed run: the same files as the clean run, no render parts
    assert set(listing(out)) == set(listing(clean))
    assert not (out / "work" / "render").exists()

    # a finished run started again recomputes nothing and rewrites no output
    before = listing(out)
    rep = _run(_cmd(frames, out))
    assert all(s["skipped"] for s in rep["stages"].values()), rep["stages"]
    after = listing(out)
    for name in OUTPUTS:
        assert after[name] == before[name], name

    # --force recomputes every stage and gives the same bytes
    rep = _run(_cmd(frames, out, "--force"))
    assert not any(s["skipped"] for s in rep["stages"].values()), rep["stages"]
    assert rep["stages"]["render"]["counts"]["tiles_resumed"] == 0
    for name in OUTPUTS:
        assert digest(out / name) == digest(clean / name), name


def test_remove_stale_clears_only_the_named_outputs_temporaries(tmp_path):
    (tmp_path / ".panorama.cog-abc").mkdir()
    (tmp_path / ".panorama.cog-abc" / "intermediate.tif").write_bytes(b"x")
    (tmp_path / ".solution.k2j3.json").write_text("{}")
    (tmp_path / ".hidden-user-file").write_text("keep")
    (tmp_path / "panorama.tif").write_bytes(b"keep")
    assert atomic.remove_stale(tmp_path, ("panorama.tif", "solution.json")) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden-user-file", "panorama.tif"]


def test_atomic_write_failure_leaves_the_target_as_it_was(tmp_path):
    target = tmp_path / "solution.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["solution.json"]


@pytest.mark.slow
def test_sigkill_mid_matching_redoes_only_unfinished_pairs(tmp_path):
    frames = scene("navcam-360", keep=QUICK_360)
    clean, out = tmp_path / "clean", tmp_path / "out"
    no_render = ("--no-render",)
    _run(_cmd(frames, clean, *no_render))

    pairs = lambda: list(out.glob("work/matches/done/*.json"))  # noqa: E731
    assert _kill_when(_cmd(frames, out, *no_render), lambda: len(pairs()) >= 1) == -signal.SIGKILL
    done = len(pairs())
    assert not (out / "work" / "stages" / "matches.json").exists()  # the stage itself had not finished
    rep = _run(_cmd(frames, out, *no_render))
    assert rep["stages"]["features"]["skipped"] and not rep["stages"]["matches"]["skipped"]
    assert rep["stages"]["matches"]["counts"]["resumed"] == done
    assert digest(out / "solution.json") == digest(clean / "solution.json")
    assert digest(out / "work" / "matches" / "summary.json") == digest(clean / "work" / "matches" / "summary.json")
