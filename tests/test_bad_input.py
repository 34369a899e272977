"""Bad input: one line naming the file and the problem, exit status 2, and the output folder left as
it was (only the workspace OUT/work may appear).

Each case copies a tiny synthetic scene, breaks one thing and runs the CLI in-process.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from synth_cache import QUICK_360, listing, scene

from mosaic import batch
from mosaic.cli import main
from mosaic.runtime import atomic

FIRST = "NCAM10000"
SECOND = "NCAM10001"


@pytest.fixture(scope="module")
def frames():
    return scene("navcam-360", keep=QUICK_360)


def _frame(folder: Path, tag: str, suffix: str) -> Path:
    (p,) = [p for p in folder.iterdir() if tag in p.name and p.suffix == suffix]
    return p


def _edit_record(folder, tag, fn):
    p = _frame(folder, tag, ".json")
    rec = json.loads(p.read_text())
    fn(rec)
    p.write_text(json.dumps(rec))
    return p


def _model(folder, tag, fn):
    """Edit the CAHVORE components of a frame's record: fn(list of component strings)."""
    def edit(rec):
        parts = rec["camera"]["camera_model_component_list"].split(";")
        fn(parts)
        rec["camera"]["camera_model_component_list"] = ";".join(parts)
    return _edit_record(folder, tag, edit)


# Each case: (name, prepare(inputs folder, tmp) -> (extra argv, file the message names), problem regex).
# ``extra argv`` replaces the default inputs when it starts with "!" (the case supplies all inputs).

def zero_byte(d, t):
    p = _frame(d, FIRST, ".png")
    p.write_bytes(b"")
    return [], p


def truncated_png(d, t):
    p = _frame(d, FIRST, ".png")
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 3])
    return [], p


def not_an_image(d, t):
    p = _frame(d, FIRST, ".png")
    p.write_text("this is not a PNG\n")
    return [], p


def size_disagrees(d, t):
    p = _frame(d, FIRST, ".png")
    Image.open(p).resize((200, 150)).save(p)
    return [], p


def sidecar_of_another_frame(d, t):
    a, b = _frame(d, FIRST, ".json"), _frame(d, SECOND, ".json")
    shutil.copy(b, a)
    return [], a


def nan_in_model(d, t):
    return [], _model(d, FIRST, lambda c: c.__setitem__(0, "(nan,0.3,-1.9)"))


def infinite_in_model(d, t):
    return [], _model(d, FIRST, lambda c: c.__setitem__(2, "(inf,185.4,90.6)"))


def a_parallel_to_h(d, t):
    return [], _model(d, FIRST, lambda c: c.__setitem__(2, "(81.9240484,0.357843534,57.3438945)"))


def zero_a_vector(d, t):
    return [], _model(d, FIRST, lambda c: c.__setitem__(1, "(0,0,0)"))


def short_vector(d, t):
    return [], _model(d, FIRST, lambda c: c.__setitem__(3, "(-6.5,2.7)"))


def text_in_vector(d, t):
    return [], _model(d, FIRST, lambda c: c.__setitem__(3, "(a,b,c)"))


def missing_components(d, t):
    return [], _model(d, FIRST, lambda c: c.__delitem__(slice(3, None)))


def unknown_model_type(d, t):
    return [], _edit_record(d, FIRST, lambda r: r["camera"].__setitem__("camera_model_type", "CAHVX"))


def bad_cahvore_type(d, t):
    return [], _model(d, FIRST, lambda c: c.__setitem__(7, "7"))


def invalid_json(d, t):
    p = _frame(d, FIRST, ".json")
    p.write_text(p.read_text()[:-40])
    return [], p


def json_not_an_object(d, t):
    p = _frame(d, FIRST, ".json")
    p.write_text("[1, 2, 3]\n")
    return [], p


def bad_dimension(d, t):
    return [], _edit_record(d, FIRST, lambda r: r["extended"].__setitem__("dimension", "(0,-5)"))


def bad_attitude(d, t):
    return [], _edit_record(d, FIRST, lambda r: r.__setitem__("attitude", "(0,0,0,0)"))


def duplicate_ids(d, t):
    copy = t / "again"
    shutil.copytree(d, copy)
    return ["!", str(d), str(copy)], copy


