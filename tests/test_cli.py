"""The `mosaic` command end to end: every command on a tiny synthetic scene, configuration files,
--print-config, --dry-run, exit statuses."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
import urllib.request
from pathlib import Path

import pytest
from synth_cache import QUICK_360, QUICK_STEREO, scene

from mosaic.cli import COMMANDS, build_parser, main
from mosaic.runtime.config import StitchConfig

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pan():
    return scene("navcam-360", keep=QUICK_360)


@pytest.fixture(scope="module")
def stereo():
    return scene("navcam-stereo", keep=QUICK_STEREO)


def _mosaic(*args, timeout=300):
    """`python -m mosaic ARGS` in a subprocess: (exit status, stdout, stderr)."""
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    p = subprocess.run([sys.executable, "-m", "mosaic", *map(str, args)], capture_output=True, text=True,
                       timeout=timeout, cwd=REPO, env=env)
    return p.returncode, p.stdout, p.stderr


def test_every_command_has_help_with_an_example():
    parser, subs = build_parser()
    assert set(subs) == set(COMMANDS)
    for name, sp in subs.items():
        text = sp.format_help()
        assert "Example" in text and f"mosaic {name} " in text, name
    assert "Example" in parser.format_help()


def test_config_value_used_and_flag_wins(pan, tmp_path, capsys):
    cfg = tmp_path / "site.toml"
    cfg.write_text("[info]\nradius = 30\njson = true\n\n[terrain]\ngsd = 0.05\n")
    assert main(["info", str(pan), "--config", str(cfg), "--print-config"]) == 0
    printed = tomllib.loads(capsys.readouterr().out)["info"]
    assert printed["radius"] == 30.0 and printed["json"] is True
    assert main(["info", str(pan), "--config", str(cfg), "--radius", "12", "--print-config"]) == 0
    assert tomllib.loads(capsys.readouterr().out)["info"]["radius"] == 12.0
    # The value is used by the run: json = true from the file makes `info` print JSON.
    assert main(["info", str(pan), "--config", str(cfg)]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert len(doc["frames"]) == len(QUICK_360)
    # terrain reads its own table from the same file; positional arguments can come from it too.
    cfg2 = tmp_path / "t.toml"
    cfg2.write_text(f'[terrain]\ninputs = ["{pan}"]\nout = "{tmp_path / "site"}"\nradius = 7\n')
    assert main(["terrain", "--config", str(cfg2), "--print-config"]) == 0
    t = tomllib.loads(capsys.readouterr().out)["terrain"]
    assert t["inputs"] == [str(pan)] and t["radius"] == 7.0 and t["gsd"] == 0.02


@pytest.mark.parametrize("command,body", [("info", "radus = 3\n"), ("terrain", "[terrain]\ngsdd = 0.1\n"),
                                          ("stitch", "[stitch]\nmax_keypionts = 10\n")])
def test_unknown_config_key_is_exit_2_with_one_line(pan, tmp_path, command, body):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(body)
    rc, out, err = _mosaic(command, pan, *(["-o", tmp_path / "o"] if command != "info" else []),
                           "--config", cfg, timeout=120)
    assert rc == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and str(cfg) in lines[0] and body.split("=")[0].split("\n")[-1].strip() in lines[0]
    assert not (tmp_path / "o").exists()


def test_bad_config_value_and_missing_file_are_exit_2(pan, tmp_path, capsys):
    cfg = tmp_path / "v.toml"
    cfg.write_text('[info]\nradius = "far"\n')
    assert main(["info", str(pan), "--config", str(cfg)]) == 2
    assert "radius" in capsys.readouterr().err
    assert main(["info", str(pan), "--config", str(tmp_path / "none.toml")]) == 2
    assert "none.toml" in capsys.readouterr().err


def test_stitch_print_config_is_a_config_file(pan, tmp_path, capsys):
    cfg = tmp_path / "s.toml"
    cfg.write_text("[stitch]\nfeature = \"orb\"\nmax_keypoints = 500\noutlier_px = 2.5\n")
    assert main(["stitch", str(pan), "-o", str(tmp_path / "o"), "--config", str(cfg), "--max-keypoints", "900",
                 "--print-config"]) == 0
    text = capsys.readouterr().out
    values = tomllib.loads(text)["stitch"]
    assert values["feature"] == "orb" and values["outlier_px"] == 2.5 and values["max_keypoints"] == 900
    # Printed settings read back as the same configuration.
    again = tmp_path / "again.toml"
    again.write_text(text)
    assert StitchConfig.from_toml(again) == StitchConfig(feature="orb", max_keypoints=900, outlier_px=2.5)
    assert not (tmp_path / "o").exists()


def test_dry_runs_plan_without_writing(pan, stereo, tmp_path, capsys):
    from mosaic.render import plan

    out = tmp_path / "pan"
    assert main(["stitch", str(pan), "-o", str(out), "--dry-run"]) == 0
    text = capsys.readouterr().out
    assert f"frames: {len(QUICK_360)}" in text and "estimate:" in text and "nothing computed or written" in text
    # The output size is the renderer's own plan for the reported models.
    from mosaic.plan import stitch_plan

    p = stitch_plan([pan], StitchConfig())
    assert f"{p['output']['width']} x {p['output']['height']}" in text and p["predicted_pairs"] >= 3
    assert p["output"]["width"] == 2 * p["output"]["height"] and plan is not None
    assert main(["terrain", str(stereo), "-o", str(tmp_path / "site"), "--dry-run", "--gsd", "0.1",
                 "--radius", "5"]) == 0
    text = capsys.readouterr().out
    assert "stereo pairs: 2" in text and "101 x 101 at 0.1 m" in text
    assert not out.exists() and not (tmp_path / "site").exists()


def test_bad_input_is_exit_2_and_one_line(tmp_path):
    rc, _, err = _mosaic("stitch", tmp_path / "missing", "-o", tmp_path / "o", timeout=120)
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "missing" in err
    rc, _, err = _mosaic("synth", tmp_path / "s", "--scene", "navcam-360", "--scale", "99", timeout=120)
    assert rc == 2 and "scale" in err
    rc, _, err = _mosaic("stitch", "-o", tmp_path / "o", timeout=120)  # argparse: missing inputs
    assert rc == 2


def test_quiet_and_verbose(pan):
    rc, out, err = _mosaic("-q", "stitch", pan, "-o", "unused", "--dry-run", timeout=120)
    assert rc == 0 and err == "" and "frames:" in out
    rc, out, err = _mosaic("stitch", pan, "-o", "unused", "--dry-run", "-q", timeout=120)  # after the command too
    assert rc == 0 and err == ""
    rc, out, err = _mosaic("stitch", pan, "-o", "unused", "--dry-run", timeout=120)
    assert "pairs: " in err                                                      # progress lines by default
    rc, out, err = _mosaic("-v", "info", pan, timeout=120)
    assert rc == 0


def test_internal_error_is_exit_1_in_one_line(monkeypatch, tmp_path, capsys, caplog):
    import re

    import mosaic.info

    def broken(args):
        raise RuntimeError("boom\nsecond line")

    monkeypatch.setattr(mosaic.info, "run", broken)
    capsys.readouterr()
    assert main(["info", str(tmp_path)]) == 1
    (line,) = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert line.startswith("mosaic info: internal error: RuntimeError: boom (traceback in ")
    kept = Path(re.search(r"traceback in (\S+);", line).group(1))
    assert "Traceback" in kept.read_text() and "raise RuntimeError" in kept.read_text()
    kept.unlink()
    # -v: the traceback goes to the debug log instead of a file.
    assert main(["-v", "info", str(tmp_path)]) == 1
    assert "traceback above" in capsys.readouterr().err and "Traceback" in caplog.text


def test_end_to_end_every_command(pan, stereo, tmp_path):
    """synth -> info -> stitch (with a config file) -> eval -> view -> terrain -> batch, as a user would."""
    # synth: the smallest scene the generator makes (the stitch below uses the cached one).
    rc, _, err = _mosaic("-q", "synth", tmp_path / "scene", "--scene", "navcam-stereo", "--scale", "64",
                         "--seed", "3", "--jobs", "1")
    assert rc == 0, err
    assert (tmp_path / "scene" / "truth" / "solution.json").is_file()

    rc, out, err = _mosaic("info", pan, "--json")
    assert rc == 0, err
    assert len(json.loads(out)["frames"]) == len(QUICK_360)

    cfg = tmp_path / "pan.toml"
    cfg.write_text("[stitch]\nmax_keypoints = 1500\nworkers = 1\n")
    pano = tmp_path / "pan"
    rc, _, err = _mosaic("stitch", pan, "-o", pano, "--config", cfg, "--seed", "2")
    assert rc == 0, err
    for name in ("panorama.tif", "preview.jpg", "index.html", "quality.png", "panorama.pto", "solution.json",
                 "report.json"):
        assert (pano / name).is_file(), name
    # Not a terminal: progress is plain log lines, one per stage at least.
    for stage in ("ingest", "features", "pairs", "matches", "adjust", "render"):
        assert f"{stage}: " in err and " done in " in err, stage
    sol = json.loads((pano / "solution.json").read_text())
    assert sol["stats"]["frames_used"] == len(QUICK_360)
    rc, plan, err = _mosaic("stitch", pan, "-o", tmp_path / "elsewhere", "--dry-run")
    import rasterio

    with rasterio.open(pano / "panorama.tif") as ds:   # the dry run sized the panorama the run made
        assert rc == 0 and f"panorama.tif {ds.width} x {ds.height} equirect" in plan, plan
    # The file's value reached the features stage.
    feats = json.loads((pano / "report.json").read_text())["stages"]["features"]["counts"]
    assert feats["keypoints_max"] <= 1500

    # eval: the solution against itself is a zero error (exercises the command, not the stitcher).
    rc, out, err = _mosaic("eval", pano, "--truth", pano)
    assert rc == 0, err
    assert (pano / "eval.json").is_file()

    # view: serves OUT; the page comes back over HTTP.
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.Popen([sys.executable, "-m", "mosaic", "view", str(pano), "--port", "0", "--no-browser"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    try:
        line = proc.stdout.readline()
        url = line.split(" at ", 1)[1].split()[0]
        with urllib.request.urlopen(url, timeout=30) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    site = tmp_path / "site"
    rc, plan, err = _mosaic("terrain", stereo, "-o", site, "--gsd", "0.1", "--radius", "6", "--dry-run")
    assert rc == 0, err
    rc, out, err = _mosaic("terrain", stereo, "-o", site, "--gsd", "0.1", "--radius", "6", "--no-web")
    assert rc == 0, err
    assert "stereo: " in err and "Scheduler" not in err   # progress, without dask's INFO chatter
    assert (site / "dem.tif").is_file() and (site / "ortho.tif").is_file()
    import rasterio

    with rasterio.open(site / "dem.tif") as ds:   # the dry run sized the grid the run made
        assert f"{ds.width} x {ds.height} at 0.1 m" in plan

    # batch: one terrain job from a jobs file (its own tests cover stitch jobs and failures).
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(f'[[job]]\ncommand = "terrain"\nname = "site"\ninputs = ["{stereo}"]\n'
                    f'[job.options]\ngsd = 0.2\nradius = 4\nweb = false\n')
    rc, out, err = _mosaic("batch", jobs, "-o", tmp_path / "batch")
    assert rc == 0, err
    summary = json.loads((tmp_path / "batch" / "batch-summary.json").read_text())
    assert [j["status"] for j in summary["jobs"]] == ["ok"]


def test_stitch_resolution_and_size_limit(pan, tmp_path, capsys):
    """--resolution sets the output's pixel size; --max-megapixels refuses an oversized panorama
    as bad input before anything is allocated or written."""
    from mosaic.plan import stitch_plan

    p = stitch_plan([pan], StitchConfig(resolution=0.5625))
    assert (p["output"]["width"], p["output"]["height"]) == (640, 320)
    out = tmp_path / "big"
    rc = main(["stitch", str(pan), "-o", str(out), "--resolution", "0.01", "--max-megapixels", "100"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "max_megapixels" in err[0], err
    assert not out.exists()  # refused in the checks: no folder, no workspace, no features


def test_binary_config_is_exit_2_for_stitch(pan, tmp_path, capsys):
    """One TOML reader for every command: a binary file is bad input, not a traceback."""
    bad = tmp_path / "bad.toml"
    bad.write_bytes(b"\xff\xfe\x00binary")
    assert main(["stitch", str(pan), "-o", str(tmp_path / "o"), "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "bad.toml" in err[0] and "not valid TOML" in err[0]


def test_view_says_when_it_cannot_open_a_browser(tmp_path):
    """Without a browser to open (BROWSER names one that fails), `mosaic view` says so and how
    to open the page instead of serving in silence."""
    from PIL import Image

    out = tmp_path / "pan"
    out.mkdir()
    Image.new("RGB", (64, 32), (90, 60, 40)).save(out / "preview.jpg")
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    env.update(PYTHONPATH=str(REPO), BROWSER="false")
    proc = subprocess.Popen([sys.executable, "-m", "mosaic", "view", str(out), "--port", "0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO, env=env)
    import queue
    import threading

    lines = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()

    def line(timeout=60.0):
        try:
            return lines.get(timeout=timeout)
        except queue.Empty:
            return ""

    try:
        serving = line()
        said = line(20.0)  # nothing comes (the old silence) within this: the test fails, not hangs
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    url = serving.split(" at ", 1)[1].split()[0]
    assert said.startswith("view: could not open a browser here") and url in said, said


def test_getting_started_shows_the_commands_make_demo_runs():
    """docs/getting-started.md lists the Makefile's demo commands exactly (with .venv/bin and out/)."""
    make = (REPO / "Makefile").read_text()
    recipe = make.split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    commands = [ln.strip().replace("$(BIN)", ".venv/bin").replace("$(OUT)", "out")
                for ln in recipe.splitlines() if ln.strip().startswith("$(BIN)/mosaic")]
    assert len(commands) == 3, recipe
    guide = (REPO / "docs" / "getting-started.md").read_text()
    shown = [" ".join(ln.split("#")[0].split()) for ln in guide.splitlines()]
    for c in commands:
        assert " ".join(c.split()) in shown, c
