"""StitchConfig: every option of ``mosaic stitch``, its default and where it is used.

The same object comes from the command line, from the Python API (``stitch(..., **options)``) or
from a TOML file (``[stitch]`` table or top-level keys). Each stage hashes only the fields it
reads (``config.key_of(...)``), so changing a render option never re-runs feature detection.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, fields
from pathlib import Path

from calib.errors import InputError

FEATURES = ("sift", "orb", "akaze")
PROJECTIONS = ("equirect", "cylindrical", "polar", "vertical", "perspective")


def read_toml(path, what: str = "config") -> dict:
    """A TOML file's table; unreadable or malformed files (binary ones included) are bad input."""
    import tomllib

    path = Path(path)
    try:
        return tomllib.loads(path.read_text())
    except OSError as e:
        raise InputError(path, f"cannot read {what}: {e.strerror or e}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid TOML: {e}") from None


@dataclass(frozen=True)
class StitchConfig:
    # ingest
    hfov: float | None = None           #: horizontal field of view (deg) of plain photos; None: EXIF or estimated
    # features
    feature: str = "sift"               #: sift | orb | akaze
    work_megapixels: float = 1.0        #: working resolution for detection (frames are downscaled to this)...
    min_scale: float = 0.45             #: ...but never below this fraction of their size: keypoints are good to
                                        #: ~0.35 working pixels, and residuals are counted in delivered pixels
    refine_scale: float = 0.5           #: plain photos: detect at photo_megapixels (no min_scale floor) and refine
                                        #: each verified match on patches at this scale of the photo (0: off)
    photo_megapixels: float = 0.5       #: detection resolution of refined photos...
    photo_keypoints: int = 1500         #: ...and their strongest keypoints kept (matching is quadratic in it)
    max_keypoints: int = 3000           #: strongest keypoints kept per frame
    border_px: int = 8                  #: pixels masked along each edge (full-resolution pixels)
    stretch_percentiles: tuple = (0.5, 99.5)  #: 12/16-bit data is stretched to 8 bit between these
    # pairs
    margin_deg: float = 2.0             #: pointing uncertainty: predicted overlaps are widened by this
    min_overlap: float = 0.02           #: smallest predicted overlap fraction that makes a pair
    neighbours: int = 6                 #: without metadata: candidate partners per frame (similarity ranking)
    # matches
    ratio: float = 0.8                  #: Lowe's ratio test
    ransac_px: float = 2.0              #: inlier tolerance (pixels at working resolution)
    ransac_iterations: int = 500
    min_depth_m: float = 1.0            #: nearest scene point assumed: bounds the parallax a match may show
    min_inliers: int = 12               #: fewer verified matches: the pair is not used
    seed: int = 0                       #: RANSAC seed (each pair derives its own from it and its ids)
    # adjust
    shared_lens: bool = False           #: plain photos of one size share focal length and k1 (else one lens each)
    prior_deg: float = 1.0              #: sigma of the prior on each frame's reported pointing
    loss: str = "huber"                 #: huber | cauchy
    loss_px: float = 1.0                #: scale of the robust loss (pixels as delivered)
    outlier_px: float = 3.0             #: observations further than this after a solve are removed
    max_iterations: int = 50
    # run
    scheduler: str | None = None        #: dask scheduler address; None: an embedded local cluster
    workers: int | None = None
    threads_per_worker: int | None = None  #: threads of each embedded worker
    memory_limit: str | None = None     #: per embedded worker, e.g. "4GB" (dask's syntax); None: auto
    render: bool = True                 #: render panorama.tif after solution.json (when mosaic.render exists)
    # render
    projection: str = "equirect"        #: equirect | cylindrical | polar | vertical | perspective
    resolution: float | None = None     #: degrees per output pixel (metres for vertical); None: finest input pixel
    max_megapixels: float = 4000.0      #: refuse (before allocating anything) a panorama larger than this
    crop: bool | None = None            #: equirect: the covered window only; None: for plain photos only

    def __post_init__(self):
        if self.feature not in FEATURES:
            raise InputError(None, f"unknown feature type {self.feature!r} (expected one of {', '.join(FEATURES)})",
                             field="feature")
        if self.projection not in PROJECTIONS:
            raise InputError(None, f"unknown projection {self.projection!r} (expected one of {', '.join(PROJECTIONS)})",
                             field="projection")
        if self.resolution is not None and not float(self.resolution) > 0:
            raise InputError(None, f"must be positive, got {self.resolution!r}", field="resolution")
        if self.loss not in ("huber", "cauchy"):
            raise InputError(None, f"unknown loss {self.loss!r} (expected huber or cauchy)", field="loss")
        if self.hfov is not None and not (0 < float(self.hfov) < 180):
            raise InputError(None, f"hfov must be between 0 and 180 degrees, got {self.hfov}", field="hfov")
        for name in ("min_scale", "refine_scale"):
            if not 0 <= float(getattr(self, name)) <= 1:
                raise InputError(None, f"must be between 0 and 1, got {getattr(self, name)!r}", field=name)
        for name in ("work_megapixels", "photo_megapixels", "ratio", "ransac_px", "loss_px", "outlier_px", "prior_deg", "min_depth_m"):
            if not float(getattr(self, name)) > 0:
                raise InputError(None, f"must be positive, got {getattr(self, name)!r}", field=name)
        object.__setattr__(self, "stretch_percentiles", tuple(float(v) for v in self.stretch_percentiles))

    @classmethod
    def from_mapping(cls, values: dict, source=None) -> "StitchConfig":
        """A config from a dict, rejecting unknown keys (a typo must not be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(source, f"unknown stitch option(s): {', '.join(unknown)}")
        return cls(**{k: v for k, v in values.items() if v is not None})

    @classmethod
    def from_toml(cls, path, **overrides) -> "StitchConfig":
        """Options from a TOML file (a ``[stitch]`` table or top-level keys), then ``overrides``."""
        path = Path(path)
        data = read_toml(path)
        values = data.get("stitch", data)
        values = {**values, **{k: v for k, v in overrides.items() if v is not None}}
        return cls.from_mapping(values, source=path)

    def replace(self, **kw) -> "StitchConfig":
        return dataclasses.replace(self, **kw)

    def key_of(self, *names) -> dict:
        """The named fields, for a stage's skip key."""
        return {n: getattr(self, n) for n in names}
