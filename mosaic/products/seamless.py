"""How seamless a rendered panorama is: edge visibility and overlap agreement.

Two measures that anyone can run on their own pan (``mosaic eval OUT``, ``quality.png``):

**Edge visibility.** Along every frame edge that runs through another frame's pixels of the
panorama, the mean signed grey step across the edge (``DEPTH`` px inside against ``DEPTH`` px
outside, over runs of ``RUN`` px along the edge) is compared with the same step on a control line
``CONTROL`` px further inside the frame. The ratio of the mean absolute steps is about 1 when
frame edges are invisible (the step across an edge is then no larger than the scene's own
variation) and grows with every dark border line and exposure step a frame leaves at its edge.
Offsets are in frame pixels, which the default resolution makes panorama pixels.

**Overlap agreement.** A stitcher that cuts its seams through the middle of overlaps scores
about 1 on the edge ratio whatever its exposures do, so the second measure looks where seams
cannot hide: on the registration's tie points (verified matches between two frames, so parallax
cannot pose as a photometric error), each frame's brightness *as rendered* (the mean of a 9 x 9
box, after gains, vignetting, offsets and the highlight roll-off:
:func:`mosaic.render.photometry.render_values`) is compared with the other frame's. A pair's
mismatch is the median of ``(Ra - Rb) / mean(Ra, Rb)`` over its points (a bias: the scatter of
single points from misregistration and parallax averages out); the figures are the median, 90th
percentile and worst of the pairs' absolute mismatches. Only the tie points the photometric fit
held out count (every third distinct one: :func:`mosaic.render.photometry.tie_roles`), so the figure is not
the fit's own residual; ``noise`` is the typical standard error of a pair's figure.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np

from mosaic.pipeline import registration
from mosaic.render import photometry, warp
from mosaic.render.panorama import frames_of, read_record
from mosaic.render.warp import bilinear

#: Edge measure: pixels along the edge per run, pixels each side of the line, control line inset.
RUN, DEPTH, CONTROL = 32, 4, 40
#: A pair enters the agreement figures with at least this many usable held-out tie points (the
#: median of fewer is noise: its standard error is ~1.9 x spread / sqrt(n)).
MIN_TIES = 16


def _open(path):
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        return rasterio.open(path)


def is_equirect(ds) -> bool:
    """Whether a panorama's grid is the contract's equirectangular one (or a window of it)."""
    t = ds.transform
    full = 360.0 / t.a if t.a > 0 else 0.0
    return t.b == 0 and t.d == 0 and abs(t.e + t.a) < 1e-9 * max(1.0, abs(t.a)) and abs(full - round(full)) < 1e-6


class PanoramaGrid:
    """Directions -> pixels of an equirectangular panorama.tif (full sphere or a window of it, as
    its geotransform says: degrees of azimuth and elevation, contract)."""

    def __init__(self, ds):
        t = ds.transform
        self.width, self.height = ds.width, ds.height
        self.a, self.c, self.e, self.f = t.a, t.c, t.e, t.f
        self.full = int(round(360.0 / t.a))
        self.wraps = self.full == ds.width

    def pixels(self, dirs):
        """Panorama pixel coordinates (N, 2) of unit directions (N, 3) in LOCAL_LEVEL."""
        az = np.degrees(np.arctan2(dirs[:, 1], dirs[:, 0]))
        el = np.degrees(np.arcsin(np.clip(-dirs[:, 2], -1, 1)))
        x = ((az - self.c) % 360.0) / self.a - 0.5
        y = (el - self.f) / self.e - 0.5
        return np.stack([x, y], axis=1)


def _read_grey(ds, x0, x1, y0, y1, wraps):
    """Grey (mean of the colour bands, float32) and alpha (bool) over columns [x0, x1), rows
    [y0, y1); columns beyond the grid wrap when the panorama is a full sphere."""
    from rasterio.windows import Window

    y0, y1 = max(0, y0), min(ds.height, y1)
    parts = []
    if wraps:
        cols = np.arange(x0, x1) % ds.width
        # Contiguous runs of columns, read one window each.
        cuts = np.flatnonzero(np.diff(cols) != 1) + 1
        for seg in np.split(cols, cuts):
            parts.append(ds.read(window=Window(int(seg[0]), y0, len(seg), y1 - y0)))
        arr = np.concatenate(parts, axis=2)
    else:
        xa, xb = max(0, x0), min(ds.width, x1)
        arr = np.zeros((ds.count, y1 - y0, x1 - x0), ds.dtypes[0])
        arr[:, :, xa - x0:xb - x0] = ds.read(window=Window(xa, y0, xb - xa, y1 - y0))
    alpha = arr[-1] > 0
    grey = arr[:-1].astype(np.float32).mean(axis=0)
    return grey, alpha, y0


def _edge_samples(w, h, offsets):
    """Frame pixel positions (sides, runs, RUN, len(offsets), 2) of samples at ``offsets`` (pixels
    inward from the frame's rectangle, negative outside) for every full run along each side."""
    out = {}
    for side, length in (("top", w), ("bottom", w), ("left", h), ("right", h)):
        n = length // RUN
        if n < 1:
            continue
        start = (length - n * RUN) // 2
        t = start + np.arange(n * RUN, dtype=float).reshape(n, RUN)
        d = np.asarray(offsets, float)
        tt, dd = np.broadcast_arrays(t[:, :, None], d[None, None, :])
        if side == "top":
            xy = np.stack([tt, dd], -1)
        elif side == "bottom":
            xy = np.stack([tt, h - 1 - dd], -1)
        elif side == "left":
            xy = np.stack([dd, tt], -1)
        else:
            xy = np.stack([w - 1 - dd, tt], -1)
        out[side] = xy
    return out


def edge_visibility(panorama, solution) -> dict:
    """The edge visibility ratio of ``panorama`` (panorama.tif, equirect) rendered from
    ``solution`` (solution.json): {"ratio", "runs", "edge_step", "control_step", "sides", "frames"}.
    ``ratio`` is None when no frame edge runs through another frame's pixels."""
    frames = frames_of(solution)
    inside = np.arange(DEPTH, dtype=float)
    outside = -1.0 - inside
    offsets = np.concatenate([inside, outside, CONTROL + inside, CONTROL + outside])
    edge_all, ctrl_all, per_side, per_frame = [], [], {}, []
    with _open(panorama) as ds:
        if not is_equirect(ds):
            return {"ratio": None, "runs": 0, "reason": "not an equirectangular panorama", "frames": [], "sides": {}}
        grid = PanoramaGrid(ds)
        for f in frames:
            samples = _edge_samples(f.width, f.height, offsets)
            fe, fc = [], []
            for side, xy in samples.items():
                # Each side is read as its own window: a thin strip, whatever the panorama's size.
                shape = xy.shape[:3]  # runs, RUN, offsets
                _, dirs = f.model.backproject(xy.reshape(-1, 2))
                pix = grid.pixels(dirs)
                ok = np.isfinite(pix).all(axis=1)
                if not ok.any():
                    continue
                val, cov = _sample_panorama(ds, grid, pix, ok)
                v, c = val.reshape(shape), cov.reshape(shape)
                good = c.all(axis=(1, 2))
                if not good.any():
                    continue
                v, d = v[good], DEPTH
                edge = v[:, :, :d].mean(axis=(1, 2)) - v[:, :, d:2 * d].mean(axis=(1, 2))
                ctrl = v[:, :, 2 * d:3 * d].mean(axis=(1, 2)) - v[:, :, 3 * d:].mean(axis=(1, 2))
                e, cc = np.abs(edge), np.abs(ctrl)
                edge_all.append(e)
                ctrl_all.append(cc)
                fe.append(e)
                fc.append(cc)
                ps = per_side.setdefault(side, [[], []])
                ps[0].append(e)
                ps[1].append(cc)
            if fe:
                e, cc = np.concatenate(fe), np.concatenate(fc)
                per_frame.append({"id": f.id, "runs": int(len(e)), "edge_step": float(e.mean()),
                                  "control_step": float(cc.mean()), "ratio": _ratio(e, cc)})
    if not edge_all:
        return {"ratio": None, "runs": 0, "frames": per_frame, "sides": {}}
    e, c = np.concatenate(edge_all), np.concatenate(ctrl_all)
    sides = {s: {"runs": int(sum(len(a) for a in v[0])), "edge_step": float(np.concatenate(v[0]).mean()),
                 "control_step": float(np.concatenate(v[1]).mean()),
                 "ratio": _ratio(np.concatenate(v[0]), np.concatenate(v[1]))} for s, v in per_side.items()}
    return {"ratio": _ratio(e, c), "runs": int(len(e)), "edge_step": float(e.mean()), "control_step": float(c.mean()),
            "sides": sides, "frames": per_frame}


def _sample_panorama(ds, grid, pix, ok):
    """Grey values and full coverage (alpha) of the panorama at pixel positions (N, 2) (ok: finite)."""
    x0 = int(np.floor(pix[ok, 0].min())) - 2
    x1 = int(np.ceil(pix[ok, 0].max())) + 3
    y0 = int(np.floor(pix[ok, 1].min())) - 2
    y1 = int(np.ceil(pix[ok, 1].max())) + 3
    n = len(pix)
    if (not grid.wraps and (x1 <= 0 or x0 >= ds.width)) or y1 <= 0 or y0 >= ds.height:
        return np.zeros(n, np.float32), np.zeros(n, bool)
    if x1 - x0 > grid.full // 2:  # a side round a pole or across north: read the whole band
        x0, x1 = 0, ds.width
        pix = pix.copy()
        pix[:, 0] %= ds.width if grid.wraps else np.inf
    grey, alpha, ry0 = _read_grey(ds, x0, x1, y0, y1, grid.wraps)
    mx = np.where(ok, pix[:, 0] - x0, -1e6)
    my = np.where(ok, pix[:, 1] - ry0, -1e6)
    return bilinear(grey, mx, my), bilinear(alpha.astype(np.float32), mx, my) > 0.999


def _ratio(e, c):
    m = float(np.mean(c))
    return float(np.mean(e) / m) if m > 0 else None


def _tones_of(out_dir: Path, frames):
    """Each frame's tone as the renderer applied it: ``render.json`` beside the panorama, or
    (outputs of earlier versions) the scalar gains of ``report.json``; None where unknown."""
    p = out_dir / "render.json"
    if p.is_file():
        return read_record(p, frames)[0]
    r = out_dir / "report.json"
    if r.is_file():
        counts = (json.loads(r.read_text()).get("stages", {}).get("render", {}) or {}).get("counts", {})
        gains = counts.get("gains") or {}
        # No highlight roll-off then; white comes from each frame's data (white=0 below).
        return {fid: photometry.Tone(gain=(float(g),), white=0.0, knee=0.0) for fid, g in gains.items()}
    return {}


def overlap_agreement(out_dir, solution=None, workspace=None, ties=None) -> dict:
    """Agreement of overlapping frames as rendered, on the tie points held out of the photometric
    fit (see the module's notes): {"pairs": [{"a", "b", "ties", "bias", "spread", "error"}],
    "median", "p90", "worst", "ties"} (fractions), or {"pairs": [], "reason"} when there are no
    tie points or tones. ``bias`` is the pair's median relative difference, ``spread`` the
    median absolute deviation about it, ``error`` the standard error of the median. ``solution``:
    a path or its dict (default: ``out_dir/solution.json``); ``ties``: the registration's tie
    points over its used frames (default: :func:`mosaic.pipeline.registration.tie_points` of
    ``workspace``, default ``out_dir/work``)."""
    out_dir = Path(out_dir)
    solution = solution if isinstance(solution, dict) else Path(solution) if solution else out_dir / "solution.json"
    workspace = Path(getattr(workspace, "root", workspace)) if workspace else out_dir / "work"
    frames = frames_of(solution)
    tones = _tones_of(out_dir, frames)
    if not tones:
        return {"pairs": [], "reason": "no render.json or report.json beside the panorama"}
    ids = [f.id for f in frames]
    if ties is None:
        ties = registration.tie_points(workspace, ids) if workspace.is_dir() else []
    if not ties:
        return {"pairs": [], "reason": "no tie points (OUT/work/matches)"}
    t = np.array(ties, float)[photometry.tie_roles(ties)[1]]
    pi, pj = t[:, 0].astype(int), t[:, 1].astype(int)
    values = np.full((len(t), 2), np.nan)
    for k, f in enumerate(frames):
        a, b = np.flatnonzero(pi == k), np.flatnonzero(pj == k)
        if (not len(a) and not len(b)) or f.id not in tones:
            continue
        img, _ = warp.read_pixels(f.path)
        tone = tones[f.id]
        if tone.white <= 0:
            w = photometry.white_level([float(img.max())], "float32" if img.dtype.kind == "f" else img.dtype.name)
            tone = photometry.Tone(gain=tone.gain, white=w, knee=w)
        for sel, col, side in ((a, 2, 0), (b, 4, 1)):
            if not len(sel):
                continue
            x, y = t[sel, col], t[sel, col + 1]
            v = photometry.point_values(img, np.stack([x, y], 1))
            ok = (np.isfinite(v).all(axis=1) & (v > photometry.BLACK * tone.white).all(axis=1)
                  & (v < photometry.WHITE_VOTE * tone.white).all(axis=1))
            r = photometry.render_values(tone, x, y, np.nan_to_num(v)).mean(axis=1)
            values[sel, side] = np.where(ok, r, np.nan)
    good = np.isfinite(values).all(axis=1)
    rel = (values[:, 0] - values[:, 1]) / (0.5 * (values[:, 0] + values[:, 1]))
    pairs = []
    for a, b in sorted(set(zip(pi.tolist(), pj.tolist()))):
        sel = good & (pi == a) & (pj == b)
        if sel.sum() < MIN_TIES:
            continue
        d = rel[sel]
        med = float(np.median(d))
        spread = float(np.median(np.abs(d - med)))
        pairs.append({"a": ids[a], "b": ids[b], "ties": int(sel.sum()), "bias": med, "spread": spread,
                      "error": float(1.2533 * 1.4826 * spread / np.sqrt(sel.sum()))})
    if not pairs:
        return {"pairs": [], "reason": f"no pair with {MIN_TIES} usable held-out tie points"}
    m = np.abs([p["bias"] for p in pairs])
    return {"pairs": pairs, "ties": int(good.sum()), "median": float(np.median(m)), "p90": float(np.percentile(m, 90)),
            "worst": float(m.max()), "noise": float(np.median([p["error"] for p in pairs]))}