def empty_folder(d, t):
    e = t / "empty"
    e.mkdir()
    return ["!", str(e)], e


def missing_input(d, t):
    return ["!", str(t / "nowhere")], t / "nowhere"


def unsupported_file(d, t):
    p = t / "notes.docx"
    p.write_bytes(b"PK\x03\x04")
    return ["!", str(p)], p


def malformed_pds4(d, t):
    p = _frame(d, FIRST, ".json")
    p.unlink()
    x = p.with_suffix(".xml")
    x.write_text("<Product_Observational><Identification_Area>")
    return [], x


def photos_without_overlap(d, t):
    ph = t / "photos"
    ph.mkdir()
    rng = np.random.default_rng(5)
    for k in range(3):
        Image.fromarray(rng.integers(0, 255, (120, 160), dtype=np.uint8)).save(ph / f"noise{k}.png")
    return ["!", str(ph), "--hfov", "50"], ph


def output_under_a_file(d, t):
    f = t / "afile"
    f.write_text("x")
    return ["-o", str(f / "out")], f / "out"


def _config(t, text):
    c = t / "opts.toml"
    c.write_text(text)
    return ["--config", str(c)], c


def config_unknown_option(d, t):
    return _config(t, "[stitch]\nmax_keypionts = 10\n")


def config_not_toml(d, t):
    return _config(t, "[stitch\nhfov = \n")


def hfov_out_of_range(d, t):
    return ["--hfov", "200"], "hfov"


def _as_jpeg(d, tag):
    """The frame's PNG re-saved as a JPEG beside its record (the record pairs with it by stem)."""
    p = _frame(d, tag, ".png")
    j = p.with_suffix(".jpg")
    Image.open(p).convert("RGB").save(j, quality=92)
    p.unlink()
    return j


