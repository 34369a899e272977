"""Panorama rendering against a known world: frames sampled from a procedural equirectangular
image through CAHV/CAHVORE models with +-15% exposures, rendered back and compared."""

from __future__ import annotations

import json
import shutil
import subprocess

import cv2
import numpy as np
import pytest
import rasterio

from calib.errors import InputError
from mosaic.formats.cog import validate
from mosaic.render import plan, render_panorama
from mosaic.render import truthworld as tw
from mosaic.render.projections import Equirectangular, Perspective, make_projection
from mosaic.render.warp import frame_map
from mosaic.runtime.cluster import client as make_client

WORLD_H = 900  # 0.2 deg per world pixel
RES = 0.25  # render resolution: 1440 x 720
EXPOSURES = [1.0, 0.85, 1.15, 0.92, 1.1, 0.88, 1.12, 0.95, 1.05, 0.9, 1.15, 0.87, 1.0]


def _focal(width, hfov):
    return (width / 2.0) / np.tan(np.radians(hfov) / 2.0)


@pytest.fixture(scope="module")
def world():
    return tw.world(WORLD_H, seed=3)


@pytest.fixture(scope="module")
def frameset(world, tmp_path_factory):
    """10 frames round the horizon and 3 looking up, CAHV and CAHVORE alternating."""
    d = tmp_path_factory.mktemp("frames8")
    specs = tw.ring_specs(10, 200, 150, _focal(200, 48.0), el=0.0, az0=5.0, gains=EXPOSURES[:10])
    specs += tw.ring_specs(3, 200, 150, _focal(200, 48.0), el=30.0, az0=40.0, gains=EXPOSURES[10:])
    return tw.write_frames(d, world, specs), np.array(EXPOSURES)


@pytest.fixture(scope="module")
def client():
    with make_client() as c:
        yield c


@pytest.fixture(scope="module")
def rendered(frameset, client, tmp_path_factory):
    sol, _ = frameset
    out = tmp_path_factory.mktemp("pano")
    return render_panorama(sol, out, resolution=RES, client=client)


def _read(path):
    with rasterio.open(path) as ds:
        return ds.read(), ds


def _world_on_grid(world, width, height):
    """The world resampled at the panorama grid's pixel centres (same contract grid)."""
    wh, ww = world.shape[:2]
    x = ((np.arange(width) + 0.5) * ww / width - 0.5).astype(np.float32)
    y = ((np.arange(height) + 0.5) * wh / height - 0.5).astype(np.float32)
    mx, my = np.meshgrid(x, y)
    return cv2.remap(world, mx, my, cv2.INTER_AREA if ww > width else cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_WRAP)


