"""What `mosaic stitch` writes beside the panorama: index.html, quality.png, panorama.pto.

One stitch of a tiny synthetic pan (4 Navcam frames at 1/16 scale, tests/synth_cache.py) feeds
every test; Hugin's ``nona`` must re-render the project where our panorama has each frame.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest
from PIL import Image
from synth_cache import QUICK_360, scene

import mosaic
from mosaic.products import control_points, write_products
from mosaic.products.quality import HEADER_HEIGHT, ownership, palette


@pytest.fixture(scope="module")
def stitched(tmp_path_factory):
    out = tmp_path_factory.mktemp("products") / "pan"
    result = mosaic.stitch(scene("navcam-360", keep=QUICK_360), out, workers=1)
    return out, result


def test_products_beside_the_panorama(stitched):
    out, result = stitched
    assert set(result["products"]) == {"viewer", "quality", "pto"}
    for name in ("panorama.tif", "preview.jpg", "index.html", "quality.png", "panorama.pto", "solution.json"):
        assert (out / name).is_file(), name
    page = (out / "index.html").read_text()
    assert "data:image/jpeg;base64," in page and "RMS" in page


def test_quality_one_colour_per_used_frame(stitched):
    out, _ = stitched
    sol = json.loads((out / "solution.json").read_text())
    used = [f for f in sol["frames"] if f["used"]]
    pic = np.asarray(Image.open(out / "quality.png").convert("RGB"))
    label, frames = ownership(out / "solution.json", 1024)
    assert [f.id for f in frames] == [f["id"] for f in used]
    top = pic[HEADER_HEIGHT:HEADER_HEIGHT + label.shape[0]]
    colours = palette(len(frames))
    assert len({tuple(c) for c in colours.tolist()}) == len(frames)
    for k in range(len(frames)):
        painted = np.all(top == colours[k], axis=2)
        owned = label == k
        assert owned.sum() > 0.01 * label.size
        # The frame's colour is painted on its area (less seams and text) and nowhere else.
        assert painted[owned].mean() > 0.9
        assert not painted[~owned].any()


def test_pto_has_frames_lenses_and_verified_control_points(stitched):
    out, result = stitched
    text = (out / "panorama.pto").read_text()
    sol = json.loads((out / "solution.json").read_text())
    n_used = sum(f["used"] for f in sol["frames"])
    assert len(re.findall(r"^i ", text, re.M)) == n_used
    import rasterio

    with rasterio.open(out / "panorama.tif") as ds:
        assert f"p f2 w{ds.width} h{ds.height} v360" in text
    cps = re.findall(r"^c n(\d+) N(\d+) x([\d.]+) y([\d.]+) X([\d.]+) Y([\d.]+)", text, re.M)
    assert len(cps) >= 3 * 12
    # Each control point is one scene point seen by two frames: under the adjusted models the two
    # rays (from cameras ~0.3 m apart on the mast) pass within a centimetre or so of each other;
    # the same points paired at random miss by decimetres.
    from mosaic.render.panorama import frames_of

    fr = frames_of(out / "solution.json")

    def gap(i, j, p, q):
        (oa,), (da,) = fr[i].model.backproject([p])
        (ob,), (db,) = fr[j].model.backproject([q])
        n = np.cross(da, db)
        return abs((ob - oa) @ n) / np.linalg.norm(n)

    pts = [(int(i), int(j), (float(x), float(y)), (float(xx), float(yy))) for i, j, x, y, xx, yy in cps]
    matched = np.median([gap(i, j, p, q) for i, j, p, q in pts])
    shuffled = np.median([gap(i, j, p, pts[(k + 7) % len(pts)][3]) for k, (i, j, p, q) in enumerate(pts)
                          if pts[(k + 7) % len(pts)][:2] == (i, j)])
    assert matched < 0.02 and matched < shuffled / 5, (matched, shuffled)


@pytest.mark.skipif(shutil.which("nona") is None, reason="hugin-tools (nona) not installed")
def test_nona_renders_the_pto_on_our_panorama_geometry(stitched, tmp_path):
    """Each frame's layer from nona lines up with our panorama (within 2 px) on that frame's area."""
    out, _ = stitched
    subprocess.run(["nona", "-m", "TIFF_m", "-o", str(tmp_path / "layer"), str(out / "panorama.pto")],
                   check=True, capture_output=True, timeout=120)
    import rasterio

    with rasterio.open(out / "panorama.tif") as ds:
        ours = ds.read(1).astype(np.float32)
    label, frames = ownership(out / "solution.json", ours.shape[1])
    assert label.shape == ours.shape
    shifts = []
    for k in range(len(frames)):
        layer = np.asarray(Image.open(tmp_path / f"layer{k:04d}.tif"))
        assert layer.shape[:2] == ours.shape
        grey, alpha = layer[..., 0].astype(np.float32), layer[..., -1] > 0
        mask = cv2.erode(((label == k) & alpha).astype(np.uint8), np.ones((7, 7), np.uint8))
        assert mask.sum() > 1000
        warp = np.eye(2, 3, dtype=np.float32)
        # ECC is insensitive to the gain our renderer applies; only the masked pixels count.
        _, warp = cv2.findTransformECC(cv2.GaussianBlur(ours, (0, 0), 1.0), cv2.GaussianBlur(grey, (0, 0), 1.0),
                                       warp, cv2.MOTION_TRANSLATION,
                                       (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 100, 1e-4), mask, 1)
        shifts.append(float(np.hypot(*warp[:, 2])))
    assert max(shifts) < 2.0, shifts


def test_control_points_subsampled_per_pair(stitched):
    out, _ = stitched
    sol = json.loads((out / "solution.json").read_text())
    ids = [f["id"] for f in sol["frames"] if f["used"]]
    few = control_points(out / "work", ids, per_pair=5)
    pairs = {(c[0], c[1]) for c in few}
    assert pairs and all(sum(1 for c in few if (c[0], c[1]) == p) <= 5 for p in pairs)
    assert all(0 <= c[0] < len(ids) and 0 <= c[1] < len(ids) for c in few)


def test_a_failing_product_does_not_stop_the_others(stitched, tmp_path):
    out, _ = stitched
    copy = tmp_path / "pan"
    shutil.copytree(out, copy, ignore=shutil.ignore_patterns("index.html", "quality.png", "panorama.pto"))
    (copy / "preview.jpg").write_bytes(b"not a jpeg")
    done = write_products(copy)
    assert "viewer" in done["failed"] and not (copy / "index.html").exists()
    assert (copy / "quality.png").is_file() and (copy / "panorama.pto").is_file()


def test_quality_and_eval_report_seamlessness(stitched, capsys):
    """quality.png's strip and ``mosaic eval OUT`` (no truth needed) state the edge visibility
    ratio and the overlap agreement on the tie points the photometric fit held out."""
    from mosaic.cli import main
    from mosaic.products.quality import render_quality

    out, _ = stitched
    record = json.loads((out / "render.json").read_text())
    assert record["photometry"]["tie_points"] > 0 and record["photometry"]["tie_points_held_out"] > 0
    _, facts = render_quality(out / "solution.json")
    assert 0.3 < facts["edge_visibility"]["ratio"] < 3  # a 1/16-scale pan: the horizon runs along edges
    agree = facts["overlap_agreement"]
    assert agree["pairs"] >= 3 and 0 <= agree["median"] <= agree["p90"] <= agree["worst"] < 0.05
    strip = np.asarray(Image.open(out / "quality.png").convert("L"))[:HEADER_HEIGHT]
    assert (strip < 128).mean() > 0.01  # text on it
    assert main(["eval", str(out)]) == 0
    text = capsys.readouterr().out
    assert "edge visibility ratio" in text and "overlap agreement" in text
    result = json.loads((out / "eval.json").read_text())
    assert result["panorama"]["frames"]["visible"] == result["panorama"]["frames"]["used"]


def test_the_hugin_project_takes_the_renders_size(stitched, tmp_path):
    """The render hands its size (and window) down: the project is the one read back from
    panorama.tif, for the full sphere and for a cropped window of it."""
    from mosaic.products import write_pto

    out, _ = stitched
    render = json.loads((out / "report.json").read_text())["stages"]["render"]["counts"]
    assert render["projection"] == "equirect"
    copy = tmp_path / "pan"
    shutil.copytree(out, copy)
    read_back = write_pto(copy, out / "work").read_text()
    assert write_pto(copy, out / "work", render=render).read_text() == read_back
    (copy / "panorama.tif").unlink()  # nothing to read back: the size comes from the render alone
    w, h = render["width"], render["height"]
    cropped = {**render, "width": w // 4, "height": h // 4, "window": [w // 8, h // 8, w, h]}
    text = write_pto(copy, out / "work", render=cropped).read_text()
    c0 = round(w / 2 - (w // 4) / 2)
    assert f"p f2 w{w} h{h} v360" in text and f" S{c0},{c0 + w // 4},{h // 8},{h // 8 + h // 4} " in text


def test_stitch_preloads_the_renders_imports_after_features_and_joins_before_rendering(tmp_path, monkeypatch):
    """The render's first imports (scipy's sparse modules) start in the background once the
    features stage is done (not during it: its peak), and the thread is finished before the
    render's tasks run (they would import the same modules); an unchanged rerun, whose features
    and render are skipped, starts none."""
    import sys

    import mosaic.stitch as stitch_module
    from mosaic.formats.workspace import Workspace
    from mosaic.pipeline.stages import ORDER
    from mosaic.render import panorama

    out, seen = tmp_path / "pan", {}
    real_preload, real_render = panorama.preload, stitch_module.render_panorama

    def preload():
        ws = Workspace(out / "work")
        seen["stages_done"] = [s for s in ORDER if ws.exists("stages", f"{s}.json")]
        seen["thread"] = real_preload()
        return seen["thread"]

    def render(*args, **kwargs):
        seen["preloading_at_render"] = seen["thread"].is_alive()
        return real_render(*args, **kwargs)

    monkeypatch.setattr(stitch_module, "preload", preload)
    monkeypatch.setattr(stitch_module, "render_panorama", render)
    mosaic.stitch(scene("navcam-360", keep=QUICK_360), out, workers=1)
    assert seen["stages_done"] == ["ingest", "features"]
    assert seen["preloading_at_render"] is False
    assert all(name in sys.modules for name in panorama.FIRST_USE_IMPORTS)
    seen.clear()  # an unchanged rerun skips features and the render: nothing to import for
    mosaic.stitch(scene("navcam-360", keep=QUICK_360), out, workers=1)
    assert seen == {}
