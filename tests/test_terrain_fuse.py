"""The mechanisms that keep blunders out of the DEM, each on a case built to need it: the fill's
normalisation and its refusal to bridge a step, the neighbourhood test, the mirrored left-right
check, the near field inside the search, the ortho's gains, and stage keys that hash code."""

from __future__ import annotations

import importlib
import sys

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from mosaic.terrain import fuse as fusemod
from mosaic.terrain import grid as gridmod
from mosaic.terrain import ortho
from mosaic.terrain.disparity import MatchSettings, disparity

GSD = 0.02


def _spec(n=96, tile=96, halo=20):
    return gridmod.GridSpec(gridmod.Affine(GSD, 0, 0, 0, -GSD, 0), n, n, tile=tile, halo=halo)


def _points(col, row, height, sigma=0.002, pair=0, value=None):
    """POINT_FIELDS rows; the error vector points straight up (sigma is a height error)."""
    n = len(col)
    value = np.full(n, 0.5) if value is None else value
    return np.array([col, row, height, value, np.full(n, sigma), np.zeros(n), np.zeros(n), np.full(n, pair)],
                    np.float32)


def _plane(col, row):
    return 0.3 + 0.004 * col - 0.006 * row  # a 20 % / 30 % slope in metres per cell of 2 cm


def test_fill_is_exact_on_a_plane():
    """A sloping plane sampled along every ninth row and column (holes of 8 x 8 cells): every hole
    cell is filled with the plane's own height. The fill interpolates between the two sides of a
    gap; the blur it replaces re-used filled cells without counting them and, measured on this
    very case, put cells up to 8.5 m off the plane."""
    spec = _spec()
    rr, cc = np.mgrid[0:96, 0:96]
    lines = (rr % 9 == 0) | (cc % 9 == 0)
    col, row = cc[lines] + 0.5, rr[lines] + 0.5
    g = fusemod.grid_tile(spec, (0, 0), _points(col, row, _plane(col - 0.5, row - 0.5)),
                          fusemod.FuseSettings(fill=8, pointing_sigma_deg=0.0))
    inner = (slice(0, 91), slice(0, 91))  # the last sampled row and column close the holes
    assert np.isfinite(g["height"][inner]).all()
    assert g["filled"][inner].sum() == 10 * 10 * 8 * 8
    assert np.abs(g["height"][inner] - _plane(cc, rr)[inner]).max() < 2e-5
    assert np.isnan(g["height"][95, 95])  # nothing grows past the data's outer edge


def test_no_fill_across_a_step():
    """A gap of 6 cells between ground and a 30 cm step is left open; the same gap on flat ground
    is filled. The sides differ by more than max(3 sigma, 10 cm) only across the step."""
    spec = _spec()
    rr, cc = np.mgrid[0:96, 0:96]
    keep = ~((cc >= 40) & (cc < 46))  # a 6-cell-wide empty band from top to bottom
    height = np.where(cc >= 46, 0.3, 0.0) * (rr < 48)  # the step exists in the upper half only
    col, row = cc[keep] + 0.5, rr[keep] + 0.5
    g = fusemod.grid_tile(spec, (0, 0), _points(col, row, height[keep]),
                          fusemod.FuseSettings(fill=8, pointing_sigma_deg=0.0))
    band = (slice(None), slice(40, 46))
    upper, lower = g["height"][band][:48], g["height"][band][48:]
    assert np.isnan(upper[1:-1]).all()        # across the step: nodata
    # Flat: filled, exactly (beyond the diagonals' reach of the step, which also refuse a cell,
    # and of the grid's edge, where the band is open and no hole).
    assert np.isfinite(lower[10:-6]).all() and np.abs(lower[10:-6]).max() < 1e-6


