"""Which pixels of a frame are image: dark or odd border rows and columns, and an alpha band.

Real frames carry borders that are not image. Curiosity's linearised Navcam products have three
black rows at the top, two at the bottom and two or three dim columns at each side (the epipolar
resampling ran out of source pixels there: 0, 27, 98 against ~150 inside); Opportunity's
inverse-LUT frames have bright first and last columns (2.9 and 1.2 times the interior) and a dim
last row; Perseverance's raw tiles a soft last row and column. Counted as image, such a border
shows as a dark line and a hard step wherever its frame owns pixels up to its edge, and it
biases exposure and seam estimates.

A frame's valid area is a rectangle inside its margins (:class:`Margins`, four small integers,
picklable and cheap to carry in every tile job), intersected with the frame's alpha band where
it has one. Margins come from the pixels (:func:`detect_margins`): from each edge inwards, the
rows (columns) whose level differs from the interior's by more than ``TOLERANCE`` are border, up
to ``MAX_MARGIN`` of them: a row is border when it holds zero fill (resampled products leave a
ragged edge of zeros: ``ZERO_SHARE``) or is uniformly darker or brighter than the next row in
(three quarters of its pixel-wise ratios to that row beyond ``TOLERANCE``, on the same side), so
the scene's own variation along the row cancels and a natural edge that is not exactly a row
does not count; the walk stops at the first row that is neither. ``MIN_MARGIN``
pixels stay masked besides wherever a border was found: the first interior row often still
carries some of it.

The renderer samples a frame bilinearly, so a pixel whose four neighbours are not all valid is
not valid either (:func:`valid_box`): frames with a margin end at the centre of their first
valid row or column, not half a pixel beyond it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Rows/columns inspected from each edge (a border wider than this is image content to us).
MAX_MARGIN = 12
#: |log(level ratio)| above which a border row/column is not image (10 %).
TOLERANCE = 0.1
#: A row with this larger a share of zero pixels than the image inside is zero fill.
ZERO_SHARE = 0.02
#: Extra rows/columns masked beyond a detected border.
MIN_MARGIN = 1


@dataclass(frozen=True)
class Margins:
    """Rows (``top``, ``bottom``) and columns (``left``, ``right``) at a frame's edges that are
    not image."""

    top: int = 0
    bottom: int = 0
    left: int = 0
    right: int = 0

    def __or__(self, other: "Margins") -> "Margins":
        return Margins(max(self.top, other.top), max(self.bottom, other.bottom),
                       max(self.left, other.left), max(self.right, other.right))

    def scaled(self, factor: float) -> "Margins":
        """The margins of the same frame at ``factor`` times its size (rounded outwards)."""
        c = lambda v: int(np.ceil(v * factor - 1e-9)) if v else 0  # noqa: E731
        return Margins(c(self.top), c(self.bottom), c(self.left), c(self.right))

    def as_list(self) -> list[int]:
        return [self.top, self.bottom, self.left, self.right]

    def any(self) -> bool:
        return bool(self.top or self.bottom or self.left or self.right)


NONE = Margins()


def valid_box(margins: Margins, width: int, height: int):
    """(x0, x1, y0, y1): the frame coordinates (pixel centres, 0-based) a bilinear sample may take
    and still read only valid pixels. Sides without a margin reach the image edge (half a pixel
    beyond the outer centres, where sampling replicates the edge, as for every frame)."""
    x0 = -0.5 if margins.left == 0 else float(margins.left)
    y0 = -0.5 if margins.top == 0 else float(margins.top)
    x1 = width - 0.5 if margins.right == 0 else float(width - 1 - margins.right)
    y1 = height - 0.5 if margins.bottom == 0 else float(height - 1 - margins.bottom)
    return x0, x1, y0, y1


def _side(rows: np.ndarray, usable: np.ndarray) -> int:
    """Border rows at the start of ``rows`` (k + 1, n): consecutive rows from the first that hold
    zero fill (ZERO_SHARE of their pixels at 0 more than the innermost row) or are uniformly
    darker or brighter than the next one in (three quarters of the pixel-wise ratios beyond the
    tolerance on the same side)."""
    lo, hi = np.exp(-TOLERANCE), np.exp(TOLERANCE)
    inner = float(np.mean(rows[-1][usable] == 0)) if usable.any() else 0.0
    out = 0
    for k in range(rows.shape[0] - 1):
        a, b = rows[k][usable], rows[k + 1][usable]
        if len(a) < 16:
            break
        if np.mean(a == 0) < inner + ZERO_SHARE:
            both = (a > 0) & (b > 0)  # zero fill in the next row says nothing about this one
            if both.sum() < 16:
                break
            q25, q75 = np.percentile(a[both] / b[both], [25, 75])
            if not (q75 < lo or q25 > hi):
                break
        out = k + 1
    return out


def detect_margins(img: np.ndarray, alpha: np.ndarray | None = None) -> Margins:
    """The border rows and columns of a frame's pixels (see the module's notes). Frames too small
    to hold a reference row get none."""
    a = np.asarray(img)
    h, w = a.shape[:2]
    if min(h, w) < 4 * (MAX_MARGIN + 1):
        return NONE
    k = MAX_MARGIN + 1
    colour = a.ndim == 3
    grey = (lambda x: x.astype(np.float32).mean(axis=-1)) if colour else (lambda x: x.astype(np.float32))  # noqa: E731
    # Only the strips along the edges are read (a grey copy of a whole colour frame costs 20x).
    strips = {"top": a[:k], "bottom": a[::-1][:k], "left": np.swapaxes(a[:, :k], 0, 1),
              "right": np.swapaxes(a[:, ::-1][:, :k], 0, 1)}
    opaque = {"top": None if alpha is None else alpha[k], "bottom": None if alpha is None else alpha[h - 1 - k],
              "left": None if alpha is None else alpha[:, k], "right": None if alpha is None else alpha[:, w - 1 - k]}
    found = []
    for side in ("top", "bottom", "left", "right"):
        rows = strips[side]
        use = np.ones(rows.shape[1], bool) if opaque[side] is None else opaque[side] > 0
        n = _side(grey(rows), use)
        found.append(n + MIN_MARGIN if n else 0)
    return Margins(*found)
