"""JPL camera models CAHV, CAHVOR and CAHVORE: projection, back-projection and their derivatives.

Ported from the equations of JPL's cmod library (``cmod_cahv.c``, ``cmod_cahvor.c``,
``cmod_cahvore.c`` in NASA-AMMOS/VICAR), vectorised with numpy over (N, 3) points and (N, 2)
pixels. Conventions (contract, see docs/formats.md):

- pixels are 0-based, x = sample (column), y = line (row), at the centre of the upper-left pixel;
- C is the camera centre (metres), A the unit axis, H and V the horizontal and vertical vectors
  (pixels), O the unit optical axis, R = (r0, r1, r2) radial terms, E = (e0, e1, e2) entrance-pupil
  terms (metres), T the CAHVORE type (1 perspective, 2 fisheye, 3 general) and P its parameter;
  the linearity is derived: T=1 -> 1, T=2 -> 0, T=3 -> P;
- A and O are re-normalised on construction, since published values are rounded (|O| = 1.0000076
  in a real Mars 2020 model costs 0.005 px in a round trip otherwise);
- a point that does not project (behind the camera, outside a fisheye's valid cone, no
  convergence) gives NaN pixels; a pixel that does not back-project gives NaN rays.

Models are immutable values; ``shift``, ``scale``, ``moved`` and ``linear`` return new ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np

from .errors import ModelError
from .rotation import skew

_MAXITER = 100
_CONV = 1e-12
_EPS = 1e-15
#: No component of a model's vectors is larger (metres, pixels): a camera centre in a
#: Mars-centred frame is ~3.4e6 m, H and V are ~1e3-1e5 px. Beyond, the checks' squares
#: overflow and a garbage model would print numpy warnings instead of one clear error.
_LARGEST = 1e12


def _vec(name, value, owner=None) -> np.ndarray:
    try:
        v = np.asarray(value, dtype=float).reshape(3)
    except (TypeError, ValueError):
        raise ModelError(owner, f"expected 3 numbers, got {value!r}", field=name) from None
    if not np.all(np.isfinite(v)):
        raise ModelError(owner, f"not finite: {v.tolist()}", field=name)
    if np.abs(v).max() > _LARGEST:
        raise ModelError(owner, f"implausibly large (a component beyond {_LARGEST:g}): {v.tolist()}", field=name)
    return v


def _unit(name, value, owner=None) -> np.ndarray:
    v = _vec(name, value, owner)
    n = np.linalg.norm(v)
    if n < 1e-9:
        raise ModelError(owner, "zero-length vector", field=name)
    return v / n


def _newton(x, step):
    """Newton's iteration, element by element: ``x -= step(x)`` until the step is below _CONV
    (at most _MAXITER times); an element that turns non-finite stops. (x, converged mask)."""
    active = np.isfinite(x)
    ok = np.zeros(x.shape, dtype=bool)
    for _ in range(_MAXITER):
        dx = np.where(active, step(x), 0.0)
        x = x - dx
        done = active & (np.abs(dx) < _CONV)
        ok |= done
        active &= ~done & np.isfinite(x)
        if not active.any():
            break
    return x, ok


def _dot(a, b):
    return np.einsum("...i,...i->...", a, b)


@dataclass(frozen=True, eq=False)
class CAHV:
    """Linear (pinhole) camera model."""

    C: np.ndarray
    A: np.ndarray
    H: np.ndarray
    V: np.ndarray
    source: str | None = field(default=None, compare=False, repr=False)

    type: ClassVar[str] = "CAHV"
    _vectors: ClassVar[tuple[str, ...]] = ("C", "A", "H", "V")

    def __post_init__(self):
        src = self.source
        object.__setattr__(self, "C", _vec("C", self.C, src))
        object.__setattr__(self, "A", _unit("A", self.A, src))
        object.__setattr__(self, "H", _vec("H", self.H, src))
        object.__setattr__(self, "V", _vec("V", self.V, src))
        for name in ("H", "V"):  # below this their products underflow in the checks that follow
            if np.linalg.norm(getattr(self, name)) < 1e-9:
                raise ModelError(src, "zero-length vector", field=name)
        if np.linalg.norm(np.cross(self.A, self.H)) < 1e-9 * np.linalg.norm(self.H):
            raise ModelError(src, "H is parallel to A (degenerate model)", field="H")
        if np.linalg.norm(np.cross(self.A, self.V)) < 1e-9 * np.linalg.norm(self.V):
            raise ModelError(src, "V is parallel to A (degenerate model)", field="V")
        if abs(_dot(self.A, np.cross(self.V, self.H))) < 1e-9 * np.linalg.norm(self.H) * np.linalg.norm(self.V):
            raise ModelError(src, "H and V are parallel (degenerate model)", field="V")
        self._extra_checks()

    def _extra_checks(self):
        pass

    # -- the CAHV core shared by every model --------------------------------------------------

    def _cahv_project(self, d):
        """Pixels of camera-relative vectors d (N, 3); NaN where d·A <= 0."""
        da = d @ self.A
        with np.errstate(divide="ignore", invalid="ignore"):
            x = (d @ self.H) / da
            y = (d @ self.V) / da
        bad = ~(da > 0)
        x[bad] = np.nan
        y[bad] = np.nan
        return np.stack([x, y], axis=-1), da

    def _cahv_jacobian(self, d, pix, da):
        """d(pixel)/d(d) for the CAHV part, (N, 2, 3)."""
        jx = (self.H[None, :] - pix[:, :1] * self.A[None, :]) / da[:, None]
        jy = (self.V[None, :] - pix[:, 1:] * self.A[None, :]) / da[:, None]
        return np.stack([jx, jy], axis=1)

    def _cahv_rays(self, pixels):
        """Un-normalised rays ((V - yA) x (H - xA)) / (A . (V x H)), pointing along A."""
        x = pixels[:, 0:1]
        y = pixels[:, 1:2]
        f = self.V[None, :] - y * self.A[None, :]
        g = self.H[None, :] - x * self.A[None, :]
        return np.cross(f, g) / _dot(self.A, np.cross(self.V, self.H))

    # -- distortion hooks: identity for CAHV ---------------------------------------------------

    def _distort(self, d):
        """Camera-relative vector -> the vector CAHV projects; (N,3) with NaN rows where invalid."""
        return d

    def _distort_jacobian(self, d):
        return self._distort(d), np.broadcast_to(np.eye(3), d.shape[:1] + (3, 3))

    def _undistort(self, rays):
        """CAHV rays -> (origins, unit directions)."""
        dirs = rays / np.linalg.norm(rays, axis=1, keepdims=True)
        return np.broadcast_to(self.C, rays.shape).copy(), dirs

    # -- public API ---------------------------------------------------------------------------

    # A point or pixel the model cannot map comes out NaN (module notes); the overflows and
    # divisions on the way there are that outcome, not something to warn about.

    def project(self, points) -> np.ndarray:
        """Pixels (N, 2) of points (N, 3) in the model's frame."""
        p = np.atleast_2d(np.asarray(points, dtype=float))
        with np.errstate(all="ignore"):
            pix, _ = self._cahv_project(self._distort(p - self.C))
        return pix

    def backproject(self, pixels):
        """Ray origins (N, 3) and unit directions (N, 3) of pixels (N, 2)."""
        pix = np.atleast_2d(np.asarray(pixels, dtype=float))
        with np.errstate(all="ignore"):
            return self._undistort(self._cahv_rays(pix))

    def project_jacobian(self, points, pivot=None):
        """Pixels and their derivatives: (pix (N,2), d pix/d point (N,2,3), d pix/d rotation (N,2,3)).

        The rotation derivative is with respect to a small rotation vector w applied to the camera
        about ``pivot`` (default C), i.e. to ``moved(rotvec_to_matrix(w), pivot)`` at w = 0.
        Moving the camera by R about the pivot is the same as moving the point by R^T about it, so
        d pix/d w = (d pix/d point) @ skew(point - pivot).
        """
        p = np.atleast_2d(np.asarray(points, dtype=float))
        d = p - self.C
        dd, jd = self._distort_jacobian(d)
        pix, da = self._cahv_project(dd)
        jp = self._cahv_jacobian(dd, pix, da) @ jd
        piv = self.C if pivot is None else np.asarray(pivot, dtype=float)
        jr = jp @ skew(p - piv)
        return pix, jp, jr

    # -- model algebra ------------------------------------------------------------------------

    def shift(self, dx: float, dy: float):
        """The model of a subframe whose pixel (0, 0) is this model's (dx, dy)."""
        return replace(self, H=self.H - dx * self.A, V=self.V - dy * self.A)

    def scale(self, s: float, sy: float | None = None):
        """The model of the image downsampled by ``s`` (pixel coordinates divided by s)."""
        sy = s if sy is None else sy
        return replace(self, H=self.H / s, V=self.V / sy)

    def moved(self, rotation, pivot=None, translation=None):
        """The model rigidly rotated by the 3x3 ``rotation`` about ``pivot`` (default C), then
        translated. R, E, T, P are unchanged: they live in the camera's own frame."""
        r = np.asarray(rotation, dtype=float)
        piv = self.C if pivot is None else np.asarray(pivot, dtype=float)
        c = piv + r @ (self.C - piv)
        if translation is not None:
            c = c + np.asarray(translation, dtype=float)
        kw = {name: r @ getattr(self, name) for name in self._vectors if name not in ("C", "R", "E")}
        return replace(self, C=c, **kw)

    def transformed(self, rotation, translation):
        """The model expressed in a parent frame: x_parent = rotation @ x + translation."""
        return self.moved(rotation, pivot=np.zeros(3), translation=translation)

    def linear(self) -> "CAHV":
        """The CAHV part of the model (distortion dropped)."""
        return CAHV(self.C, self.A, self.H, self.V, source=self.source)

    def intrinsics(self):
        """hc, vc, hs, vs: principal point and focal lengths (pixels) of the linear part."""
        hc = float(self.A @ self.H)
        vc = float(self.A @ self.V)
        hs = float(np.linalg.norm(np.cross(self.A, self.H)))
        vs = float(np.linalg.norm(np.cross(self.A, self.V)))
        return hc, vc, hs, vs

    def to_opencv(self):
        """OpenCV K, R, t of the linear part: pixel ~ K (R X + t), camera x right, y down, z = A."""
        hc, vc, hs, vs = self.intrinsics()
        vp = (self.V - vc * self.A) / vs
        xaxis = np.cross(vp, self.A)
        hp = (self.H - hc * self.A) / hs
        rot = np.stack([xaxis, vp, self.A])
        k = np.array([[hs * (hp @ xaxis), hs * (hp @ vp), hc], [0.0, vs, vc], [0.0, 0.0, 1.0]])
        return k, rot, -rot @ self.C

    def angular_pixel(self) -> float:
        """Angular size of one pixel on the axis (radians)."""
        _, _, hs, vs = self.intrinsics()
        return 2.0 / (hs + vs)

    def fov(self, width: int, height: int):
        """Horizontal and vertical field of view in degrees, edge to edge through the image centre."""
        cx, cy = (width - 1) / 2.0, (height - 1) / 2.0
        pts = np.array([[-0.5, cy], [width - 0.5, cy], [cx, -0.5], [cx, height - 0.5]])
        _, d = self.backproject(pts)
        h = np.degrees(np.arccos(np.clip(d[0] @ d[1], -1, 1)))
        v = np.degrees(np.arccos(np.clip(d[2] @ d[3], -1, 1)))
        return float(h), float(v)

    def boresight(self, width: int, height: int) -> np.ndarray:
        """Unit direction of the image centre's ray."""
        _, d = self.backproject([[(width - 1) / 2.0, (height - 1) / 2.0]])
        return d[0]

    def border_pixels(self, width: int, height: int, n: int = 16) -> np.ndarray:
        """Pixels along the image border (clockwise from the upper-left corner), n per side."""
        t = np.linspace(0, 1, n, endpoint=False)
        x0, y0, x1, y1 = -0.5, -0.5, width - 0.5, height - 0.5
        top = np.stack([x0 + t * (x1 - x0), np.full(n, y0)], 1)
        right = np.stack([np.full(n, x1), y0 + t * (y1 - y0)], 1)
        bottom = np.stack([x1 - t * (x1 - x0), np.full(n, y1)], 1)
        left = np.stack([np.full(n, x0), y1 - t * (y1 - y0)], 1)
        return np.concatenate([top, right, bottom, left])

    def footprint(self, width: int, height: int, n: int = 16) -> np.ndarray:
        """Unit directions of rays along the image border, (4n, 3)."""
        _, d = self.backproject(self.border_pixels(width, height, n))
        return d

    # -- serialisation (the solution.json "model" object, contract) --------------------------

    def to_dict(self) -> dict:
        out = {"type": self.type}
        for name in self._vectors:
            out[name] = [float(v) for v in getattr(self, name)]
        out.update(self._scalars())
        return out

    def _scalars(self) -> dict:
        return {}

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    def __hash__(self):
        return hash(repr(self.to_dict()))