def test_fusion_rejects_an_injected_spike():
    """Ground sampled three times per cell, plus a 10 x 10 cm patch of wrong matches 1.5 m below
    it (as a mismatch lands) and single wild samples among good ones: no cell keeps the error."""
    spec = _spec()
    rng = np.random.default_rng(5)
    rr, cc = np.mgrid[0:96, 0:96]
    col = np.repeat(cc.ravel(), 3) + rng.uniform(0, 1, 96 * 96 * 3)
    row = np.repeat(rr.ravel(), 3) + rng.uniform(0, 1, 96 * 96 * 3)
    height = _plane(col - 0.5, row - 0.5) + rng.normal(0, 0.002, col.size)
    patch = (col >= 30) & (col < 35) & (row >= 50) & (row < 55)
    height[patch] -= 1.5                          # a patch of wrong matches, every sample of 25 cells
    wild = rng.choice(np.flatnonzero(~patch), 40, replace=False)
    height[wild] += 2.0                           # and isolated wild samples
    pts = _points(col, row, height)
    g = fusemod.grid_tile(spec, (0, 0), pts, fusemod.FuseSettings(fill=0, pointing_sigma_deg=0.0))
    r, c = np.mgrid[0:96, 0:96]
    err = np.abs(g["height"] - _plane(c, r))
    assert np.nanmax(err) < 0.02 and np.isnan(g["height"][50:55, 30:35]).all()
    # Without the neighbourhood test the patch survives (the injection is a real blunder).
    off = fusemod.grid_tile(spec, (0, 0), pts, fusemod.FuseSettings(fill=0, outlier_m=np.inf, gross_m=np.inf,
                                                                   pointing_sigma_deg=0.0))
    assert np.nanmax(np.abs(off["height"] - _plane(c, r))) > 1.0


def test_fusion_rejects_a_patch_that_fills_its_own_neighbourhood():
    """A 70 x 70 cm patch of wrong matches 20 m below the ground (a near-field corner matched far
    out) is its own 3 x 3-block neighbourhood; the widest neighbourhood's median still shows it."""
    spec = _spec()
    rr, cc = np.mgrid[0:96, 0:96]
    col, row = cc.ravel() + 0.5, rr.ravel() + 0.5
    height = _plane(col - 0.5, row - 0.5)
    patch = (col >= 10) & (col < 45) & (row >= 10) & (row < 45)
    height[patch] -= 20.0
    pts = _points(col, row, height, sigma=0.05)
    r, c = np.mgrid[0:96, 0:96]
    g = fusemod.grid_tile(spec, (0, 0), pts, fusemod.FuseSettings(fill=0, pointing_sigma_deg=0.0))
    assert np.isnan(g["height"][10:45, 10:45]).all() and np.nanmax(np.abs(g["height"] - _plane(c, r))) < 1e-5
    off = fusemod.grid_tile(spec, (0, 0), pts, fusemod.FuseSettings(fill=0, gross_m=np.inf, pointing_sigma_deg=0.0))
    assert np.nanmax(np.abs(off["height"] - _plane(c, r))) > 19.0


def _texture(h, w, seed=0):
    img = gaussian_filter(np.random.default_rng(seed).uniform(0, 1, (h, w)), 1.2)
    return ((img - img.min()) / (img.max() - img.min())).astype(np.float32)


def test_lr_check_removes_an_injected_false_match():
    """The right view is the left shifted by 16 px; a 40 x 40 px patch of the left is replaced by
    a copy of texture from 40 px to its left, so it truly matches the right image 40 px off, at a
    disparity of 56 px that the right view does not confirm (its pixels there match with 16)."""
    h, w, d0 = 160, 240, 16
    base = _texture(h, w + d0)
    left = base[:, :w].copy()
    right = base[:, d0:d0 + w].copy()  # right(x - d0) = left(x)
    left[60:100, 140:180] = left[60:100, 100:140]  # the injected false match
    valid = np.ones((h, w), bool)
    s = MatchSettings(min_texture=0.0)
    with_check = disparity(left, right, valid, valid, 80.0, s)
    without = disparity(left, right, valid, valid, 80.0, MatchSettings(min_texture=0.0, lr_check=False))
    inside = (slice(64, 96), slice(146, 176))
    assert np.nanmedian(without.disparity[inside]) == pytest.approx(56, abs=1)  # the injection matches
    d = with_check.disparity[inside]
    assert np.isfinite(d).sum() < 0.05 * d.size  # the check removes the false match
    good = with_check.disparity[10:50, 40:200]
    assert np.isfinite(good).mean() > 0.9 and np.nanmax(np.abs(good - d0)) < 1.0  # and keeps the true ones
    assert np.all(with_check.sigma[np.isfinite(with_check.disparity)] > 0)  # every match has a confidence


