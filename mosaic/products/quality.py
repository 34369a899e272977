"""The quality picture, ``OUT/quality.png``: where each frame is used, where the seams run, and how
well each frame fits.

Top: the seamlessness figures. Then a low-resolution equirectangular map (north at the left edge, azimuth growing to the right,
as in ``panorama.tif``) with every output pixel coloured by the frame that fills it, seams drawn
in black, and each frame's index and tie-point RMS (pixels of the frame as delivered, from
``solution.json``'s ``residual_px``) written on its area. Bottom: the per-frame RMS as a bar chart
in the same colours, the overall RMS as a dashed line; bars above three times the median are
outlined red, which is where to look first.

Ownership is the renderer's own rule (:func:`mosaic.render.seams.assign` over
:func:`mosaic.render.warp.frame_map`, the same calls a tile task makes, with the frames' valid
margins and the pair seams the render recorded in ``render.json``), evaluated on a coarse grid,
so the seams drawn are the panorama's seams, not a re-derivation. Above the map, the panorama's
seamlessness (:mod:`mosaic.products.seamless`): the edge visibility ratio and the overlap agreement on
held-out tie points, when a panorama and tie points are there to measure.

Example::

    from mosaic.products.quality import write_quality
    write_quality("out/pan/solution.json", "out/pan/quality.png")
"""

from __future__ import annotations

import colorsys
from pathlib import Path

import cv2
import numpy as np

from mosaic.formats import solution as solution_io
from mosaic.products import seamless
from mosaic.render import seams, warp
from mosaic.render.panorama import frames_of, read_record
from mosaic.render.projections import make_projection
from mosaic.runtime.atomic import write_bytes

#: Width of the map in the picture (the equirect map is half as high).
MAP_WIDTH = 1024
#: Height of the bar chart below the map, and of the figures' strip above it.
CHART_HEIGHT = 180
HEADER_HEIGHT = 44
NO_FRAME = (40, 40, 40)  # RGB of pixels no frame sees
SEAM = (0, 0, 0)


