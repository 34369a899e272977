"""Metadata readers on the real labels/records in ../shared/realdata, and on broken ones."""

from __future__ import annotations

import json
import os
import shutil

import cv2
import numpy as np
import pytest

from calib.errors import InputError, LabelError, ModelError
from calib.frames import boresight_azel, full_sensor_model, model_in, product_model
from calib.labels import discover, read_frame, read_image, read_pixels
from calib.labels.odl import parse_label
from calib.meta import LOCAL_LEVEL, ROVER_NAV_FRAME, SITE
from calib.rotation import vector_to_azel

MER = "mer-b-navcam-p0706"
MER_NAV = [
    "1N491020376ILFCNY9P0706L0M1",
    "1N491020519ILFCNY9P0706L0M1",
    "1N491020834ILFCNY9P0706L0M1",
    "1N491020993ILFCNY9P0706L0M1",
    "1N491021154ILFCNY9P0706L0M1",
]
MSL = "msl-navcam-ncam00200/NRB_701383954RAS_F0933408NCAM00200M1.IMG"
NLF = "m20-navcam-mru-tiles/NLF_0670_0726421423_362ECM_N0320604NCAM08111_01_095J01"
NRF = "m20-navcam-mru-tiles/NRF_0731_0731848568_991ECM_N0361610NCAM12731_04_195J01"
PDS4 = "m20-pds4-label/nlf_0629_0722782785_631ecm_n0301344ncam00427_06_095j.xml"
#: Mars 2020 Navcam full sensor.
SENSOR = (5120, 3840)


def _angle_diff(a, b):
    return abs((a - b + 180.0) % 360.0 - 180.0)


def real_frames(root):
    paths = [root / MER / f"{n}.IMG" for n in MER_NAV] + [root / MER / "1P491287702ILFCNY9P2584L2M1.IMG"]
    paths += [root / MSL, root / f"{NLF}.png", root / f"{NRF}.png", root / PDS4]
    return [read_frame(p) for p in paths]


# -- real data ---------------------------------------------------------------------------------


def test_mer_navcam_frames_with_pixels(realdata):
    for name in MER_NAV:
        m = read_frame(realdata / MER / f"{name}.IMG")
        assert m.id == name and m.instrument == "NAVCAM_LEFT"
        assert (m.width, m.height, m.bands, m.bit_depth) == (1024, 1024, 1, 16)
        assert m.model.type == "CAHVOR" and m.model_frame == ROVER_NAV_FRAME
        assert (m.site, m.drive) == (195, 973)
        assert m.attitude == (0.580525, 0.0333603, -0.128929, 0.803278)
        assert m.rover_position == (73.9193, 65.9703, 6.56288)
        px = read_image(m)
        assert px.shape == (1024, 1024) and px.dtype == np.int16
        assert 250 <= px.min() and px.max() <= 4080
        assert np.array_equal(px, read_pixels(m.image))
    # The first frame's label states its statistics: the pixels must agree with them.
    px = read_pixels(realdata / MER / f"{MER_NAV[0]}.IMG")
    assert (px.min(), px.max()) == (517, 4029)
    assert abs(px.mean() - 1421.71) < 0.01


def test_pixels_match_the_readme_recipe(realdata):
    path = realdata / MER / f"{MER_NAV[2]}.IMG"
    raw = path.read_bytes()
    expect = np.frombuffer(raw[21 * 2048 : 21 * 2048 + 1024 * 1024 * 2], ">i2").reshape(1024, 1024)
    assert np.array_equal(read_pixels(path), expect)


def test_boresights_reproduce_the_labels_site_azimuth(realdata):
    # MER and MSL labels state the instrument's azimuth/elevation in SITE; LOCAL_LEVEL shares
    # SITE's axes, so the image centre's ray must point there.
    for name in MER_NAV:
        m = read_frame(realdata / MER / f"{name}.IMG")
        az, el = boresight_azel(m)
        saz, sel = m.extra["site_instrument_azel"]
        assert _angle_diff(az, saz) < 0.5
        # MER's derived SITE elevation is positive down (the images look ~17 deg below the
        # horizon, which sits near their top edge); MSL's below is positive up.
        assert abs(el + sel) < 0.5
    m = read_frame(realdata / MSL)
    az, el = boresight_azel(m)
    assert _angle_diff(az, 141.721) < 0.1 and abs(el - (-39.482)) < 0.1
    # mast_az/mast_el: the camera's pointing in the rover frame.
    a = vector_to_azel(m.model.A)
    assert _angle_diff(a[0], m.mast_az) < 1.0 and abs(a[1] - m.mast_el) < 1.0


