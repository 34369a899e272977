"""Bundle adjustment: per-frame pointing corrections and 3D tie points, Levenberg-Marquardt with
a Schur complement, robust (Huber/Cauchy) by iteratively re-weighted least squares.

Unknowns:

- per frame, a rotation about its pivot (the mast pivot for mast cameras: JPL's pointing
  correction), parametrised by a small rotation vector applied on the left of the current one;
  a plain photo also has log focal length and one radial term (k1 of CAHVOR's R = (0, k1, 0));
- per tie point, either a direction and an inverse depth from an anchor ``origin`` (parallax is
  modelled, far points stay well conditioned: X = origin + d / rho), or only a direction (photos
  from one centre: depth is unobservable there).

Each observation depends on one frame and one point, so the normal matrix has block-diagonal
frame (U) and point (V) parts; eliminating the points leaves a dense frames-by-frames system of
3-5 unknowns per frame, which is small at hundreds of frames. Building it is vectorised over
observations (no Python loop over points), with one projection call per frame.

Residuals are pixels divided by the observation's sigma (``obs_sigma``: a keypoint found at a
working scale s is good to ~1/s delivered pixels), so the robust scale is in those units.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp

from calib.models import CAHVOR
from calib.rotation import matrix_to_rotvec, rotvec_to_matrix, skew

RHO_MIN = 1e-4  # inverse depth floor (10 km): beyond it a point is as good as at infinity


def _cross(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cross product of (P,3) arrays (np.cross's axis handling costs more than the
    arithmetic here: it was a third of the photo adjustment's time)."""
    a0, a1, a2 = a[:, 0], a[:, 1], a[:, 2]
    b0, b1, b2 = b[:, 0], b[:, 1], b[:, 2]
    return np.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], axis=1)


def _tangent_basis(d: np.ndarray):
    """Two unit vectors (P,3) each, orthogonal to d and to each other."""
    helper = np.where(np.abs(d[:, 2:3]) < 0.9, np.array([[0.0, 0.0, 1.0]]), np.array([[1.0, 0.0, 0.0]]))
    e1 = _cross(d, helper)
    e1 /= np.sqrt(np.einsum("ij,ij->i", e1, e1))[:, None]
    e2 = _cross(d, e1)
    return e1, e2


def triangulate(origins, dirs, obs_point, n_points, origin, far=1e3, min_angle=1e-3):
    """Tie points from their rays (midpoint in the least-squares sense), as (unit directions from
    ``origin``, inverse depths). Rays that hardly diverge, or meet behind a camera or nearer than
    0.3 m, give a far point along their mean direction instead."""
    proj = np.eye(3)[None] - dirs[:, :, None] * dirs[:, None, :]
    A = np.zeros((n_points, 3, 3))
    np.add.at(A, obs_point, proj)
    b = np.zeros((n_points, 3))
    np.add.at(b, obs_point, np.einsum("nij,nj->ni", proj, origins))
    mean = np.zeros((n_points, 3))
    np.add.at(mean, obs_point, dirs)
    mean /= np.linalg.norm(mean, axis=1, keepdims=True)
    cnt = np.bincount(obs_point, minlength=n_points)
    # The spread of the rays: A's second eigenvalue is ~ n sin^2(angle between rays).
    ev = np.linalg.eigvalsh(A)
    ok = ev[:, 1] > cnt * min_angle**2
    X = np.full((n_points, 3), np.nan)
    X[ok] = np.linalg.solve(A[ok] + 1e-12 * np.eye(3), b[ok][:, :, None])[:, :, 0]
    ahead = np.zeros(n_points, bool)
    depth_along = np.einsum("ni,ni->n", X[obs_point] - origins, dirs)
    bad_obs = ~(depth_along > 0.3)
    ahead[:] = True
    ahead[np.unique(obs_point[bad_obs])] = False
    ok &= ahead
    X[~ok] = origin + far * mean[~ok]
    v = X - origin
    dist = np.linalg.norm(v, axis=1)
    return v / dist[:, None], np.maximum(1.0 / dist, RHO_MIN)


class PosedCamera:
    """A frame with a reported model: unknown is a rotation about ``pivot`` (prior: none)."""

    k = 3

    def __init__(self, model, pivot, prior_sigma_rad):
        self.model0, self.pivot = model, np.asarray(pivot, float)
        self.rot = np.eye(3)
        self.sigma = prior_sigma_rad

    def model(self):
        return self.model0.moved(self.rot, self.pivot)

    def param_jacobian(self, pix, jr, points):
        return jr

    def update(self, delta):
        self.rot = rotvec_to_matrix(delta[:3]) @ self.rot

    def prior(self):
        return matrix_to_rotvec(self.rot) / self.sigma, np.eye(3) / self.sigma

    def state(self):
        return self.rot.copy()

    def restore(self, s):
        self.rot = s


