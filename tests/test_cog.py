"""CogWriter: windowed writes from threads, resumable writers, overviews from the windows, valid
COGs, Mars CRS, contract transform, no alpha bleed in overviews, deterministic bytes, nothing left
behind on failure."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from mosaic.formats import geo
from mosaic.formats.cog import CogWriter, equirect_transform, validate, write_cog

GDALINFO = shutil.which("gdalinfo")
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")


def _rgba(h, w, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.integers(1, 255, (4, h, w), dtype=np.uint8)
    img[3] = 255
    img[:, :, w // 2:] = 0  # right half transparent black
    return img


def _write_tiled(path, img, tile=128, threads=4, **kw):
    bands, h, w = img.shape
    windows = [(r, c) for r in range(0, h, tile) for c in range(0, w, tile)]
    with CogWriter(path, w, h, bands, img.dtype, tile=256, **kw) as cw:
        with ThreadPoolExecutor(threads) as ex:
            list(ex.map(lambda rc: cw.write(rc, img[:, rc[0]:rc[0] + tile, rc[1]:rc[1] + tile]), windows))
    return path


def _md5(p):
    return hashlib.md5(p.read_bytes()).hexdigest()


def test_rgba_panorama_threads_valid_exact_and_deterministic(tmp_path):
    h, w = 512, 1024
    img = _rgba(h, w)
    kw = dict(transform=equirect_transform(w, h), alpha=True)
    a = _write_tiled(tmp_path / "a" / "panorama.tif", img, **kw)
    b = _write_tiled(tmp_path / "b" / "panorama.tif", img, threads=1, **kw)  # and one conversion thread:
    c = tmp_path / "c.tif"
    with CogWriter(c, w, h, 4, "uint8", tile=256, threads=1, **kw) as cw:
        cw.write((0, 0), img)
    assert _md5(c) == _md5(a)
    assert _md5(a) == _md5(b)
    ok, errors, warnings = validate(a)
    assert ok, errors
    assert not warnings
    with rasterio.open(a) as ds:
        assert ds.crs is None
        assert ds.transform.to_gdal() == (0.0, 360.0 / w, 0.0, 90.0, 0.0, -180.0 / h)
        assert ds.colorinterp == (ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha)
        assert ds.overviews(1) == [2, 4]
        np.testing.assert_array_equal(ds.read(), img)
    # Only the COG remains: the temporary folder beside it is gone.
    assert sorted(p.name for p in a.parent.iterdir()) == ["panorama.tif"]


def test_equirect_transform_contract():
    t = equirect_transform(8, 4)
    assert t.to_gdal() == (0.0, 45.0, 0.0, 90.0, 0.0, -45.0)
    az, el = t @ (0 + 0.5, 0 + 0.5)
    assert (az, el) == (360 * 0.5 / 8, 90 - 180 * 0.5 / 4)
    with pytest.raises(ValueError):
        equirect_transform(10, 4)


def test_overviews_do_not_bleed_transparent_pixels(tmp_path):
    # Opaque white rows alternate with transparent black rows: an alpha-blind average gives grey.
    h, w = 1024, 1024
    img = np.zeros((2, h, w), np.uint8)
    img[:, ::2] = 255
    p = write_cog(tmp_path / "g.tif", img, alpha=True, tile=256)
    with rasterio.open(p) as ds:
        assert ds.colorinterp == (ColorInterp.gray, ColorInterp.alpha)
        assert ds.overviews(1) == [2, 4]
        for level in ds.overviews(1):
            ov = ds.read(out_shape=(2, h // level, w // level))
            assert ov[1].min() > 0
            assert np.all(ov[0] == 255), np.unique(ov[0])


def test_float_dem_with_nodata_mars_crs(tmp_path):
    h, w = 600, 700
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dem = (-2570.0 + 0.01 * xx - 0.02 * yy).astype(np.float32)
    dem[:100, :100] = -32768.0
    t = geo.grid_transform(geo.DEFAULT_SITE_ORIGIN, -35.0, 30.0, 0.1)
    p = _write_tiled(tmp_path / "dem.tif", dem[None], tile=100, transform=t, crs=geo.site_crs_wkt(),
                     nodata=-32768.0)
    assert validate(p)[0]
    with rasterio.open(p) as ds:
        assert ds.nodata == -32768.0 and ds.dtypes == ("float32",)
        assert ds.transform == t
        np.testing.assert_array_equal(ds.read(1), dem)
        assert ds.crs.to_dict().get("proj") == "eqc"
        ov = ds.read(1, out_shape=(h // 2, w // 2))
        # The void block stays void and its neighbours are not dragged towards -32768.
        assert np.all(ov[:50, :50] == -32768.0)
        assert ov[:, 50:].min() > -2600
    # The stored CRS reads back as the named Mars sphere with the localisation projection.
    from pyproj import CRS

    back = CRS.from_wkt(rasterio.open(p).crs.to_wkt())
    assert back.ellipsoid.semi_major_metre == geo.MARS_SPHERE_RADIUS
    assert "Mars" in back.datum.name


@pytest.mark.skipif(GDALINFO is None, reason="gdalinfo not installed")
def test_gdalinfo_sees_mars_eqc_and_the_panorama_contract(tmp_path):
    dem = np.full((64, 64), -2570.0, np.float32)
    t = geo.grid_transform(geo.DEFAULT_SITE_ORIGIN, 0.0, 0.0, 0.5)
    p = write_cog(tmp_path / "dem.tif", dem, transform=t, crs=geo.site_crs_wkt(), nodata=-32768.0)
    out = subprocess.run([GDALINFO, str(p)], capture_output=True, text=True, check=True).stdout
    assert 'ELLIPSOID["Mars (2015) - Sphere",3396190,0' in out
    assert 'DATUM["Mars (2015) - Sphere"' in out
    assert 'METHOD["Equidistant Cylindrical"' in out
    assert 'PARAMETER["Latitude of 1st standard parallel",18.4663' in out
    assert "LAYOUT=COG" in out
    assert "WGS" not in out
    pan = write_cog(tmp_path / "pan.tif", _rgba(64, 128), transform=equirect_transform(128, 64), alpha=True)
    out = subprocess.run([GDALINFO, str(pan)], capture_output=True, text=True, check=True).stdout
    assert "Coordinate System is" not in out
    assert "Origin = (0.000000000000000,90.000000000000000)" in out
    assert "Pixel Size = (2.812500000000000,-2.812500000000000)" in out
    assert "ColorInterp=Alpha" in out


def test_uint16_gray_alpha_round_trip(tmp_path):
    rng = np.random.default_rng(3)
    img = rng.integers(0, 4096, (2, 300, 200), dtype=np.uint16)
    img[1] = np.where(img[1] > 2000, 65535, 0)
    p = write_cog(tmp_path / "g16.tif", img, alpha=True, tile=128)
    assert validate(p)[0]
    with rasterio.open(p) as ds:
        assert ds.dtypes == ("uint16", "uint16")
        np.testing.assert_array_equal(ds.read(), img)


def test_exception_inside_with_leaves_nothing(tmp_path):
    target = tmp_path / "out" / "panorama.tif"
    with pytest.raises(RuntimeError, match="boom"):
        with CogWriter(target, 256, 128, 4, "uint8", alpha=True) as w:
            w.write((0, 0), np.zeros((4, 64, 64), np.uint8))
            raise RuntimeError("boom")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_bad_writes_are_refused(tmp_path):
    with CogWriter(tmp_path / "x.tif", 100, 100, 3, "uint8") as w:
        with pytest.raises(ValueError, match="outside"):
            w.write((90, 0), np.zeros((3, 20, 20), np.uint8))
        with pytest.raises(ValueError, match="shape"):
            w.write((0, 0), np.zeros((4, 20, 20), np.uint8))
        with pytest.raises(ValueError, match="does not match"):
            w.write(Window(0, 0, 10, 10), np.zeros((3, 20, 20), np.uint8))
        w.write(Window(0, 0, 100, 100), np.full((3, 100, 100), 7, np.uint8))
    with pytest.raises(ValueError, match="dtype"):
        CogWriter(tmp_path / "y.tif", 10, 10, 1, "int64")


def _masked_means(img, f):
    """Reference overview: per f x f block, the mean of the opaque pixels (rounded), alpha 255 where any."""
    bands, h, w = img.shape
    hh, ww = -(-h // f), -(-w // f)
    pad = np.zeros((bands, hh * f, ww * f), np.float64)
    pad[:, :h, :w] = img
    cov = (pad[-1] > 0).reshape(hh, f, ww, f).sum(axis=(1, 3))
    out = np.zeros((bands, hh, ww), np.uint8)
    for b in range(bands - 1):
        s = (pad[b] * (pad[-1] > 0)).reshape(hh, f, ww, f).sum(axis=(1, 3))
        out[b] = np.where(cov > 0, np.rint(s / np.maximum(cov, 1)), 0)
    out[-1] = np.where(cov > 0, 255, 0)
    return out


def test_window_overviews_are_masked_means_and_any_order_gives_the_same_bytes(tmp_path):
    h, w, tile = 1000, 2050, 256  # odd edges at every level
    img = _rgba(h, w, seed=7)
    img[:, 300:420, 900:1300] = 0  # a hole
    kw = dict(alpha=True, tile=256, window_overviews=True)
    windows = [(r, c) for r in range(0, h, tile) for c in range(0, w, tile)]
    paths = []
    for order in (windows, windows[::-1]):
        path = tmp_path / f"p{len(paths)}.tif"
        with CogWriter(path, w, h, 4, "uint8", **kw) as cw:
            assert cw.factors == [2, 4, 8] and cw.align == 8
            for r, c in order:
                cw.write((r, c), img[:, r:r + tile, c:c + tile])
        paths.append(path)
    assert _md5(paths[0]) == _md5(paths[1])
    ok, errors, warnings = validate(paths[0])
    assert ok and not warnings, errors
    with rasterio.open(paths[0]) as ds:
        np.testing.assert_array_equal(ds.read(), img)
        assert ds.overviews(1) == [2, 4, 8]
        for k, f in enumerate([2, 4, 8]):
            got = ds.read(out_shape=(4, -(-h // f), -(-w // f)))
            ref = _masked_means(img, f)
            assert (got[3] == ref[3]).all()  # opaque exactly where any pixel under it is
            assert np.abs(got.astype(int) - ref).max() <= 1  # float sums against exact ones
    with pytest.raises(ValueError, match="grid"):
        with CogWriter(tmp_path / "bad.tif", w, h, 4, "uint8", **kw) as cw:
            cw.write((4, 0), img[:, 4:20, :16])


_KILLED = """
import os, signal, sys
import numpy as np
from mosaic.formats.cog import CogWriter
h, w, tile = {h}, {w}, {tile}
img = np.load(sys.argv[1])
cw = CogWriter(sys.argv[2], w, h, 4, "uint8", alpha=True, tile=256, window_overviews=True, workdir=sys.argv[3],
               checkpoint_s=1e9)