def test_msl_label_fields(realdata):
    m = read_frame(realdata / MSL)
    assert m.instrument == "NAV_RIGHT_B" and (m.site, m.drive) == (93, 3408)
    assert m.model.type == "CAHVOR" and m.sclk == pytest.approx(701383954.419)
    assert m.attitude == (0.253042, -0.103611, -0.00167164, 0.96189)
    assert read_image(m).shape == (1024, 1024)


def test_m20_metadata_json_tiles(realdata):
    left = read_frame(realdata / f"{NLF}-metadata.json")
    right = read_frame(realdata / f"{NRF}.png")
    assert left.image.endswith(".png") and right.source.endswith("-metadata.json")
    for m in (left, right):
        assert m.model.type == "CAHVORE" and (m.model.T, m.model.P) == (2, 0.0)
        assert (m.width, m.height, m.bands, m.bit_depth) == (1288, 968, 3, 8)
        assert m.attitude is None and m.model_frame == ROVER_NAV_FRAME
        # A and O are re-normalised though the published values are rounded.
        assert abs(np.linalg.norm(m.model.O) - 1) < 1e-12
        assert read_image(m).shape == (968, 1288, 3)
    assert left.subframe == (1, 1, 1288, 968) and left.downsample == 1
    assert right.subframe == (2545, 1, 2576, 1936) and right.downsample == 2
    assert (left.site, left.drive, left.mast_az, left.mast_el) == (32, 604, 1.19218, -33.9935)
    assert right.rover_position == (-90.8518, -173.488, -3.44068)
    # mast_az/mast_el match the azimuth/elevation of A in the rover frame within ~1 deg.
    for m in (left, right):
        az, el = vector_to_azel(m.model.A)
        assert _angle_diff(az, m.mast_az) < 1.5 and abs(el - m.mast_el) < 1.5


def test_navcam_full_frame_fov(realdata):
    # The tiles' models brought back to the full 5120x3840 sensor: 96.5 x 73.1 deg (Maki 2020).
    for path in (realdata / f"{NLF}.png", realdata / PDS4):
        m = read_frame(path)
        h, v = full_sensor_model(m.model, m.subframe, m.downsample).fov(*SENSOR)
        assert abs(h - 96.5) < 0.2 and abs(v - 73.1) < 0.2, (path, h, v)
    # The right camera's model (a different unit, a 2x-downsampled tile) is 0.25 deg wider.
    m = read_frame(realdata / f"{NRF}.png")
    h, v = full_sensor_model(m.model, m.subframe, m.downsample).fov(*SENSOR)
    assert abs(h - 96.5) < 0.3 and abs(v - 73.1) < 0.2, (h, v)
    # And back: the product's own model.
    full = full_sensor_model(m.model, m.subframe, m.downsample)
    again = product_model(full, m.subframe, m.downsample)
    assert np.allclose(again.H, m.model.H) and np.allclose(again.V, m.model.V)


def test_pds4_label_without_its_image(realdata):
    m = read_frame(realdata / PDS4)
    assert m.image is None and m.source.endswith(".xml")
    assert m.id == "NLF_0629_0722782785_631ECM_N0301344NCAM00427_06_095J01"
    assert m.instrument == "NAVCAM_LEFT"
    assert (m.width, m.height, m.bands, m.bit_depth) == (1296, 976, 3, 8)
    assert m.subframe == (1273, 953, 1296, 976) and m.downsample == 1
    assert (m.site, m.drive) == (30, 1344) and m.sclk == pytest.approx(722782785.631)
    assert m.model.type == "CAHVORE" and (m.model.T, m.model.P) == (2, 0.0)
    assert m.attitude == (0.174493, 0.034765, 0.0422949, -0.983135)
    assert m.rover_position == (94.6281, -118.938, -7.51133)
    with pytest.raises(InputError, match="no image"):
        read_image(m)
    # The label's instrument azimuth/elevation (SITE and rover frame) are those of the full
    # frame's centre: bring the tile's model back to the sensor and look through its centre.
    full = full_sensor_model(model_in(m, LOCAL_LEVEL), m.subframe, m.downsample)
    az, el = vector_to_azel(full.boresight(*SENSOR))
    saz, sel = m.extra["site_instrument_azel"]
    assert (saz, sel) == (-50.247, -7.87312)
    assert _angle_diff(az, saz) < 1.0 and abs(el - sel) < 1.0
    raz, rel = m.extra["rover_instrument_azel"]
    assert _angle_diff(m.mast_az, raz) < 1.0 and abs(m.mast_el - rel) < 1.0


