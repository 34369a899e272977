"""Terrain pipeline on a small synthetic stereo scene we render here, independent of mosaic.synth.

The scene: a tilted plane with three Gaussian bumps, textured with band-limited noise, in the SITE
frame; the rover sits away from the site origin, turned by a yaw, so the LOCAL_LEVEL -> SITE ->
map chain is exercised. Frames are rendered by ray casting through the nominal Navcam pair
(``calib.instruments``) and written as PNG + raw-image JSON records, as real frames come.
"""

from __future__ import annotations

import json
import math
import subprocess

import cv2
import numpy as np
import pytest
import rasterio
from scipy.ndimage import gaussian_filter, map_coordinates

from calib.instruments import instrument
from calib.rotation import axis_angle, matrix_to_quat
from mosaic.formats.geo import DEFAULT_SITE_ORIGIN, map_to_local_level

ROVER_XYZ = np.array([3.0, -2.0, 0.1])  # SITE metres (north, east, down)
ROVER_YAW_DEG = 25.0


class Scene:
    """Height z_down(x north, y east) in SITE, and albedo, both analytic or cheap to sample."""

    slope = (0.03, -0.02)
    bumps = ((4.0, 1.0, 0.20, 0.5), (6.5, -1.5, -0.25, 0.7), (3.0, -0.8, 0.12, 0.3))

    def __init__(self, seed=0, cell=0.01):
        rng = np.random.default_rng(seed)
        self.cell, self.x0, n = cell, -25.0, int(50 / cell)
        tex = gaussian_filter(rng.standard_normal((n, n)).astype(np.float32), 1.5, mode="wrap")
        self.tex = (0.45 + 0.15 * tex / tex.std()).astype(np.float32)

    def z(self, x, y):
        x = x - ROVER_XYZ[0]
        y = y - ROVER_XYZ[1]
        z = ROVER_XYZ[2] - (self.slope[0] * x + self.slope[1] * y)
        for bx, by, h, s in self.bumps:
            z = z - h * np.exp(-((x - bx) ** 2 + (y - by) ** 2) / (2 * s * s))
        return z

    def albedo(self, x, y):
        c = np.stack([(x - self.x0) / self.cell, (y - self.x0) / self.cell])
        return map_coordinates(self.tex, c, order=1, mode="grid-wrap")

    def cast(self, o, d):
        """Ray/height-field intersection: plane guess, then secant steps on g(t) = z_ray - z_ground."""
        with np.errstate(divide="ignore", invalid="ignore"):
            t = np.where(d[:, 2] > 0.02, (ROVER_XYZ[2] - o[:, 2]) / d[:, 2], np.nan)
        t = np.where(t > 80, np.nan, t)
        for _ in range(12):
            p = o + t[:, None] * d
            g = p[:, 2] - self.z(p[:, 0], p[:, 1])
            p2 = o + (t + 1e-3)[:, None] * d
            g2 = p2[:, 2] - self.z(p2[:, 0], p2[:, 1])
            with np.errstate(divide="ignore", invalid="ignore"):
                t = t - g * 1e-3 / (g2 - g)
        return o + t[:, None] * d

    def render(self, model, w, h):
        ys, xs = np.mgrid[0:h, 0:w]
        o, d = model.backproject(np.stack([xs.ravel(), ys.ravel()], 1).astype(float))
        p = self.cast(o, d)
        a = self.albedo(p[:, 0], p[:, 1])
        return np.where(np.isfinite(a), a, 0.0).reshape(h, w)


def rover_rotation():
    return axis_angle([0.0, 0.0, 1.0], math.radians(ROVER_YAW_DEG))


