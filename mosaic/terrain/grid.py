"""The DEM's grid and the point files: what each pair's points are bucketed into.

The grid is north-up in the site map CRS (``mosaic.formats.geo``), ``gsd`` metres per cell, covering a
square of ``radius`` around the rover, cut into square tiles of ``tile`` cells. Every pair's points
are written into one small file per tile they touch (the tile plus a halo, so the neighbourhood
test and the hole fill at a tile's edge see their neighbours' points); a tile then reads only its
own files, so a whole 360-degree pan grids in memory proportional to one tile. How a tile's points
become heights is ``fuse``'s business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from affine import Affine

from mosaic.formats.geo import grid_transform
from mosaic.runtime import atomic

#: Fields a point file holds, all float32: column and row in grid cells (continuous, cell (0, 0)
#: spans [0, 1)), height above the site origin (m, up), brightness, the 1-sigma error along the
#: ray as a vector (up, east, north; m) and the index of the pair.
POINT_FIELDS = ("col", "row", "height", "value", "su", "se", "sn", "pair")


@dataclass(frozen=True)
class GridSpec:
    transform: Affine
    width: int
    height: int
    tile: int = 1024
    halo: int = 16

    def __post_init__(self):
        if not 0 <= self.halo < self.tile:
            raise ValueError(f"halo ({self.halo}) must be smaller than the tile ({self.tile})")

    def tiles(self) -> list[tuple[int, int]]:
        """Tile indices (tile_row, tile_col) in row-major order."""
        nr = math.ceil(self.height / self.tile)
        nc = math.ceil(self.width / self.tile)
        return [(r, c) for r in range(nr) for c in range(nc)]

    def window(self, tile_index) -> tuple[int, int, int, int]:
        """(row0, col0, rows, cols) of a tile inside the grid."""
        r, c = tile_index
        row0, col0 = r * self.tile, c * self.tile
        return row0, col0, min(self.tile, self.height - row0), min(self.tile, self.width - col0)

    def cells(self, easting, northing):
        """Continuous (col, row) of map coordinates."""
        inv = ~self.transform
        col, row = inv @ (np.asarray(easting, float), np.asarray(northing, float))
        return col, row

    def to_dict(self) -> dict:
        return {"transform": list(self.transform)[:6], "width": self.width, "height": self.height,
                "tile": self.tile, "halo": self.halo}

    @classmethod
    def from_dict(cls, d) -> "GridSpec":
        return cls(Affine(*d["transform"]), int(d["width"]), int(d["height"]), int(d["tile"]), int(d["halo"]))


def grid_spec(origin, centre_north: float, centre_east: float, radius: float, gsd: float,
              tile: int = 1024, halo: int = 16) -> GridSpec:
    """The grid covering ``radius`` metres around a SITE point (north, east), snapped to ``gsd``."""
    t = grid_transform(origin, centre_east - radius, centre_north + radius, gsd)
    n = int(math.ceil(2 * radius / gsd)) + 1  # +1: snapping moves the corner out by < one cell
    return GridSpec(t, n, n, tile, halo)


def bucket(spec: GridSpec, col, row) -> dict[tuple[int, int], np.ndarray]:
    """Indices of the points each tile (with its halo) holds: {tile_index: indices}."""
    h, size = spec.halo, spec.tile
    inside = (col >= -h) & (row >= -h) & (col < spec.width + h) & (row < spec.height + h)
    idx = np.nonzero(inside)[0]
    c, r = col[idx], row[idx]
    # With halo < tile a point lies in its own tile row and, within the halo of an edge, in the
    # one before or after; likewise for columns: at most 3 x 3 distinct tiles, no duplicates.
    r0 = np.floor(r / size).astype(np.int64)
    c0 = np.floor(c / size).astype(np.int64)
    row_opts = [(r0, None), (r0 - 1, np.floor((r - h) / size) < r0), (r0 + 1, np.floor((r + h) / size) > r0)]
    col_opts = [(c0, None), (c0 - 1, np.floor((c - h) / size) < c0), (c0 + 1, np.floor((c + h) / size) > c0)]
    nr, nc = math.ceil(spec.height / size), math.ceil(spec.width / size)
    keys, members = [], []
    for tr, mr in row_opts:
        for tc, mc in col_opts:
            m = (tr >= 0) & (tr < nr) & (tc >= 0) & (tc < nc)
            if mr is not None:
                m &= mr
            if mc is not None:
                m &= mc
            keys.append(tr[m] * nc + tc[m])
            members.append(idx[m])
    keys = np.concatenate(keys)
    members = np.concatenate(members)
    order = np.argsort(keys, kind="stable")
    keys, members = keys[order], members[order]
    uniq, starts = np.unique(keys, return_index=True)
    ends = np.append(starts[1:], len(keys))
    return {(int(k // nc), int(k % nc)): np.sort(members[a:b]) for k, a, b in zip(uniq, starts, ends)}


def tile_dir(root, tile_index) -> Path:
    return Path(root) / f"{tile_index[0]:04d}_{tile_index[1]:04d}"


def save_points(root, pair_id: str, spec: GridSpec, fields: dict) -> dict:
    """Write ``fields`` (POINT_FIELDS arrays) as one file per tile; {tile: count}."""
    buckets = bucket(spec, fields["col"], fields["row"])
    counts = {}
    for t, idx in buckets.items():
        path = tile_dir(root, t) / f"{pair_id}.npy"
        path.parent.mkdir(parents=True, exist_ok=True)
        block = np.stack([np.asarray(fields[k], np.float32)[idx] for k in POINT_FIELDS])
        with atomic.atomic_path(path) as tmp:
            np.save(tmp, block)
        counts[f"{t[0]}_{t[1]}"] = int(len(idx))
    return counts


def load_points(root, tile_index) -> np.ndarray:
    """All pairs' points for a tile, (len(POINT_FIELDS), N) float32."""
    files = sorted(tile_dir(root, tile_index).glob("*.npy"))
    if not files:
        return np.zeros((len(POINT_FIELDS), 0), np.float32)
    return np.concatenate([np.load(f) for f in files], axis=1)