def test_truth_geometry_within_a_pixel(rendered, world):
    a, _ = _read(rendered["panorama"])
    alpha = a[3] > 0
    pano = np.moveaxis(a[:3], 0, -1).astype(np.float32) / 255.0
    ref = _world_on_grid(world, a.shape[2], a.shape[1])
    g = cv2.cvtColor(pano, cv2.COLOR_RGB2GRAY)
    r = cv2.cvtColor(ref, cv2.COLOR_RGB2GRAY)
    shifts = []
    n = 64
    win = cv2.createHanningWindow((n, n), cv2.CV_32F)
    for y0 in range(0, a.shape[1] - n + 1, n // 2):
        for x0 in range(0, a.shape[2] - n + 1, n // 2):
            if not alpha[y0:y0 + n, x0:x0 + n].all():
                continue
            (dx, dy), resp = cv2.phaseCorrelate(r[y0:y0 + n, x0:x0 + n].copy(),
                                              g[y0:y0 + n, x0:x0 + n].copy(), win)  # it writes its inputs
            shifts.append(np.hypot(dx, dy))
    shifts = np.array(shifts)
    assert len(shifts) > 100  # the ring and the upper frames give plenty of fully covered patches
    assert shifts.max() < 1.0, shifts.max()
    assert np.median(shifts) < 0.2
    # Values: after one common scale the panorama is the world (frames were quantised to 8 bits).
    k = np.median(g[alpha] / r[alpha])
    rel = np.abs(g[alpha] - k * r[alpha]) / r[alpha]
    assert np.median(rel) < 0.02


def test_gains_recovered(rendered):
    ex = np.array(EXPOSURES)
    g = np.array(list(rendered["gains"].values()))
    prod = g * ex
    # Every frame's gain undoes its exposure up to one common factor.
    assert np.std(np.log(prod)) < 0.01, prod
    # Every overlapping pair agrees after the fit (median log ratio), and did not before it.
    assert rendered["photometry"]["pair_bias_abs_log"]["max"] < 0.005 < 0.1 < rendered["photometry"]["log_rms_before"]


def _azimuth_profile(path, world):
    """Per column: median of panorama / world over the horizon band every column has covered."""
    a, _ = _read(path)
    h = a.shape[1]
    band = slice(int(h * (90 - 14) / 180), int(h * (90 + 14) / 180))
    alpha = a[3, band] > 0
    assert alpha.all()
    # Both sides blurred alike, so that sharp world lines resampled twice do not read as steps.
    g = tw.blur_wrap(a[:3].astype(np.float32).mean(axis=0) / 255.0, 3)[band]
    ref = tw.blur_wrap(_world_on_grid(world, a.shape[2], a.shape[1]).mean(axis=2), 3)[band]
    ratio = g / ref
    prof = np.median(ratio, axis=0)
    return prof / np.median(prof)


def test_no_step_at_seams_or_wrap(rendered, frameset, client, world, tmp_path):
    prof = _azimuth_profile(rendered["panorama"], world)
    steps = np.abs(np.diff(np.concatenate([prof, prof[:1]])))  # includes column W-1 -> 0
    # The world's own structure cancels in the ratio; what is left is the exposure residual.
    assert steps.max() < 0.005, steps.max()
    assert np.ptp(prof) < 0.04
    # Negative control: without the gains the same measure sees the exposure steps.
    sol, _ = frameset
    raw = render_panorama(sol, tmp_path, resolution=RES, client=client, gains=False)
    raw_prof = _azimuth_profile(raw["panorama"], world)
    assert np.ptp(raw_prof) > 0.15


def test_cog_contract(rendered):
    path = rendered["panorama"]
    ok, errors, _ = validate(path)
    assert ok, errors
    a, ds = _read(path)
    w, h = rendered["width"], rendered["height"]
    assert (w, h) == (1440, 720) and w == 2 * h
    assert a.shape == (4, h, w) and a.dtype == np.uint8
    assert set(np.unique(a[3])) <= {0, 255}
    assert (a[:3, a[3] == 0] == 0).all()
    if shutil.which("gdalinfo"):
        info = json.loads(subprocess.run(["gdalinfo", "-json", path], capture_output=True, text=True, check=True).stdout)
        assert info["geoTransform"] == pytest.approx([0.0, 360.0 / w, 0.0, 90.0, 0.0, -180.0 / h])
        assert info["bands"][3]["colorInterpretation"] == "Alpha"
    prev = cv2.imread(rendered["preview"])
    assert prev is not None and prev.shape[1] <= 4096 and prev.shape[1] == 2 * prev.shape[0]


def test_tiles_blend_as_one_image(frameset, client, tmp_path):
    sol, ex = frameset
    gains = 1.0 / ex
    whole = render_panorama(sol, tmp_path / "one", resolution=RES, tile=1440, gains=gains, client=client)
    two = render_panorama(sol, tmp_path / "two", resolution=RES, tile=720, gains=gains, client=client)
    small = render_panorama(sol, tmp_path / "many", resolution=RES, tile=256, gains=gains, client=client)
    assert whole["tiles"] == 1 and two["tiles"] == 2 and small["tiles"] == 18
    a = _read(whole["panorama"])[0].astype(int)
    for other in (two, small):
        b = _read(other["panorama"])[0].astype(int)
        assert (a[3] == b[3]).all()
        assert np.abs(a - b).max() <= 1


def test_same_bytes_on_a_process_cluster(frameset, client, tmp_path):
    sol, _ = frameset
    one = render_panorama(sol, tmp_path / "threads", resolution=0.5, tile=256, client=client)
    with make_client(workers=2, threads_per_worker=1, processes=True) as pc:
        two = render_panorama(sol, tmp_path / "procs", resolution=0.5, tile=256, client=pc)
    with open(one["panorama"], "rb") as f1, open(two["panorama"], "rb") as f2:
        assert f1.read() == f2.read()


def test_sixteen_bit_grey_stays_sixteen_bit(world, client, tmp_path):
    specs = tw.ring_specs(4, 120, 90, _focal(120, 60.0), gains=[1.0, 0.9, 1.1, 1.0])
    sol = tw.write_frames(tmp_path / "f", world, specs, bit_depth=16, grey=True)
    r = render_panorama(sol, tmp_path / "out", resolution=0.5, client=client)
    a, _ = _read(r["panorama"])
    assert a.dtype == np.uint16 and a.shape[0] == 2
    cov = a[1] > 0
    assert set(np.unique(a[1])) == {0, 65535}
    assert a[0][cov].max() > 255 * 40  # the data span the 16-bit range, not 8 bits scaled
    assert validate(r["panorama"])[0]


def test_warp_grid_error_bound():
    """The interpolated map agrees with exact per-pixel projections within the stated 0.1 px."""
    model = tw.pointing_model(30.0, 10.0, 300, 200, _focal(300, 70.0), kind="CAHVORE",
                              distortion=(0.0, -0.12, 0.03))
    proj = Equirectangular(1024)
    window = (-48, 128, 400, 300)
    fm = frame_map(proj, window, model, 300, 200)
    assert fm is not None and fm.valid.sum() > 10000
    y, x = np.nonzero(fm.valid)
    gx, gy = window[0] + fm.cols.start + x, window[1] + fm.rows.start + y
    d = proj.pixel_to_dir(gx, gy)
    exact = model.project(model.C + 1e6 * d)
    err = np.hypot(fm.mapx[y, x] - exact[:, 0], fm.mapy[y, x] - exact[:, 1])
    assert err.max() <= 0.1 + 1e-3, err.max()


def test_projections_geometry():
    eq = make_projection("equirect", 0.25, align=16)
    assert eq.width == 2 * eq.height == 1440
    d = eq.pixel_to_dir(np.array([0.0, eq.width - 1.0]), np.array([eq.height / 2 - 0.5] * 2))
    az = np.degrees(np.arctan2(d[:, 1], d[:, 0])) % 360
    assert az == pytest.approx([360 * 0.5 / eq.width, 360 * (eq.width - 0.5) / eq.width])
    # Periodic: x and x + W are the same direction (the renderer's halo at x = 0 relies on it).
    assert np.allclose(eq.pixel_to_dir(-3.0, 100.0), eq.pixel_to_dir(eq.width - 3.0, 100.0))
    p = Perspective(201, 101, 120.0, -20.0, 60.0)
    c = p.pixel_to_dir(np.array([100.0]), np.array([50.0]))[0]
    assert c == pytest.approx(np.array(tw.azel_to_vector(120.0, -20.0)))
    with pytest.raises(InputError):
        make_projection("mercator", 1.0)


@pytest.mark.parametrize("projection,kw", [
    ("cylindrical", {"elevation_range": (-30, 50)}),
    ("polar", {"max_angle": 120.0}),
    ("perspective", {"direction": (40.0, 5.0), "fov": (70.0, 50.0)}),
])
def test_other_projections_render(frameset, client, tmp_path, projection, kw):
    sol, ex = frameset
    r = render_panorama(sol, tmp_path, projection=projection, resolution=0.5, client=client, gains=1 / ex, **kw)
    a, _ = _read(r["panorama"])
    assert validate(r["panorama"])[0]
    assert 0.2 < (a[3] > 0).mean() <= 1.0


def test_vertical_projects_ground_points(world, client, tmp_path):
    """Frames of a flat textured ground seen from 2 m: the vertical view puts each ground point
    where it is. Built directly: ground texture -> frames via exact ray-plane intersections."""
    rng = np.random.default_rng(1)
    tex = cv2.GaussianBlur(rng.random((400, 400)).astype(np.float32), (0, 0), 3)
    tex = (tex - tex.min()) / np.ptp(tex) * 0.8 + 0.1  # 0.05 m per texel over 20 x 20 m
    frames = []
    (tmp_path / "f").mkdir()
    for k, az in enumerate((0.0, 120.0, 240.0)):
        m = tw.pointing_model(az, -50.0, 160, 120, _focal(160, 60.0), center=(0.0, 0.0, -2.0))
        gy, gx = np.mgrid[0:120, 0:160]
        o, d = m.backproject(np.stack([gx.ravel(), gy.ravel()], 1).astype(float))
        t = -o[:, 2] / d[:, 2]
        p = o + t[:, None] * d
        u = ((p[:, 1] + 10) / 0.05 - 0.5).reshape(120, 160).astype(np.float32)
        v = ((10 - p[:, 0]) / 0.05 - 0.5).reshape(120, 160).astype(np.float32)
        img = cv2.remap(tex, u, v, cv2.INTER_LINEAR)
        cv2.imwrite(str(tmp_path / "f" / f"g{k}.png"), np.rint(img * 255).astype(np.uint8))
        frames.append({"id": f"g{k}", "image": str(tmp_path / "f" / f"g{k}.png"), "width": 160, "height": 120,
                       "used": True, "model": m.to_dict(), "frame": "LOCAL_LEVEL"})
    sol = tmp_path / "f" / "solution.json"
    sol.write_text(json.dumps({"frames": frames, "stats": {}}))  # absolute image paths
    r = render_panorama(sol, tmp_path / "out", projection="vertical", resolution=0.05, extent=8.0,
                        client=client, gains=False)
    a, ds = _read(r["panorama"])
    cov = a[1] > 0
    assert cov.mean() > 0.3
    # Expected: the texture at the same ground points (output grid aligned with the texture's).
    off = int((10 - 8.0 / 2) / 0.05)
    n = a.shape[1]
    ref = tex[off:off + n, off:off + n] * 255
    assert np.median(np.abs(a[0][cov] - ref[cov])) < 2.0


def test_plan_and_size_limit(frameset, tmp_path):
    sol, _ = frameset
    p = plan(sol, resolution=RES)
    assert (p["width"], p["height"], p["tiles"], p["bands"]) == (1440, 720, 6, 4)
    assert p["bytes_estimate"] == 1440 * 720 * 4
    with pytest.raises(InputError, match="gigapixels"):
        render_panorama(sol, tmp_path / "big", resolution=0.001, max_pixels=10**8)
    assert not (tmp_path / "big").exists()


def test_missing_frame_fails_cleanly(frameset, client, tmp_path):
    sol, _ = frameset
    data = json.loads(sol.read_text())
    data["frames"][0]["image"] = "nope.png"
    bad = sol.parent / "bad_solution.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(InputError, match="nope.png"):
        render_panorama(bad, tmp_path / "out", resolution=0.5, client=client)
    assert not (tmp_path / "out" / "panorama.tif").exists()


def test_multiband_single_frame_and_seam_transition():
    """One frame collapses back to itself; two flat frames meet with a smooth ramp whose width
    grows with the levels, and a hard seam mask alone would be a step."""
    from mosaic.render.blend import MultiBand

    rng = np.random.default_rng(0)
    img = rng.random((96, 160, 3)).astype(np.float32) * 200
    cover = np.zeros((96, 160), np.float32)
    cover[10:90, 5:150] = 1
    mb = MultiBand((96, 160), 3, 4)
    mb.add(slice(0, 96), slice(0, 160), img * cover[..., None], cover, cover)  # premultiplied
    out = mb.result()
    assert np.abs(out[cover > 0] - img[cover > 0]).max() < 1e-3
    mb = MultiBand((64, 256), 1, 4)
    left = np.zeros((64, 256), np.float32)
    left[:, :128] = 1
    ones = np.ones((64, 256), np.float32)
    mb.add(slice(0, 64), slice(0, 256), np.full((64, 256, 1), 100, np.float32), ones, left)
    mb.add(slice(0, 64), slice(0, 256), np.full((64, 256, 1), 120, np.float32), ones, 1 - left)
    row = mb.result()[32, :, 0]
    assert row[0] == pytest.approx(100, abs=0.01) and row[-1] == pytest.approx(120, abs=0.01)
    assert np.abs(np.diff(row)).max() < 2.0  # a 20 DN step spread over > 10 px
    assert np.all(np.diff(row) >= -1e-3)  # monotone: no ringing


def test_failure_mid_render_leaves_nothing(frameset, client, tmp_path, monkeypatch):
    """A frame that breaks while tiles are being written: the error surfaces and neither
    panorama.tif nor any temporary file is left behind."""
    import mosaic.render.warp as warp_mod

    sol, ex = frameset
    real = warp_mod.read_pixels
    reads = []

    def flaky(path):
        # The first read (the photometric pass before any tile) succeeds; the tiles' read fails.
        if str(path).endswith("frame_0003.png"):
            reads.append(path)
            if len(reads) > 1:
                raise InputError(path, "truncated PNG")
        return real(path)

    monkeypatch.setattr(warp_mod, "read_pixels", flaky)
    # A cache too small for every frame: the tiles decode the frames again (a big pan).
    monkeypatch.setattr(warp_mod, "CACHE", warp_mod.ImageCache(max_bytes=1))
    out = tmp_path / "out"
    with pytest.raises(InputError, match="truncated"):
        render_panorama(sol, out, resolution=0.5, tile=256, client=client, gains=1 / ex)
    assert list(out.iterdir()) == []


@pytest.mark.parametrize("channels, dtype", [(3, np.uint8), (4, np.uint8), (3, np.uint16), (1, np.uint16)])
def test_read_image_channel_order(tmp_path, channels, dtype):
    """Frames come back RGB (alpha dropped), in their stored dtype, whatever OpenCV's BGR(A)."""
    from mosaic.render.warp import read_image

    rng = np.random.default_rng(1)
    rgb = rng.integers(0, np.iinfo(dtype).max, (20, 30, channels), dtype=dtype, endpoint=True)
    bgr = rgb[..., [2, 1, 0] + ([3] if channels == 4 else [])] if channels > 1 else rgb[..., 0]
    cv2.imwrite(str(tmp_path / "f.png"), np.ascontiguousarray(bgr))
    got = read_image(tmp_path / "f.png")
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, rgb[..., :3] if channels > 1 else rgb[..., 0])


def test_frame_cache_decodes_a_frame_once_for_threads_asking_at_once(frameset, monkeypatch):
    """Tiles on several threads that need the same frame at once: one decode, the others wait."""
    import threading
    import time
    from concurrent.futures import ThreadPoolExecutor

    import mosaic.render.warp as warp_mod

    sol, _ = frameset
    path = str(sol.parent / json.loads(sol.read_text())["frames"][0]["image"])
    real, calls, release = warp_mod.read_pixels, [], threading.Event()

    def slow(p):
        calls.append(p)
        release.wait(10)
        return real(p)

    monkeypatch.setattr(warp_mod, "read_pixels", slow)
    cache = warp_mod.ImageCache()
    with ThreadPoolExecutor(4) as ex:
        got = [ex.submit(cache.get, path) for _ in range(4)]
        t_end = time.monotonic() + 1.0
        while len(calls) < 2 and time.monotonic() < t_end:  # a second decode would start by now
            time.sleep(0.01)
        release.set()
        items = [g.result() for g in got]
    assert len(calls) == 1 and cache.decodes == 1
    assert all(it[0] is items[0][0] for it in items) and not items[0][0].flags.writeable


@pytest.mark.parametrize("connectivity", [4, 8])
def test_seam_components_are_numbered_as_scipy_numbers_them(connectivity):
    """The seam cut takes the free stretches as components 1 and 2: OpenCV's labels must be
    scipy.ndimage.label's, numbering included (OpenCV's block-based default scan numbers some
    masks otherwise)."""
    from scipy.ndimage import binary_dilation, label

    from mosaic.render.seams import _components

    rng = np.random.default_rng(connectivity)
    for trial in range(200):
        h, w = rng.integers(1, 300, 2)
        mask = rng.random((h, w)) < rng.uniform(0.02, 0.6)
        if trial % 2:
            mask = binary_dilation(mask, iterations=int(rng.integers(1, 4)))
        want, n = label(mask, structure=np.ones((3, 3)) if connectivity == 8 else None)
        got, m = _components(mask, connectivity)
        assert m == n
        np.testing.assert_array_equal(got, want)


def test_block_cache_holds_a_pass_of_tiles_and_their_overviews():
    """The writer's GDAL cache is given in bytes (rasterio's unit: "256" once meant 256 bytes,
    and every overview write read its block back from disk) and holds one column of tiles with
    the overview blocks they touch, which the next column completes; bounded either way."""
    from types import SimpleNamespace

    from mosaic.render.panorama import CACHE_MAX, CACHE_MIN, _block_cache_bytes

    wide = SimpleNamespace(width=8192, height=4096)
    column = [SimpleNamespace(core=(512, y, 512, 512)) for y in range(0, 4096, 512)]
    other = [SimpleNamespace(core=(1024, 0, 512, 512))]
    got = _block_cache_bytes(column + other, wide, 4, "uint16")
    assert got >= 4096 * 512 * 4 * 2 * 4 // 3  # the column and a third more for its overviews
    assert CACHE_MIN <= got <= CACHE_MAX and CACHE_MIN >= 2**20
    assert _block_cache_bytes([], wide, 4, "uint8") == CACHE_MIN
    tall = SimpleNamespace(width=1024, height=8192)  # tiles go along rows there: a row is the pass
    row = [SimpleNamespace(core=(x, 512, 512, 512)) for x in range(0, 1024, 512)]
    assert _block_cache_bytes(row, tall, 4, "uint8") == CACHE_MIN
    huge = [SimpleNamespace(core=(0, y, 1024, 1024)) for y in range(0, 200_000, 1024)]
    assert _block_cache_bytes(huge, wide, 4, "uint16") == CACHE_MAX
