"""Seamless rendering of real-looking frames: valid-pixel margins and alpha, the photometric model
(highlights, bit depth, exposure and vignetting recovery), seams that avoid differences, tiles
that agree exactly, and the measures that report it (edge visibility, overlap agreement)."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
import rasterio

from mosaic.products.seamless import edge_visibility
from mosaic.render import masks, photometry, render_panorama, seams
from mosaic.render import truthworld as tw
from mosaic.render.warp import read_image, read_pixels

RES = 0.25


def _focal(width, hfov):
    return (width / 2.0) / np.tan(np.radians(hfov) / 2.0)


@pytest.fixture(scope="module")
def world():
    return tw.world(900, seed=3)


def _ring(world, folder, n=8, gains=None, grey=False, bit_depth=8):
    specs = tw.ring_specs(n, 240, 180, _focal(240, 60.0), el=0.0, az0=5.0, gains=gains)
    return tw.write_frames(folder, world, specs, grey=grey, bit_depth=bit_depth)


def _frames_of(sol):
    data = json.loads(open(sol).read())
    return [sol.parent / f["image"] for f in data["frames"]]


def _blank_borders(path, rows=(3, 2), cols=(3, 2), rng=None):
    """Give a frame the dark borders of a linearised Curiosity product (as mosaic synth does)."""
    from mosaic.synth.render import dark_borders

    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    dark_borders(img, rng or np.random.default_rng(0))
    cv2.imwrite(str(path), img)


# -- valid-pixel masks ------------------------------------------------------------------------------

def test_margins_from_zero_fill_and_dim_columns_not_from_scene_edges():
    rng = np.random.default_rng(1)
    img = (120 + 40 * rng.random((200, 300))).astype(np.uint8)
    clean = img.copy()
    from mosaic.synth.render import dark_borders

    dark_borders(img, rng)
    m = masks.detect_margins(img)
    # 3 blank rows + 1, 2 blank rows + 1; blank, ragged and dim columns (3) + 1; dim and ragged (2) + 1.
    assert m.as_list() == [4, 3, 4, 3]
    # A dark scene line along an edge row, a gradient, a textured frame: no border.
    clean[5:9] = 20
    clean[:, :40] = (clean[:, :40] * np.linspace(0.5, 1.0, 40)).astype(np.uint8)
    assert masks.detect_margins(clean).as_list() == [0, 0, 0, 0]
    # Bright odd columns (Opportunity's inverse-LUT frames) count too.
    bright = (1000 + 50 * rng.random((200, 300))).astype(np.uint16)
    bright[:, 0] = bright[:, 0] * 3
    bright[:, 1] = (bright[:, 1] * 1.2).astype(np.uint16)
    assert masks.detect_margins(bright).left == 3


def test_margins_of_real_frames(realdata):
    """Opportunity's five Navcam frames: 2-3 bright columns at each side, nothing at the top."""
    for p in sorted((realdata / "mer-b-navcam-p0706").glob("1N*.IMG")):
        m = masks.detect_margins(read_image(p))
        assert m.top == 0 and m.bottom == 0 and 2 <= m.left <= 3 and m.right == 2, (p.name, m)


@pytest.mark.parametrize("mode", ["RGBA", "LA"])
def test_alpha_band_is_kept_and_grey_alpha_stays_grey(tmp_path, mode):
    from PIL import Image

    rng = np.random.default_rng(2)
    a = rng.integers(0, 255, (20, 30, 4 if mode == "RGBA" else 2), dtype=np.uint8)
    a[..., -1] = 255
    a[5:8, :, -1] = 0
    Image.fromarray(a, mode).save(tmp_path / "f.png")
    img, alpha = read_pixels(tmp_path / "f.png")
    assert img.shape == ((20, 30, 3) if mode == "RGBA" else (20, 30))
    assert alpha is not None and (alpha[5:8] == 0).all() and (alpha[:5] == 255).all()