def write_pair(folder, scene, az, el, downsample=16, sclk=700000000.0, index=0):
    """Render and write one Navcam stereo pair as PNG + JSON records; returns the left model (SITE)."""
    rot = rover_rotation()
    quat = matrix_to_quat(rot)
    models = {}
    for eye in ("LEFT", "RIGHT"):
        inst = instrument(f"NAVCAM_{eye}")
        m = inst.model(az, el, downsample=downsample)
        w, h = inst.product_size(downsample=downsample)
        site_model = m.transformed(rot, ROVER_XYZ)
        img = scene.render(site_model, w, h)
        name = f"N{eye[0]}F_0100_{int(sclk + index * 60):010d}_000ECM_N0010000NCAM0000{index}_01_095J01"
        cv2.imwrite(str(folder / f"{name}.png"), np.clip(img * 255 + 0.5, 0, 255).astype(np.uint8))
        comps = ";".join(
            [f"({','.join(repr(float(v)) for v in getattr(m, k))})" for k in "CAHVORE"] + [str(m.T), str(m.P)]
        )
        rec = {
            "imageid": name, "instrument": f"NAVCAM_{eye}", "camera_model_type": "CAHVORE",
            "camera_model_component_list": comps, "sclk": sclk + index * 60 + (0.01 if eye == "RIGHT" else 0),
            "site": 1, "drive": 0, "scale_factor": downsample, "subframe_rect": [1, 1, 5120, 3840],
            "dimension": f"({w},{h})", "mast_az": az, "mast_el": el,
            "xyz": f"({ROVER_XYZ[0]},{ROVER_XYZ[1]},{ROVER_XYZ[2]})",
            "attitude": f"({quat[0]},{quat[1]},{quat[2]},{quat[3]})",
        }
        (folder / f"{name}-metadata.json").write_text(json.dumps(rec))
        models[eye] = site_model
    return models


@pytest.fixture(scope="module")
def scene():
    return Scene()


@pytest.fixture(scope="module")
def stereo_run(tmp_path_factory, scene):
    """Two pairs (ahead and to the right), gridded at 4 cm over 8 m around the rover."""
    from mosaic.terrain.pipeline import terrain

    root = tmp_path_factory.mktemp("terrain")
    frames = root / "frames"
    frames.mkdir()
    write_pair(frames, scene, 0.0, -30.0, index=0)
    write_pair(frames, scene, 60.0, -30.0, index=1)
    out = root / "out"
    report = terrain([frames], out, gsd=0.04, radius=8.0, keep_points=False)
    return out, report


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds.transform, ds.nodata, ds.crs


def test_pairs_found_and_points_triangulated(stereo_run):
    _, report = stereo_run
    assert report["stages"]["pairs"]["pairs"] == 2
    for p in report["pairs"]:
        assert p["points"] > 10000
        assert p["remap_error_px"] < 0.01
        assert p["left"].startswith("NLF") and p["right"].startswith("NRF")


def test_dem_matches_scene_height(stereo_run, scene):
    out, report = stereo_run
    (dem,), t, nodata, _ = _read(out / "dem.tif")
    rows, cols = np.nonzero(dem != nodata)
    assert len(rows) > 0.2 * dem.size
    e, n = t @ (cols + 0.5, rows + 0.5)
    x, y = map_to_local_level(e, n, DEFAULT_SITE_ORIGIN)
    truth = DEFAULT_SITE_ORIGIN.elev - scene.z(x, y)
    err = dem[rows, cols] - truth
    dist = np.hypot(x - ROVER_XYZ[0], y - ROVER_XYZ[1])
    near = dist < 5.0
    assert near.sum() > 1000
    assert np.median(np.abs(err[near])) < 0.03
    assert np.median(np.abs(err[(dist >= 5) & (dist < 8)])) < 0.10


