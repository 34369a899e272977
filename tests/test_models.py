"""Camera models on the real CAHV/CAHVOR/CAHVORE models: derivatives and model algebra.

Derivatives are checked against central finite differences; the algebra (shift, scale, moved,
transformed, linear, to_opencv) against its definition and against OpenCV's own projection.
"""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from calib.labels import read_frame
from calib.models import CAHVORE, model_from_dict
from calib.rotation import matrix_to_rotvec, rotvec_to_matrix

FILES = {
    "mer_cahvor": "mer-b-navcam-p0706/1N491020376ILFCNY9P0706L0M1.IMG",
    "msl_cahvor": "msl-navcam-ncam00200/NRB_701383954RAS_F0933408NCAM00200M1.IMG",
    "m20_cahvore": "m20-navcam-mru-tiles/NLF_0670_0726421423_362ECM_N0320604NCAM08111_01_095J01.png",
    "m20_pds4_cahvore": "m20-pds4-label/nlf_0629_0722782785_631ecm_n0301344ncam00427_06_095j.xml",
}


def real_models(root):
    """(name, model, width, height) for each real model, plus the CAHV part of one and CAHVORE
    variants of the Navcam model with the other two mapping types (perspective, general)."""
    out = []
    for name, rel in FILES.items():
        m = read_frame(root / rel)
        out.append((name, m.model, m.width, m.height))
    _, nav, w, h = out[2]
    out.append(("m20_cahv", nav.linear(), w, h))
    d = nav.to_dict()
    out.append(("m20_cahvore_t1", model_from_dict({**d, "T": 1, "P": 0.0}), w, h))
    out.append(("m20_cahvore_t3", model_from_dict({**d, "T": 3, "P": 0.4}), w, h))
    out.append(("m20_cahvore_t3_neg", model_from_dict({**d, "T": 3, "P": -0.3}), w, h))
    return out


def field_points(model, width, height, n=7, ranges=(0.7, 3.0, 40.0)):
    """Points seen across the image (corners included) at several ranges."""
    xs = np.linspace(0, width - 1, n)
    ys = np.linspace(0, height - 1, n)
    pix = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
    o, d = model.backproject(pix)
    pts = np.concatenate([o + r * d for r in ranges])
    return pts[np.all(np.isfinite(pts), axis=1)]


@pytest.fixture
def models(realdata):
    return real_models(realdata)


def _num_jac_point(model, pts, h=1e-5):
    jac = np.zeros((len(pts), 2, 3))
    for k in range(3):
        e = np.zeros(3)
        e[k] = h
        jac[:, :, k] = (model.project(pts + e) - model.project(pts - e)) / (2 * h)
    return jac


def _num_jac_rot(model, pts, pivot, h=1e-7):
    jac = np.zeros((len(pts), 2, 3))
    for k in range(3):
        w = np.zeros(3)
        w[k] = h
        plus = model.moved(rotvec_to_matrix(w), pivot).project(pts)
        minus = model.moved(rotvec_to_matrix(-w), pivot).project(pts)
        jac[:, :, k] = (plus - minus) / (2 * h)
    return jac


def test_jacobian_wrt_point(models):
    for name, model, w, h in models:
        pts = field_points(model, w, h)
        pix, jp, jr = model.project_jacobian(pts)
        assert np.allclose(pix, model.project(pts), atol=1e-9, equal_nan=False)
        num = _num_jac_point(model, pts)
        # Relative to the size of the derivative: pixels per metre span 1e1..1e4 over these ranges.
        scale = np.abs(num).max(axis=(1, 2), keepdims=True)
        err = np.abs(jp - num) / scale
        assert err.max() < 1e-7, (name, err.max())  # measured: <= 1.2e-9


@pytest.mark.parametrize("pivot", ["camera", "rover"])
def test_jacobian_wrt_rotation(models, pivot):
    for name, model, w, h in models:
        pts = field_points(model, w, h)
        piv = model.C if pivot == "camera" else np.zeros(3)
        _, _, jr = model.project_jacobian(pts, pivot=None if pivot == "camera" else piv)
        num = _num_jac_rot(model, pts, piv)
        scale = np.abs(num).max(axis=(1, 2), keepdims=True)
        err = np.abs(jr - num) / scale
        assert err.max() < 1e-6, (name, pivot, err.max())  # measured: <= 3.4e-9


