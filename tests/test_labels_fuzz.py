"""Property: whatever is done to a real record or label, only a typed InputError escapes the readers.

Mutations: drop keys/elements/lines, replace values with junk ("UNK", "NaN", text, nested
objects, huge numbers), truncate the file at any byte, or replace it with random bytes. The
readers must either succeed (returning a FrameMeta whose model projects) or raise InputError
(LabelError/ModelError are its subclasses); nothing else, no hang.
"""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from calib.errors import InputError
from calib.labels import read_frame, read_image

NLF = "m20-navcam-mru-tiles/NLF_0670_0726421423_362ECM_N0320604NCAM08111_01_095J01-metadata.json"
PDS4 = "m20-pds4-label/nlf_0629_0722782785_631ecm_n0301344ncam00427_06_095j.xml"
MER = "mer-b-navcam-p0706/1N491020376ILFCNY9P0706L0M1.IMG"

# A numpy warning printed above the error would make it more than one line.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

FUZZ = settings(
    max_examples=int(os.environ.get("FUZZ_EXAMPLES", "60")),  # more: FUZZ_EXAMPLES=400
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)

JUNK = st.one_of(
    st.sampled_from(["UNK", "NaN", "nan", "inf", "-", "", "(", "(1,2", "(1,2,3,4,5)", "1e999", "0", "-1", "(0,0,0)",
                     "((1,2),3)", "(a,b,c)", "CAHV", "CAHVORE", "2", "7"]),
    st.text(max_size=12),
    st.integers(-10**6, 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.none(),
    st.lists(st.floats(allow_nan=True), max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)

def _fresh(tmp_path_factory, name):
    """A path of its own directory per file name, so that no sidecar of another test pairs with it."""
    base = tmp_path_factory.getbasetemp() / f"fuzz-{name}"
    base.mkdir(exist_ok=True)
    return base / name


def _check(path):
    """Read a frame; only InputError may escape. Returns the FrameMeta or None."""
    try:
        meta = read_frame(path)
    except InputError as e:
        assert str(e).startswith(str(path)) or str(path) in str(e), str(e)
        assert "\n" not in str(e)
        return None
    if meta.model is not None:
        pix = meta.model.project(meta.model.C + meta.model.A)
        assert pix.shape == (1, 2)
    return meta


@FUZZ
@given(data=st.data())
def test_json_record_mutations(realdata, tmp_path_factory, data):
    rec = json.loads((realdata / NLF).read_text())
    keys = sorted(rec)
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=4, unique=True), label="drop"):
        rec.pop(key)
    for key in data.draw(st.lists(st.sampled_from(keys), max_size=4, unique=True), label="junk"):
        rec[key] = data.draw(JUNK, label=key)
    comps = rec.get("camera_model_component_list")
    if isinstance(comps, str) and data.draw(st.booleans(), label="touch components"):
        parts = comps.split(";")
        i = data.draw(st.integers(0, len(parts) - 1), label="component")
        parts[i] = str(data.draw(JUNK, label="component value"))
        rec["camera_model_component_list"] = ";".join(parts)
    path = _fresh(tmp_path_factory, "rec-metadata.json")
    path.write_text(json.dumps(rec, allow_nan=True))
    _check(path)


@FUZZ
@given(cut=st.integers(0, 1597), noise=st.binary(max_size=64))
def test_json_record_bytes(realdata, tmp_path_factory, cut, noise):
    raw = (realdata / NLF).read_bytes()
    path = _fresh(tmp_path_factory, "cut-metadata.json")
    path.write_bytes(raw[:cut] + noise)
    _check(path)


_PDS4_VALUE = re.compile(r">([^<>\n]+)</")


@FUZZ
@given(data=st.data())
def test_pds4_mutations(realdata, tmp_path_factory, data):
    text = (realdata / PDS4).read_text()
    spans = [m.span(1) for m in _PDS4_VALUE.finditer(text)]
    # Bias towards the parts the reader uses: the model, frames, subframe and the array.
    start = text.index("<geom:Camera_Model_Parameters>")
    useful = [s for s in spans if s[0] > start] or spans
    edits = data.draw(st.lists(st.sampled_from(useful), max_size=4, unique=True), label="values")
    for a, b in sorted(edits, reverse=True):
        junk = data.draw(JUNK, label="value")
        text = text[:a] + str(junk).replace("<", "").replace("&", "") + text[b:]
    if data.draw(st.booleans(), label="drop element"):
        names = sorted(set(re.findall(r"<(geom:\w+|img:\w+|elements|offset|data_type)>", text)))
        name = data.draw(st.sampled_from(names), label="element")
        text = re.sub(rf"<{name}>.*?</{name}>", "", text, count=1, flags=re.S)
    path = _fresh(tmp_path_factory, "label.xml")
    path.write_text(text)
    _check(path)


@FUZZ
@given(cut=st.integers(0, 83228), noise=st.binary(max_size=32))
def test_pds4_bytes(realdata, tmp_path_factory, cut, noise):
    raw = (realdata / PDS4).read_bytes()
    path = _fresh(tmp_path_factory, "cut.xml")
    path.write_bytes(raw[:cut] + noise)
    _check(path)


class _Blob(bytes):
    """The MER product's bytes, with a short repr for hypothesis' failure reports."""

    def __repr__(self):
        return f"<{len(self)} bytes of {MER}>"


@pytest.fixture(scope="module")
def mer_bytes():
    from conftest import REALDATA

    if not REALDATA.is_dir():
        pytest.skip("../shared/realdata is not beside the repository")
    return _Blob((REALDATA / MER).read_bytes())


