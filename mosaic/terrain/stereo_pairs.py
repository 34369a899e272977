"""Stereo pairs: the left and right frames a stereo camera took together.

Two frames pair when they come from the two eyes of one camera (``NAVCAM_LEFT``/``NAVCAM_RIGHT``,
``MCZ_LEFT``/``MCZ_RIGHT``, ...), at the same site and drive, and were taken together: spacecraft
clocks within ``max_dt`` seconds, or the same mast pose (within ``max_pose_deg``) within
``pose_dt`` seconds (eyes commanded one after the other, as in our synthetic scenes), or, with
neither clocks nor pose, the same sequence id from the file name. Cameras of a pair shoot simultaneously, so several
candidates share one moment only when the product is split into tiles; among those the right
frame is the one whose boresight is closest to the left's (a greedy one-to-one assignment, best
first), and no pair is made whose boresights differ by more than ``max_boresight_deg``.

Work is O(N log N): frames are grouped by camera, site and drive and sorted by clock.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

#: Sequence id in a Mars 2020 / MSL file name, e.g. ``NCAM08111`` in ``..._N0320604NCAM08111_01_...``.
_SEQUENCE = re.compile(r"[A-Z]{4}\d{5}")


@dataclass(frozen=True)
class StereoPair:
    left: object   # FrameMeta
    right: object  # FrameMeta

    @property
    def id(self) -> str:
        return self.left.id

    def to_dict(self) -> dict:
        return {"id": self.id, "left": self.left.id, "right": self.right.id,
                "left_image": self.left.image, "right_image": self.right.image}


def side(instrument: str | None) -> tuple[str, str] | None:
    """(camera family, "L" or "R") of an instrument id, None when it is no stereo eye."""
    if not instrument:
        return None
    name = instrument.upper()
    for word, s in (("LEFT", "L"), ("RIGHT", "R")):
        if word in name:
            return name.replace(word, "").strip("_ "), s
    m = re.fullmatch(r"(.+?)[_ ]?([LR])", name)
    if m:
        return m.group(1), m.group(2)
    return None


def sequence_id(frame) -> str | None:
    m = _SEQUENCE.search(frame.id or "")
    return m.group(0) if m else None


def _same_pose(a, b, max_pose_deg) -> bool | None:
    if None in (a.mast_az, a.mast_el, b.mast_az, b.mast_el):
        return None
    daz = (a.mast_az - b.mast_az + 180.0) % 360.0 - 180.0
    return abs(daz) <= max_pose_deg and abs(a.mast_el - b.mast_el) <= max_pose_deg


def _taken_together(a, b, max_dt, max_pose_deg, pose_dt) -> bool:
    """Same moment (clocks within ``max_dt``), or the same mast pose within ``pose_dt`` seconds
    (eyes commanded one after the other), or the same sequence when neither is known."""
    clocks = a.sclk is not None and b.sclk is not None
    if clocks and abs(a.sclk - b.sclk) <= max_dt:
        return True
    pose = _same_pose(a, b, max_pose_deg)
    if pose is not None:
        return pose and (not clocks or abs(a.sclk - b.sclk) <= pose_dt)
    return not clocks and sequence_id(a) is not None and sequence_id(a) == sequence_id(b)


def _boresight(frame) -> np.ndarray:
    return frame.model_local_level().boresight(frame.width, frame.height)


def find_pairs(frames, max_dt: float = 1.0, max_pose_deg: float = 1.0,
               max_boresight_deg: float = 30.0, pose_dt: float = 300.0) -> list[StereoPair]:
    """Stereo pairs among ``frames`` (FrameMeta with camera models), in a stable order."""
    groups: dict[tuple, dict[str, list]] = {}
    for f in frames:
        s = side(f.instrument)
        if s is None or f.model is None:
            continue
        family, eye = s
        groups.setdefault((family, f.site, f.drive), {"L": [], "R": []})[eye].append(f)

    pairs = []
    cos_max = np.cos(np.radians(max_boresight_deg))
    for key in sorted(groups, key=lambda k: tuple(str(v) for v in k)):
        lefts = groups[key]["L"]
        rights = sorted(groups[key]["R"], key=lambda f: (f.sclk is None, f.sclk or 0.0, f.id))
        if not lefts or not rights:
            continue
        clocks = np.array([r.sclk if r.sclk is not None else np.nan for r in rights])
        candidates = []
        for li, left in enumerate(lefts):
            if left.sclk is not None and np.isfinite(clocks).any():
                window = max(max_dt, pose_dt)
                lo = np.searchsorted(clocks, left.sclk - window, side="left")
                hi = np.searchsorted(clocks, left.sclk + window, side="right")
                near = list(range(lo, hi)) + [i for i in range(len(rights)) if not np.isfinite(clocks[i])]
            else:
                near = range(len(rights))
            bl = _boresight(left)
            for ri in near:
                right = rights[ri]
                if not _taken_together(left, right, max_dt, max_pose_deg, pose_dt):
                    continue
                c = float(bl @ _boresight(right))
                if c >= cos_max:
                    # Simultaneous frames first, then the best-aligned boresights.
                    dt = abs(left.sclk - right.sclk) if left.sclk is not None and right.sclk is not None else 0.0
                    candidates.append((dt > max_dt, -c, left.id, right.id, li, ri))
        used_l, used_r = set(), set()
        for *_, li, ri in sorted(candidates):
            if li in used_l or ri in used_r:
                continue
            used_l.add(li)
            used_r.add(ri)
            pairs.append(StereoPair(lefts[li], rights[ri]))
    pairs.sort(key=lambda p: (p.left.sclk or 0.0, p.left.id))
    return pairs