@dataclass(frozen=True, eq=False)
class CAHVOR(CAHV):
    """CAHV plus radial distortion about the optical axis O (Gennery 2001)."""

    O: np.ndarray = None
    R: np.ndarray = None

    type: ClassVar[str] = "CAHVOR"
    _vectors: ClassVar[tuple[str, ...]] = ("C", "A", "H", "V", "O", "R")

    def _extra_checks(self):
        object.__setattr__(self, "O", _unit("O", self.O, self.source))
        object.__setattr__(self, "R", _vec("R", self.R, self.source))

    def linear(self) -> CAHV:
        return CAHV(self.C, self.A, self.H, self.V, source=self.source)

    def _distort(self, d):
        zeta = d @ self.O
        lam = d - zeta[:, None] * self.O
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = _dot(lam, lam) / zeta**2
        r0, r1, r2 = self.R
        mu = r0 + (r1 + r2 * tau) * tau
        out = d + mu[:, None] * lam
        out[~(zeta > 0) | _folded(self.R, tau)] = np.nan
        return out

    def _distort_jacobian(self, d):
        o = self.O
        zeta = d @ o
        lam = d - zeta[:, None] * o
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = _dot(lam, lam) / zeta**2
            dtau = 2 * lam / zeta[:, None] ** 2 - 2 * (tau / zeta)[:, None] * o[None, :]
        r0, r1, r2 = self.R
        mu = r0 + (r1 + r2 * tau) * tau
        dmu = (r1 + 2 * r2 * tau)[:, None] * dtau
        proj = np.eye(3) - np.outer(o, o)
        j = np.eye(3)[None] + mu[:, None, None] * proj[None] + lam[:, :, None] * dmu[:, None, :]
        out = d + mu[:, None] * lam
        out[~(zeta > 0) | _folded(self.R, tau)] = np.nan
        return out, j

    def _undistort(self, rays):
        o = self.O
        rr = rays / np.linalg.norm(rays, axis=1, keepdims=True)
        omega = rr @ o
        lam = rr - omega[:, None] * o
        with np.errstate(divide="ignore", invalid="ignore"):
            tau = _dot(lam, lam) / omega**2
        r0, r1, r2 = self.R
        k1 = 1 + r0
        k3 = r1 * tau
        k5 = r2 * tau * tau
        u = 1.0 - (r0 + k3 + k5)
        active = np.isfinite(u)
        ok = np.zeros(len(u), dtype=bool)
        for _ in range(_MAXITER):
            u2 = u * u
            poly = ((k5 * u2 + k3) * u2 + k1) * u - 1
            deriv = (5 * k5 * u2 + 3 * k3) * u2 + k1
            with np.errstate(divide="ignore", invalid="ignore"):
                du = np.where(active, poly / deriv, 0.0)
            active &= deriv > _EPS
            u = u - np.where(active, du, 0.0)
            done = active & (np.abs(du) < _CONV)
            ok |= done
            active &= ~done
            if not active.any():
                break
        dirs = rr - (1 - u)[:, None] * lam
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        dirs[~ok | ~(omega > 0)] = np.nan
        return np.broadcast_to(self.C, rays.shape).copy(), dirs

    def _scalars(self):
        return {}


