"""Nominal camera models of Perseverance's mast cameras (Navcam and Mastcam-Z, left and right).

Each ``Instrument`` gives its camera model in ROVER_NAV_FRAME for a mast pointing (the telemetry
``mastAz``/``mastEl``, posed by ``calib.mast``), a zoom (Mastcam-Z), a downsampling factor and a
subframe, in the pixel grid of the delivered product. They serve synthetic scenes and frames whose
label carries no model. Sources and measured numbers: docs/camera-models.md.

- Navcam: the intrinsics (H, V, O relative to A, and R, E, T, P) of a real Perseverance left Navcam
  model (NLF_0670_0726421423_362ECM_N0320604NCAM08111_01_095J01, full-resolution tile at the sensor
  origin, so its model is the full-frame grid), re-posed so that at mast (0, 0) A is RNAV +x and
  H points along +y. The camera centres were measured by un-posing three real frames through the
  mast model (left: sol 670 JSON and sol 629 PDS4 label; right: sol 731 JSON); the right camera is
  the left one moved 0.424 m along its H direction.
- Mastcam-Z: CAHVOR from the published optics (7.4 um pixels, focal length = zoom), centred
  principal point, each camera toed in by 1.15 degrees (2.3 total), baseline 0.244 m; the pair's
  centre was measured by un-posing one real MCZ_LEFT frame (sol 1484).

Pixel conventions (contract): model pixels are 0-based; ``subframe`` is (first_sample, first_line,
samples, lines), 1-based in full-sensor pixels; a product of ``subframe`` downsampled by ``s`` has
the model ``full.shift(x0 - 1, y0 - 1).scale(s)``.

Example:

>>> nav = instrument("NAVCAM_LEFT")
>>> m = nav.model(mast_az_deg=30.0, mast_el_deg=-20.0)
>>> [round(v, 2) for v in m.fov(nav.width, nav.height)]   # degrees
[96.55, 73.1]
>>> stereo_partner("NAVCAM_LEFT")
'NAVCAM_RIGHT'
>>> tile = nav.model(30.0, -20.0, downsample=2, subframe=(2545, 1, 2576, 1936))
>>> nav.product_size(downsample=2, subframe=(2545, 1, 2576, 1936))
(1288, 968)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .errors import InputError
from .mast import pose_model
from .models import CAHVOR, CAHVORE
from .rotation import axis_angle

# --- Navcam ---------------------------------------------------------------------------------

#: The real left Navcam model the nominal intrinsics come from (RNAV, full-frame pixel grid):
#: NLF_0670_0726421423_362ECM_N0320604NCAM08111_01_095J01, subframe (1, 1, 1288, 968), scale 1,
#: public raw-image record (NASA/JPL-Caltech), mast (1.19218, -33.9935).
NAVCAM_SOURCE_MODEL = CAHVORE(
    C=[0.950849, 0.349753, -1.89429],
    A=[0.824195, 0.0290508, 0.565575],
    H=[2041.2, 3032.24, 1457.62],
    V=[-71.0941, 9.0217, 3538.0],
    O=[0.824089, 0.0304646, 0.565654],
    R=[0.000001736, 0.0501396, -0.0171254],
    E=[-0.000000008, 0.00000001, -0.000000029],
    T=2,
    P=0.0,
    source="NLF_0670_0726421423_362ECM_N0320604NCAM08111_01_095J01",
)
NAVCAM_SIZE = (5120, 3840)
NAVCAM_BASELINE_M = 0.424
#: Midpoint of the two Navcam centres with the mast at (0, 0), RNAV metres: the mean of the left
#: centres un-posed from sol 670 (JSON) and sol 629 (PDS4) and the right one from sol 731 (JSON);
#: tests/test_mast.py re-measures it from the real files.
NAVCAM_PAIR_CENTRE = np.array([0.9336, 0.5583, -1.9766])

# --- Mastcam-Z ------------------------------------------------------------------------------

MCZ_SIZE = (1600, 1200)
MCZ_PIXEL_MM = 0.0074
MCZ_ZOOM_RANGE_MM = (26.0, 110.0)
#: Zoom positions used in operations (Bell et al. 2021).
MCZ_ZOOM_STOPS_MM = (26.0, 34.0, 48.0, 63.0, 79.0, 100.0, 110.0)
MCZ_BASELINE_M = 0.244
MCZ_TOE_IN_DEG = 1.15
#: CAHVOR radial terms: an ASSUMPTION. The flight Mastcam-Z R terms (one model per zoom, Hayes
#: et al. 2021) are not in our sources; the lens is described as low-distortion, so we take
#: r1 = -1e-3 (barrel): 0.08 px at the 26 mm corner, 0.005 px at 110 mm. Real frames carry their
#: own CAHVOR in their labels, which is always used instead of this nominal one.
MCZ_R = (0.0, -1.0e-3, 0.0)
#: Midpoint of the two Mastcam-Z centres at mast (0, 0), RNAV metres: the left centre un-posed
#: from a real MCZ_LEFT record (ZL6_1484_0798697293, camera_position (0.793651, 0.435964,
#: -1.99174) at mast (-1.94931, 28.4668)) moved half the baseline to the right.
MCZ_PAIR_CENTRE = np.array([0.8330, 0.5569, -1.9850])

# Image axes at home in RNAV: H (right) along +y, V (down) along +z, A (forward) along +x.
_HOME_BASIS = np.column_stack([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])


def _camera_basis(model) -> np.ndarray:
    """Columns h', v', a: the model's right-handed image axes (x right, y down, z forward)."""
    a = model.A
    hc = model.H @ a
    h = model.H - hc * a
    h /= np.linalg.norm(h)
    return np.column_stack([h, np.cross(a, h), a])