def palette(n: int) -> np.ndarray:
    """``n`` distinct, saturated RGB colours (uint8): hues stepped by the golden ratio, so
    neighbours in the frame order (usually neighbours in the sky) differ strongly."""
    out = []
    for k in range(n):
        h = (k * 0.618033988749895) % 1.0
        s = 0.55 + 0.35 * ((k // 7) % 2)
        v = 0.95 - 0.25 * ((k // 3) % 2)
        out.append([round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v)])
    cols = np.array(out, np.uint8).reshape(-1, 3)
    return cols


def ownership(solution, width: int = MAP_WIDTH, out_dir=None):
    """(label, frames): the index (into ``frames``, the used frames) of the frame that fills each
    pixel of a ``width`` x ``width / 2`` equirect map, -1 where none does (int16). ``out_dir``: the
    render's folder (its ``render.json``; default beside the solution)."""
    frames = frames_of(solution)
    if out_dir is None and not isinstance(solution, dict):
        out_dir = Path(solution).parent
    record = Path(out_dir) / "render.json" if out_dir is not None else None
    _, margins, pair_seams = read_record(record, frames) if record else ({}, {}, {})
    proj = make_projection("equirect", 360.0 / width)
    window = (0, 0, proj.width, proj.height)
    fmaps = [warp.frame_map(proj, window, f.model, f.width, f.height, None, 8, 0.5, margins=margins.get(f.id))
             for f in frames]
    label = seams.assign((proj.height, proj.width), fmaps, [(f.width, f.height) for f in frames], pair_seams,
                         [f.index for f in frames])
    return label, frames


def seam_mask(label: np.ndarray) -> np.ndarray:
    """Pixels on a boundary between two frames' areas (the map wraps at 0/360 degrees)."""
    right = np.roll(label, -1, axis=1)
    down = np.vstack([label[1:], label[-1:]])
    edge = ((label != right) & (label >= 0) & (right >= 0)) | ((label != down) & (label >= 0) & (down >= 0))
    # Two pixels wide, so that seams stay visible when the picture is shown scaled down.
    return edge | np.roll(edge, 1, axis=1)


def _label_anchor(mask: np.ndarray) -> tuple[int, int] | None:
    """The point deepest inside a frame's area (where its text is least likely to cross a seam)."""
    if not mask.any():
        return None
    dist = cv2.distanceTransform(np.pad(mask, 1).astype(np.uint8), cv2.DIST_L2, 3)[1:-1, 1:-1]
    y, x = np.unravel_index(int(np.argmax(dist)), dist.shape)
    return int(x), int(y)


def _text(img, s, org, scale=0.4, colour=(255, 255, 255)):
    """Text with a dark outline: readable over any frame colour."""
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(img, s, org, cv2.FONT_HERSHEY_SIMPLEX, scale, colour, 1, cv2.LINE_AA)


def _chart(rms, colours, overall, width):
    """The per-frame RMS bar chart (BGR)."""
    img = np.full((CHART_HEIGHT, width, 3), 255, np.uint8)
    n = len(rms)
    finite = np.array([r for r in rms if r is not None and np.isfinite(r)])
    top = max(float(finite.max()) if finite.size else 1.0, overall or 0.0, 1e-3) * 1.15
    median = float(np.median(finite)) if finite.size else 0.0
    x0, y0, y1 = 40, 20, CHART_HEIGHT - 22
    bw = (width - x0 - 10) / max(n, 1)
    cv2.line(img, (x0, y1), (width - 10, y1), (0, 0, 0), 1)
    cv2.putText(img, f"{top:.2f} px", (2, y0 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "0", (x0 - 12, y1 + 4), cv2.FONT_HERSHEY_SIMPLEX, 0.3, (0, 0, 0), 1, cv2.LINE_AA)
    cv2.putText(img, "tie-point RMS per frame (px); dashed: all frames", (x0, 12), cv2.FONT_HERSHEY_SIMPLEX,
                0.35, (0, 0, 0), 1, cv2.LINE_AA)
    for k, r in enumerate(rms):
        a, b = int(x0 + k * bw + 1), int(x0 + (k + 1) * bw - 1)
        if r is None or not np.isfinite(r):
            continue
        y = int(round(y1 - (y1 - y0) * r / top))
        col = tuple(int(c) for c in colours[k][::-1])
        cv2.rectangle(img, (a, y), (max(a, b), y1), col, -1)
        if median > 0 and r > 3 * median:
            cv2.rectangle(img, (a, y), (max(a, b), y1), (0, 0, 255), 2)
        if bw >= 14:
            cv2.putText(img, str(k), (a, y1 + 14), cv2.FONT_HERSHEY_SIMPLEX, 0.33, (0, 0, 0), 1, cv2.LINE_AA)
    if overall:
        y = int(round(y1 - (y1 - y0) * overall / top))
        for x in range(x0, width - 10, 12):
            cv2.line(img, (x, y), (min(x + 6, width - 10), y), (0, 0, 0), 1)
    return img


def _measures(solution, out, workspace, ties=None, agreement=True):
    """The seamlessness figures of the panorama in ``out`` (empty where there is none);
    ``overlap_agreement`` None when not asked for."""
    out = Path(out)
    if not (out / "panorama.tif").is_file():
        return {}
    facts = {}
    try:
        e = seamless.edge_visibility(out / "panorama.tif", solution)
        if e.get("ratio") is not None:
            facts["edge_visibility"] = {k: e[k] for k in ("ratio", "runs", "edge_step", "control_step")}
        a = seamless.overlap_agreement(out, solution, workspace, ties=ties) if agreement else {}
        if not agreement:
            facts["overlap_agreement"] = None
        elif a.get("pairs"):
            facts["overlap_agreement"] = {k: a[k] for k in ("median", "p90", "worst", "noise", "ties")}
            facts["overlap_agreement"]["pairs"] = len(a["pairs"])
    except (OSError, ValueError) as err:  # a panorama we cannot measure still gets its picture
        facts["error"] = str(err)
    return facts


def _header(width, facts):
    """A strip of text with the seamlessness figures (BGR)."""
    img = np.full((HEADER_HEIGHT, width, 3), 255, np.uint8)
    e, a = facts.get("edge_visibility"), facts.get("overlap_agreement")
    lines = [f"edge visibility ratio {e['ratio']:.2f} ({e['runs']} runs of frame edge; about 1: edges invisible)"
             if e else "edge visibility: not measured (no panorama or no frame edge inside another frame)",
             f"overlap agreement on held-out tie points: median {100 * a['median']:.2f} %, p90 {100 * a['p90']:.2f} %, "
             f"worst {100 * a['worst']:.2f} % over {a['pairs']} pairs (noise ~{100 * a['noise']:.2f} %)"
             if a else "overlap agreement: not measured while stitching (mosaic eval OUT measures it)"
             if "overlap_agreement" in facts else "overlap agreement: not measured (no tie points or no render record)"]
    for k, line in enumerate(lines):
        cv2.putText(img, line, (8, 16 + 18 * k), cv2.FONT_HERSHEY_SIMPLEX, 0.42, (0, 0, 0), 1, cv2.LINE_AA)
    return img


def render_quality(solution, width: int = MAP_WIDTH, workspace=None, out_dir=None, ties=None, agreement=True):
    """The picture (RGB uint8) and its facts: {"frames": [{"id", "index", "colour", "share",
    "rms_px"}], "edge_visibility", "overlap_agreement"} (the last two when measurable).
    ``out_dir``: the render's folder (panorama.tif, render.json; default beside the solution).
    ``ties``: the registration's tie points over the solution's used frames (default: read from
    ``workspace``). ``agreement``: measure the overlap agreement (it decodes every frame again)."""
    if out_dir is None and not isinstance(solution, dict):
        out_dir = Path(solution).parent
    label, frames = ownership(solution, width, out_dir)
    sol = solution_io.load(solution) if not isinstance(solution, dict) else solution
    by_id = {str(f.get("id")): f for f in sol["frames"]}
    rms = [(by_id.get(f.id, {}).get("residual_px") or {}).get("rms") for f in frames]
    colours = palette(len(frames))
    rgb = np.empty(label.shape + (3,), np.uint8)
    rgb[:] = NO_FRAME
    owned = label >= 0
    rgb[owned] = colours[label[owned]]
    rgb[seam_mask(label)] = SEAM
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    total = label.size
    facts = []
    for k, f in enumerate(frames):
        mask = label == k
        facts.append({"id": f.id, "index": k, "colour": colours[k].tolist(), "share": round(float(mask.sum()) / total, 5),
                      "rms_px": rms[k]})
        anchor = _label_anchor(mask)
        if anchor is None:
            continue
        x, y = anchor
        _text(bgr, str(k), (x - 7, y - 4), 0.55)
        if rms[k] is not None:
            _text(bgr, f"{rms[k]:.2f} px", (x - 26, y + 14), 0.45)
    overall = (sol.get("stats") or {}).get("rms_px")
    chart = _chart(rms, colours, overall if isinstance(overall, (int, float)) else None, bgr.shape[1])
    measures = _measures(solution, out_dir, workspace, ties, agreement) if out_dir is not None else {}
    picture = np.vstack([_header(bgr.shape[1], measures), bgr, chart])
    return np.ascontiguousarray(picture[..., ::-1]), {"frames": facts, "width": int(label.shape[1]),
                                                      "height": int(label.shape[0]), **measures}


def write_quality(solution, out_path, width: int = MAP_WIDTH, workspace=None, ties=None, agreement=True) -> dict:
    """Write the quality picture of ``solution`` (path to solution.json, or its dict) as a PNG;
    return its facts (with ``"path"``). Map pixels whose colour is a frame's ``colour`` are that
    frame's. ``workspace``: where the tie points are (default: ``work/`` beside the picture), unless
    ``ties`` hands them down."""
    rgb, facts = render_quality(solution, width, workspace, Path(out_path).parent, ties, agreement)
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    if not ok:
        raise RuntimeError(f"{out_path}: PNG encoding failed")
    write_bytes(out_path, buf.tobytes())
    return {"path": str(out_path), **facts}
