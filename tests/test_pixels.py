"""mosaic.formats.pixels: the check that proves a frame's pixels complete before any work, and the small
cache through which the features stage reads what the check decoded."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from PIL import Image

from calib.errors import InputError
from mosaic.formats import pixels
from mosaic.pipeline.stages import features

W, H = 3200, 2400  # a photo large enough for the features stage's 1/2 DCT decode


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    rng = np.random.default_rng(3)
    small = rng.integers(0, 255, (H // 16, W // 16, 3), dtype=np.uint8)
    img = cv2.resize(small, (W, H), interpolation=cv2.INTER_CUBIC)
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.fromarray(img).save(path, quality=90)
    return path


def _record(path, w=W, h=H, model=None):
    return {"id": path.stem, "image": str(path), "path": str(path), "width": w, "height": h, "model": model}


OPTIONS = {"refine_scale": 0.5, "photo_megapixels": 0.5, "work_megapixels": 1.0, "min_scale": 0.45}


def test_a_truncated_jpeg_is_refused_where_opencv_fills_it_with_grey(photo, tmp_path):
    cut = tmp_path / "cut.jpg"
    cut.write_bytes(photo.read_bytes()[: photo.stat().st_size * 9 // 10])
    _, scale, _ = features.scales(_record(cut), OPTIONS)
    # What the features stage used to read: a whole-looking image, its last rows grey.
    grey = cv2.imread(str(cut), cv2.IMREAD_REDUCED_GRAYSCALE_2)
    assert grey is not None and grey.shape == (H // 2, W // 2)
    with pytest.raises(InputError, match=r"cut\.jpg: JPEG is truncated"):
        pixels.decode(_record(cut), scale, grey=True, cache=None)


def test_the_check_decodes_what_features_reads_and_features_reads_it_from_the_cache(photo):
    rec = _record(photo)
    s, rs, refine = features.scales(rec, OPTIONS)
    assert refine and rs == 0.5 and features.reads_reduced_jpeg(rec)
    cache = pixels.CACHE
    cache.clear()
    try:
        d = pixels.decode(rec, rs, grey=True)
        assert (d.reduction, d.grey, d.pixels.shape) == (2.0, True, (H // 2, W // 2))
        # Byte for byte the features stage's own reduced decode...
        assert np.array_equal(d.pixels, cv2.imread(str(photo), cv2.IMREAD_REDUCED_GRAYSCALE_2))
        # ...which now takes the kept array instead of decoding the file again.
        arr, r = features._decode_reduced(rec, rs)
        assert arr is d.pixels and r == 2
        assert not d.pixels.flags.writeable
    finally:
        cache.clear()
    arr, r = features._decode_reduced(rec, rs)  # a miss decodes as before
    assert r == 2 and np.array_equal(arr, d.pixels)


def test_the_check_keeps_only_the_photos_features_reads_from_the_cache(photo, tmp_path):
    """A photo decoded at a DCT reduction stays in the cache for the features stage; one that no
    reduction fits (features reads it in colour at full size) is proven and dropped."""
    from calib.meta import FrameMeta
    from mosaic.pipeline.preflight import check_pixels
    from mosaic.runtime.config import StitchConfig

    small = tmp_path / "small.jpg"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(photo)), (W // 4, H // 4)))
    metas = [FrameMeta(id=p.stem, instrument="PHOTO", width=w, height=h, model=None, image=p)
             for p, w, h in ((photo, W, H), (small, W // 4, H // 4))]
    pixels.CACHE.clear()
    try:
        assert check_pixels(metas, StitchConfig()) == 1
        s_big = features.scales(_record(photo), OPTIONS)[1]
        assert pixels.CACHE.get(photo, s_big, grey=True) is not None
        s_small = features.scales(_record(small, W // 4, H // 4), OPTIONS)[1]
        assert pixels.jpeg_reduction(W // 4, H // 4, s_small) == 1
        assert pixels.CACHE.get(small, s_small, grey=True) is None
    finally:
        pixels.CACHE.clear()


def test_the_cache_is_bounded_and_keyed_by_the_file(tmp_path):
    a = tmp_path / "a.png"
    cv2.imwrite(str(a), np.full((100, 100), 7, np.uint8))
    cache = pixels.PixelCache(max_bytes=15000)
    d = pixels.decode(_record(a, 100, 100, model=True), 1.0, cache=cache)
    assert len(cache) == 1 and cache.get(a, 1.0) is d and cache.get(a, 0.5) is None
    b = tmp_path / "b.png"
    cv2.imwrite(str(b), np.full((100, 100), 9, np.uint8))
    pixels.decode(_record(b, 100, 100, model=True), 1.0, cache=cache)
    assert len(cache) == 1 and cache.nbytes == 10000  # the second frame did not fit: the first stays
    cv2.imwrite(str(a), np.full((100, 100), 8, np.uint8))  # rewritten: a new size or mtime, no hit
    import os

    os.utime(a, ns=(1, 1))
    assert cache.get(a, 1.0) is None


@pytest.mark.parametrize("dtype,bands", [(np.uint8, 1), (np.uint16, 1), (np.uint16, 3), (np.uint8, 4)])
def test_png_pixels_keep_their_dtype_and_bands_at_the_working_scale(tmp_path, dtype, bands):
    rng = np.random.default_rng(0)
    shape = (240, 320) if bands == 1 else (240, 320, bands)
    arr = rng.integers(1, np.iinfo(dtype).max, shape, dtype=dtype)
    p = tmp_path / "f.png"
    cv2.imwrite(str(p), arr)
    d = pixels.decode(_record(p, 320, 240, model=True), 0.5, cache=None)
    assert d.pixels.dtype == dtype and d.pixels.shape[:2] == (120, 160) and d.reduction == 2.0
    assert d.pixels.shape[2:] == shape[2:]
    full = pixels.decode(_record(p, 320, 240, model=True), 1.0, cache=None).pixels
    rgb = arr if bands == 1 else arr[..., [2, 1, 0, 3][:bands]]  # OpenCV wrote BGR(A)
    assert np.array_equal(full, rgb)


def test_a_raw_array_shorter_than_its_label_says_is_refused(tmp_path):
    from calib.labels.raster import RawLayout
    from calib.meta import FrameMeta

    f = tmp_path / "frame.img"
    f.write_bytes(b"\0" * 1000)
    layout = RawLayout(str(f), offset=200, dtype=">i2", lines=20, samples=30)
    meta = FrameMeta(id="x", instrument="X", width=30, height=20, model=None, source=str(f), image=str(f),
                     extra={"raw_layout": layout})
    with pytest.raises(InputError, match=r"frame\.img: truncated: 1000 bytes, the label needs 1400"):
        pixels.decode(meta, 1.0)
    f.write_bytes(b"\0" * 1400)
    assert pixels.decode(meta, 1.0) is None  # whole: checked, nothing decoded
