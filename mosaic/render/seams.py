"""Seams: which frame owns each output pixel.

Each output pixel goes to the frame that sees it closest to its own centre, measured in the
frame's normalised image coordinates: ``((x - cx) / (w / 2))^2 + ((y - cy) / (h / 2))^2`` of the
pixel's position in the frame (0 at the centre, 1 at the middle of an edge). Normalising by the
frame's size makes a narrow frame inside a wide one win where it sees, and centre distance keeps
seams away from the frames' borders, where vignetting and distortion residuals are largest.
The choice depends on the output pixel alone, so tiles agree along their borders by
construction; ties go to the frame listed first (deterministic on any cluster).
"""

from __future__ import annotations

import numpy as np

from .warp import FrameMap

_FAR = np.float32(np.inf)


def centre_score(fmap: FrameMap, fw: int, fh: int) -> np.ndarray:
    """Normalised squared distance from the frame's centre (h, w float32); inf where not valid."""
    cx, cy = (fw - 1) / 2.0, (fh - 1) / 2.0
    # In place, one temporary per axis: this runs over every frame's whole map.
    u = np.subtract(fmap.mapx, np.float32(cx))
    u *= np.float32(2.0 / fw)
    np.square(u, out=u)
    v = np.subtract(fmap.mapy, np.float32(cy))
    v *= np.float32(2.0 / fh)
    np.square(v, out=v)
    u += v
    np.copyto(u, _FAR, where=~fmap.valid)
    return u


def assign(shape, fmaps, sizes):
    """Label image (int16, -1 where no frame sees) over a window of ``shape`` from the frames'
    maps (None entries are skipped) and their (width, height)."""
    best = np.full(shape, _FAR, dtype=np.float32)
    label = np.full(shape, -1, dtype=np.int16)
    for i, (fm, (fw, fh)) in enumerate(zip(fmaps, sizes)):
        if fm is None:
            continue
        s = centre_score(fm, fw, fh)
        b = best[fm.rows, fm.cols]
        win = s < b  # strict: the earlier frame keeps ties
        np.copyto(b, s, where=win)
        np.copyto(label[fm.rows, fm.cols], np.int16(i), where=win)
    return label
