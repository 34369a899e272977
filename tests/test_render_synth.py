"""Rendering the synthetic Jezero scene (sample_tiles/navcam_360, ray-cast terrain, real-format
Navcam CAHVORE models): with the true models, and with the models the stitcher solves."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import rasterio

from mosaic.formats.cog import validate
from mosaic.render import render_panorama

SCENE = Path(__file__).resolve().parents[1] / "sample_tiles" / "navcam_360"
RES = 0.25


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """The checked-in scene, or (when it is absent) the same scene synthesised at 1/16 scale."""
    if (SCENE / "truth" / "solution.json").is_file() and (SCENE / "scene.json").is_file():
        return SCENE
    from mosaic.synth import writer

    out = tmp_path_factory.mktemp("navcam360")
    writer.synthesise(out, "navcam-360", seed=1, scale=16)
    return out


@pytest.fixture(scope="module")
def client():
    from mosaic.runtime.cluster import client as make_client

    with make_client() as c:
        yield c


@pytest.fixture(scope="module")
def truth_render(scene, client, tmp_path_factory):
    return render_panorama(scene / "truth" / "solution.json", tmp_path_factory.mktemp("truth"), resolution=RES,
                           client=client)


def _grey(path):
    with rasterio.open(path) as ds:
        a = ds.read()
    return a[0].astype(np.float32), a[-1] > 0


def test_truth_render_and_exposures(scene, truth_render):
    assert validate(truth_render["panorama"])[0]
    g, alpha = _grey(truth_render["panorama"])
    assert truth_render["bands"] == 2 and truth_render["width"] == 2 * truth_render["height"]
    # Two tiers of Navcam frames (elevation -35 and +5, 45 x 34 degree fields) cover about half the sphere.
    assert 0.3 < alpha.mean() < 0.7
    # The frames are square-root companded (8-bit DN ~ sqrt(exposure x radiance)), so the gain
    # that undoes an exposure e on the stored values is 1 / sqrt(e), up to one common factor.
    params = json.loads((scene / "scene.json").read_text())
    exposure = {f["id"]: f["exposure"] for f in params["frames"]}
    ids = [f["id"] for f in json.loads((scene / "truth" / "solution.json").read_text())["frames"] if f.get("used", True)]
    e = np.array([exposure[i] for i in ids])
    g = np.array([truth_render["gains"][i] for i in ids])
    resid = np.log(g) + 0.5 * np.log(e)
    assert np.std(resid) < 0.015 < 0.5 * np.std(np.log(e)), (g, e)


def _patch_shifts(a, b, mask, n=64):
    win = cv2.createHanningWindow((n, n), cv2.CV_32F)
    out = []
    for y0 in range(0, a.shape[0] - n + 1, n):
        for x0 in range(0, a.shape[1] - n + 1, n):
            if not mask[y0:y0 + n, x0:x0 + n].all():
                continue
            pa, pb = a[y0:y0 + n, x0:x0 + n].copy(), b[y0:y0 + n, x0:x0 + n].copy()
            if pa.std() < 2 or pb.std() < 2:  # featureless sky: no position to measure
                continue
            (dx, dy), _ = cv2.phaseCorrelate(pa, pb, win)
            out.append(np.hypot(dx, dy))
    return np.array(out)


@pytest.mark.slow
def test_solved_models_render_like_the_truth(scene, client, truth_render, tmp_path):
    from mosaic.stitch import stitch

    res = stitch([str(scene)], tmp_path / "stitch", render=False)
    solved = render_panorama(res["solution"], tmp_path / "solved", resolution=RES, client=client)
    assert (solved["width"], solved["height"]) == (truth_render["width"], truth_render["height"])
    ga, ma = _grey(truth_render["panorama"])
    gb, mb = _grey(solved["panorama"])
    shifts = _patch_shifts(ga, gb, ma & mb)
    assert len(shifts) > 20
    # Measured: median 0.54, 90th percentile 0.73, max 0.95 px (0.25 deg pixels); the common part
    # is the solution's absolute pointing, which only the rover's reported attitude ties down.
    assert np.median(shifts) < 0.75, np.percentile(shifts, [50, 90, 100])
    assert np.percentile(shifts, 90) < 1.0, np.percentile(shifts, [50, 90, 100])