def test_model_in_frames_agree(realdata):
    m = read_frame(realdata / MSL)
    site = model_in(m, SITE)
    ll = model_in(m, LOCAL_LEVEL)
    assert np.allclose(ll.A, m.model_local_level().A) and np.allclose(ll.C, m.model_local_level().C)
    assert np.allclose(site.C - np.asarray(m.rover_position), ll.C)
    p = (ll.C + 5 * ll.A + [0.3, -0.2, 0.1])[None]
    pix = ll.project(p)
    assert np.all(np.isfinite(pix)) and np.allclose(site.project(p + m.rover_position), pix)
    back = model_in(m.with_(model=site, model_frame=SITE), ROVER_NAV_FRAME)
    assert np.allclose(back.C, m.model.C) and np.allclose(back.H, m.model.H)


@pytest.mark.parametrize("rng", [1.0, 100.0])
def test_round_trip_every_real_model(realdata, rng):
    for m in real_frames(realdata):
        xs = np.linspace(0, m.width - 1, 64)
        ys = np.linspace(0, m.height - 1, 64)
        pix = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        o, d = m.model.backproject(pix)
        back = m.model.project(o + rng * d)
        err = np.abs(back - pix).max()
        assert err < 1e-6, (m.id, rng, err)


def test_discover_pairs_and_sorts(realdata):
    metas = discover([realdata])
    assert len(metas) == 10
    assert len({m.id for m in metas}) == 10
    paths = [m.image or m.source for m in metas]
    assert paths == sorted(paths)
    # Naming an image and its sidecar (or the same directory twice) still gives each frame once.
    again = discover([realdata / f"{NLF}.png", realdata / f"{NLF}-metadata.json", realdata / MER, realdata / MER])
    assert len(again) == 7


# -- synthetic files: formats, pairing, errors -------------------------------------------------


def _link(src, dst):
    try:
        os.symlink(src, dst)
    except OSError:
        shutil.copy(src, dst)


def _public_record(realdata):
    """The NLF tile's metadata in the public feed's shape (strings, nested, with attitude)."""
    d = json.loads((realdata / f"{NLF}-metadata.json").read_text())
    return {
        "imageid": d["imageid"],
        "sol": 670,
        "site": "32",
        "drive": "604",
        "attitude": "(0.174493,0.034765,0.0422949,-0.983135)",
        "camera": {
            "instrument": d["instrument"],
            "camera_model_type": d["camera_model_type"],
            "camera_model_component_list": d["camera_model_component_list"],
            "camera_position": d["camera_position"],
            "camera_vector": "(%r,%r,%r)" % tuple(d["camera_vector"]),
            "filter_name": "UNK",
        },
        "extended": {
            "mastAz": "1.19218",
            "mastEl": "-33.9935",
            "sclk": "726421425.133",
            "scaleFactor": "UNK",
            "xyz": d["xyz"],
            "subframeRect": "(1,1,1288,968)",
            "dimension": "(1288,968)",
        },
    }