class Lens:
    """Intrinsics shared by the photos of one camera: log focal length and k1 (CAHVOR R =
    (0, k1, 0)); weak priors keep them well posed when a pan hardly constrains them."""

    k = 2

    def __init__(self, focal, k1_sigma=0.2, logf_sigma=1.0):
        self.logf, self.k1 = float(np.log(focal)), 0.0
        self.logf0 = self.logf
        self.sigmas = (logf_sigma, k1_sigma)

    def update(self, delta):
        self.logf += delta[0]
        self.k1 += delta[1]

    def prior(self):
        fs, ks = self.sigmas
        return np.array([(self.logf - self.logf0) / fs, self.k1 / ks]), np.diag([1 / fs, 1 / ks])

    def state(self):
        return self.logf, self.k1

    def restore(self, s):
        self.logf, self.k1 = s

    @property
    def focal(self):
        return float(np.exp(self.logf))


class PhotoCamera:
    """A plain photo at the origin: rotation (columns = camera x, y, z axes in the world) and
    a :class:`Lens` (shared with the other photos of the same camera); the principal point
    stays at the image centre. Its parameters: 3 rotation + the lens's 2."""

    k = 5

    def __init__(self, rot, lens: Lens, width, height, rot_sigma):
        self.rot, self.lens = np.asarray(rot, float), lens
        self.c = np.array([(width - 1) / 2.0, (height - 1) / 2.0])
        self.rot0 = self.rot.copy()
        self.pivot = np.zeros(3)
        self.sigma = rot_sigma

    def model(self):
        f = self.lens.focal
        x, y, a = self.rot[:, 0], self.rot[:, 1], self.rot[:, 2]
        return CAHVOR(C=np.zeros(3), A=a, H=self.c[0] * a + f * x, V=self.c[1] * a + f * y, O=a,
                      R=np.array([0.0, self.lens.k1, 0.0]))

    def param_jacobian(self, pix, jr, points):
        f = self.lens.focal
        v = points @ self.rot
        n = v[:, :2] / v[:, 2:3]
        r2 = (n * n).sum(1)
        dlogf = pix - self.c
        dk1 = f * n * r2[:, None]
        return np.concatenate([jr, dlogf[:, :, None], dk1[:, :, None]], axis=2)

    def update(self, delta):
        """The rotation part; the lens is updated once by the bundle, not by each photo."""
        self.rot = rotvec_to_matrix(delta[:3]) @ self.rot

    def prior(self):
        j = np.zeros((3, 5))
        j[:, :3] = np.eye(3) / self.sigma
        return matrix_to_rotvec(self.rot @ self.rot0.T) / self.sigma, j

    def state(self):
        return self.rot.copy()

    def restore(self, s):
        self.rot = s.copy()

    @property
    def focal(self):
        return self.lens.focal

    @property
    def k1(self):
        return self.lens.k1