def _navcam_home(side: float) -> CAHVORE:
    src = NAVCAM_SOURCE_MODEL
    # Re-pose the source model's intrinsics: rotate its image axes onto the home axes.
    rot = _HOME_BASIS @ _camera_basis(src).T
    centre = NAVCAM_PAIR_CENTRE + side * NAVCAM_BASELINE_M / 2.0 * _HOME_BASIS[:, 0]
    moved = src.moved(rot, pivot=src.C)
    return CAHVORE(
        C=centre, A=moved.A, H=moved.H, V=moved.V, O=moved.O, R=src.R, E=src.E, T=src.T, P=src.P,
        source=None,
    )


def mcz_focal_px(zoom_mm: float) -> float:
    """Focal length in pixels at a zoom position (effective focal length = zoom in mm)."""
    return float(zoom_mm) / MCZ_PIXEL_MM


def _mcz_home(side: float, zoom_mm: float) -> CAHVOR:
    lo, hi = MCZ_ZOOM_RANGE_MM
    if not (lo - 1e-9 <= zoom_mm <= hi + 1e-9):
        raise InputError(None, f"Mastcam-Z zoom {zoom_mm} mm outside {lo:g}-{hi:g} mm", field="zoom_mm")
    w, h = MCZ_SIZE
    f = mcz_focal_px(zoom_mm)
    hc, vc = (w - 1) / 2.0, (h - 1) / 2.0
    a, hh, vv = _HOME_BASIS[:, 2], _HOME_BASIS[:, 0], _HOME_BASIS[:, 1]
    centre = MCZ_PAIR_CENTRE + side * MCZ_BASELINE_M / 2.0 * hh
    home = CAHVOR(C=centre, A=a, H=hc * a + f * hh, V=vc * a + f * vv, O=a, R=MCZ_R)
    # Toe-in: each camera turns towards the other about its vertical (RNAV +z is down, so a
    # positive rotation turns +x towards +y: the left camera (side -1) turns right).
    return home.moved(axis_angle(vv, -side * np.radians(MCZ_TOE_IN_DEG)))