def test_dark_borders_do_not_show(world, tmp_path):
    """Frames with blank rows and dim columns at their edges: without margins they leave dark
    lines in the panorama wherever they own pixels up to their edge."""
    sol = _ring(world, tmp_path / "f", grey=True)
    for p in _frames_of(sol):
        _blank_borders(p)
    r = render_panorama(sol, tmp_path / "out", resolution=RES, gains=False)
    with rasterio.open(r["panorama"]) as ds:
        a = ds.read()
    cov = a[-1] > 0
    grey = a[0].astype(float)
    # The world is at least 0.02 x 255 everywhere: a border pixel would be darker.
    assert grey[cov].min() > 4, grey[cov].min()
    assert all(m == [4, 3, 4, 3] for m in r["margins"].values())
    assert edge_visibility(r["panorama"], sol)["ratio"] < 1.0


def test_alpha_hides_pixels(world, tmp_path):
    sol = _ring(world, tmp_path / "f")
    paths = _frames_of(sol)
    img = cv2.imread(str(paths[0]))
    bgra = cv2.cvtColor(img, cv2.COLOR_BGR2BGRA)
    bgra[:, :120, :3] = 0  # black paint, transparent: the neighbour must show there
    bgra[:, :120, 3] = 0
    cv2.imwrite(str(paths[0]), bgra)
    r = render_panorama(sol, tmp_path / "out", resolution=RES, gains=False)
    with rasterio.open(r["panorama"]) as ds:
        a = ds.read()
    grey = a[:3].astype(float).mean(axis=0)
    assert grey[a[-1] > 0].min() > 4


# -- photometry -------------------------------------------------------------------------------------

def test_white_level_follows_the_data():
    assert photometry.white_level([4079.0, 2100.0], "uint16") == 4095.0
    assert photometry.white_level([250.0], "uint8") == 255.0
    assert photometry.white_level([60000.0], "uint16") == 65535.0
    assert photometry.white_level([0.8], "float32") == 1.0


def test_clipped_pixels_stay_white_in_a_darkened_frame():
    t = photometry.Tone(gain=(0.5,), white=4095.0, knee=photometry.KNEE * 4095.0)
    v = np.array([[4095.0], [4000.0], [2000.0], [100.0]])
    r = photometry.render_values(t, np.zeros(4), np.zeros(4), v)[:, 0]
    assert r[0] == 4095.0  # clipped: the top of the range, not 2047
    assert r[2] == pytest.approx(1000.0) and r[3] == pytest.approx(50.0)
    assert r[0] > r[1] > r[2]  # monotone through the roll-off


def test_clipped_sky_stays_white_in_the_panorama(world, tmp_path):
    """12-bit frames in 16-bit PNGs, one frame overexposed (clipped at 4095) and darkened by the
    fit: its clipped pixels render at 4095, not at its gain times 4095."""
    gains = [1.0, 1.0, 1.0, 1.6, 1.0, 1.0, 1.0, 1.0]
    sol = _ring(world, tmp_path / "f", gains=gains, grey=True, bit_depth=16)
    for p in _frames_of(sol):  # 16-bit container, 12-bit data
        a = cv2.imread(str(p), cv2.IMREAD_UNCHANGED).astype(float) / 65535 * 4095
        cv2.imwrite(str(p), np.clip(np.rint(a), 0, 4095).astype(np.uint16))
    r = render_panorama(sol, tmp_path / "out", resolution=RES)
    t = r["tones"]
    assert all(v["white"] == 4095.0 for v in t.values())
    assert sorted(r["gains"].values())[0] < 0.7  # the bright frame is darkened
    with rasterio.open(r["panorama"]) as ds:
        a = ds.read()
    assert a.dtype == np.uint16 and a[0][a[1] > 0].max() == 4095