def test_round_trip_including_variants(models):
    for name, model, w, h in models:
        xs = np.linspace(0, w - 1, 64)
        ys = np.linspace(0, h - 1, 64)
        pix = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)
        o, d = model.backproject(pix)
        for rng in (1.0, 100.0):
            err = np.abs(model.project(o + rng * d) - pix).max()
            assert err < 1e-6, (name, rng, err)


def test_shift_and_scale(models):
    for name, model, w, h in models:
        pts = field_points(model, w, h)
        pix = model.project(pts)
        assert np.allclose(model.shift(100.5, -20.0).project(pts), pix - [100.5, -20.0], atol=1e-7), name
        assert np.allclose(model.scale(2).project(pts), pix / 2, atol=1e-7), name
        assert np.allclose(model.scale(2, 4).project(pts), pix / [2, 4], atol=1e-7), name
        # Back-projection moves with the pixels.
        _, d0 = model.backproject(pix)
        _, d1 = model.shift(7, 3).scale(2).backproject((pix - [7, 3]) / 2)
        assert np.allclose(d0, d1, atol=1e-9), name


def test_moved_and_transformed(models):
    r = rotvec_to_matrix([0.1, -0.25, 0.4])
    t = np.array([3.0, -1.0, 0.5])
    for name, model, w, h in models:
        pts = field_points(model, w, h)
        pix = model.project(pts)
        for pivot in (None, np.array([0.3, 0.2, -1.0])):
            piv = model.C if pivot is None else pivot
            moved = model.moved(r, pivot)
            assert np.allclose(moved.project(piv + (pts - piv) @ r.T), pix, atol=1e-7), name
        tr = model.transformed(r, t)
        assert np.allclose(tr.project(pts @ r.T + t), pix, atol=1e-7), name
        # R, E (and T, P) live in the camera's frame: unchanged.
        d0, d1 = model.to_dict(), tr.to_dict()
        for key in ("R", "E", "T", "P"):
            assert d0.get(key) == d1.get(key), (name, key)


def test_linear_is_the_cahv_part(models):
    for name, model, w, h in models:
        lin = model.linear()
        assert lin.type == "CAHV"
        pts = field_points(model, w, h)
        d = pts - model.C
        x = (d @ model.H) / (d @ model.A)
        y = (d @ model.V) / (d @ model.A)
        assert np.allclose(lin.project(pts), np.stack([x, y], 1), atol=1e-9), name
    # A CAHVOR with no distortion (R = 0) is its CAHV part.
    name, model, w, h = models[0]
    flat = model_from_dict({**model.to_dict(), "R": [0, 0, 0]})
    pts = field_points(flat, w, h)
    assert np.allclose(flat.project(pts), flat.linear().project(pts), atol=1e-9)


def test_to_opencv_matches_project_points(models):
    for name, model, w, h in models:
        k, rot, t = model.to_opencv()
        assert np.allclose(rot @ rot.T, np.eye(3), atol=1e-9) and np.linalg.det(rot) > 0
        assert np.allclose(rot[2], model.A)
        pts = field_points(model, w, h)
        cahv = model.linear().project(pts)
        cam = pts @ rot.T + t
        manual = (cam @ k.T)[:, :2] / cam[:, 2:]
        assert np.allclose(manual, cahv, atol=1e-6), name
        # cv2.projectPoints ignores K's skew term K[0, 1]; real H and V are not quite orthogonal
        # (MER: 0.51 px skew, 0.43 px at the image's bottom edge), so add it back.
        ocv, _ = cv2.projectPoints(pts.reshape(-1, 1, 3), cv2.Rodrigues(rot)[0], t, k, None)
        ocv = ocv.reshape(-1, 2)
        ocv[:, 0] += k[0, 1] * cam[:, 1] / cam[:, 2]
        assert np.allclose(ocv, cahv, atol=1e-6), name
        # The principal point and focal lengths are the CAHV intrinsics.
        hc, vc, hs, vs = model.intrinsics()
        assert np.isclose(k[0, 2], hc) and np.isclose(k[1, 2], vc) and np.isclose(k[1, 1], vs)
        assert abs(k[0, 0] - hs) / hs < 1e-3  # hs up to the (tiny) skew of H against V