def truncated_jpeg_header_intact(d, t):
    # OpenCV decodes this file "fine" (grey fill and a warning): only a decoder that reports
    # truncation, run before the features stage, finds it.
    for tag in (FIRST, SECOND):
        j = _as_jpeg(d, tag)
    j = _frame(d, FIRST, ".jpg")
    j.write_bytes(j.read_bytes()[: j.stat().st_size * 2 // 3])
    return [], j


def png_without_iend(d, t):
    p = _frame(d, FIRST, ".png")
    p.write_bytes(p.read_bytes()[:-12])  # cut after the last IDAT chunk: every pixel row decodes
    return [], p


def record_without_camera_model(d, t):
    return [], _edit_record(d, FIRST, lambda r: r["camera"].pop("camera_model_component_list"))


def record_whose_image_is_missing(d, t):
    _frame(d, FIRST, ".png").unlink()
    return [], _frame(d, FIRST, ".json")


def resolution_too_fine(d, t):
    return ["--resolution", "0.0001"], "resolution"


def config_value_of_wrong_type(d, t):
    return _config(t, '[stitch]\nresolution = "fine"\n')


def config_value_out_of_range(d, t):
    return _config(t, "[stitch]\nworkers = 0\nmin_scale = 0.5\n")


def output_folder_holds_the_inputs(d, t):
    return ["-o", str(t)], t


CASES = {
    "zero-byte image": (zero_byte, r"empty file"),
    "truncated png": (truncated_png, r"cannot decode|truncated"),
    "not an image": (not_an_image, r"not a readable image|cannot decode"),
    "size disagrees with model": (size_disagrees, r"320x240.*200x150"),
    "sidecar for another frame": (sidecar_of_another_frame, r"describes frame \S*NCAM10001\S*, not the image"),
    "NaN in model": (nan_in_model, r"not finite"),
    "inf in model": (infinite_in_model, r"not finite"),
    "A parallel to H": (a_parallel_to_h, r"parallel|degenerate"),
    "zero A": (zero_a_vector, r"zero-length|degenerate"),
    "short vector": (short_vector, r"expected 3 numbers"),
    "text in vector": (text_in_vector, r"expected a number"),
    "missing components": (missing_components, r"needs 9 components"),
    "unknown model type": (unknown_model_type, r"unknown camera model type .CAHVX"),
    "bad CAHVORE type": (bad_cahvore_type, r"CAHVORE type 7"),
    "invalid JSON": (invalid_json, r"not valid JSON"),
    "JSON not an object": (json_not_an_object, r"expected a JSON object"),
    "bad dimension": (bad_dimension, r"dimension.*positive"),
    "bad attitude": (bad_attitude, r"attitude: zero quaternion"),
    "duplicate ids": (duplicate_ids, r"duplicate|more than once"),
    "empty folder": (empty_folder, r"no frames found"),
    "missing input": (missing_input, r"no such"),
    "unsupported file": (unsupported_file, r"unsupported"),
    "malformed PDS4": (malformed_pds4, r"not well-formed XML"),
    "plain photos with no overlap": (photos_without_overlap, r"none of the 3 plain photos overlaps"),
    "output under a file": (output_under_a_file, r"cannot create the output folder"),
    "config unknown option": (config_unknown_option, r"max_keypionts"),
    "config not TOML": (config_not_toml, r"TOML"),
    "hfov out of range": (hfov_out_of_range, r"between 0 and 180"),
    "truncated JPEG, header intact": (truncated_jpeg_header_intact, r"JPEG is truncated"),
    "PNG cut after its last IDAT": (png_without_iend, r"truncated PNG \(no IEND"),
    "record without camera model": (record_without_camera_model, r"camera model: missing"),
    "record whose image is missing": (record_whose_image_is_missing, r"image: no image file beside this label"),
    "resolution too fine": (resolution_too_fine, r"gigapixels exceeds the limit.*max_megapixels"),
    "config value of the wrong type": (config_value_of_wrong_type, r"resolution: expected a number, got 'fine'"),
    "config value out of range": (config_value_out_of_range, r"workers: must be at least 1, got 0"),
    "output folder holds the inputs": (output_folder_holds_the_inputs, r"output folder holds the input folder"),
}

#: Cases found only after registration (they need the solved geometry): the workspace may appear.
AFTER_REGISTRATION = {"plain photos with no overlap"}


def _run(argv, capsys):
    capsys.readouterr()
    rc = main(argv)
    err = capsys.readouterr().err
    return rc, [ln for ln in err.splitlines() if ln.strip()]


@pytest.mark.parametrize("case", list(CASES))
def test_stitch_bad_input(case, frames, tmp_path, capsys):
    prepare, problem = CASES[case]
    inputs = tmp_path / "in"
    shutil.copytree(frames, inputs)
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("the user's file")
    extra, named = prepare(inputs, tmp_path)
    if extra[:1] == ["!"]:
        argv = ["-q", "stitch", *extra[1:2], "-o", str(out), *extra[2:]]
    elif extra[:1] == ["-o"]:
        out = Path(extra[1])
        argv = ["-q", "stitch", str(inputs), *extra]
    else:
        argv = ["-q", "stitch", str(inputs), "-o", str(out), *extra]
    if case == "duplicate ids":
        argv = ["-q", "stitch", extra[1], extra[2], "-o", str(out)]
    before = listing(out)
    existed = out.exists()
    rc, lines = _run(argv, capsys)
    assert rc == 2, (case, lines)
    assert len(lines) == 1 and lines[0].startswith("mosaic stitch: error:"), lines  # one line, no traceback
    msg = lines[0]
    assert str(named) in msg or Path(str(named)).name in msg, (str(named), msg)
    assert re.search(problem, msg, re.I), msg
    assert listing(out) == before, "the output folder changed"
    if case not in AFTER_REGISTRATION:
        # Found in the checks, before any work: no workspace, no lock, no folder made.
        assert not (out / "work").exists() and not (out / ".mosaic.lock").exists()
        assert out.exists() == existed


def test_terrain_grid_too_large_is_refused_before_allocating(frames, tmp_path, capsys):
    rc, lines = _run(["-q", "terrain", str(frames), "-o", str(tmp_path / "t"), "--gsd", "0.00001",
                      "--radius", "20"], capsys)
    assert rc == 2 and lines == [lines[-1]] and re.search(r"over 4e9 cells", lines[-1]), lines
    assert listing(tmp_path / "t") == {}


def test_terrain_without_stereo_pairs(frames, tmp_path, capsys):
    rc, lines = _run(["-q", "terrain", str(frames), "-o", str(tmp_path / "t")], capsys)
    assert rc == 2 and "no stereo pairs" in lines[-1] and str(frames) in lines[-1], lines
    assert listing(tmp_path / "t") == {}


def test_terrain_bad_site_origin(frames, tmp_path, capsys):
    rc, lines = _run(["-q", "terrain", str(frames), "-o", str(tmp_path / "t"), "--site-origin", "18.4,north"],
                     capsys)
    assert rc == 2 and len(lines) == 1 and "site" in lines[0].lower(), lines


def test_render_refuses_an_oversized_output_before_allocating(frames, tmp_path):
    from calib.errors import InputError
    from calib.labels import discover
    from mosaic.formats.solution import frame_entry
    from mosaic.render.panorama import plan

    metas = discover([str(frames)])
    sol = {"frames": [frame_entry({"id": m.id, "image": str(m.image), "width": m.width, "height": m.height},
                                  m.model_local_level(), True) for m in metas]}
    with pytest.raises(InputError, match="gigapixels exceeds the limit"):
        plan(sol, resolution=0.0001, max_pixels=10**9)


def test_output_dir_errors_name_the_folder(tmp_path):
    from calib.errors import InputError

    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError, match=re.escape(str(f / "a" / "b"))):
        atomic.output_dir(f / "a" / "b")
    assert atomic.output_dir(tmp_path / "new" / "deep").is_dir()


@pytest.mark.slow
def test_posed_frame_that_overlaps_nothing_renders_with_a_warning(tmp_path, caplog, capsys):
    """Not bad input: a frame with a model but no partner keeps its reported pointing."""
    lonely = scene("navcam-360", keep=QUICK_360 + ("NCAM10003_",))  # azimuth 216: no neighbour kept
    out = tmp_path / "out"
    assert main(["stitch", str(lonely), "-o", str(out), "--workers", "1"]) == 0
    log = capsys.readouterr().err + caplog.text
    assert re.search(r"NCAM10003\S*: no (verified matches|predicted overlap).*rendered from its reported pointing", log)
    sol = json.loads((out / "solution.json").read_text())
    lone = [f for f in sol["frames"] if "NCAM10003" in f["id"]][0]
    assert lone["used"] is False and lone["reason"]  # the solution says it was not adjusted
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["render"]["counts"]["frames"] == 5  # ...but the panorama shows it


# -- property: the other readers of user files (solution.json, jobs files) raise only InputError --

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "40")),  # more: FUZZ_EXAMPLES=3000
                deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
