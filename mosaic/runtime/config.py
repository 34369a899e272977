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


#: Allowed range of each numeric option: (low, high, low is allowed, high is allowed); None: open.
RANGES = {
    "hfov": (0, 180, False, False),
    "work_megapixels": (0, None, False, None), "photo_megapixels": (0, None, False, None),
    "min_scale": (0, 1, True, True), "refine_scale": (0, 1, True, True),
    "photo_keypoints": (1, None, True, None), "max_keypoints": (1, None, True, None),
    "border_px": (0, None, True, None),
    "margin_deg": (0, 90, True, True), "min_overlap": (0, 1, True, True), "neighbours": (1, None, True, None),
    "ratio": (0, 1, False, True), "ransac_px": (0, None, False, None), "ransac_iterations": (1, None, True, None),
    "min_depth_m": (0, None, False, None), "min_inliers": (2, None, True, None), "seed": (0, 2**32 - 1, True, True),
    "prior_deg": (0, None, False, None), "loss_px": (0, None, False, None), "outlier_px": (0, None, False, None),
    "max_iterations": (1, None, True, None),
    "workers": (1, None, True, None), "threads_per_worker": (1, None, True, None),
    "resolution": (0, None, False, None), "max_megapixels": (0, None, False, None),
}
#: Options whose value is one of a few names.
CHOICES = {"feature": FEATURES, "projection": PROJECTIONS, "loss": ("huber", "cauchy")}
_KINDS = {"float": "a number", "int": "an integer", "str": "text", "bool": "true or false", "tuple": "a list"}


def _range_text(lo, hi, lo_in, hi_in) -> str:
    if hi is None:
        return "positive" if lo == 0 and not lo_in else (f"at least {lo}" if lo_in else f"more than {lo}")
    if lo_in and hi_in:
        return f"between {lo} and {hi}"
    if not lo_in and not hi_in:
        return f"between {lo} and {hi}, both excluded"
    return f"between {lo} and {hi}, {lo if not lo_in else hi} excluded"


def _check_field(name: str, annotation: str, value) -> None:
    """Type and range of one StitchConfig value; InputError naming the option otherwise.

    The kind comes from the field's annotation ("float | None" and the like): a config file can
    hold any TOML value, and ``resolution = "fine"`` must be a one-line error, not a traceback.
    """
    import math

    kinds = [k.strip() for k in str(annotation).split("|")]
    if value is None:
        if "None" in kinds:
            return
        raise InputError(None, "must be given", field=name)
    kind = kinds[0]
    ok = {"float": isinstance(value, (int, float)) and not isinstance(value, bool),
          "int": isinstance(value, int) and not isinstance(value, bool),
          "str": isinstance(value, str), "bool": isinstance(value, bool),
          "tuple": isinstance(value, (list, tuple))}[kind]
    if not ok:
        raise InputError(None, f"expected {_KINDS[kind]}, got {value!r}", field=name)
    if kind == "float" and not math.isfinite(value):
        raise InputError(None, f"expected a finite number, got {value!r}", field=name)
    if name in CHOICES and value not in CHOICES[name]:
        noun = "feature type" if name == "feature" else name
        raise InputError(None, f"unknown {noun} {value!r} (expected one of {', '.join(CHOICES[name])})", field=name)
    if name in RANGES:
        lo, hi, lo_in, hi_in = RANGES[name]
        if (lo is not None and (value < lo or (value == lo and not lo_in))) or \
                (hi is not None and (value > hi or (value == hi and not hi_in))):
            raise InputError(None, f"must be {_range_text(lo, hi, lo_in, hi_in)}, got {value!r}", field=name)
    if name == "stretch_percentiles":
        nums = [v for v in value if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]
        if len(value) != 2 or len(nums) != 2 or not 0 <= nums[0] < nums[1] <= 100:
            raise InputError(None, f"expected [low, high] percentiles with 0 <= low < high <= 100, got {value!r}",
                             field=name)
    if name == "memory_limit" and str(value).lower() != "auto":
        from dask.utils import parse_bytes

        try:
            if parse_bytes(value) <= 0:
                raise ValueError
        except (ValueError, TypeError):
            raise InputError(None, f"expected a size such as \"4GB\" or \"auto\", got {value!r}", field=name) from None


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
        for f in fields(self):
            _check_field(f.name, f.type, getattr(self, f.name))
        object.__setattr__(self, "stretch_percentiles", tuple(float(v) for v in self.stretch_percentiles))

    @classmethod
    def from_mapping(cls, values: dict, source=None) -> "StitchConfig":
        """A config from a dict, rejecting unknown keys (a typo must not be silently ignored)."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise InputError(source, f"unknown stitch option(s): {', '.join(unknown)}")
        try:
            return cls(**{k: v for k, v in values.items() if v is not None})
        except InputError as e:
            if e.path is not None or source is None:
                raise
            raise InputError(source, e.problem, field=e.field) from None

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


def render_options(config: StitchConfig, photos: bool = False) -> dict:
    """The renderer's keyword arguments that come from the stitch options. A panorama of plain
    photos is cropped to the window it covers by default (photos cover a small part of the sphere,
    and a full-sphere canvas would be mostly empty); rover pans keep the full sphere."""
    crop = config.crop if config.crop is not None else photos
    return {"projection": config.projection, "resolution": config.resolution,
            "max_pixels": config.max_megapixels * 1e6, "crop": bool(crop)}