def test_ortho_registers_with_albedo(stereo_run, scene):
    """The ortho's texture lines up with the scene albedo sampled on the same grid (< 1 cell)."""
    out, _ = stereo_run
    (gray, alpha), t, _, _ = _read(out / "ortho.tif")
    rows, cols = np.mgrid[0:gray.shape[0], 0:gray.shape[1]]
    e, n = t @ (cols + 0.5, rows + 0.5)
    x, y = map_to_local_level(e, n, DEFAULT_SITE_ORIGIN)
    truth = scene.albedo(x.ravel(), y.ravel()).reshape(gray.shape).astype(np.float32)
    have = alpha > 0
    # Compare over the best-covered window near the rover.
    r0, c0 = (np.array(gray.shape) // 2 - 64)
    win = (slice(r0, r0 + 128), slice(c0, c0 + 128))
    a = np.where(have[win], gray[win].astype(np.float32), np.nan)
    b = truth[win]
    a = np.where(np.isfinite(a), a - np.nanmean(a), 0).astype(np.float32)
    b = (b - b.mean()).astype(np.float32)
    (dx, dy), response = cv2.phaseCorrelate(b, a)
    assert response > 0.05
    assert math.hypot(dx, dy) < 1.0


def test_georeferencing(stereo_run):
    """What GIS tools see, through GDAL's own reading of the file (rasterio: no gdal-bin needed)."""
    from pyproj import CRS

    from mosaic.formats.geo import local_level_to_map

    out, report = stereo_run
    with rasterio.open(out / "dem.tif") as ds:
        wkt = CRS.from_wkt(ds.crs.to_wkt()).to_wkt()  # WKT2, as gdalinfo prints it
        dtype, nodata, units, transform, (w, h) = ds.dtypes[0], ds.nodata, ds.tags().get("UNITS"), ds.transform, \
            (ds.width, ds.height)
    assert "Mars (2015) - Sphere" in wkt and "Equidistant Cylindrical" in wkt and "3396190" in wkt
    assert "18.4663" in wkt
    assert dtype == "float32" and nodata == -32768.0
    assert units == "metre"
    # Corners: the square of radius 8 m around the rover, relative to the site origin, to a cell.
    gsd = transform.a
    ul_e, ul_n = local_level_to_map(ROVER_XYZ[0] + 8.0, ROVER_XYZ[1] - 8.0, DEFAULT_SITE_ORIGIN)
    lr_e, lr_n = local_level_to_map(ROVER_XYZ[0] - 8.0, ROVER_XYZ[1] + 8.0, DEFAULT_SITE_ORIGIN)
    (x0, y0), (x1, y1) = transform @ (0, 0), transform @ (w, h)
    assert abs(x0 - ul_e) <= gsd and abs(y0 - ul_n) <= gsd
    assert abs(x1 - lr_e) <= 2 * gsd and abs(y1 - lr_n) <= 2 * gsd
    # Heights are above the Mars sphere: the site origin's elevation plus the terrain's.
    (dem,), _, nodata, _ = _read(out / "dem.tif")
    assert np.median(dem[dem != nodata]) == pytest.approx(DEFAULT_SITE_ORIGIN.elev - ROVER_XYZ[2], abs=0.5)


def test_site_origin_option_moves_the_map(stereo_run, tmp_path):
    """--site-origin moves the grid to the new origin's map position and lifts the heights."""
    from mosaic.cli import main
    from mosaic.formats.geo import SiteOrigin, origin_map

    out, _ = stereo_run
    frames = out.parent / "frames"
    other = SiteOrigin(18.4, 77.4, -2500.0)
    rc = main(["-q", "terrain", str(frames), "-o", str(tmp_path), "--gsd", "0.08", "--radius", "4",
               "--no-web", "--site-origin", f"{other.lat},{other.lon},{other.elev}"])
    assert rc == 0
    (dem,), t, nodata, _ = _read(tmp_path / "dem.tif")
    e0, n0 = origin_map(other)
    cx, cy = t @ (dem.shape[1] / 2, dem.shape[0] / 2)
    assert abs(cx - e0 - ROVER_XYZ[1] * 0.99987) < 0.1 and abs(cy - n0 - ROVER_XYZ[0]) < 0.1
    assert np.median(dem[dem != nodata]) == pytest.approx(other.elev - ROVER_XYZ[2], abs=0.5)


def test_web_outputs(stereo_run):
    out, report = stereo_run
    zooms = report["web"]["zooms"]
    assert zooms and (out / "tiles" / str(zooms[-1])).is_dir()
    assert list((out / "tiles").glob("*/*/*.png")) and list((out / "hillshade").glob("*/*/*.png"))
    item = json.loads((out / "item.json").read_text())
    assert item["properties"]["ssys:targets"] == ["Mars"]
    assert "Mars" in item["properties"]["proj:wkt2"]
    assert item["properties"]["proj:shape"] == [report["grid"]["height"], report["grid"]["width"]]
    assert {"dem", "dem_sigma", "ortho", "tiles", "map", "sigma_tiles"} <= set(item["assets"])
    sigma = item["assets"]["dem_sigma"]
    assert sigma["href"] == "dem_sigma.tif" and "uncertainty" in sigma["roles"] and "cloud-optimized" in sigma["type"]
    page = (out / "index.html").read_text()
    assert "leaflet" in page.lower() and "DEM error (1 sigma)" in page and "sigma/{z}/{x}/{y}.png" in page
    assert list((out / "sigma").glob("*/*/*.png"))
    sol = json.loads((out / "solution.json").read_text())
    assert len(sol["frames"]) == 4 and all(f["frame"] == "LOCAL_LEVEL" for f in sol["frames"])


def test_cli_without_pairs_is_an_input_error(tmp_path, capsys):
    from mosaic.cli import main

    (tmp_path / "empty").mkdir()
    rc = main(["terrain", str(tmp_path / "empty"), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2
    assert len(err) == 1 and "no stereo pairs" in err[0]
    rc = main(["terrain", str(tmp_path / "empty"), "-o", str(tmp_path / "out"), "--site-origin", "18.4,77.4"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "LAT,LON,ELEV" in err[0]


def test_cogs_validate(stereo_run):
    """``rio cogeo validate`` (the CLI users run) accepts both COGs."""
    import shutil
    import sys
    from pathlib import Path

    out, _ = stereo_run
    rio = Path(sys.executable).with_name("rio")
    rio = str(rio) if rio.exists() else shutil.which("rio")
    if rio is None:
        pytest.skip("rio (rasterio CLI) not installed")
    for name in ("dem.tif", "dem_sigma.tif", "ortho.tif"):
        res = subprocess.run([rio, "cogeo", "validate", str(out / name)], capture_output=True, text=True)
        assert res.returncode == 0 and "is a valid cloud optimized GeoTIFF" in res.stdout, res.stdout + res.stderr


@pytest.mark.slow
def test_process_cluster_gives_the_same_bytes(stereo_run, tmp_path):
    """Pair and tile tasks pickled to worker processes (as on a real cluster) give identical COGs."""
    from distributed import LocalCluster

    from mosaic.terrain.pipeline import terrain

    out, _ = stereo_run
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        terrain([out.parent / "frames"], tmp_path, gsd=0.04, radius=8.0, web=False,
                scheduler=cluster.scheduler_address)
    for name in ("dem.tif", "ortho.tif"):
        assert (tmp_path / name).read_bytes() == (out / name).read_bytes()


def test_rerun_skips_finished_work_and_only_finished_work(stereo_run, tmp_path, monkeypatch):
    """An unchanged rerun skips stereo, gridding and products (the DEM keeps its bytes and its
    mtime); a grid option redoes the grid only, a stereo option the stereo, and so does a change
    to the code of any module the stage runs."""
    from mosaic.terrain import pipeline
    from mosaic.terrain.pipeline import terrain

    frames = stereo_run[0].parent / "frames"
    code = tmp_path / "code"
    code.mkdir()
    (code / "stereo_extra.py").write_text("VERSION = 1\n")
    monkeypatch.syspath_prepend(str(code))
    monkeypatch.setattr(pipeline, "STEREO_CODE", pipeline.STEREO_CODE + ("stereo_extra",))
    out = tmp_path / "out"

    def run(**kw):
        rep = terrain([frames], out, gsd=0.08, radius=4.0, web=False, register=False, keep_points=True, **kw)
        return {k: rep["stages"][k]["skipped"] for k in ("points", "grid", "products")}

    assert run() == {"points": False, "grid": False, "products": False}
    dem = out / "dem.tif"
    before = (dem.read_bytes(), dem.stat().st_mtime_ns)
    assert run() == {"points": True, "grid": True, "products": True}
    assert (dem.read_bytes(), dem.stat().st_mtime_ns) == before
    assert run(fill=4) == {"points": True, "grid": False, "products": False}
    assert run(fill=4, min_range=1.5) == {"points": False, "grid": False, "products": False}
    (code / "stereo_extra.py").write_text("VERSION = 2\n")  # an upgrade of the stereo code
    assert run(fill=4, min_range=1.5) == {"points": False, "grid": False, "products": False}
    assert run(fill=4, min_range=1.5) == {"points": True, "grid": True, "products": True}
    # Without keep_points the points go, and a later grid option has to redo the stereo.
    terrain([frames], out, gsd=0.08, radius=4.0, web=False, register=False, fill=4, min_range=1.5)
    assert not list((out / "work" / "points").glob("*/*/*.npy"))
    assert run(fill=5, min_range=1.5) == {"points": False, "grid": False, "products": False}


def test_outputs_carry_sigma_and_balanced_ortho(stereo_run):
    """dem_sigma.tif lies on the DEM's grid with a positive sigma exactly where the DEM has a
    height; the report holds a gain per pair whose mean log is 0."""
    out, report = stereo_run
    (dem,), t, nodata, _ = _read(out / "dem.tif")
    (sig,), ts, snodata, _ = _read(out / "dem_sigma.tif")
    assert ts == t and sig.shape == dem.shape
    have = dem != nodata
    assert np.all(sig[have] > 0) and np.all(sig[~have] == snodata)
    assert 0.001 < np.median(sig[have]) < 0.2
    gains = report["gains"]["gains"]
    assert len(gains) == 2 and abs(np.log(gains).sum()) < 1e-6


def _flatten_right(folder, index):
    """Make one pair's right frame a flat grey: nothing in it can be matched."""
    (right,) = folder.glob(f"NRF_*NCAM0000{index}_*.png")
    img = cv2.imread(str(right), cv2.IMREAD_UNCHANGED)
    cv2.imwrite(str(right), np.full_like(img, 128))


def test_pair_without_valid_disparity_is_named_and_left_out(scene, tmp_path, caplog):
    from mosaic.terrain.pipeline import terrain

    frames = tmp_path / "frames"
    frames.mkdir()
    write_pair(frames, scene, 0.0, -30.0, index=0)
    write_pair(frames, scene, 60.0, -30.0, index=1)
    _flatten_right(frames, 1)
    with caplog.at_level("WARNING", logger="mosaic"):
        report = terrain([frames], tmp_path / "out", gsd=0.08, radius=4.0, web=False, register=False)
    bad = [p for p in report["pairs"] if p.get("skipped")]
    assert len(bad) == 1 and bad[0]["skipped"].startswith("no valid disparity")
    assert report["stages"]["points"]["pairs_left_out"] == [bad[0]["id"]]
    lines = [r.getMessage() for r in caplog.records if bad[0]["id"] in r.getMessage()]
    assert len(lines) == 1 and "no valid disparity" in lines[0]
    assert (tmp_path / "out" / "dem.tif").exists() and report["cells"] > 0


def test_no_valid_cell_exits_2_with_nothing_written(scene, tmp_path, capsys):
    from mosaic.cli import main

    frames = tmp_path / "frames"
    frames.mkdir()
    write_pair(frames, scene, 0.0, -30.0, index=0)
    _flatten_right(frames, 0)
    out = tmp_path / "out"
    rc = main(["-q", "terrain", str(frames), "-o", str(out), "--gsd", "0.08", "--radius", "4", "--no-register"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "no valid DEM cell" in err[0] and "NLF_0100" in err[0]
    assert not [p.name for p in out.iterdir() if p.name != "work"]


def test_one_run_starts_one_cluster(stereo_run, tmp_path, monkeypatch):
    """Registration shares the terrain run's dask client (stitch's stages, not stitch itself):
    a run with --register asks mosaic.runtime.cluster for one client, and registers into OUT/work."""
    from mosaic.runtime import cluster
    from mosaic.terrain.pipeline import terrain

    calls = []
    real = cluster.client

    def counting(*a, **kw):
        calls.append(a)
        return real(*a, **kw)

    monkeypatch.setattr(cluster, "client", counting)
    report = terrain([stereo_run[0].parent / "frames"], tmp_path, gsd=0.08, radius=4.0, web=False, register=True)
    assert len(calls) == 1
    assert report["solution"]["frames"] == 4 and "register" in report["stages"]
    assert (tmp_path / "work" / "registration" / "adjust" / "solution.json").exists()