_ODL_LINE = re.compile(rb"(?m)^( *[A-Z_0-9^]+ *= *)([^\r\n]*)\r?$")


@FUZZ
@given(data=st.data())
def test_pds3_label_mutations(mer_bytes, tmp_path_factory, data):
    label = mer_bytes[: 13 * 2048]
    lines = [m for m in _ODL_LINE.finditer(label)]
    chosen = data.draw(st.lists(st.integers(0, len(lines) - 1), max_size=4, unique=True), label="lines")
    out = bytearray(label)
    for i in sorted(chosen, reverse=True):
        m = lines[i]
        if data.draw(st.booleans(), label="drop"):
            out[m.start() : m.end()] = b""
        else:
            junk = str(data.draw(JUNK, label="value")).encode("utf-8", "replace")
            out[m.start(2) : m.end(2)] = junk
    out = bytes(out).ljust(13 * 2048, b" ")[: 13 * 2048] if len(out) <= 13 * 2048 else bytes(out)
    path = _fresh(tmp_path_factory, "label.IMG")
    path.write_bytes(out + mer_bytes[13 * 2048 :])
    meta = _check(path)
    if meta is not None:
        try:
            px = read_image(meta)
        except InputError:
            return
        assert px.shape[:2] == (meta.height, meta.width)


@FUZZ
@given(cut=st.integers(0, 2140160), noise=st.binary(max_size=32))
def test_pds3_bytes(mer_bytes, tmp_path_factory, cut, noise):
    path = _fresh(tmp_path_factory, "cut.IMG")
    path.write_bytes(mer_bytes[:cut] + noise)
    meta = _check(path)
    if meta is not None:
        try:
            read_image(meta)
        except InputError:
            pass


@FUZZ
@given(blob=st.binary(max_size=512), suffix=st.sampled_from([".json", ".xml", ".IMG", ".VIC", ".png", ".jpg", ".tif"]))
def test_random_bytes(tmp_path_factory, blob, suffix):
    path = _fresh(tmp_path_factory, "random" + suffix)
    path.write_bytes(blob)
    meta = _check(path)
    if meta is not None and meta.image is not None:
        try:
            px = read_image(meta)
        except InputError:
            return
        assert isinstance(px, np.ndarray)


@FUZZ
@given(data=st.data())
def test_bare_vicar_mutations(mer_bytes, tmp_path_factory, data):
    vic = bytearray(mer_bytes[13 * 2048 :])
    label_end = 16384
    items = [m.span(2) for m in re.finditer(rb"([A-Z0-9_]+)=('[^']*'|\([^)]*\)|\S+)", bytes(vic[:label_end]))]
    for a, b in sorted(data.draw(st.lists(st.sampled_from(items), max_size=4, unique=True), label="items"), reverse=True):
        junk = str(data.draw(JUNK, label="value")).encode("utf-8", "replace")
        vic[a:b] = junk
    cut = data.draw(st.one_of(st.none(), st.integers(0, len(vic))), label="cut")
    path = _fresh(tmp_path_factory, "frame.VIC")
    path.write_bytes(bytes(vic[:cut]))
    meta = _check(path)
    if meta is not None:
        try:
            px = read_image(meta)
        except InputError:
            return
        assert px.shape[:2] == (meta.height, meta.width)


ODL_TEXT = st.text(alphabet=st.sampled_from(list("ABC_=()\"'{},<>/*# \n-.0123456789eE")), max_size=200)


@FUZZ
@given(text=ODL_TEXT)
def test_odl_parser_only_raises_label_errors(text):
    from calib.errors import LabelError
    from calib.labels.odl import parse_label

    try:
        out = parse_label(text, "x.lbl")
    except LabelError as e:
        assert str(e).startswith("x.lbl") and "\n" not in str(e)
    else:
        assert isinstance(out, dict)


@FUZZ
@given(data=st.data())
def test_pds4_with_raw_image_mutations(realdata, tmp_path_factory, data):
    """A small raw image beside the label, described by a mutated File_Area: reading its pixels
    raises InputError or gives the size the label states."""
    text = (realdata / PDS4).read_text()
    area = text.index("<File_Area_Observational>")
    small = text[area:].replace("<elements>976</elements>", "<elements>16</elements>")
    small = small.replace("<elements>1296</elements>", "<elements>24</elements>")
    small = small.replace('<offset unit="byte">46656</offset>', '<offset unit="byte">100</offset>')
    spans = [m.span(1) for m in _PDS4_VALUE.finditer(small)]
    for a, b in sorted(data.draw(st.lists(st.sampled_from(spans), max_size=3, unique=True), label="values"), reverse=True):
        small = small[:a] + str(data.draw(JUNK, label="value")).replace("<", "").replace("&", "") + small[b:]
    base = tmp_path_factory.getbasetemp() / "fuzz-pds4-raw"
    base.mkdir(exist_ok=True)
    (base / "label.xml").write_text(text[:area] + small)
    size = data.draw(st.integers(0, 100 + 3 * 16 * 24 + 8), label="image bytes")
    for old in base.glob("*.IMG"):
        old.unlink()
    (base / "NLF_0629_0722782785_631ECM_N0301344NCAM00427_06_095J01.IMG").write_bytes(b"\7" * size)
    meta = _check(base / "label.xml")
    if meta is not None and meta.image is not None:
        try:
            px = read_image(meta)
        except InputError:
            return
        assert px.shape[:2] == (meta.height, meta.width)