JUNK = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(allow_nan=True, allow_infinity=True),
                 st.text(max_size=8), st.lists(st.floats(allow_nan=True, allow_infinity=True), max_size=4),
                 st.sampled_from(["LOCAL_LEVEL", "SITE", "CAHVX", "CAHVORE", [0, 0, 0], [1, 0, 0], {}]))


def _mutate(obj, path, value):
    """Set the item at ``path`` (a list of keys/indices) to ``value``; a missing path leaves obj."""
    for k in path[:-1]:
        obj = obj[k]
    if value is _DELETE:
        del obj[path[-1]]
    else:
        # A copy: sampled_from hands out the same list/dict object on every draw, and putting one
        # inside itself makes a cycle that no JSON can hold.
        obj[path[-1]] = copy.deepcopy(value)


_DELETE = object()


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _one_line_naming(e, path):
    assert "\n" not in str(e) and str(path) in str(e), str(e)


@FUZZ
@given(data=st.data())
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a numpy warning above the error is a second line
def test_solution_readers_raise_only_input_error(frames, tmp_path_factory, data):
    import copy

    from calib.errors import InputError
    from calib.labels import discover
    from mosaic.formats import solution as solution_io
    from mosaic.formats.solution import frame_entry
    from mosaic.render.panorama import frames_of

    metas = discover([str(frames)])
    base = {"frames": [frame_entry({"id": m.id, "image": str(m.image), "width": m.width, "height": m.height},
                                   m.model_local_level(), True) for m in metas], "stats": {}}
    sol = copy.deepcopy(base)
    for _ in range(data.draw(st.integers(1, 3))):
        paths = [p for p in _paths(sol) if p]
        if not paths:  # every key deleted: nothing left to mutate
            break
        where = data.draw(st.sampled_from(paths))
        _mutate(sol, list(where), data.draw(st.one_of(JUNK, st.just(_DELETE))))
    path = tmp_path_factory.mktemp("sol") / "solution.json"
    path.write_text(json.dumps(sol))
    for reader in (solution_io.read, frames_of):
        try:
            reader(path)
        except InputError as e:
            _one_line_naming(e, path)


