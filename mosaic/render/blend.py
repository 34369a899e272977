"""Multi-band (Laplacian pyramid) blending of warped frames inside one output window.

Burt & Adelson's blend: every frame's Laplacian pyramid is weighted by the Gaussian pyramid of
its seam mask and the sums are normalised level by level, so low frequencies cross a seam over a
wide band and fine detail over a narrow one.

A warped frame only has pixels where it sees (its *cover*); a plain Laplacian pyramid would mix
the zeros outside into every coarse level near the frame's border. Each level is therefore a
normalised (masked) Gaussian level, ``F_k = G_k(image * cover) / G_k(cover)``, with Laplacian
``L_k = F_k - up(F_{k+1})``: inside the cover the levels collapse back to the image exactly, and
wherever a level's seam weight is non-zero every value it reads is defined (the seam mask lies
inside the cover and the 5-tap kernels are positive), so the undefined places never matter.

Tiling: every operation has a finite support, about ``4 * 2**levels`` output pixels for the
whole chain (down to the coarsest level, back up through one Laplacian and the collapse), so a
window with a halo of :func:`halo` pixels around its tile gives the tile exactly the values a
single whole-image blend would give, provided the window's origin lies on the coarsest level's
grid (a multiple of ``2**levels`` in global pixels) so that every level decimates the same pixels.
Frames are processed over their own footprint padded by the same halo, for the same reason.
"""

from __future__ import annotations

import cv2
import numpy as np

_EPS = np.float32(1e-8)


def support(levels: int) -> int:
    """How far (output pixels, either axis) a frame's weight reaches through the chain of
    ``levels`` levels: the 5-tap kernels of the Gaussian pyramid down to the coarsest level and the
    collapse back up, 2 x 2**k per level k each way, under 4 x 2**levels. A pixel whose square of
    this half-size holds one frame's weight only takes that frame's value (measured: 55 px at
    4 levels, at float precision)."""
    return 4 << levels


def halo(levels: int) -> int:
    """Margin (output pixels) a tile needs around it for ``levels`` pyramid levels: the support
    of the chain, rounded up to the coarsest grid, plus one coarse pixel."""
    return support(levels) + (1 << levels)


def _down(a):
    r = cv2.pyrDown(a)
    return r[..., None] if a.ndim == 3 and r.ndim == 2 else r


def _up(a, shape):
    r = cv2.pyrUp(a, dstsize=(shape[1], shape[0]))
    return r[..., None] if a.ndim == 3 and r.ndim == 2 else r


def _ratio(num, den):
    # Where den is ~0 so is num (num <= max value * den): clamping den gives ~0 there, cheaply.
    return num / np.maximum(den, _EPS)[..., None]


def level_shape(shape, k):
    return (-(-shape[0] // (1 << k)), -(-shape[1] // (1 << k)))


class MultiBand:
    """Accumulates frames into a window of ``shape`` (h, w) with ``bands`` bands."""

    def __init__(self, shape, bands: int, levels: int):
        self.shape, self.bands, self.levels = tuple(shape), bands, levels
        self.num = [np.zeros(level_shape(shape, k) + (bands,), np.float32) for k in range(levels + 1)]
        self.den = [np.zeros(level_shape(shape, k), np.float32) for k in range(levels + 1)]

    def region(self, rows: slice, cols: slice):
        """The window rows/cols to process a frame that owns (has seam weight in) ``rows`` x
        ``cols``: padded by the halo plus one coarse pixel, so that every level is exact wherever
        the frame's weight pyramid is non-zero whatever the data beyond the region, and aligned
        to the coarsest grid."""
        a = 1 << self.levels
        pad = halo(self.levels) + a
        r0 = max(0, (rows.start - pad) // a * a)
        c0 = max(0, (cols.start - pad) // a * a)
        r1 = min(self.shape[0], rows.stop + pad)
        c1 = min(self.shape[1], cols.stop + pad)
        return slice(r0, r1), slice(c0, c1)

    def add(self, rows: slice, cols: slice, image, cover, weight):
        """Add one frame: ``image`` (h, w, bands) float32, zero outside its cover (premultiplied),
        ``cover`` and ``weight`` (h, w) float32 (0/1; weight inside cover), all over the window
        region ``rows`` x ``cols`` (as returned by :meth:`region`)."""
        levels = self.levels
        # A frame that sees its whole region (the common case: seams keep away from frame
        # borders) has G_k(cover) = 1 exactly (the kernels sum to 1 in binary), so its levels
        # need neither the cover's pyramid nor the divisions.
        full = bool(cover.min() > 0)
        gi, gc, gw = [image], [None if full else cover], [weight]
        for _ in range(levels):
            gi.append(_down(gi[-1]))
            gc.append(None if full else _down(gc[-1]))
            gw.append(_down(gw[-1]))
        f_next = None
        for k in range(levels, -1, -1):
            r0, c0 = rows.start >> k, cols.start >> k
            h, w = gi[k].shape[:2]
            if k == 0:
                # Level-0 weights are the 0/1 seam masks, one owner per pixel, whose level-0 num
                # nobody else writes: adding weight x Laplacian puts the Laplacian there exactly
                # (plain arithmetic: numpy's masked ufuncs and copies are ~8x slower), and level
                # 0's den is never read. The cover is 0/1 and the image premultiplied by it, so
                # level 0 needs no division.
                if f_next is None:  # no coarser levels
                    lap = gi[0] * gw[0][..., None]
                else:
                    lap = _up(f_next, (h, w))
                    np.subtract(gi[0], lap, out=lap)
                    lap *= gw[0][..., None]
                self.num[0][r0:r0 + h, c0:c0 + w] += lap
                break
            f = gi[k] if full else _ratio(gi[k], gc[k])
            if f_next is None:
                lap = f * gw[k][..., None]
            else:
                lap = _up(f_next, (h, w))
                np.subtract(f, lap, out=lap)
                lap *= gw[k][..., None]
            self.num[k][r0:r0 + h, c0:c0 + w] += lap
            self.den[k][r0:r0 + h, c0:c0 + w] += gw[k]
            f_next = f
            gi[k] = gc[k] = gw[k] = None

    def result(self) -> np.ndarray:
        """The blended window (h, w, bands) float32 (0 where no frame has weight)."""
        out = None
        for k in range(self.levels, -1, -1):
            # Level 0 weights are the 0/1 seam masks, one owner per pixel: den is 0 or 1.
            b = self.num[0] if k == 0 else _ratio(self.num[k], self.den[k])
            out = b if out is None else b + _up(out, b.shape[:2])
        return out
