"""mosaic stitch registration on real data: the Opportunity Navcam pan (CAHVOR models, ~22 %
overlap, a gap between frames 2 and 3) and plain photo sets without metadata (budapest, boat);
and the same solution.json from a two-worker cluster as from the embedded default."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from calib.models import model_from_dict
from calib.rotation import matrix_to_rotvec
from mosaic.cli import main
from mosaic.stitch import stitch

MER = "mer-b-navcam-p0706"


def _navcam(realdata):
    return sorted((realdata / MER).glob("1N*.IMG"))


def _rotation(model):
    return model.to_opencv()[1]


@pytest.fixture(scope="module")
def mer_run(tmp_path_factory):
    from tests.conftest import REALDATA

    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not beside the repository")
    out = tmp_path_factory.mktemp("mer")
    frames = sorted((REALDATA / MER).glob("1N*.IMG"))
    result = stitch(frames, out, render=False)
    return frames, out, result


def test_mer_pan_ties_both_groups(mer_run):
    frames, out, result = mer_run
    sol = json.loads((out / "solution.json").read_text())
    assert [f["id"] for f in sol["frames"]] == sorted(p.stem for p in frames)
    assert all(f["used"] for f in sol["frames"]), [f.get("reason") for f in sol["frames"]]
    ids = [f["id"] for f in sol["frames"]]
    verified = {(p["a"], p["b"]) for p in json.loads((out / "work" / "matches" / "summary.json").read_text())["pairs"]
                if p["inliers"] > 0}
    # 1-2, 3-4 and 4-5 overlap; 2-3 do not (the frame between them is missing from the pan).
    assert verified == {(ids[0], ids[1]), (ids[2], ids[3]), (ids[3], ids[4])}
    assert sol["stats"]["rms_px"] <= 0.5
    for f in sol["frames"]:
        assert f["residual_px"]["rms"] <= 0.5 and f["residual_px"]["n"] >= 10
        assert f["frame"] == "LOCAL_LEVEL" and f["model"]["type"] == "CAHVOR"


def test_mer_groups_keep_their_reported_relative_pointing(mer_run):
    """The two groups share no tie point: each keeps its reported pointing on average, so the
    rotation between the groups' mean pointings is the reported one."""
    frames, out, _ = mer_run
    from calib.labels import read_frame
    from mosaic.evaluate import mean_rotation

    sol = {f["id"]: model_from_dict(f["model"]) for f in json.loads((out / "solution.json").read_text())["frames"]}
    reported = {p.stem: read_frame(p).model_local_level() for p in frames}
    ids = sorted(sol)
    corr = {i: _rotation(sol[i]).T @ _rotation(reported[i]) for i in ids}
    g1 = mean_rotation(np.array([corr[i] for i in ids[:2]]))
    g2 = mean_rotation(np.array([corr[i] for i in ids[2:]]))
    assert np.degrees(np.linalg.norm(matrix_to_rotvec(g1.T @ g2))) < 0.01
    # ...while within each group the data moved frames relative to each other.
    within = np.degrees(np.linalg.norm(matrix_to_rotvec(corr[ids[0]].T @ corr[ids[1]])))
    assert within > 0.01


def test_mer_report_and_resume(mer_run, tmp_path):
    frames, out, result = mer_run
    report = json.loads((out / "report.json").read_text())
    assert list(report["stages"]) == ["ingest", "features", "pairs", "matches", "adjust"]
    for st in report["stages"].values():
        assert st["wall_s"] >= 0 and st["peak_rss_mib"] > 0
    assert report["stages"]["features"]["counts"]["keypoints"] > 1000
    before = (out / "solution.json").read_bytes()
    again = stitch(frames, out, render=False)
    report2 = json.loads((out / "report.json").read_text())
    assert all(st["skipped"] for st in report2["stages"].values())
    assert (out / "solution.json").read_bytes() == before
    assert again["stats"] == result["stats"]


def test_scheduler_cluster_gives_the_same_solution(mer_run, tmp_path):
    """A two-process cluster on loopback writes the same bytes as the embedded default."""
    from distributed import LocalCluster

    frames, out, _ = mer_run
    with LocalCluster(n_workers=2, processes=True, threads_per_worker=1, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        stitch(frames, tmp_path, render=False, scheduler=cluster.scheduler_address)
    assert (tmp_path / "solution.json").read_bytes() == (out / "solution.json").read_bytes()
    assert json.loads((tmp_path / "report.json").read_text())["scheduler"] == cluster.scheduler_address


def test_budapest_without_metadata(peerdata, tmp_path):
    photos = sorted(peerdata.glob("budapest*.jpg"))
    assert len(photos) == 6
    rc = main(["-q", "stitch", *map(str, photos), "-o", str(tmp_path), "--no-render"])
    assert rc == 0
    sol = json.loads((tmp_path / "solution.json").read_text())
    assert [f["used"] for f in sol["frames"]] == [True] * 6, [f.get("reason") for f in sol["frames"]]
    assert sol["stats"]["rms_px"] <= 1.0
    assert sol["stats"]["focal_estimates"] > 0
    hfov = [f["hfov_deg"] for f in sol["frames"]]
    assert max(hfov) - min(hfov) < 1.0


@pytest.mark.slow
def test_boat_without_metadata(peerdata, tmp_path):
    photos = sorted(peerdata.glob("boat*.jpg"))
    result = stitch(photos, tmp_path, render=False)
    sol = json.loads((tmp_path / "solution.json").read_text())
    assert all(f["used"] for f in sol["frames"]), [f.get("reason") for f in sol["frames"]]
    assert result["stats"]["rms_px"] <= 1.0
    # EXIF says a 25 mm lens on a 22.2 mm wide sensor, ~48 degrees; the adjustment refines it.
    assert all(abs(f["hfov_deg"] - 48.0) < 3.0 for f in sol["frames"])


def test_bad_inputs_exit_2(tmp_path, capsys):
    assert main(["stitch", str(tmp_path / "missing.png"), "-o", str(tmp_path / "o")]) == 2
    assert "missing.png" in capsys.readouterr().err
    toml = tmp_path / "c.toml"
    toml.write_text("[stitch]\nratio_typo = 0.7\n")
    assert main(["stitch", str(tmp_path), "-o", str(tmp_path / "o"), "--config", str(toml)]) == 2
    assert "ratio_typo" in capsys.readouterr().err


def test_unsupported_frame_is_kept_with_a_reason(realdata, tmp_path):
    """The Pancam frame of another sol shares no verified tie point with Navcam frames 1-2: it
    stays in solution.json, unused, with its reported model and a reason."""
    navcam = _navcam(realdata)[:2]
    pancam = sorted((realdata / MER).glob("1P*.IMG"))
    result = stitch(navcam + pancam, tmp_path, render=False)
    sol = {f["id"]: f for f in json.loads((tmp_path / "solution.json").read_text())["frames"]}
    p = sol[pancam[0].stem]
    assert p["used"] is False and p["reason"]
    assert p["model"]["type"] == "CAHVOR"
    assert all(sol[n.stem]["used"] for n in navcam)
    assert result["stats"]["frames"] == 3 and result["stats"]["frames_used"] == 2


@pytest.mark.parametrize("feature", ["orb", "akaze"])
def test_other_detectors_tie_a_mer_pair(realdata, tmp_path, feature):
    frames = _navcam(realdata)[2:4]
    result = stitch(frames, tmp_path, render=False, feature=feature)
    assert result["stats"]["frames_used"] == 2
    assert result["stats"]["tie_points"] >= 20
    assert result["stats"]["rms_px"] <= 0.5
