"""`mosaic terrain --register`: the frames' pointing is adjusted by the stitcher's registration
before mapping, which removes most of the labels' pointing error and the DEM tilt it causes."""

from __future__ import annotations

import pytest

from mosaic.evaluate import evaluate
from mosaic.terrain.pipeline import terrain
from synth_cache import scene


@pytest.mark.slow
def test_register_improves_pointing_and_dem(tmp_path):
    src = scene("navcam-stereo", scale=16)
    plain = terrain([src], tmp_path / "plain", gsd=0.05, radius=8.0, web=False, register=False)
    reg = terrain([src], tmp_path / "reg", gsd=0.05, radius=8.0, web=False)  # registration is the default
    assert "solution" not in plain and reg["solution"]["frames"] == 10
    before = evaluate(tmp_path / "plain", src / "truth", dem=tmp_path / "plain" / "dem.tif")
    after = evaluate(tmp_path / "reg", src / "truth", dem=tmp_path / "reg" / "dem.tif")
    # Pointing: what the DEM was made with, against the truth (degrees, RMS over frames).
    assert after["pointing"]["summary"]["error_deg_rms"] < 0.6 * before["pointing"]["summary"]["error_deg_rms"]

    def near(ev):  # median |dz| of the bins within 5 m of the rover
        return max(b["median_abs_m"] for b in ev["dem"]["bins"] if b["to_m"] is not None and b["to_m"] <= 5)

    assert near(after) <= near(before)
