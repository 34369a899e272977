"""Terrain on mosaic synth's ``navcam-stereo`` scene, scored by ``mosaic eval`` (slow: ~2 min).

The scene's reported pointing is 0.5-1 degree off the truth, independently for each eye (see
docs/terrain.md); stereo needs the pair's true relative geometry, so the pipeline is run with the
truth models (``--solution truth/solution.json``), i.e. the accuracy of rectification, matching,
triangulation and gridding given a correct pointing, as ``mosaic stitch``'s adjustment provides.
"""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import rasterio
from rasterio.warp import Resampling, reproject

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def synth_run(tmp_path_factory):
    from mosaic.cli import main

    root = tmp_path_factory.mktemp("synth_terrain")
    scene, out = root / "scene", root / "out"
    assert main(["-q", "synth", str(scene), "--scene", "navcam-stereo", "--scale", "8"]) == 0
    assert main(["-q", "terrain", str(scene), "-o", str(out), "--gsd", "0.04", "--radius", "15",
                 "--solution", str(scene / "truth" / "solution.json")]) == 0
    return scene, out


def test_dem_error_by_distance(synth_run):
    from mosaic.evaluate import evaluate

    scene, out = synth_run
    result = evaluate(out, scene)
    bins = {(b["from_m"], b["to_m"]): b for b in result["dem"]["bins"]}
    assert bins[(0.0, 5.0)]["median_abs_m"] <= 0.02, bins[(0.0, 5.0)]
    assert bins[(0.0, 5.0)]["coverage"] > 0.8
    for far in ((5.0, 10.0), (10.0, 20.0)):
        assert bins[far]["median_abs_m"] <= 0.10, bins[far]
    assert abs(result["dem"]["vertical_bias_m"]) < 0.01
    assert result["dem"]["blunders"]["fraction"] <= 1e-4


def test_ortho_lands_on_truth_albedo(synth_run):
    """Phase correlation of the ortho against truth/albedo.tif on the truth's grid: < 2 ortho px."""
    scene, out = synth_run
    with rasterio.open(scene / "truth" / "albedo.tif") as a:
        albedo = a.read(1).astype(np.float32)
        t, crs = a.transform, a.crs
    gray = np.full(albedo.shape, np.nan, np.float32)
    cover = np.zeros(albedo.shape, np.float32)
    with rasterio.open(out / "ortho.tif") as o:
        ortho_gsd = o.transform.a
        reproject(rasterio.band(o, 1), gray, dst_transform=t, dst_crs=crs, dst_nodata=np.nan,
                  resampling=Resampling.average)
        reproject(rasterio.band(o, 2), cover, dst_transform=t, dst_crs=crs, resampling=Resampling.min)
    ok = (cover >= 255) & np.isfinite(albedo) & np.isfinite(gray)
    ys, xs = np.nonzero(ok)
    cy, cx = int(np.median(ys)), int(np.median(xs))
    win = (slice(cy - 64, cy + 64), slice(cx - 64, cx + 64))
    m = ok[win]
    assert m.mean() > 0.9
    a = np.where(m, gray[win] - gray[win][m].mean(), 0).astype(np.float32)
    b = np.where(m, albedo[win] - albedo[win][m].mean(), 0).astype(np.float32)
    (dx, dy), response = cv2.phaseCorrelate(b, a, cv2.createHanningWindow((128, 128), cv2.CV_32F))
    assert response > 0.2
    assert np.hypot(dx, dy) * t.a / ortho_gsd < 2.0


def test_products_are_valid(synth_run):
    from mosaic.formats.cog import validate

    _, out = synth_run
    for name in ("dem.tif", "dem_sigma.tif", "ortho.tif"):
        ok, errors, _ = validate(out / name)
        assert ok, errors
    report = json.loads((out / "report.json").read_text())
    assert report["stages"]["pairs"]["pairs"] == 5
    assert all(p["match_fraction"] > 0.5 for p in report["pairs"])