@FUZZ
@given(text=st.one_of(
    st.text(max_size=200),
    st.builds(lambda cmd, inputs, opts: f'[[job]]\ncommand = {json.dumps(cmd)}\ninputs = {json.dumps(inputs)}\n'
                                        f'[job.options]\n{opts}\n',
              st.sampled_from(["stitch", "terrain", "", "batch"]),
              st.one_of(st.lists(st.text(max_size=5), max_size=2), st.text(max_size=5)),
              st.sampled_from(["", "hfov = 500", "gsd = -1", "radius = \"x\"", "feature = 3", "seed = 1.5",
                               "bogus = 1", "force = true", "max_pixels = 10"]))))
def test_jobs_reader_raises_only_input_error(tmp_path_factory, text):
    from calib.errors import InputError

    f = tmp_path_factory.mktemp("jobs") / "jobs.toml"
    f.write_text(text)
    try:
        batch.read_jobs(f, f.parent / "out")
    except InputError as e:
        _one_line_naming(e, f)


def test_output_folder_inside_the_input_folder_works_on_a_second_run(frames, tmp_path, capsys):
    """The outputs of a run never become its inputs: panorama.tif, preview.jpg, quality.png and
    the workspace under OUT are left out, so a second run skips every stage and a forced one
    (which reads the inputs again) finds the same 4 frames."""
    inputs = tmp_path / "in"
    shutil.copytree(frames, inputs)
    out = inputs / "pano"
    for extra in ([], [], ["--force"]):
        rc = main(["-q", "stitch", str(inputs), "-o", str(out), "--workers", "1", *extra])
        assert rc == 0, capsys.readouterr().err
        assert (out / "panorama.tif").exists() and (out / "quality.png").exists()
        report = json.loads((out / "report.json").read_text())
        assert report["frames"] == report["frames_used"] == 4
        if not extra and report["stages"]["ingest"]["skipped"]:
            assert all(s["skipped"] for s in report["stages"].values()), report["stages"]


def test_a_failure_on_a_worker_is_one_line_without_dask_noise(frames, tmp_path):
    """A run that fails inside a dask task (here a tile task, after every check passed) prints one
    line: no "Compute Failed", no traceback, no cancelled-task chatter from distributed."""
    import subprocess
    import sys

    script = ("import sys\nimport mosaic.render.panorama as p\n"
              "def broken(job):\n    raise RuntimeError('tile task broke')\n"
              "p.render_tile = broken\nfrom mosaic.cli import main\n"
              f"sys.exit(main(['-q', 'stitch', {str(frames)!r}, '-o', {str(tmp_path / 'out')!r}, '--workers', '1']))\n")
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300,
                       cwd=Path(__file__).resolve().parents[1])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 1, r.stderr
    assert len(lines) == 1 and "internal error: RuntimeError: tile task broke" in lines[0], r.stderr
    assert "distributed" not in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "out" / "panorama.tif").exists()
    Path(re.search(r"traceback in (\S+);", lines[0]).group(1)).unlink()


def test_terrain_refuses_a_truncated_image_before_any_work(tmp_path, capsys):
    """mosaic terrain runs the same checks (labels, camera models, every image whole) first."""
    from synth_cache import QUICK_STEREO

    inputs = tmp_path / "in"
    shutil.copytree(scene("navcam-stereo", keep=QUICK_STEREO), inputs)
    bad = sorted(inputs.glob("*.png"))[0]
    bad.write_bytes(bad.read_bytes()[: bad.stat().st_size // 2])
    rc, lines = _run(["-q", "terrain", str(inputs), "-o", str(tmp_path / "t"), "--gsd", "0.1", "--radius", "6"],
                     capsys)
    assert rc == 2 and len(lines) == 1 and str(bad) in lines[0] and "truncated" in lines[0], lines
    assert not (tmp_path / "t").exists()