def test_exposures_recovered_from_overlaps(world, tmp_path):
    ex = [1.0, 0.85, 1.15, 0.92, 1.1, 0.88, 1.12, 0.95]
    sol = _ring(world, tmp_path / "f", gains=ex)
    r = render_panorama(sol, tmp_path / "out", resolution=RES)
    g = np.array(list(r["gains"].values()))
    assert np.std(np.log(g * np.array(ex))) < 0.01
    assert r["photometry"]["model"] in ("exposure", "exposure+vignetting")  # nothing else is there



def test_one_camera_is_one_lens_whatever_its_estimated_focal_lengths():
    """Plain photos of one camera get a focal length each, scattered by parallax (the Curiosity
    pan's: 1057-1406 px): still one lens, and a sensor pixel has the same field position in
    every frame; a zoom step (34 mm against 26 mm: 31 % longer) is another lens."""
    focals = [1057.3, 1155.1, 1167.9, 1178.6, 1196.2, 1218.6, 1265.2, 1323.9, 1358.7, 1406.0]
    lenses = [photometry.Lens((511.5, 511.5), f) for f in focals]
    groups, radii = photometry.lens_groups(lenses, [(1024, 1024)] * len(focals))
    assert groups == [0] * len(focals) and radii == [pytest.approx(np.hypot(512, 512))]
    zoom = [photometry.Lens((511.5, 511.5), f) for f in (1000.0, 1010.0, 1310.0, 1320.0)]
    assert photometry.lens_groups(zoom, [(1024, 1024)] * 4)[0] == [0, 0, 1, 1]
    # The fitted tones agree: the same vignetting at the same pixel of each frame.
    rng = np.random.default_rng(1)
    xy = rng.uniform(50, 970, (200, 2))
    samples = [photometry.PairSamples(k, k + 1, xy, xy, np.full((200, 1), 100.0, np.float32),
                                      np.full((200, 1), 100.0, np.float32), np.ones(200, np.float32))
               for k in range(len(focals) - 1)]
    tones, _ = photometry.solve(len(focals), 1, samples, lenses, [(1024, 1024)] * len(focals), 255.0)
    assert len({t.norm for t in tones}) == 1


def test_tie_copies_are_held_out_together():
    """The registration lists one place several times (SIFT orientations): every third distinct
    tie is held out with all its copies, and the fit and the measure see each distinct tie once."""
    rng = np.random.default_rng(2)
    distinct = np.column_stack([np.zeros(60), np.ones(60), rng.uniform(0, 500, (60, 4))])
    copies = rng.integers(1, 4, 60)  # one to three entries in a row, as the matches list them
    ties = np.repeat(distinct, copies, axis=0)
    fit, held = photometry.tie_roles(ties)
    assert not (fit & held).any() and (fit | held).sum() == 60
    assert held.sum() == 20
    as_set = lambda m: {tuple(r) for r in ties[m]}  # noqa: E731
    assert not as_set(fit) & as_set(held)  # no held-out tie is also in the fit
    assert [tuple(r) for r in ties[held]] == [tuple(r) for r in distinct[::3]]


def test_fit_balances_a_lopsided_pair_at_its_median():
    """A pair whose tie points scatter widely and to one side (a sixth of them 8-20 % off, as on
    the Curiosity ring) is balanced at its median, which the agreement measure reports: weights
    that fall to nothing beyond a few sigma of the pan's pooled scale (Cauchy's) left it at the
    mode of the rest, 0.46 % off."""
    rng = np.random.default_rng(0)

    def pair(i, j, d):
        xy = rng.uniform(100, 500, (len(d), 2))
        return photometry.PairSamples(i, j, xy, xy, (100 * np.exp(d))[:, None].astype(np.float32),
                                      np.full((len(d), 1), 100.0, np.float32), np.ones(len(d), np.float32))

    d = np.concatenate([rng.normal(0, 0.03, 1660), rng.uniform(0.08, 0.20, 340)])
    samples = [pair(0, 1, rng.normal(0, 0.005, 1000)), pair(1, 2, d)]  # a tight pair sets the pooled scale
    tones, _ = photometry.solve(3, 1, samples, [photometry.Lens((320.0, 240.0), 500.0)] * 3, [(640, 480)] * 3,
                                255.0, vignetting=False, tilt=0, offset_terms=0)
    balance = np.log(tones[2].gain[0] / tones[1].gain[0])
    assert abs(balance - np.median(d)) < 0.002, (balance, np.median(d))