@dataclass(frozen=True)
class Instrument:
    """A mast camera: sensor size, stereo partner and nominal model at any pointing.

    ``home`` builds the full-frame model at mast (0, 0) from a zoom (ignored where ``zooms`` is
    empty). Use ``instrument(name)`` rather than building these.
    """

    name: str
    width: int
    height: int
    partner: str
    home: Callable[[float | None], object] = field(repr=False)
    zoom_range_mm: tuple | None = None
    default_zoom_mm: float | None = None

    def home_model(self, zoom_mm: float | None = None):
        """The full-frame model in RNAV with the mast at (0, 0)."""
        if self.zoom_range_mm is None:
            if zoom_mm is not None:
                raise InputError(None, f"{self.name} has a fixed focal length, got zoom {zoom_mm} mm", field="zoom_mm")
            return self.home(None)
        return self.home(self.default_zoom_mm if zoom_mm is None else float(zoom_mm))

    def _check_product(self, downsample, subframe):
        try:
            ok = int(downsample) == downsample and downsample >= 1
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InputError(None, f"downsample must be a positive integer, got {downsample!r}", field="downsample")
        if subframe is None:
            return 1, 1, self.width, self.height
        try:
            x0, y0, w, h = (int(v) for v in subframe)
        except (TypeError, ValueError):
            raise InputError(None, f"expected (first_sample, first_line, samples, lines), got {subframe!r}",
                             field="subframe") from None
        if x0 < 1 or y0 < 1 or w < 1 or h < 1 or x0 + w - 1 > self.width or y0 + h - 1 > self.height:
            raise InputError(None, f"subframe {tuple(subframe)} outside the {self.width}x{self.height} "
                             f"{self.name} sensor", field="subframe")
        return x0, y0, w, h

    def product_size(self, downsample: int = 1, subframe=None) -> tuple[int, int]:
        """(width, height) in pixels of a product with this downsampling and subframe."""
        _, _, w, h = self._check_product(downsample, subframe)
        return w // int(downsample), h // int(downsample)

    def model(self, mast_az_deg: float, mast_el_deg: float, zoom_mm: float | None = None,
              downsample: int = 1, subframe=None):
        """The camera model in RNAV, posed at the mast angles (telemetry convention, degrees),
        in the pixel grid of the product (``subframe`` 1-based full-sensor, then ``downsample``)."""
        x0, y0, _, _ = self._check_product(downsample, subframe)
        m = pose_model(self.home_model(zoom_mm), mast_az_deg, mast_el_deg)
        if (x0, y0) != (1, 1):
            m = m.shift(x0 - 1, y0 - 1)
        if downsample != 1:
            m = m.scale(float(downsample))
        return m


def _navcam(name, partner, side):
    home = _navcam_home(side)
    return Instrument(name, *NAVCAM_SIZE, partner=partner, home=lambda _zoom: home)


def _mcz(name, partner, side):
    return Instrument(name, *MCZ_SIZE, partner=partner, home=lambda zoom: _mcz_home(side, zoom),
                      zoom_range_mm=MCZ_ZOOM_RANGE_MM, default_zoom_mm=MCZ_ZOOM_RANGE_MM[0])


#: The instruments by the ids of the raw-image JSON records (``camera.instrument``).
INSTRUMENTS: dict[str, Instrument] = {
    i.name: i
    for i in (
        _navcam("NAVCAM_LEFT", "NAVCAM_RIGHT", -1.0),
        _navcam("NAVCAM_RIGHT", "NAVCAM_LEFT", +1.0),
        _mcz("MCZ_LEFT", "MCZ_RIGHT", -1.0),
        _mcz("MCZ_RIGHT", "MCZ_LEFT", +1.0),
    )
}


def instrument(name: str) -> Instrument:
    """The instrument with a raw-image JSON id such as "NAVCAM_LEFT" or "MCZ_RIGHT" (any case)."""
    key = str(name).strip().upper()
    if key not in INSTRUMENTS:
        raise InputError(None, f"unknown instrument {name!r} (known: {', '.join(INSTRUMENTS)})", field="instrument")
    return INSTRUMENTS[key]


def stereo_partner(name: str) -> str:
    """The id of the other camera of the stereo pair."""
    return instrument(name).partner