def test_public_feed_record(realdata, tmp_path):
    rec = _public_record(realdata)
    (tmp_path / "tile.json").write_text(json.dumps(rec))
    _link(realdata / f"{NLF}.png", tmp_path / "tile.png")
    m = read_frame(tmp_path / "tile.png")
    ref = read_frame(realdata / f"{NLF}.png")
    assert m.source == str(tmp_path / "tile.json") and m.image == str(tmp_path / "tile.png")
    assert m.model == ref.model
    assert m.attitude == (0.174493, 0.034765, 0.0422949, -0.983135)
    assert (m.site, m.drive, m.mast_az, m.mast_el, m.sclk) == (32, 604, 1.19218, -33.9935, 726421425.133)
    assert m.downsample == 1 and m.subframe == (1, 1, 1288, 968)
    # With an attitude, LOCAL_LEVEL differs from the rover frame by that rotation.
    assert not np.allclose(m.model_local_level().A, m.model.A)


def test_record_without_image_uses_its_dimension(realdata, tmp_path):
    rec = _public_record(realdata)
    (tmp_path / "alone-metadata.json").write_text(json.dumps(rec))
    m = read_frame(tmp_path / "alone-metadata.json")
    assert m.image is None and (m.width, m.height) == (1288, 968)
    assert [x.id for x in discover([tmp_path])] == [m.id]


def test_record_dimension_disagreeing_with_image(realdata, tmp_path):
    rec = _public_record(realdata)
    rec["extended"]["dimension"] = "(1280,960)"
    (tmp_path / "t.json").write_text(json.dumps(rec))
    _link(realdata / f"{NLF}.png", tmp_path / "t.png")
    with pytest.raises(LabelError, match=r"t\.json: extended\.dimension: .*1288x968"):
        read_frame(tmp_path / "t.png")


def test_plain_photo_and_16_bit(tmp_path):
    img = (np.arange(40 * 30 * 3).reshape(30, 40, 3) % 65535).astype(np.uint16)
    cv2.imwrite(str(tmp_path / "p16.png"), img[:, :, ::-1])
    m = read_frame(tmp_path / "p16.png")
    assert (m.instrument, m.model, m.width, m.height, m.bands, m.bit_depth) == ("PHOTO", None, 40, 30, 3, 16)
    px = read_image(m)
    assert px.dtype == np.uint16 and np.array_equal(px, img)  # RGB order, 16 bits kept
    gray = np.full((10, 20), 7, np.uint8)
    cv2.imwrite(str(tmp_path / "g.jpg"), gray)
    assert read_image(read_frame(tmp_path / "g.jpg")).shape == (10, 20)