# -- seams ------------------------------------------------------------------------------------------

def _pair_images(blob):
    """Two side-by-side frames' values on frame a's grid (with a ring beyond it): a covers
    columns 0-139, b columns 60 on, both rows 1-118 (their top and bottom borders coincide);
    with ``blob``, a disagreement in the middle of the overlap, where the centre line would run."""
    rng = np.random.default_rng(3)
    h, w = 120, 200
    base = (100 + 30 * cv2.GaussianBlur(rng.standard_normal((h, w)).astype(np.float32), (0, 0), 3))[..., None]
    va, vb = base.copy(), base.copy() * 1.05  # a smooth gain difference costs nothing
    if blob:
        vb[40:80, 85:115] += 60  # a rock seen with parallax: the frames disagree there
    inside_a = np.zeros((h, w), bool)
    inside_a[1:-1, :140] = True
    inside_b = np.zeros((h, w), bool)
    inside_b[1:-1, 60:] = True
    return va, vb, inside_a & inside_b, inside_a, inside_b


def test_seam_goes_round_a_disagreement():
    va, vb, overlap, inside_a, inside_b = _pair_images(blob=True)
    # The centre rule's seam would be column 100: the seam follows it where nothing differs.
    gap = np.broadcast_to(np.abs(np.arange(200) - 100.0)[None, :] / 40.0, overlap.shape).astype(np.float32)
    s = seams.solve_pair(0, 1, va, vb, overlap, inside_a, inside_b, 1, 255.0, band_px=8, centre_gap=gap)
    own = np.zeros(overlap.shape, bool)
    own[s.y0:s.y0 + s.h, s.x0:s.x0 + s.w] = s.grid()
    blob = own[40:80, 85:115]
    assert blob.all() or not blob.any()  # the blob is wholly one frame's
    # Near a's border (column 140) b owns, near b's (column 60) a owns.
    assert not own[1:-1, 133:140].any() and own[1:-1, 60:67].all()
    # Without the blob the seam runs near the middle of the overlap.
    va, vb, overlap, inside_a, inside_b = _pair_images(blob=False)
    flat = seams.solve_pair(0, 1, va, vb, overlap, inside_a, inside_b, 1, 255.0, band_px=8, centre_gap=gap)
    # The seam's column on each row (the first column b owns) is the centre line's.
    cols = np.argmin(flat.grid()[1:-1], axis=1) + flat.x0
    assert np.abs(cols - 100).max() <= 2, cols
    # ... which the blob pushes aside: no row of the blob is cut.
    cut_rows = np.argmin(own[41:79], axis=1)
    assert ((cut_rows <= 85) | (cut_rows >= 115)).all()