def test_near_field_is_inside_the_search():
    """A disparity of 110 px on 0.4 % of the pixels (a near-field corner) among 20 px elsewhere:
    the search reaches the geometric limit (f b / nearest depth), not a percentile of a coarse
    pass (which cut the largest 0.5 % before), and the corner is matched at its true disparity."""
    h, w, n = 400, 640, 32
    base = _texture(h, w + 20, seed=3)
    left = base[:, :w].copy()
    right = base[:, 20:20 + w].copy()  # disparity 20 everywhere...
    # ...except a corner patch whose right-image partner is 110 px to the left.
    patch = _texture(n, n, seed=4)
    left[h - n:, w - n:] = patch
    right[h - n:, w - n - 110:w - 110] = patch
    valid = np.ones((h, w), bool)
    m = disparity(left, right, valid, valid, 128.0, MatchSettings(min_texture=0.0))
    assert m.searched[0] <= 20 and m.searched[1] >= 128
    d = m.disparity[h - n + 4:h - 4, w - n + 4:w - 4]
    assert np.isfinite(d).mean() > 0.8 and np.nanmedian(d) == pytest.approx(110, abs=0.5)


def test_gains_balance_overlapping_pairs():
    """Three pairs in a row, each overlapping the next, exposed at 1.2, 1.0 and 0.8: the gains
    undo the ratios and keep the mean log gain at 0 (the mean gain at 1)."""
    idx = [np.arange(0, 60), np.arange(40, 100), np.arange(80, 140)]
    albedo = np.random.default_rng(2).uniform(0.2, 0.8, 140)
    exposure = [1.2, 1.0, 0.8]
    gains, rep = ortho.solve_gains([(i, albedo[i] * e) for i, e in zip(idx, exposure)])
    assert np.allclose(gains * exposure, np.exp(np.mean(np.log(exposure))), rtol=1e-6)
    assert abs(np.log(gains).sum()) < 1e-9
    assert rep["max_log_ratio_before"] == pytest.approx(np.log(1.0 / 0.8), rel=1e-9) and rep["max_log_ratio_after"] < 1e-5
    alone, _ = ortho.solve_gains([(idx[0], albedo[idx[0]]), (np.arange(500, 510), np.ones(10))])
    assert np.allclose(alone, 1.0)  # pairs that overlap nothing keep their brightness


def test_code_key_follows_the_code(tmp_path, monkeypatch):
    """A stage key hashes the source of every module named, a package standing for all of its
    modules: editing any of them changes the key; the single-module call still works."""
    from mosaic.pipeline.stages import code_key

    pkg = tmp_path / "kpkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "algo.py").write_text("X = 1\n")
    (tmp_path / "kmod.py").write_text("Y = 1\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    importlib.invalidate_caches()
    before = code_key("kpkg", "kmod")
    one = code_key("kmod")
    (pkg / "sub" / "algo.py").write_text("X = 2\n")
    assert code_key("kpkg", "kmod") != before and code_key("kmod") == one
    (tmp_path / "kmod.py").write_text("Y = 2\n")
    assert code_key("kmod") != one
    with pytest.raises(ModuleNotFoundError):
        code_key("no_such_module_here")
    sys.modules.pop("kpkg", None)