def test_bad_pixel_files(tmp_path):
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(InputError, match="empty.png: empty file"):
        read_frame(tmp_path / "empty.png")
    img = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".png", img)
    (tmp_path / "cut.png").write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(InputError, match="cut.png"):
        read_image(read_frame(tmp_path / "cut.png"))
    ok, buf = cv2.imencode(".jpg", img)
    (tmp_path / "cut.jpg").write_bytes(buf.tobytes()[: len(buf) * 2 // 3])
    with pytest.raises(InputError, match="cut.jpg: (truncated JPEG|cannot decode)"):
        read_image(read_frame(tmp_path / "cut.jpg"))
    # Cut just before its end marker (OpenCV 4 decoded that with a warning only; 5 refuses).
    (tmp_path / "noeoi.jpg").write_bytes(buf.tobytes()[:-2])
    with pytest.raises(InputError, match="noeoi.jpg: (truncated JPEG|cannot decode)"):
        read_image(read_frame(tmp_path / "noeoi.jpg"))
    (tmp_path / "junk.tif").write_bytes(b"not a tiff at all" * 10)
    with pytest.raises(InputError, match="junk.tif"):
        read_frame(tmp_path / "junk.tif")


def test_pixel_size_must_match_label(tmp_path):
    cv2.imwrite(str(tmp_path / "a.png"), np.zeros((10, 12), np.uint8))
    m = read_frame(tmp_path / "a.png").with_(width=13)
    with pytest.raises(InputError, match="12x10 pixels, the label/model says 13x10"):
        read_image(m)


def _pds3(tmp_path, name, body: str, pixels: bytes, record_bytes=512, image_record=3):
    label = (
        "PDS_VERSION_ID = PDS3\r\nRECORD_TYPE = FIXED_LENGTH\r\n"
        f"RECORD_BYTES = {record_bytes}\r\nLABEL_RECORDS = {image_record - 1}\r\n^IMAGE = {image_record}\r\n"
        + body
        + "END\r\n"
    ).encode()
    assert len(label) <= (image_record - 1) * record_bytes
    path = tmp_path / name
    path.write_bytes(label.ljust((image_record - 1) * record_bytes, b" ") + pixels)
    return path


CAHV_GROUP = """GROUP = GEOMETRIC_CAMERA_MODEL
  MODEL_TYPE = CAHV
  MODEL_COMPONENT_1 = (0.0,0.0,-1.5)
  MODEL_COMPONENT_2 = (1.0,0.0,0.0)
  MODEL_COMPONENT_3 = (2.0,500.0,0.0)
  MODEL_COMPONENT_4 = (1.5,0.0,500.0)
  REFERENCE_COORD_SYSTEM_NAME = ROVER_NAV_FRAME
END_GROUP = GEOMETRIC_CAMERA_MODEL
"""


@pytest.mark.parametrize(
    "stype,bits,dtype,storage",
    [
        ("LSB_UNSIGNED_INTEGER", 16, "<u2", "BAND_SEQUENTIAL"),
        ("MSB_INTEGER", 16, ">i2", "LINE_INTERLEAVED"),
        ("UNSIGNED_INTEGER", 8, "u1", "SAMPLE_INTERLEAVED"),
        ("IEEE_REAL", 32, ">f4", "BAND_SEQUENTIAL"),
        ("PC_REAL", 32, "<f4", "BAND_SEQUENTIAL"),
    ],
)
def test_pds3_sample_types(tmp_path, stype, bits, dtype, storage):
    lines, samples, bands = 5, 7, 2
    data = np.arange(lines * samples * bands).reshape(lines, samples, bands).astype(dtype)
    stored = {
        "BAND_SEQUENTIAL": data.transpose(2, 0, 1),
        "LINE_INTERLEAVED": data.transpose(0, 2, 1),
        "SAMPLE_INTERLEAVED": data,
    }[storage]
    body = (
        f"OBJECT = IMAGE\r\n LINES = {lines}\r\n LINE_SAMPLES = {samples}\r\n BANDS = {bands}\r\n"
        f" SAMPLE_TYPE = {stype}\r\n SAMPLE_BITS = {bits}\r\n BAND_STORAGE_TYPE = {storage}\r\nEND_OBJECT = IMAGE\r\n"
        + CAHV_GROUP
    )
    path = _pds3(tmp_path, "x.IMG", body, np.ascontiguousarray(stored).tobytes())
    m = read_frame(path)
    assert (m.width, m.height, m.bands, m.bit_depth, m.model.type) == (samples, lines, bands, bits, "CAHV")
    px = read_image(m)
    assert px.shape == (lines, samples, bands) and np.array_equal(px, data.astype(px.dtype))
    assert px.dtype.byteorder in ("=", "|")


def test_pds3_truncated_pixels(tmp_path):
    body = "OBJECT = IMAGE\r\n LINES = 4\r\n LINE_SAMPLES = 4\r\n SAMPLE_TYPE = MSB_INTEGER\r\n SAMPLE_BITS = 16\r\nEND_OBJECT = IMAGE\r\n"
    path = _pds3(tmp_path, "t.IMG", body, b"\0" * 20)
    m = read_frame(path)
    with pytest.raises(InputError, match=r"t\.IMG: truncated: .* needs 1056"):
        read_image(m)


def test_odl_syntax():
    text = """PDS_VERSION_ID = PDS3
/* comment */
A = "multi
     line  string"
B = (1.5 <m>, -2 <m>,
     3e-2 <m>)
C = 2#0000111111111111#
D =
   'next line'
GROUP = G
  E = {X, "Y Z"}
  OBJECT = O
    F = -7
  END_OBJECT = O
END_GROUP = G
END
IGNORED = 1
"""
    d = parse_label(text, "x.lbl")
    assert d["A"] == "multi line string" and d["B"] == (1.5, -2, 0.03) and d["C"] == 4095
    assert d["D"] == "next line" and d["G"]["E"] == ("X", "Y Z") and d["G"]["O"]["F"] == -7
    assert "IGNORED" not in d
    with pytest.raises(LabelError, match="x.lbl: G: block G is not closed"):
        parse_label("GROUP = G\nA = 1\n", "x.lbl")
    with pytest.raises(LabelError, match=r"x.lbl: A: line 1: unterminated"):
        parse_label("A = (1, 2\n", "x.lbl")


def test_duplicate_ids_and_two_sidecars(realdata, tmp_path):
    rec = _public_record(realdata)
    (tmp_path / "a.json").write_text(json.dumps(rec))
    (tmp_path / "b-metadata.json").write_text(json.dumps(rec))
    with pytest.raises(LabelError, match="duplicate frame id"):
        discover([tmp_path])
    other = tmp_path / "two"
    other.mkdir()
    _link(realdata / f"{NLF}.png", other / "t.png")
    (other / "t.json").write_text(json.dumps(rec))
    (other / "t-metadata.json").write_text(json.dumps(rec))
    with pytest.raises(LabelError, match="two labels describe this image"):
        discover([other])


def test_directory_skips_other_json(tmp_path):
    (tmp_path / "solution.json").write_text(json.dumps({"frames": [], "stats": {}}))
    (tmp_path / "notes.json").write_text("{ not json")
    cv2.imwrite(str(tmp_path / "p.png"), np.zeros((4, 6), np.uint8))
    assert [m.id for m in discover([tmp_path])] == ["p"]
    # Named explicitly, a JSON file must be a record.
    with pytest.raises(LabelError, match="solution.json"):
        discover([tmp_path / "solution.json"])
    with pytest.raises(InputError, match="no such file"):
        discover([tmp_path / "missing.png"])


# -- one typed error naming file and field, per malformed case --------------------------------

MALFORMED_JSON = [
    # (mutation of the metadata record, the field named in the error)
    (lambda d: d.update(camera_model_component_list=d["camera_model_component_list"].split(";", 1)[1]),
     "camera_model_component_list"),  # missing vector (8 of 9 components)
    (lambda d: d.update(camera_model_component_list=d["camera_model_component_list"].replace("(0.950849,0.349753,-1.89429)", "(0.950849,0.349753)")),
     r"camera_model_component_list\[0\]"),  # wrong count
    (lambda d: d.update(camera_model_component_list=d["camera_model_component_list"].replace("2041.2", "NaN")),
     r"camera_model_component_list\[2\]"),  # NaN
    (lambda d: d.update(camera_model_type="CAHVORX"), "camera_model_component_list.model_type"),  # unknown type
    (lambda d: d.update(camera_model_component_list=d["camera_model_component_list"].replace(";2;0.0", ";7;0.0")),
     "camera_model_component_list.T"),  # unknown CAHVORE type
    (lambda d: d.update(mast_az="north-ish"), "mast_az"),  # non-numeric
    (lambda d: d.update(attitude="(1,0,0)"), "attitude"),  # wrong-size quaternion
    (lambda d: d.update(subframe_rect=[1, 1, 1288]), "subframe_rect"),
]


@pytest.mark.parametrize("mutate,field", MALFORMED_JSON)
def test_malformed_json_records(realdata, tmp_path, mutate, field):
    d = json.loads((realdata / f"{NLF}-metadata.json").read_text())
    mutate(d)
    path = tmp_path / "bad-metadata.json"
    path.write_text(json.dumps(d))
    with pytest.raises(LabelError, match=rf"^{path}: {field}"):
        read_frame(path)


def test_truncated_json_record(realdata, tmp_path):
    raw = (realdata / f"{NLF}-metadata.json").read_bytes()
    path = tmp_path / "cut-metadata.json"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(LabelError, match=rf"^{path}: not valid JSON"):
        read_frame(path)


MALFORMED_PDS4 = [
    ("<geom:Vector_Horizontal>", "<geom:Vector_Horizontalx>", "CAHVORE_Model.Vector_Horizontal"),  # missing vector
    ("<geom:z_pixel>229.563</geom:z_pixel>", "", r"CAHVORE_Model.Vector_Horizontal: missing z"),  # wrong count
    ("<geom:c1>0.0501396</geom:c1>", "<geom:c1>NaN</geom:c1>", "CAHVORE_Model.Radial_Terms.c1"),  # NaN
    ("<geom:model_type>CAHVORE</geom:model_type>", "<geom:model_type>PSPH</geom:model_type>", "Camera_Model_Parameters.model_type"),
    ("<geom:cahvore_model_type>2</", "<geom:cahvore_model_type>9</", "CAHVORE_Model.T"),
    ("<geom:qsin3>-0.983135</geom:qsin3>", "", "Quaternion_Plus_Direction"),  # 3-element quaternion
    ("<elements>976</elements>", "<elements>lots</elements>", r"Array_3D_Image.Axis_Array\[Line\].elements"),
]


@pytest.mark.parametrize("old,new,field", MALFORMED_PDS4)
def test_malformed_pds4(realdata, tmp_path, old, new, field):
    text = (realdata / PDS4).read_text()
    assert old in text
    text = text.replace(old, new, 1)
    if "Horizontalx" in new:  # rename the element, closing tag too
        text = text.replace("</geom:Vector_Horizontal>", "</geom:Vector_Horizontalx>", 1)
    path = tmp_path / "bad.xml"
    path.write_text(text)
    with pytest.raises(LabelError, match=rf"^{path}: .*{field}"):
        read_frame(path)


def test_truncated_pds4(realdata, tmp_path):
    raw = (realdata / PDS4).read_bytes()
    path = tmp_path / "cut.xml"
    path.write_bytes(raw[:40000])
    with pytest.raises(LabelError, match=rf"^{path}: not well-formed XML"):
        read_frame(path)


MALFORMED_PDS3 = [
    ("  MODEL_COMPONENT_3               = (884.72,981.763,24.1472)\r\n", "", r"GEOMETRIC_CAMERA_MODEL.MODEL_COMPONENT_3: missing"),
    ("(884.72,981.763,24.1472)", "(884.72,981.763)      ", r"GEOMETRIC_CAMERA_MODEL.MODEL_COMPONENT_3: expected 3"),
    ("(884.72,981.763,24.1472)", "(884.72,NaN,24.14722)", r"GEOMETRIC_CAMERA_MODEL.MODEL_COMPONENT_3\[1\]"),
    ("MODEL_TYPE                      = CAHVOR", "MODEL_TYPE                      = CAHVQR", "GEOMETRIC_CAMERA_MODEL.MODEL_TYPE"),
    ("(0.580525,0.0333603,-0.128929,0.803278)", "(0.580525,0.0333603,-0.128929)         ", "ROVER_COORDINATE_SYSTEM.ORIGIN_ROTATION_QUATERNION: expected 4"),
    ("SAMPLE_TYPE                     = MSB_INTEGER", "SAMPLE_TYPE                     = VAX_FLOAT  ", "IMAGE.SAMPLE_TYPE"),
]


@pytest.mark.parametrize("old,new,field", MALFORMED_PDS3)
def test_malformed_pds3(realdata, tmp_path, old, new, field):
    raw = (realdata / MER / f"{MER_NAV[0]}.IMG").read_bytes()
    label = raw[: 13 * 2048].decode("latin-1")
    assert old in label
    label = label.replace(old, new, 1)
    label = label.ljust(13 * 2048)[: 13 * 2048] if len(label) <= 13 * 2048 else label
    path = tmp_path / "bad.IMG"
    path.write_bytes(label.encode("latin-1") + raw[13 * 2048 :])
    with pytest.raises(LabelError, match=rf"^{path}: {field}"):
        read_frame(path)


def test_truncated_pds3(realdata, tmp_path):
    raw = (realdata / MER / f"{MER_NAV[0]}.IMG").read_bytes()
    path = tmp_path / "cut.IMG"
    path.write_bytes(raw[:5000])
    with pytest.raises(LabelError, match=rf"^{path}: LABEL_RECORDS: truncated label"):
        read_frame(path)
    path.write_bytes(raw[: 30 * 2048])
    m = read_frame(path)  # the label is whole; the pixels are not
    with pytest.raises(InputError, match=rf"^{path}: truncated"):
        read_image(m)


def test_model_error_is_a_label_error():
    assert issubclass(ModelError, LabelError) and issubclass(LabelError, InputError)


# -- bare VICAR files ----------------------------------------------------------------------------


def test_bare_vicar_reads_like_its_pds3_wrapper(realdata, tmp_path):
    # A MER product is an ODL label followed by a complete VICAR file: cut it out and read it.
    src = realdata / MER / f"{MER_NAV[0]}.IMG"
    raw = src.read_bytes()
    vic = tmp_path / "frame.VIC"
    vic.write_bytes(raw[13 * 2048 :])
    a, b = read_frame(src), read_frame(vic)
    assert b.extra["format"] == "VICAR" and a.extra["format"] == "PDS3"
    for f in ("id", "instrument", "width", "height", "model", "model_frame", "attitude", "rover_position",
              "mast_az", "mast_el", "subframe", "site", "drive", "sclk", "bands", "bit_depth"):
        assert getattr(a, f) == getattr(b, f), f
    assert b.extra["site_instrument_azel"] == a.extra["site_instrument_azel"]
    assert np.array_equal(read_image(a), read_image(b))
    assert [m.id for m in discover([tmp_path])] == [a.id]


@pytest.mark.parametrize(
    "old,new,match",
    [
        (b"RECSIZE=2048", b"RECSIZE=2047", "RECSIZE: RECSIZE 2047 is not NBB 0 \\+ 2048"),
        (b"FORMAT='HALF'", b"FORMAT='COMP'", "FORMAT: unsupported pixel format 'COMP'"),
        (b"MODEL_COMPONENT_2=(0.93995,-0.338133,0.0464979)", b"MODEL_COMPONENT_2=(0.93995,-0.338133)          ",
         "GEOMETRIC_CAMERA_MODEL.MODEL_COMPONENT_2: expected 3 numbers"),
    ],
)
def test_malformed_bare_vicar(realdata, tmp_path, old, new, match):
    raw = (realdata / MER / f"{MER_NAV[0]}.IMG").read_bytes()[13 * 2048 :]
    assert old in raw
    path = tmp_path / "bad.VIC"
    path.write_bytes(raw.replace(old, new, 1))
    with pytest.raises(LabelError, match=rf"^{path}: {match}"):
        read_frame(path)
    path.write_bytes(raw[:9000])
    with pytest.raises(LabelError, match=rf"^{path}: LBLSIZE: truncated label"):
        read_frame(path)


def test_pds4_label_with_its_raw_image(realdata, tmp_path):
    # The label names NLF_..._095J01.IMG: 46656 header bytes, then 3 x 976 x 1296 bytes, band first.
    shutil.copy(realdata / PDS4, tmp_path / "label.xml")
    rng = np.random.default_rng(3)
    bands = rng.integers(0, 255, (3, 976, 1296), dtype=np.uint8)
    img = tmp_path / "NLF_0629_0722782785_631ECM_N0301344NCAM00427_06_095J01.IMG"
    img.write_bytes(b"\0" * 46656 + bands.tobytes())
    metas = discover([tmp_path])
    assert len(metas) == 1
    m = metas[0]
    assert m.image == str(img) and m.source == str(tmp_path / "label.xml")
    assert m.extra["raw_layout"].offset == 46656
    px = read_image(m)
    assert px.shape == (976, 1296, 3) and np.array_equal(px, bands.transpose(1, 2, 0))
    assert read_frame(img).source == m.source  # the image resolves to the label naming it
    img.write_bytes(b"\0" * 46656 + bands.tobytes()[:-1])
    with pytest.raises(InputError, match="truncated"):
        read_image(read_frame(img))


def test_pds4_label_with_a_browse_png(realdata, tmp_path):
    shutil.copy(realdata / PDS4, tmp_path / "tile.xml")
    cv2.imwrite(str(tmp_path / "tile.png"), np.zeros((976, 1296, 3), np.uint8))
    m = read_frame(tmp_path / "tile.png")
    assert m.source.endswith("tile.xml") and m.image.endswith("tile.png") and m.model.type == "CAHVORE"
    assert read_image(m).shape == (976, 1296, 3)
    cv2.imwrite(str(tmp_path / "tile.png"), np.zeros((968, 1288, 3), np.uint8))
    with pytest.raises(LabelError, match="label says 1296x976, the image .* is 1288x968"):
        read_frame(tmp_path / "tile.xml")
