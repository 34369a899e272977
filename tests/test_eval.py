"""mosaic eval: zero against the truth itself, the injected errors against the reported models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from calib.labels import discover
from calib.meta import LOCAL_LEVEL
from calib.models import model_from_dict
from calib.rotation import axis_angle
from mosaic.cli import main
from mosaic.evaluate import evaluate
from mosaic.synth.writer import synthesise


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "scene"
    synthesise(out, "navcam-360", seed=7, scale=64, jobs=2)
    return out


def _solution(path, frames):
    path.mkdir(parents=True, exist_ok=True)
    (path / "solution.json").write_text(json.dumps({"frames": frames, "stats": {"rms_px": 0.0}}))
    return path


def _truth_frames(scene):
    return json.loads((scene / "truth" / "solution.json").read_text())["frames"]


def test_truth_against_itself_is_zero(scene, tmp_path, capsys):
    dest = tmp_path / "e.json"
    assert main(["eval", str(scene / "truth"), "--truth", str(scene), "--json", str(dest)]) == 0
    table = capsys.readouterr().out
    assert "RMS" in table and "horizontal offset" in table
    r = json.loads(dest.read_text())
    s = r["pointing"]["summary"]
    assert s["frames"] == 10 and s["missing"] == []
    assert s["error_deg_max"] < 1e-9 and s["residual_px_max"] < 1e-6 and s["centre_offset_m_max"] < 1e-12
    d = r["dem"]
    assert d["median_abs_m"] < 1e-9 and d["p90_abs_m"] < 1e-9 and d["blunders"]["cells"] == 0
    assert d["horizontal_offset_m"]["total"] < 1e-6 and abs(d["vertical_bias_m"]) < 1e-9
    assert d["bins"] and all(b["coverage"] == 1.0 for b in d["bins"])


def test_reported_models_show_the_injected_error(scene, tmp_path):
    # Named by file stem (as a stitcher may), not imageid: frames are matched by their image.
    frames = [{"id": Path(m.image).stem, "image": m.image, "width": m.width, "height": m.height, "used": True,
               "model": m.model_local_level().to_dict(), "frame": LOCAL_LEVEL, "residual_px": {"rms": 0, "n": 0}}
              for m in discover(scene)]
    r = evaluate(_solution(tmp_path / "reported", frames), scene)
    injected = {f["id"]: f["pointing_error_deg"] for f in json.loads((scene / "scene.json").read_text())["frames"]}
    rows = r["pointing"]["frames"]
    assert len(rows) == 10
    for row in rows:
        assert row["error_deg"] == pytest.approx(injected[row["id"]], abs=1e-7)
        assert 0.5 - 1e-7 <= row["error_deg"] <= 1.0 + 1e-7
        # Full-resolution Navcam pixels are 0.33 mrad: 0.5-1 degree is 26-53 of them.
        assert row["error_px"] == pytest.approx(np.radians(row["error_deg"]) / 0.000329, rel=0.03)
    s = r["pointing"]["summary"]
    # Independent random errors: removing one common rotation leaves most of them.
    assert 0.3 < s["residual_deg_rms"] <= s["error_deg_rms"]


def test_a_common_rotation_is_removed(scene, tmp_path):
    turn = axis_angle([0.2, -0.3, 1.0], np.radians(2.0))
    frames = []
    for f in _truth_frames(scene):
        m = model_from_dict(f["model"]).moved(turn, pivot=np.zeros(3))
        frames.append(dict(f, model=m.to_dict()))
    frames[3] = dict(frames[3], used=False, reason="dropped for the test")
    s = evaluate(_solution(tmp_path / "turned", frames), scene)["pointing"]["summary"]
    assert s["frames"] == 9 and len(s["missing"]) == 1
    assert s["error_deg_max"] == pytest.approx(2.0, abs=1e-9)
    assert s["common_rotation_deg"] == pytest.approx(2.0, abs=1e-9)
    assert s["residual_deg_max"] < 1e-9


def test_dem_offset_and_error_by_distance(scene, tmp_path):
    out = _solution(tmp_path / "dem", _truth_frames(scene))
    with rasterio.open(scene / "truth" / "dem.tif") as src:
        profile = src.profile
        data = src.read(1)
        transform = src.transform
    shift_e = 3.0 * abs(transform.a) / 4  # three quarters of a cell east
    profile.update(transform=rasterio.Affine(transform.a, 0, transform.c + shift_e, 0, transform.e, transform.f))
    with rasterio.open(out / "dem.tif", "w", **profile) as dst:
        dst.write(np.where(data != profile["nodata"], data + 0.05, data), 1)
    d = evaluate(out, scene)["dem"]
    assert d["horizontal_offset_m"]["east"] == pytest.approx(shift_e, abs=0.05 * abs(transform.a))
    assert abs(d["horizontal_offset_m"]["north"]) < 0.25 * abs(transform.a)
    assert d["vertical_bias_m"] == pytest.approx(0.05, abs=0.02)
    assert d["median_abs_m"] > 0.02


def test_bad_input_exits_2(scene, tmp_path, capsys):
    assert main(["eval", str(tmp_path), "--truth", str(scene)]) == 2
    assert "solution.json" in capsys.readouterr().err
    _solution(tmp_path / "x", [{"id": "a", "used": True, "frame": "SITE", "model": _truth_frames(scene)[0]["model"]}])
    assert main(["eval", str(tmp_path / "x"), "--truth", str(scene)]) == 2
    assert main(["eval", str(tmp_path / "x"), "--truth", str(tmp_path)]) == 2