@dataclass
class Points:
    """Tie points: unit directions from ``origin`` and inverse depths (None: directions only)."""

    dirs: np.ndarray
    rho: np.ndarray | None
    origin: np.ndarray = field(default_factory=lambda: np.zeros(3))
    rho_sigma: float = 100.0

    def __post_init__(self):
        self.rho0 = None if self.rho is None else self.rho.copy()
        self._basis_of, self._basis = None, None

    def basis(self):
        """The tangent basis of every direction, computed once per state of ``dirs`` (each
        residual evaluation asks for it once per frame)."""
        if self._basis_of is not self.dirs:
            self._basis_of, self._basis = self.dirs, _tangent_basis(self.dirs)
        return self._basis

    @property
    def b(self):
        return 2 if self.rho is None else 3

    def rays(self, idx, centre):
        """Points ``idx`` as seen from a camera centre: (P, D, dP/dparams) with P = centre + D v,
        v = d + rho (origin - centre). For rho >= RHO_MIN, P is the point itself (exact for every
        model); below, P stays at 1/RHO_MIN along v, which keeps the direction exact (and a
        slightly negative rho, a point 'beyond infinity' that inconsistent rays ask for, valid)."""
        d = self.dirs[idx]
        e1, e2 = (e[idx] for e in self.basis())
        if self.rho is None:
            return self.origin + d, np.ones(len(d)), np.stack([e1, e2], axis=2)
        rho = self.rho[idx]
        v = d + rho[:, None] * (self.origin - centre)
        dist = np.where(rho >= RHO_MIN, 1.0 / np.maximum(rho, RHO_MIN), 1.0 / RHO_MIN)
        P = centre + dist[:, None] * v
        dv = np.stack([e1, e2, np.broadcast_to(self.origin - centre, d.shape)], axis=2)
        return P, dist, dist[:, None, None] * dv

    def positions(self):
        """Points in space (far points at 1/RHO_MIN from the origin)."""
        if self.rho is None:
            return self.origin + self.dirs
        return self.origin + self.dirs / np.maximum(self.rho, RHO_MIN)[:, None]

    def update(self, delta):
        e1, e2 = self.basis()
        d = self.dirs + delta[:, :1] * e1 + delta[:, 1:2] * e2
        self.dirs = d / np.linalg.norm(d, axis=1, keepdims=True)
        if self.rho is not None:
            self.rho = self.rho + delta[:, 2]

    def prior(self):
        """Weak prior on inverse depth (keeps points that show no parallax well posed)."""
        if self.rho is None:
            return None
        return (self.rho - self.rho0) / self.rho_sigma, 1.0 / self.rho_sigma

    def state(self):
        return self.dirs.copy(), None if self.rho is None else self.rho.copy()

    def restore(self, s):
        self.dirs = s[0].copy()
        self.rho = None if s[1] is None else s[1].copy()


def _group_sum(values, index, n, order=None):
    """Sum of ``values`` rows per ``index`` value (0..n-1); ``order`` sorts index (if it is not)."""
    if order is not None:
        values, index = values[order], index[order]
    out = np.zeros((n,) + values.shape[1:])
    if len(index) == 0:
        return out
    starts = np.flatnonzero(np.r_[True, index[1:] != index[:-1]])
    out[index[starts]] = np.add.reduceat(values, starts, axis=0)
    return out


def robust_weights(s, kind, scale):
    """IRLS weights and robust costs of residual norms s."""
    if kind == "cauchy":
        q = (s / scale) ** 2
        return 1.0 / (1.0 + q), scale * scale * np.log1p(q)
    w = np.where(s <= scale, 1.0, scale / np.maximum(s, 1e-300))
    cost = np.where(s <= scale, s * s, 2 * scale * s - scale * scale)
    return w, cost


