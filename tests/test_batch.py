"""mosaic batch: many jobs on one dask client, past a failed job, with a summary; a bad jobs file
is refused (exit 2) before anything runs."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from synth_cache import QUICK_360, QUICK_STEREO, digest, scene

from mosaic import batch
from mosaic.cli import main
from mosaic.runtime import cluster


def test_jobs_file_runs_every_job_on_one_client_and_continues_past_a_failure(tmp_path, monkeypatch, capsys):
    pano, stereo = scene("navcam-360", keep=QUICK_360), scene("navcam-stereo", keep=QUICK_STEREO)
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f"""
[defaults.stitch]
render = false

[[job]]
command = "stitch"
inputs = ["{pano}"]
out = "runs/pano"
[job.options]
max_keypoints = 1500

[[job]]
command = "stitch"
name = "broken"
inputs = ["missing-folder/"]

[[job]]
command = "terrain"
name = "site"
inputs = ["{stereo}"]
[job.options]
gsd = 0.1
radius = 8
web = false
""")
    started = []
    real = cluster.client

    def counting(*a, **kw):
        started.append(kw)
        return real(*a, **kw)

    monkeypatch.setattr(cluster, "client", counting)
    out = tmp_path / "out"
    rc = main(["-q", "batch", str(jobs), "-o", str(out), "--threads-per-worker", "2"])
    printed = capsys.readouterr().out
    assert rc == 1  # one job failed; the others ran
    assert len(started) == 1 and started[0]["threads_per_worker"] == 2  # one cluster for all jobs
    summary = json.loads((out / "batch-summary.json").read_text())
    rows = {r["name"]: r for r in summary["jobs"]}
    assert [r["name"] for r in summary["jobs"]] == ["pano", "broken", "site"]
    assert rows["pano"]["status"] == "ok" and rows["pano"]["result"]["frames_used"] == 4
    assert rows["broken"]["status"] == "bad-input"
    assert re.search(r"missing-folder: no such file or directory", rows["broken"]["error"])
    assert rows["site"]["status"] == "ok" and rows["site"]["result"]["pairs"] == 2
    assert (summary["ok"], summary["failed"]) == (2, 1)
    assert (tmp_path / "runs" / "pano" / "solution.json").exists()  # relative to the jobs file
    assert not (tmp_path / "runs" / "pano" / "panorama.tif").exists()  # [defaults.stitch] render = false
    assert (out / "site" / "dem.tif").exists()  # out defaults to OUT/<name>
    lines = printed.strip().splitlines()
    assert lines[0].split()[:3] == ["job", "command", "status"] and len(lines) == 5
    assert "2 ok, 1 failed" in lines[-1]


@pytest.mark.slow
def test_folder_of_sequences_gives_the_same_bytes_as_single_stitches(tmp_path):
    seqs = tmp_path / "seqs"
    shutil.copytree(scene("navcam-360", keep=QUICK_360), seqs / "a-pan")
    (seqs / "b-noise").mkdir()
    rng = np.random.default_rng(1)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (90, 120), dtype=np.uint8)).save(seqs / "b-noise" / f"n{k}.png")
    assert main(["-q", "batch", str(seqs), "-o", str(tmp_path / "out"), "--hfov", "60", "--workers", "1"]) == 1
    summary = json.loads((tmp_path / "out" / "batch-summary.json").read_text())
    assert [(r["name"], r["status"]) for r in summary["jobs"]] == [("a-pan", "ok"), ("b-noise", "bad-input")]
    assert "overlaps another" in summary["jobs"][1]["error"]
    assert main(["-q", "stitch", str(seqs / "a-pan"), "-o", str(tmp_path / "single"), "--hfov", "60"]) == 0
    for name in ("solution.json", "panorama.tif"):
        assert digest(tmp_path / "out" / "a-pan" / name) == digest(tmp_path / "single" / name), name


BAD_JOBS = {
    "not TOML": ("[[job]\ncommand = ", r"not valid TOML"),
    "no jobs": ("[defaults.stitch]\nhfov = 40\n", r"no \[\[job\]\] tables"),
    "unknown command": ('[[job]]\ncommand = "stich"\ninputs = ["a"]\n', r"command must be one of stitch, terrain"),
    "unknown job key": ('[[job]]\ncommand = "stitch"\ninputs = ["a"]\noutput = "x"\n', r"unknown key\(s\) output"),
    "no inputs": ('[[job]]\ncommand = "stitch"\ninputs = []\n', r"inputs must be a non-empty list"),
    "unknown stitch option": ('[[job]]\ncommand = "stitch"\ninputs = ["a"]\n[job.options]\nhfvo = 3\n',
                              r"unknown stitch option\(s\): hfvo"),
    "bad stitch value": ('[[job]]\ncommand = "stitch"\ninputs = ["a"]\n[job.options]\nfeature = "surf"\n',
                         r"unknown feature type 'surf'"),
    "unknown terrain option": ('[[job]]\ncommand = "terrain"\ninputs = ["a"]\n[job.options]\ngds = 3\n',
                               r"unknown terrain option\(s\): gds"),
    "cluster option in a job": ('[[job]]\ncommand = "terrain"\ninputs = ["a"]\n[job.options]\nscheduler = "x"\n',
                                r"unknown terrain option\(s\): scheduler"),
    "cluster option in a stitch job": ('[[job]]\ncommand = "stitch"\ninputs = ["a"]\n[job.options]\nworkers = 2\n',
                                       r"workers: jobs share the batch's cluster"),
    "duplicate names": ('[[job]]\ncommand = "stitch"\nname = "a"\ninputs = ["a"]\n'
                        '[[job]]\ncommand = "stitch"\nname = "a"\ninputs = ["b"]\n', r"names occur more than once: a"),
    "shared output": ('[[job]]\ncommand = "stitch"\nout = "o"\ninputs = ["a"]\n'
                      '[[job]]\ncommand = "stitch"\nname = "b"\nout = "o"\ninputs = ["b"]\n', r"share an output folder"),
    "unknown top-level": ('jobs = 3\n[[job]]\ncommand = "stitch"\ninputs = ["a"]\n', r"unknown top-level key"),
}


@pytest.mark.parametrize("case", list(BAD_JOBS))
def test_bad_jobs_file_exits_2_before_anything_runs(case, tmp_path, capsys, monkeypatch):
    text, problem = BAD_JOBS[case]
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(text)
    monkeypatch.setattr(cluster, "client", lambda *a, **k: pytest.fail("a cluster was started"))
    rc = main(["-q", "batch", str(jobs), "-o", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(lines) == 1, lines
    assert lines[0].startswith(f"mosaic batch: error: {jobs}: ") and re.search(problem, lines[0]), lines[0]
    assert not (tmp_path / "out").exists()


def test_missing_jobs_and_empty_sequence_folder(tmp_path, capsys):
    assert main(["-q", "batch", str(tmp_path / "nope.toml"), "-o", str(tmp_path / "o")]) == 2
    (tmp_path / "seqs").mkdir()
    assert main(["-q", "batch", str(tmp_path / "seqs"), "-o", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.splitlines()
    assert "nope.toml: no such jobs file or folder" in err[0] and "no sequence subfolders" in err[1]


def test_read_jobs_resolves_paths_against_the_jobs_file(tmp_path):
    (tmp_path / "cfg").mkdir()
    f = tmp_path / "cfg" / "jobs.toml"
    f.write_text('[[job]]\ncommand = "stitch"\ninputs = "seq/"\n[job.options]\nhfov = 48\n')
    (job,) = batch.read_jobs(f, tmp_path / "out", {"max_keypoints": 100})
    assert job.inputs == [str(tmp_path / "cfg" / "seq/")] and job.out == str(tmp_path / "out" / "stitch-1")
    assert job.options == {"max_keypoints": 100, "hfov": 48}