def test_ownership_is_the_same_in_any_window(world, tmp_path):
    """The owner of an output pixel depends on the pixel alone (maps on the global grid, the pair
    seams, the frames' order): windows that overlap label their common pixels identically."""
    from mosaic.render import warp
    from mosaic.render.panorama import _output_kind, frames_of, prepare_frames
    from mosaic.render.projections import make_projection
    from mosaic.runtime.cluster import client as make_client

    sol = _ring(world, tmp_path / "f", gains=[1.0, 0.9, 1.1, 1.0, 0.95, 1.05, 1.0, 0.9])
    frames = frames_of(sol)
    dt, bands, fd = _output_kind(frames)
    with make_client() as c:
        frames, pair_seams, _ = prepare_frames(frames, c, bands, dt, fd, [1.0] * len(frames))
    assert pair_seams  # neighbours overlap by a third: every pair gets a seam
    proj = make_projection("equirect", RES)

    def labels(window):
        fmaps = [warp.frame_map(proj, window, f.model, f.width, f.height, margins=f.margins) for f in frames]
        return seams.assign(window[2:][::-1], fmaps, [(f.width, f.height) for f in frames], pair_seams,
                            [f.index for f in frames])

    big = labels((0, 256, 1440, 208))
    for x0, y0, w, h in ((0, 256, 496, 112), (480, 320, 400, 144), (960, 272, 480, 192)):
        small = labels((x0, y0, w, h))
        assert np.array_equal(small, big[y0 - 256:y0 - 256 + h, x0:x0 + w])
    # The seams are not the centre rule's (else this would prove nothing about them).
    fmaps = [warp.frame_map(proj, (0, 256, 1440, 208), f.model, f.width, f.height, margins=f.margins) for f in frames]
    centre = seams.assign((208, 1440), fmaps, [(f.width, f.height) for f in frames])
    assert (centre != big)[big >= 0].mean() > 0.002


def test_one_tile_and_many_tiles_agree_exactly_in_ownership(world, tmp_path):
    sol = _ring(world, tmp_path / "f", gains=[1.0, 0.9, 1.1, 1.0, 0.95, 1.05, 1.0, 0.9])
    one = render_panorama(sol, tmp_path / "one", resolution=RES, tile=1440)
    many = render_panorama(sol, tmp_path / "many", resolution=RES, tile=256)
    with rasterio.open(one["panorama"]) as a, rasterio.open(many["panorama"]) as b:
        pa, pb = a.read().astype(int), b.read().astype(int)
    assert (pa[-1] == pb[-1]).all()
    assert np.abs(pa - pb).max() <= 1


# -- the measures -----------------------------------------------------------------------------------

def test_edge_visibility_sees_a_line_along_a_frame_edge(world, tmp_path):
    """The measure itself: a clean render scores below 1; the same panorama with a dark line
    painted along one frame's edge (what a dark border row does) scores well above."""
    from mosaic.products.seamless import PanoramaGrid
    from mosaic.render.panorama import frames_of

    sol = _ring(world, tmp_path / "f")
    r = render_panorama(sol, tmp_path / "out", resolution=RES)
    clean = edge_visibility(r["panorama"], sol)
    assert clean["runs"] > 50 and clean["ratio"] < 1.0
    with rasterio.open(r["panorama"]) as ds:
        a, profile = ds.read(), ds.profile
        grid = PanoramaGrid(ds)
    for f in frames_of(sol):
        y = np.arange(f.height, dtype=float)
        xy = np.stack([np.zeros_like(y), y], axis=1)  # the left edge's first column
        _, d = f.model.backproject(xy)
        px = np.rint(grid.pixels(d)).astype(int)
        a[:3, px[:, 1], px[:, 0] % a.shape[2]] //= 3
    profile.update(driver="GTiff")
    with rasterio.open(tmp_path / "lined.tif", "w", **profile) as ds:
        ds.write(a)
    lined = edge_visibility(tmp_path / "lined.tif", sol)
    assert lined["ratio"] > 1.5 * clean["ratio"], (clean["ratio"], lined["ratio"])
    assert lined["sides"]["left"]["ratio"] > 2 * clean["sides"]["left"]["ratio"]


# -- synthetic scenes with the troubles, and their truth ---------------------------------------------

def _synth(folder, scale=16, **phot):
    from mosaic.synth import writer
    from mosaic.synth.render import Photometry

    writer.synthesise(folder, "navcam-360", seed=2, scale=scale, jobs=2, photometry=Photometry(**phot))
    return folder


