"""FrameMeta: what every metadata reader returns for one frame."""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from .rotation import quat_to_matrix

#: Frames a camera model may be stated in.
ROVER_NAV_FRAME = "ROVER_NAV_FRAME"
SITE = "SITE"
LOCAL_LEVEL = "LOCAL_LEVEL"


@dataclass(frozen=True)
class FrameMeta:
    """One frame: its pixels' location on disk and everything known about where it looks.

    ``model`` is in the delivered product's pixel grid (subframe and downsampling applied) and
    stated in ``model_frame``. ``attitude`` is the rover's quaternion (s, x, y, z) that rotates
    ROVER_NAV_FRAME vectors into SITE; ``rover_position`` the rover's origin in SITE (metres).
    ``subframe`` is (first_sample, first_line, samples, lines), 1-based, in full-sensor pixels.
    Angles are in degrees. Unknown values are None.
    """

    id: str
    instrument: str
    width: int
    height: int
    model: object | None
    model_frame: str = ROVER_NAV_FRAME
    attitude: tuple | None = None
    rover_position: tuple | None = None
    mast_az: float | None = None
    mast_el: float | None = None
    subframe: tuple | None = None
    downsample: int = 1
    site: int | None = None
    drive: int | None = None
    sclk: float | None = None
    source: str | None = None
    image: str | None = None
    bands: int | None = None
    bit_depth: int | None = None
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def with_(self, **kw) -> "FrameMeta":
        return replace(self, **kw)

    def rover_to_local_level(self) -> np.ndarray:
        """Rotation taking ROVER_NAV_FRAME vectors into LOCAL_LEVEL (identity if no attitude)."""
        if self.attitude is None:
            return np.eye(3)
        return quat_to_matrix(self.attitude)

    def model_local_level(self):
        """The camera model in LOCAL_LEVEL (rover origin, north-east-down axes)."""
        if self.model is None or self.model_frame == LOCAL_LEVEL:
            return self.model
        if self.model_frame == SITE:
            # SITE and LOCAL_LEVEL share axes; LOCAL_LEVEL's origin is the rover.
            pos = np.zeros(3) if self.rover_position is None else np.asarray(self.rover_position, float)
            return self.model.transformed(np.eye(3), -pos)
        return self.model.transformed(self.rover_to_local_level(), np.zeros(3))