windows = [(r, c) for r in range(0, h, tile) for c in range(0, w, tile)]
for k, (r, c) in enumerate(windows):
    cw.write((r, c), img[:, r:r + tile, c:c + tile], record={{"k": k}})
    if k == 2:
        cw.checkpoint()
    if k == 4:
        os.kill(os.getpid(), signal.SIGKILL)  # windows 3 and 4 are written, not journaled
"""


def test_a_killed_writer_resumes_with_its_journaled_windows_and_the_same_bytes(tmp_path):
    h, w, tile = 512, 1024, 256
    img = _rgba(h, w, seed=11)
    np.save(tmp_path / "img.npy", img)
    work, target = tmp_path / "work", tmp_path / "out" / "pan.tif"
    r = subprocess.run([sys.executable, "-c", _KILLED.format(h=h, w=w, tile=tile), str(tmp_path / "img.npy"),
                        str(target), str(work)], cwd=Path(__file__).resolve().parents[1])
    assert r.returncode == -9
    assert not target.exists()
    windows = [(r, c) for r in range(0, h, tile) for c in range(0, w, tile)]
    with CogWriter(target, w, h, 4, "uint8", alpha=True, tile=256, window_overviews=True, workdir=work) as cw:
        assert cw.done == {windows[k]: {"k": k} for k in range(3)}
        for r, c in windows:
            if (r, c) not in cw.done:
                cw.write((r, c), img[:, r:r + tile, c:c + tile], record={})
    clean = tmp_path / "clean.tif"
    with CogWriter(clean, w, h, 4, "uint8", alpha=True, tile=256, window_overviews=True) as cw:
        cw.write((0, 0), img)
    assert _md5(target) == _md5(clean)
    assert list(work.iterdir()) == []  # the writer's files are gone once the COG is written
    # another raster in the same folder starts afresh
    with CogWriter(target, w, h, 2, "uint8", alpha=True, tile=256, workdir=work) as cw:
        assert cw.done == {}


def test_a_journal_counts_only_once_its_header_is_whole(tmp_path):
    # A reader that looks while a writer starts (or after a kill at that moment) sees no windows
    # rather than an error; a writer finding such a journal starts afresh.
    from mosaic.formats.cog import read_journal

    assert read_journal(tmp_path) == ({}, {})
    for cut in ("", '{"spec": {"wid', "5\n", '{"other": 1}\n'):
        (tmp_path / "journal.jsonl").write_text(cut)
        assert read_journal(tmp_path) == ({}, {})
    img = _rgba(256, 256, seed=3)
    with CogWriter(tmp_path / "pan.tif", 256, 256, 4, "uint8", alpha=True, tile=256, workdir=tmp_path) as cw:
        assert cw.done == {}
        cw.write((0, 0), img, record={"k": 0})
    assert validate(tmp_path / "pan.tif")[0]


def test_unwritten_windows_read_as_nodata_or_transparent(tmp_path):
    t = geo.grid_transform(geo.DEFAULT_SITE_ORIGIN, 0.0, 0.0, 1.0)
    with CogWriter(tmp_path / "dem.tif", 1024, 600, 1, "float32", transform=t, crs=geo.site_crs_wkt(),
                   nodata=-32768.0, tile=256) as w:
        w.write((0, 0), np.full((100, 100), 5.0, np.float32))
    with CogWriter(tmp_path / "pan.tif", 600, 300, 2, "uint8", alpha=True, tile=256) as w:
        w.write((10, 10), np.full((2, 20, 20), 255, np.uint8))
    with rasterio.open(tmp_path / "dem.tif") as ds:
        dem = ds.read(1)
    assert np.all(dem[:100, :100] == 5.0) and np.all(dem[100:] == -32768.0) and np.all(dem[:, 100:] == -32768.0)
    with rasterio.open(tmp_path / "pan.tif") as ds:
        alpha = ds.read(2)
    assert alpha.sum() == 255 * 400
    assert validate(tmp_path / "dem.tif")[0] and validate(tmp_path / "pan.tif")[0]


def test_validate_rejects_a_plain_geotiff(tmp_path):
    p = tmp_path / "plain.tif"
    with rasterio.open(p, "w", driver="GTiff", width=2048, height=2048, count=1, dtype="uint8") as ds:
        ds.write(np.zeros((1, 2048, 2048), np.uint8))
    ok, errors, _ = validate(p)
    assert not ok and errors


def _driver_overviews(path, img, **kw):
    """The COG the driver makes when it computes the overviews itself (the old conversion)."""
    import rasterio.shutil

    bands, h, w = img.shape
    ref = CogWriter(path.with_name("ref-" + path.name), w, h, bands, img.dtype, **kw)
    ref.write((0, 0), img)
    ref._close_files()
    rasterio.shutil.copy(ref.intermediate, path, **ref._options())
    ref.abort()
    return path


@pytest.mark.parametrize("kind", ["rgba", "dem"])
def test_overviews_built_on_the_intermediate_give_the_drivers_bytes(tmp_path, kind):
    """Overviews are built once into the intermediate and copied: same bytes as the COG driver
    computing them (for sizes that halve evenly: 1024 x 2048 and 1200 x 1400 here)."""
    if kind == "rgba":
        img, kw = _rgba(1024, 2048, seed=3), {"alpha": True}
        img[:, 700:] = 0
    else:
        yy, xx = np.mgrid[0:1200, 0:1400].astype(np.float32)
        img = (-2570.0 + 0.01 * xx - 0.02 * yy + np.sin(xx / 7))[None].astype(np.float32)
        img[:, :300, :300] = -32768.0
        kw = {"nodata": -32768.0, "crs": geo.site_crs_wkt(),
              "transform": geo.grid_transform(geo.DEFAULT_SITE_ORIGIN, -35.0, 30.0, 0.1)}
    ours = write_cog(tmp_path / "ours.tif", img, **kw)
    ref = _driver_overviews(tmp_path / "driver.tif", img, **kw)
    assert _md5(ours) == _md5(ref)
    ok, errors, warnings = validate(ours)
    assert ok and not warnings, errors


def test_odd_sizes_keep_the_drivers_overview_count(tmp_path):
    img = _rgba(1001, 2002, seed=4)
    ours = write_cog(tmp_path / "ours.tif", img, alpha=True)
    ref = _driver_overviews(tmp_path / "driver.tif", img, alpha=True)
    with rasterio.open(ours) as a, rasterio.open(ref) as b:
        assert len(a.overviews(1)) == len(b.overviews(1)) == 2
        np.testing.assert_array_equal(a.read(), b.read())
    assert validate(ours)[0]