def test_rotation_helpers_round_trip():
    rng = np.random.default_rng(1)
    for _ in range(20):
        w = rng.normal(size=3)
        w *= rng.uniform(0, 3.0) / np.linalg.norm(w)
        assert np.allclose(matrix_to_rotvec(rotvec_to_matrix(w)), w, atol=1e-9)


def test_cahvore_type_checks():
    base = dict(C=[0, 0, 0], A=[1, 0, 0], H=[0, 100, 0], V=[0, 0, 100], O=[1, 0, 0], R=[0, 0, 0], E=[0, 0, 0])
    assert CAHVORE(**base, T=2, P=0.0).linearity == 0.0
    assert CAHVORE(**base, T=1, P=0.7).linearity == 1.0
    assert CAHVORE(**base, T=3, P=0.7).linearity == 0.7


def test_fisheye_does_not_fold_directions_behind_into_the_image():
    """A T=2 CAHVORE's radial polynomial turns over near 120 deg off axis; beyond it the forward
    map would bring directions from behind the camera back into the image. They must not project."""
    from calib.models import CAHVORE
    from calib.rotation import azel_to_vector

    m = CAHVORE(C=(0.950849, 0.349753, -1.89429), A=(0.824195, 0.0290508, 0.565575),
                H=(2041.2, 3032.24, 1457.62), V=(-71.0941, 9.0217, 3538), O=(0.824089, 0.0304646, 0.565654),
                R=(0.000001736, 0.0501396, -0.0171254), E=(-8e-9, 1e-8, -2.9e-8), T=2, P=0.0)
    az, el = np.meshgrid(np.arange(0, 360, 2.0), np.arange(-89, 90, 2.0))
    d = azel_to_vector(az.ravel(), el.ravel())
    p = m.project(m.C + 100 * d)
    inside = (p[:, 0] >= -0.5) & (p[:, 0] < 5119.5) & (p[:, 1] >= -0.5) & (p[:, 1] < 3839.5)
    off_axis = np.degrees(np.arccos(d @ m.A))
    assert off_axis[inside].max() < 62  # the sensor's corners are ~60 deg off axis
    assert not np.isfinite(p[off_axis > 125]).any()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_implausible_vectors_are_one_clear_error_without_numpy_warnings():
    """Values whose squares overflow (or underflow) in the degeneracy checks are refused by name,
    before numpy would print an overflow warning above the error line; a model that cannot map a
    point gives NaN quietly (found by tests/test_bad_input.py's fuzzing)."""
    from calib.errors import ModelError

    good = {"type": "CAHV", "C": [0, 0, 0], "A": [1, 0, 0], "H": [640, 1000, 0], "V": [480, 0, 1000]}
    with pytest.raises(ModelError, match="implausibly large"):
        model_from_dict(dict(good, A=[1e200, 0, 0]))
    with pytest.raises(ModelError, match="implausibly large"):
        model_from_dict(dict(good, H=[640, 1e13, 0]))
    with pytest.raises(ModelError, match="zero-length"):
        model_from_dict(dict(good, V=[1e-200, 0, 1e-200]))
    m = model_from_dict(dict(good, type="CAHVOR", O=[1, 0, 0], R=[0, 1e11, 1e11]))
    _, d = m.backproject([[0.0, 0.0], [1e9, 1e9]])  # far out, the radial terms overflow
    assert d.shape == (2, 3)
    assert m.project([[1.0, 1e150, 0.0]]).shape == (1, 2)


def test_an_input_error_is_one_line_whatever_the_input_holds():
    from calib.errors import InputError

    e = InputError("odd\nname.json", "model in '\\n', expected\nLOCAL_LEVEL", field="frame")
    assert "\n" not in str(e) and "\r" not in str(e)
    assert str(e).startswith("odd\\nname.json: frame: ")