def test_synth_troubles_are_in_the_frames_and_the_truth(tmp_path):
    from PIL import Image

    out = _synth(tmp_path / "s", dark_borders=True, response="linear12", glare=3000.0)
    scene = json.loads((out / "scene.json").read_text())
    assert scene["photometry"]["response"] == "linear12" and scene["photometry"]["dark_borders"]["rows"] == [3, 2]
    glare = [f["glare_dn"] for f in scene["frames"]]
    assert max(glare) > 10 * min(glare) > 0  # frames aimed near the sun carry most of the veil
    png = sorted(out.glob("*.png"))[0]
    a = np.asarray(Image.open(png))
    assert a.dtype == np.uint16 and a.max() <= 4095
    assert (a[:3] == 0).all() and (a[-2:] == 0).all() and (a[:, 0] == 0).all()
    assert masks.detect_margins(a).as_list() == [4, 3, 4, 3]


@pytest.mark.slow
@pytest.mark.parametrize("phot", [{}, {"dark_borders": True, "response": "linear12"}])
def test_exposure_and_vignetting_recovered_on_synthetic_scenes(tmp_path, phot):
    """Rendered from the true models (no tie points: the overlaps' dense samples alone), the
    recovered exposures and the vignetting at the frame corners match the scene's within 2 %
    (common scale: mean gain 1; in the scene's linear signal)."""
    from mosaic.evaluate import photometry_errors

    out = _synth(tmp_path / "s", **phot)
    render_panorama(out / "truth" / "solution.json", tmp_path / "r", resolution=0.5)
    err = photometry_errors(tmp_path / "r" / "render.json", out / "truth")
    assert err["exposure_error_max"] < 0.02, err
    assert err["vignetting_corner_error_max"] < 0.02, err


@pytest.mark.slow
def test_edge_ratio_with_troubles_matches_clean(tmp_path):
    """Dark borders, a veiling glare and 12-bit data do not show at frame edges. (At 1/8 scale:
    at 1/16 the lower frames' top edges run along the horizon, whose step the measure counts.)"""
    clean = _synth(tmp_path / "clean", scale=8)
    rough = _synth(tmp_path / "rough", scale=8, dark_borders=True, response="linear12", glare=3000.0)
    ratios = []
    for s in (clean, rough):
        r = render_panorama(s / "truth" / "solution.json", tmp_path / s.name / "r")
        ratios.append(edge_visibility(r["panorama"], s / "truth" / "solution.json")["ratio"])
    assert abs(ratios[0] - ratios[1]) < 0.08 and max(ratios) < 1.1, ratios


def test_features_keep_off_detected_borders(tmp_path):
    """Keypoints stay a border band (``border_px``) away from the frame's own dark border, not
    from its outer edge: textured dim columns would otherwise give keypoints that sit on
    pixels the renderer drops."""
    from mosaic.pipeline.stages import features
    from mosaic.runtime.config import StitchConfig

    rng = np.random.default_rng(4)
    img = np.clip(128 + 60 * cv2.GaussianBlur(rng.standard_normal((400, 500)), (0, 0), 1.5), 0, 255).astype(np.uint8)
    for c, f in enumerate((0.0, 0.2, 0.5, 0.75)):  # a blank, then dim columns, textured
        img[:, c] = (img[:, c] * f).astype(np.uint8)
    cv2.imwrite(str(tmp_path / "f.png"), img)
    cfg = StitchConfig()
    opts = cfg.key_of(*features.CONFIG_FIELDS)
    rec = {"id": "f", "path": str(tmp_path / "f.png"), "image": str(tmp_path / "f.png"), "width": 500,
           "height": 400, "model": np.zeros(1).tolist()}  # a model: no photo refinement, full resolution
    features.detect(rec, str(tmp_path / "f.npz"), opts)
    xy = np.load(tmp_path / "f.npz")["xy"]
    m = masks.detect_margins(img)
    assert m.left == 5 and len(xy) > 50
    assert xy[:, 0].min() >= cfg.border_px + m.left - 1
