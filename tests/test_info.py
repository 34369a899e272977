"""``mosaic info``: the frame listing, its JSON contract, predicted overlaps and bad input."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from calib.labels import discover
from calib.models import model_from_dict
from calib.overlap import footprints, overlap_matrix, overlapping_pairs
from mosaic.cli import main

from conftest import REPO

MER = "mer-b-navcam-p0706"
NAV = ["1N491020376ILFCNY9P0706L0M1", "1N491020519ILFCNY9P0706L0M1", "1N491020834ILFCNY9P0706L0M1",
       "1N491020993ILFCNY9P0706L0M1", "1N491021154ILFCNY9P0706L0M1"]
FRAME_KEYS = {"id", "path", "instrument", "width", "height", "model", "model_frame", "fov_deg", "boresight_deg"}


def _info_json(capsys, *args):
    assert main(["info", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_mer_pan_overlaps(realdata, capsys):
    doc = _info_json(capsys, realdata / MER)
    assert set(doc) == {"frames", "overlaps"}
    ids = [f["id"] for f in doc["frames"]]
    assert ids[:5] == NAV and len(ids) == 6
    pairs = {(o["a"], o["b"]): o["fraction"] for o in doc["overlaps"]}
    for a, b in [(0, 1), (2, 3), (3, 4)]:
        assert 0.22 <= pairs[(NAV[a], NAV[b])] <= 0.24, pairs
    # Frames 2 and 3 leave a gap (the frame between them is missing); 1 and 5 face away.
    assert (NAV[1], NAV[2]) not in pairs and (NAV[0], NAV[4]) not in pairs
    assert all(0 < o["fraction"] <= 1 for o in doc["overlaps"])


def test_json_contract(realdata, capsys):
    doc = _info_json(capsys, realdata)
    assert len(doc["frames"]) == 10
    for f in doc["frames"]:
        assert set(f) == FRAME_KEYS
        assert isinstance(f["width"], int) and isinstance(f["height"], int)
        assert f["model_frame"] == "ROVER_NAV_FRAME"
        model = model_from_dict(f["model"])  # the solution.json model object
        assert model.type == f["model"]["type"]
        assert len(f["fov_deg"]) == 2 and all(0 < v < 180 for v in f["fov_deg"])
        assert set(f["boresight_deg"]) == {"azimuth", "elevation"}
        assert 0 <= f["boresight_deg"]["azimuth"] < 360 and -90 <= f["boresight_deg"]["elevation"] <= 90
    for o in doc["overlaps"]:
        assert set(o) == {"a", "b", "fraction"}
    by_id = {f["id"]: f for f in doc["frames"]}
    # LOCAL_LEVEL boresights (contract): the MSL label's SITE azimuth/elevation of its camera.
    msl = by_id["NRB_701383954RAS_F0933408NCAM00200M1"]["boresight_deg"]
    assert abs(msl["azimuth"] - 141.721) < 0.1 and abs(msl["elevation"] + 39.482) < 0.1
    assert by_id[NAV[0]]["path"].endswith(f"{NAV[0]}.IMG")
    # The PDS4 label has no pixel file beside it: the frame's path is the label.
    pds4 = [f for f in doc["frames"] if f["path"].endswith(".xml")]
    assert len(pds4) == 1 and (pds4[0]["width"], pds4[0]["height"]) == (1296, 976)
    # Frames from different sites/drives never overlap, whatever their directions.
    assert {o["a"][:2] for o in doc["overlaps"]} <= {"1N", "1P"}


def test_human_table(realdata, capsys):
    assert main(["info", str(realdata / MER)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert lines[0].split() == ["id", "instrument", "size", "model", "fov", "h", "x", "v", "az", "el"]
    assert set(lines[1]) <= {"-", " "}
    row = next(line for line in lines if line.startswith(NAV[0]))
    assert "NAVCAM_LEFT" in row and "1024x1024" in row and "CAHVOR" in row and "45.4 x 45.4" in row
    assert "6 frame(s)" in out
    assert f"{NAV[0]}  {NAV[1]}  23.1%" in out


def test_tiles_without_attitude_are_marked(realdata, capsys):
    assert main(["info", str(realdata / "m20-navcam-mru-tiles")]) == 0
    out = capsys.readouterr().out
    assert "*" in out and "relative to the rover's heading" in out and "no predicted overlaps" in out


def test_bad_label_exits_2_with_one_line(realdata, tmp_path, capsys):
    d = json.loads((realdata / "m20-navcam-mru-tiles" /
                    "NLF_0670_0726421423_362ECM_N0320604NCAM08111_01_095J01-metadata.json").read_text())
    d["camera_model_component_list"] = d["camera_model_component_list"].replace("(0.824195,0.0290508,0.565575)", "(NaN,0,1)")
    bad = tmp_path / "bad-metadata.json"
    bad.write_text(json.dumps(d))
    assert main(["info", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert str(bad) in err[0] and "camera_model_component_list[1]" in err[0] and "not finite" in err[0]


@pytest.mark.parametrize("content", [b"", b"PDS_VERSION_ID = PDS3\r\nRECORD_BYTES = 2048\r\nLABEL_RECORDS = 13\r\n"])
def test_broken_img_exits_2(tmp_path, capsys, content):
    (tmp_path / "x.IMG").write_bytes(content)
    assert main(["info", str(tmp_path / "x.IMG")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "x.IMG" in err[0]


def test_missing_and_empty_paths_exit_2(tmp_path, capsys):
    assert main(["info", str(tmp_path / "nope")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["info", str(tmp_path)]) == 2
    assert "no frames found" in capsys.readouterr().err


def test_cli_subprocess(realdata, tmp_path):
    bad = tmp_path / "t.xml"
    bad.write_text((realdata / "m20-pds4-label" / "nlf_0629_0722782785_631ecm_n0301344ncam00427_06_095j.xml")
                   .read_text().replace("<geom:model_type>CAHVORE</geom:model_type>", "<geom:model_type>CAHVX</geom:model_type>"))
    r = subprocess.run([sys.executable, "-m", "mosaic", "info", str(bad)], cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == f"mosaic info: error: {bad}: Camera_Model_Parameters.model_type: unknown camera model type 'CAHVX'"


# -- calib.overlap directly --------------------------------------------------------------------


def test_overlap_matrix_properties(realdata):
    metas = discover([realdata / MER])
    m = overlap_matrix(metas)
    assert np.allclose(np.diag(m), 1) and m.shape == (6, 6)
    assert abs(m[0, 1] - m[1, 0]) < 0.01  # same camera: (nearly) symmetric
    wide = overlap_matrix(metas, margin_deg=2.0)
    assert np.all(wide >= m - 1e-12) and wide[0, 1] > m[0, 1] + 0.02
    # Frames 2 and 3 are 72 deg apart with 45 deg FOVs: a 27 deg gap, closed only by a margin
    # wider than that (it widens frame b alone).
    assert overlap_matrix(metas, margin_deg=20.0)[1, 2] == 0 and overlap_matrix(metas, margin_deg=30.0)[1, 2] > 0
    # Rays to the far field change the fraction by less than a grid cell's share here.
    far = overlap_matrix(metas, radius=None)
    assert np.all(np.abs(far - m) < 0.02)
    assert [(a, b) for a, b, _ in overlapping_pairs(metas, min_fraction=0.05)] == [(0, 1), (2, 3), (3, 4)]


def test_overlap_of_a_frame_with_itself_shifted(realdata):
    from calib.meta import LOCAL_LEVEL

    m = discover([realdata / MER])[0]
    ll = m.with_(model=m.model_local_level(), model_frame=LOCAL_LEVEL, attitude=None)
    # The same camera looking at the right half of its own image (shifted by half a width):
    # its image sees exactly the right half of the original's grid, at the far field.
    half = ll.with_(id="half", model=ll.model.shift(512, 0))
    f = overlap_matrix([ll, half], radius=None)
    assert abs(f[0, 1] - 0.5) < 1e-9 and abs(f[1, 0] - 0.5) < 1e-9


def test_footprints_in_azel(realdata):
    metas = discover([realdata / MER])
    fps = footprints(metas, n=8)
    assert len(fps) == 6 and all(fp.shape == (32, 2) for fp in fps)
    az, el = fps[0][:, 0], fps[0][:, 1]
    # Frame 1 is centred at azimuth 90 deg, elevation -17.4 deg, 45 deg wide.
    assert 60 < az.min() < az.max() < 120 and -42 < el.min() < el.max() < 7


def test_frames_back_to_back_never_overlap(realdata):
    from calib.meta import LOCAL_LEVEL
    from calib.rotation import axis_angle

    m = discover([realdata / MER])[0]
    ll = m.with_(model=m.model_local_level(), model_frame=LOCAL_LEVEL, attitude=None)
    back = ll.with_(id="back", model=ll.model.moved(axis_angle([0, 0, 1], np.pi), np.zeros(3)))
    # A margin this wide lets the pair past the cheap bound: the projection itself must say no.
    f = overlap_matrix([ll, back], margin_deg=70.0)
    assert f[0, 1] == 0 and f[1, 0] == 0


def test_plain_photos_have_null_geometry(tmp_path, capsys):
    import cv2

    for name in ("b", "a"):
        cv2.imwrite(str(tmp_path / f"{name}.jpg"), np.full((30, 40, 3), 100, np.uint8))
    doc = _info_json(capsys, tmp_path)
    assert [f["id"] for f in doc["frames"]] == ["a", "b"] and doc["overlaps"] == []
    for f in doc["frames"]:
        assert set(f) == FRAME_KEYS and f["instrument"] == "PHOTO" and (f["width"], f["height"]) == (40, 30)
        assert f["model"] is None and f["model_frame"] is None and f["fov_deg"] is None and f["boresight_deg"] is None
    assert main(["info", str(tmp_path / "a.jpg")]) == 0
    row = capsys.readouterr().out.splitlines()[2].split()
    assert row == ["a", "PHOTO", "40x30", "-", "-", "-", "-"]
