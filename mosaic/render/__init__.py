"""Panorama rendering: output projections, coarse-grid warping, gains, seams, multi-band blending,
tiled on dask (see docs/rendering.md)."""

from .panorama import plan, render_panorama

__all__ = ["plan", "render_panorama"]