def _folded(r, t2):
    """Where the radial polynomial has folded back: the image radius t (1 + r0 + r1 t^2 + r2 t^4)
    no longer grows with the angle's tangent (CAHVOR) or chi (CAHVORE), so a direction far outside
    the calibrated field (behind a fisheye, say) would land back inside the image. JPL's cmod
    leaves this to the caller; we treat such directions as not imaged, which is also where the
    inverse's Newton solve loses its unique root."""
    r0, r1, r2 = r
    with np.errstate(invalid="ignore"):
        return (1 + r0) + 3 * r1 * t2 + 5 * r2 * t2 * t2 <= 0


_LINEARITY_OF_TYPE = {1: 1.0, 2: 0.0}


@dataclass(frozen=True, eq=False)
class CAHVORE(CAHVOR):
    """CAHVOR plus a moving entrance pupil (E) and a fisheye/general mapping (T, P) (Gennery 2006)."""

    E: np.ndarray = None
    T: int = 1
    P: float = 0.0

    type: ClassVar[str] = "CAHVORE"
    _vectors: ClassVar[tuple[str, ...]] = ("C", "A", "H", "V", "O", "R", "E")

    def _extra_checks(self):
        super()._extra_checks()
        object.__setattr__(self, "E", _vec("E", self.E, self.source))
        try:
            t = float(self.T)
        except (TypeError, ValueError):
            raise ModelError(self.source, f"not a number: {self.T!r}", field="T") from None
        if t not in (1.0, 2.0, 3.0):  # inf and NaN included
            raise ModelError(self.source, f"unknown CAHVORE type {self.T!r} (expected 1, 2 or 3)", field="T")
        t = int(t)
        try:
            p = float(self.P)
        except (TypeError, ValueError):
            raise ModelError(self.source, f"not a number: {self.P!r}", field="P") from None
        if not np.isfinite(p):
            raise ModelError(self.source, f"not finite: {self.P!r}", field="P")
        object.__setattr__(self, "T", t)
        object.__setattr__(self, "P", p)

    @property
    def linearity(self) -> float:
        return _LINEARITY_OF_TYPE.get(self.T, self.P)

    def _theta(self, zeta, lam):
        """Solve f(theta) = zeta sin - lam cos - (theta - sin)(e0 + e1 t^2 + e2 t^4) = 0 (Newton)."""
        e0, e1, e2 = self.E

        def step(theta):
            c, s = np.cos(theta), np.sin(theta)
            t2 = theta * theta
            poly = e0 + e1 * t2 + e2 * t2 * t2
            dpoly = 2 * e1 * theta + 4 * e2 * t2 * theta
            upsilon = zeta * c + lam * s - (1 - c) * poly - (theta - s) * dpoly
            f = zeta * s - lam * c - (theta - s) * poly
            with np.errstate(divide="ignore", invalid="ignore"):
                return f / upsilon

        theta, ok = _newton(np.arctan2(lam, zeta), step)
        c, s = np.cos(theta), np.sin(theta)
        t2 = theta * theta
        upsilon = zeta * c + lam * s - (1 - c) * (e0 + e1 * t2 + e2 * t2 * t2) - (theta - s) * (
            2 * e1 * theta + 4 * e2 * t2 * theta
        )
        return theta, ok, upsilon

    def _chi(self, theta):
        """chi(theta) and d chi / d theta for the model's linearity."""
        lin = self.linearity
        if lin > 1e-15:
            return np.tan(lin * theta) / lin, 1.0 / np.cos(lin * theta) ** 2
        if lin < -1e-15:
            return np.sin(lin * theta) / lin, np.cos(lin * theta)
        return theta, np.ones_like(theta)

    def _forward_terms(self, d):
        o = self.O
        zeta = d @ o
        lamv = d - zeta[:, None] * o
        lam = np.linalg.norm(lamv, axis=1)
        theta, ok, upsilon = self._theta(zeta, lam)
        ok &= np.abs(theta * self.linearity) < np.pi / 2
        small = theta < 1e-8
        chi, dchi = self._chi(theta)
        r0, r1, r2 = self.R
        chi2 = chi * chi
        ok &= ~_folded(self.R, chi2)
        mu = r0 + r1 * chi2 + r2 * chi2 * chi2
        with np.errstate(divide="ignore", invalid="ignore"):
            zp = lam / chi
        out = zp[:, None] * o + (1 + mu)[:, None] * lamv
        out[small] = d[small]
        out[~ok] = np.nan
        return out, (zeta, lamv, lam, theta, upsilon, chi, dchi, mu, small)

    def _distort(self, d):
        return self._forward_terms(d)[0]

    def _distort_jacobian(self, d):
        out, (zeta, lamv, lam, theta, upsilon, chi, dchi, mu, small) = self._forward_terms(d)
        o = self.O
        r0, r1, r2 = self.R
        with np.errstate(divide="ignore", invalid="ignore"):
            lhat = lamv / lam[:, None]
            # Implicit function theorem on f(theta; zeta, lam) = 0.
            dtheta = (-np.sin(theta)[:, None] * o[None, :] + np.cos(theta)[:, None] * lhat) / upsilon[:, None]
            dchid = dchi[:, None] * dtheta
            dmud = ((2 * r1 + 4 * r2 * chi * chi) * chi)[:, None] * dchid
            dzp = lhat / chi[:, None] - (lam / chi**2)[:, None] * dchid
        proj = np.eye(3) - np.outer(o, o)
        j = (
            o[None, :, None] * dzp[:, None, :]
            + lamv[:, :, None] * dmud[:, None, :]
            + (1 + mu)[:, None, None] * proj[None]
        )
        j[small] = np.eye(3)
        return out, j

    def _undistort(self, rays):
        o = self.O
        zp = rays @ o
        lamv = rays - zp[:, None] * o
        lam = np.linalg.norm(lamv, axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            chip = lam / zp
        r0, r1, r2 = self.R

        def step(chi):
            c2 = chi * chi
            deriv = (1 + r0) + 3 * r1 * c2 + 5 * r2 * c2 * c2
            with np.errstate(divide="ignore", invalid="ignore"):
                return ((1 + r0) * chi + r1 * c2 * chi + r2 * c2 * c2 * chi - chip) / deriv

        chi, ok = _newton(chip.copy(), step)
        lin = self.linearity
        with np.errstate(invalid="ignore"):
            if lin < -1e-15:
                theta = np.arcsin(lin * chi) / lin
            elif lin > 1e-15:
                theta = np.arctan(lin * chi) / lin
            else:
                theta = chi
        e0, e1, e2 = self.E
        t2 = theta * theta
        st = np.sin(theta)
        small = chip < 1e-8
        with np.errstate(divide="ignore", invalid="ignore"):
            shift = (theta / st - 1) * (e0 + e1 * t2 + e2 * t2 * t2)
            dirs = (st / lam)[:, None] * lamv + np.cos(theta)[:, None] * o
        shift[small] = 0.0
        dirs[small] = o
        origins = self.C[None, :] + shift[:, None] * o[None, :]
        bad = ~(ok | small) | ~(zp > 0)
        dirs[bad] = np.nan
        origins[bad] = np.nan
        return origins, dirs

    def _scalars(self):
        return {"T": int(self.T), "P": float(self.P)}

    def linear(self) -> CAHV:
        return CAHV(self.C, self.A, self.H, self.V, source=self.source)


MODEL_TYPES = {"CAHV": CAHV, "CAHVOR": CAHVOR, "CAHVORE": CAHVORE}
_COMPONENTS = {"CAHV": 4, "CAHVOR": 6, "CAHVORE": 9}


def model_from_components(model_type: str, components, source=None):
    """A model from its type name and ordered components C, A, H, V[, O, R[, E, T, P]]."""
    t = str(model_type).strip().upper()
    if t not in MODEL_TYPES:
        raise ModelError(source, f"unknown camera model type {model_type!r}", field="model_type")
    comps = list(components)
    if len(comps) != _COMPONENTS[t]:
        raise ModelError(
            source, f"{t} needs {_COMPONENTS[t]} components, got {len(comps)}", field="model_components"
        )
    names = ["C", "A", "H", "V", "O", "R", "E", "T", "P"][: len(comps)]
    return MODEL_TYPES[t](**dict(zip(names, comps)), source=None if source is None else str(source))


def model_from_dict(d: dict, source=None):
    """A model from its solution.json / info --json object (contract)."""
    if not isinstance(d, dict) or "type" not in d:
        raise ModelError(source, "camera model object without 'type'", field="model")
    t = str(d["type"]).upper()
    if t not in MODEL_TYPES:
        raise ModelError(source, f"unknown camera model type {d['type']!r}", field="model.type")
    names = ["C", "A", "H", "V", "O", "R", "E", "T", "P"][: _COMPONENTS[t]]
    missing = [n for n in names if n not in d]
    if missing:
        raise ModelError(source, f"missing {', '.join(missing)}", field="model")
    return model_from_components(t, [d[n] for n in names], source=source)