class Bundle:
    """The problem: cameras, points and observations (frame index, point index, pixel, sigma)."""

    def __init__(self, cams, points: Points, obs_frame, obs_point, obs_xy, obs_sigma, loss="huber", loss_scale=1.0):
        self.cams, self.points = cams, points
        order = np.argsort(obs_frame, kind="stable")
        self.f = np.asarray(obs_frame)[order]
        self.p = np.asarray(obs_point)[order]
        self.xy = np.asarray(obs_xy, float)[order]
        self.sigma = np.asarray(obs_sigma, float)[order]
        self.keep = np.ones(len(self.f), bool)
        self.loss, self.loss_scale = loss, loss_scale
        self.k = cams[0].k if cams else 3
        self.iterations = 0
        # Global parameter layout: 3 rotation unknowns per camera, then each shared lens's own.
        self.lenses = []
        for c in cams:
            lens = getattr(c, "lens", None)
            if lens is not None and all(lens is not m for m in self.lenses):
                self.lenses.append(lens)
        self.n_params = 3 * len(cams) + sum(m.k for m in self.lenses)
        lens_start, pos = [], 3 * len(cams)
        for m in self.lenses:
            lens_start.append(pos)
            pos += m.k
        self.index = np.zeros((len(cams), self.k), dtype=int)
        for i, c in enumerate(cams):
            self.index[i, :3] = 3 * i + np.arange(3)
            if self.k > 3:
                li = next(j for j, m in enumerate(self.lenses) if m is c.lens)
                self.index[i, 3:] = lens_start[li] + np.arange(self.lenses[li].k)
        self.lens_index = [lens_start[j] + np.arange(m.k) for j, m in enumerate(self.lenses)]
        self._point_order = np.argsort(self.p, kind="stable")

    # -- evaluation ------------------------------------------------------------------------

    def residuals(self, with_jacobian=False):
        """Residuals (N,2) in sigma units, and optionally dr/dcam (N,2,k), dr/dpoint (N,2,b)."""
        n = len(self.f)
        r = np.zeros((n, 2))
        jc = np.zeros((n, 2, self.k)) if with_jacobian else None
        jp = np.zeros((n, 2, self.points.b)) if with_jacobian else None
        bounds = np.searchsorted(self.f, np.arange(len(self.cams) + 1))
        for fi, cam in enumerate(self.cams):
            lo, hi = bounds[fi], bounds[fi + 1]
            if lo == hi:
                continue
            model = cam.model()
            idx = self.p[lo:hi]
            P, dist, dP = self.points.rays(idx, model.C)
            if with_jacobian:
                pix, jpt, _ = model.project_jacobian(P, cam.pivot)
                # Rotating the camera about the pivot = rotating the point the other way; in
                # terms of the scaled point this is exact also for far ("beyond infinity") points.
                lever = P - model.C + (dist * self.points.rho[idx])[:, None] * (model.C - cam.pivot) if self.points.rho is not None \
                    else P - cam.pivot
                jr = jpt @ skew(lever)
                s = self.sigma[lo:hi, None, None]
                jc[lo:hi] = cam.param_jacobian(pix, jr, P) / s
                jp[lo:hi] = (jpt @ dP) / s
            else:
                pix = model.project(P)
            r[lo:hi] = (pix - self.xy[lo:hi]) / self.sigma[lo:hi, None]
        # A point behind a camera or absurdly far off: no information, only numerical trouble.
        bad = ~np.isfinite(r).all(1) | (np.abs(r) > 1e4).any(1)
        if bad.any():
            r[bad] = 1e4
            if with_jacobian:
                jc[bad] = 0
                jp[bad] = 0
        return r, jc, jp

    def cost(self, r=None):
        if r is None:
            r = self.residuals()[0]
        s = np.linalg.norm(r[self.keep], axis=1)
        total = robust_weights(s, self.loss, self.loss_scale)[1].sum()
        for cam in self.cams:
            total += float(np.sum(cam.prior()[0] ** 2))
        for lens in self.lenses:
            total += float(np.sum(lens.prior()[0] ** 2))
        pr = self.points.prior()
        if pr is not None:
            total += float(np.sum(pr[0] ** 2))
        return float(total)

    # -- one damped Gauss-Newton step ---------------------------------------------------------

    def _step(self, r, jc, jp, lam):
        nc, npnt, k, b = len(self.cams), len(self.points.dirs), self.k, self.points.b
        keep = self.keep
        s = np.linalg.norm(r, axis=1)
        w, _ = robust_weights(s, self.loss, self.loss_scale)
        w = np.where(keep, w, 0.0)
        sw = np.sqrt(w)[:, None, None]
        rw, jcw, jpw = r * sw[:, :, 0], jc * sw, jp * sw
        f, p = self.f, self.p
        jcwt, jpwt = jcw.transpose(0, 2, 1), jpw.transpose(0, 2, 1)
        P = self.n_params
        # Per-camera sums first (observations are sorted by camera), then scattered to the
        # global layout, where photos of one camera share their lens unknowns.
        Ub = _group_sum(jcwt @ jcw, f, nc)
        gb = _group_sum((jcwt @ rw[:, :, None])[:, :, 0], f, nc)
        U = np.zeros((P, P))
        gc = np.zeros(P)
        for i, cam in enumerate(self.cams):
            idx = self.index[i]
            pr, pj = cam.prior()
            U[np.ix_(idx, idx)] += Ub[i] + pj.T @ pj
            gc[idx] += gb[i] + pj.T @ pr
        for lens, idx in zip(self.lenses, self.lens_index):
            pr, pj = lens.prior()
            U[np.ix_(idx, idx)] += pj.T @ pj
            gc[idx] += pj.T @ pr
        V = _group_sum(jpwt @ jpw, p, npnt, self._point_order)
        gp = _group_sum((jpwt @ rw[:, :, None])[:, :, 0], p, npnt, self._point_order)
        pr = self.points.prior()
        if pr is not None:
            V[:, 2, 2] += pr[1] ** 2
            gp[:, 2] += pr[1] * pr[0]
        Wb = jcwt @ jpw  # (N, k, b), one block per observation
        # Marquardt damping, plus a floor so that unobserved parameters stay finite.
        di = np.arange(P)
        U[di, di] = U[di, di] * (1 + lam) + 1e-12
        dj = np.arange(b)
        V[:, dj, dj] = V[:, dj, dj] * (1 + lam) + 1e-12
        Vinv = np.linalg.inv(V)
        rows = self.index[f][:, :, None].repeat(b, axis=2)
        cols = (p[:, None, None] * b + np.arange(b)[None, None, :]).repeat(k, axis=1)
        W = sp.csr_matrix((Wb.ravel(), (rows.ravel(), cols.ravel())), shape=(P, npnt * b))
        vr = np.repeat(np.arange(npnt * b).reshape(npnt, b), b, axis=1).ravel()
        vc = np.tile(np.arange(npnt * b).reshape(npnt, b), (1, b)).ravel()
        Vi = sp.csr_matrix((Vinv.ravel(), (vr, vc)), shape=(npnt * b, npnt * b))
        Y = W @ Vi
        S = U - (Y @ W.T).toarray()
        rhs = -(gc - Y @ gp.ravel())
        try:
            dc = np.linalg.solve(S, rhs)
        except np.linalg.LinAlgError:
            dc = np.linalg.lstsq(S, rhs, rcond=None)[0]
        dp = Vi @ (-gp.ravel() - W.T @ dc)
        return dc, dp.reshape(npnt, b)

    def _state(self):
        return [c.state() for c in self.cams], [m.state() for m in self.lenses], self.points.state()

    def _restore(self, st):
        for c, s in zip(self.cams, st[0]):
            c.restore(s)
        for m, s in zip(self.lenses, st[1]):
            m.restore(s)
        self.points.restore(st[2])

    def _update(self, dc, dp):
        for cam, idx in zip(self.cams, self.index):
            cam.update(dc[idx])
        for lens, idx in zip(self.lenses, self.lens_index):
            lens.update(dc[idx])
        self.points.update(dp)

    def _extrapolate(self, dc, dp, start, cost, longest=64.0):
        """Longer steps along an accepted one (2x, 4x, ...) while the cost keeps falling.

        Gauss-Newton creeps along a weakly determined direction whose valley is curved, where the
        neglected second-order terms are as large as its small curvature: for plain photos, the
        focal lengths against the angles of the pan (boat: 97 iterations, each a step of ~1/1000
        of the way in the same direction). A trial costs one residual evaluation, a fraction of an
        iteration. Returns the cost; the state is left at the best step."""
        best, alpha = 1.0, 2.0
        while alpha <= longest:
            self._restore(start)
            self._update(alpha * dc, alpha * dp)
            c = self.cost()
            if not (np.isfinite(c) and c < cost):
                break
            best, cost, alpha = alpha, c, 2 * alpha
        self._restore(start)
        self._update(best * dc, best * dp)
        return cost

    def solve(self, max_iterations=50, tol=1e-6, chi2_tol=0.0) -> dict:
        """Levenberg-Marquardt until an accepted step lowers the cost by less than ``tol`` of it
        or by less than ``chi2_tol`` (sigma units squared: 0.01 is a step of ~0.1 sigma, too
        small to matter, while a relative 1e-6 of a cost in the thousands is far below that)."""
        lam = 1e-4
        r, jc, jp = self.residuals(True)
        cost = self.cost(r)
        it = 0
        for it in range(1, max_iterations + 1):
            dc, dp = self._step(r, jc, jp, lam)
            saved = self._state()
            self._update(dc, dp)
            new_cost = self.cost()
            if not (np.isfinite(new_cost) and new_cost <= cost):
                # Overshot along the curved valley: half the step often still descends, which
                # saves a new solve at a larger damping.
                dc, dp = 0.5 * dc, 0.5 * dp
                self._restore(saved)
                self._update(dc, dp)
                new_cost = self.cost()
                lam *= 3
            if np.isfinite(new_cost) and new_cost <= cost:
                new_cost = self._extrapolate(dc, dp, saved, new_cost)
                gain = (cost - new_cost) / max(cost, 1e-300)
                cost_drop = cost - new_cost
                cost = new_cost
                lam = max(lam / 3, 1e-9)
                if gain < tol or cost_drop < chi2_tol:
                    break
                # Jacobians only where a step was accepted and another one follows.
                r, jc, jp = self.residuals(True)
            else:
                self._restore(saved)
                lam *= 10
                if lam > 1e8:
                    break
        self.iterations += it
        return {"cost": cost, "iterations": it}

    def remove_outliers(self, threshold) -> int:
        """Drop observations beyond ``threshold`` (sigma units); returns how many were dropped."""
        r = self.residuals()[0]
        bad = self.keep & (np.linalg.norm(r, axis=1) > threshold)
        self.keep &= ~bad
        # A point left with fewer than two observations carries no information.
        cnt = np.bincount(self.p[self.keep], minlength=len(self.points.dirs))
        lone = self.keep & (cnt[self.p] < 2)
        self.keep &= ~lone
        return int(bad.sum() + lone.sum())
