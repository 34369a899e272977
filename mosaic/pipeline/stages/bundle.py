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
        """Points ``idx`` as seen from a camera centre (3,) or from one centre each (N, 3):
        (P, D, dP/dparams) with P = centre + D v,
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


def _inv_small(m):
    """Inverses of a stack of 2x2 or 3x3 matrices by their adjugates (numpy's batched inverse
    takes a LAPACK call per matrix: 4 ms for 7400 points, a tenth of this in closed form)."""
    if m.shape[1:] == (2, 2):
        a, b, c, d = m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1]
        adj = np.stack([np.stack([d, -b], 1), np.stack([-c, a], 1)], 1)
        return adj / (a * d - b * c)[:, None, None]
    if m.shape[1:] == (3, 3):
        r0, r1, r2 = m[:, 0], m[:, 1], m[:, 2]
        # The adjugate's columns are cross products of the rows; det = r0 . (r1 x r2).
        c0, c1, c2 = _cross(r1, r2), _cross(r2, r0), _cross(r0, r1)
        det = np.einsum("ij,ij->i", r0, c0)
        return np.stack([c0, c1, c2], axis=2) / det[:, None, None]
    return np.linalg.inv(m)


def _observation_pairs(obs_point, order):
    """(i, j): every ordered pair of observations of one point, (i, i) included: the terms of the
    Schur complement. ``order`` sorts ``obs_point``."""
    ps = np.asarray(obs_point)[order]
    if len(ps) == 0:
        return np.zeros(0, int), np.zeros(0, int)
    starts = np.flatnonzero(np.r_[True, ps[1:] != ps[:-1]])
    size = np.diff(np.r_[starts, len(ps)])
    first = np.repeat(starts, size)  # each sorted observation's group start...
    n = np.repeat(size, size)  # ...and group size
    oi = np.repeat(np.arange(len(ps)), n)
    within = np.arange(len(oi)) - np.repeat(np.cumsum(n) - n, n)
    oj = np.repeat(first, n) + within
    return order[oi], order[oj]


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
        self._lam = 1e-4
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
        self._photos = bool(cams) and all(isinstance(c, PhotoCamera) for c in cams) and points.rho is None
        # The Schur complement's terms, grouped by the pair of cameras (cells of S) they add to.
        oi, oj = _observation_pairs(self.p, self._point_order)
        gi = self.index[self.f]
        block = self.f[oi].astype(np.int64) * len(cams) + self.f[oj]
        order = np.argsort(block, kind="stable")
        self._pairs = oi[order], oj[order]
        bstart = np.flatnonzero(np.r_[True, block[order][1:] != block[order][:-1]]) if len(order) else np.zeros(0, int)
        self._pair_starts = bstart
        first = order[bstart]
        self._pair_cells = (gi[oi[first]][:, :, None] * self.n_params + gi[oj[first]][:, None, :]).ravel()
        self._cam_bounds = np.searchsorted(self.f, np.arange(len(cams) + 1))

    # -- evaluation ------------------------------------------------------------------------

    def residuals(self, with_jacobian=False):
        """Residuals (N,2) in sigma units, and optionally dr/dcam (N,2,k), dr/dpoint (N,2,b)."""
        if self._photos:
            r, jc, jp = self._photo_residuals(with_jacobian)
        else:
            r, jc, jp = self._posed_residuals(with_jacobian)
        r /= self.sigma[:, None]
        if with_jacobian:
            jc /= self.sigma[:, None, None]
            jp /= self.sigma[:, None, None]
        # A point behind a camera or absurdly far off: no information, only numerical trouble.
        bad = ~np.isfinite(r).all(1) | (np.abs(r) > 1e4).any(1)
        if bad.any():
            r[bad] = 1e4
            if with_jacobian:
                jc[bad] = 0
                jp[bad] = 0
        return r, jc, jp

    def _posed_residuals(self, with_jacobian):
        """Pixel residuals of frames with models, one projection call per frame. The frame's
        reported model stays fixed and the points turn the other way about its pivot (a model
        moved by the correction would be a new model per frame and evaluation: its construction
        and checks were a third of the adjustment)."""
        n = len(self.f)
        r = np.zeros((n, 2))
        jc = np.zeros((n, 2, self.k)) if with_jacobian else None
        jp = np.zeros((n, 2, self.points.b)) if with_jacobian else None
        bounds = self._cam_bounds
        centres = np.stack([c.pivot + c.rot @ (c.model0.C - c.pivot) for c in self.cams])
        # Every observation's point from its camera's centre at once, then one projection per frame.
        P, dist, dP = self.points.rays(self.p, centres[self.f])
        for fi, cam in enumerate(self.cams):
            lo, hi = bounds[fi], bounds[fi + 1]
            if lo == hi:
                continue
            model0, rot, piv = cam.model0, cam.rot, cam.pivot
            Pc = P[lo:hi]
            P0 = piv + (Pc - piv) @ rot  # R^T (P - pivot): the point as the reported model sees it
            if with_jacobian:
                pix, jpt, _ = model0.project_jacobian(P0)
                jpt = jpt @ rot.T
                # Rotating the camera about the pivot = rotating the point the other way; in
                # terms of the scaled point this is exact also for far ("beyond infinity") points.
                lever = Pc - centres[fi] + (dist[lo:hi] * self.points.rho[self.p[lo:hi]])[:, None] * (centres[fi] - piv) \
                    if self.points.rho is not None else Pc - piv
                jc[lo:hi] = jpt @ skew(lever)
                jp[lo:hi] = jpt @ dP[lo:hi]
            else:
                pix = model0.project(P0)
            r[lo:hi] = pix - self.xy[lo:hi]
        return r, jc, jp

    def _photo_residuals(self, with_jacobian):
        """Pixel residuals of plain photos, every observation at once: a photo is a pinhole at
        the origin with one radial term, exactly the CAHVOR model ``PhotoCamera.model`` writes
        (O = A, R = (0, k1, 0): pixel = c + f (1 + k1 |n|^2) n for normalised coordinates n)."""
        cams, o = self.cams, self.f
        rot = np.stack([c.rot for c in cams])[o]
        focal = np.array([c.lens.focal for c in cams])[o]
        k1 = np.array([c.lens.k1 for c in cams])[o]
        X = self.points.origin + self.points.dirs[self.p]
        v = np.einsum("ni,nij->nj", X, rot)  # camera coordinates: R^T X
        z = v[:, 2]
        with np.errstate(divide="ignore", invalid="ignore"):
            nrm = v[:, :2] / z[:, None]
        r2 = np.einsum("ni,ni->n", nrm, nrm)
        s = 1.0 + k1 * r2
        centre = np.stack([c.c for c in cams])[o]
        pix = centre + (focal * s)[:, None] * nrm
        # Behind the camera, or where the radial term folds the image back (CAHVOR's own rule).
        pix[~(z > 0) | (1.0 + 3.0 * k1 * r2 <= 0)] = np.nan
        r = pix - self.xy
        if not with_jacobian:
            return r, None, None
        # d pixel / d n = f (s I + 2 k1 n n^T); d n / d v = [I / z, -n / z].
        dn = focal[:, None, None] * (s[:, None, None] * np.eye(2) + 2 * k1[:, None, None] * nrm[:, :, None] * nrm[:, None, :])
        jv = np.concatenate([dn, -(dn @ nrm[:, :, None])], axis=2) / z[:, None, None]
        jx = jv @ rot.transpose(0, 2, 1)  # d pixel / d X
        e1, e2 = (e[self.p] for e in self.points.basis())
        jp = np.stack([np.einsum("naj,nj->na", jx, e1), np.einsum("naj,nj->na", jx, e2)], axis=2)
        # A rotation w applied on the left of the camera's moves X by -w x X in its frame.
        jr = np.stack([_cross(jx[:, 0], X), _cross(jx[:, 1], X)], axis=1)
        # The lens's unknowns, log f and kf = k1 f (see Lens): d pixel = f n dlogf + |n|^2 n dkf.
        jc = np.concatenate([jr, (pix - centre)[:, :, None], (focal * r2)[:, None, None] * nrm[:, :, None]], axis=2)
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

    def _system(self, r, jc, jp, lam):
        """The damped Gauss-Newton system at the current state, as a function
        ``solve(residuals, priors) -> (dc, dp)``: the step that makes the linearised
        ``residuals`` (weighted as ``r``) zero, with the priors' pull or without.

        The points are eliminated (Schur complement), the cameras' system S dc = rhs solved
        densely, then the points back-substituted. S = U - sum over points of W_p V_p^-1 W_p^T,
        where W_p holds one block per observation of the point: its terms are the products of the
        blocks of two observations of one point (``_observation_pairs``), summed straight into
        S's cells by one bincount (with scipy.sparse the assembly took most of a step, and
        importing it 0.2 s of a stitch). One system serves several right-hand sides: the step
        and its geodesic acceleration (``solve``)."""
        nc, npnt, k, b = len(self.cams), len(self.points.dirs), self.k, self.points.b
        w, _ = robust_weights(np.linalg.norm(r, axis=1), self.loss, self.loss_scale)
        sw = np.sqrt(np.where(self.keep, w, 0.0))
        jcw, jpw = jc * sw[:, None, None], jp * sw[:, None, None]
        f, p, order = self.f, self.p, self._point_order
        jcwt, jpwt = jcw.transpose(0, 2, 1), jpw.transpose(0, 2, 1)
        P = self.n_params
        # Per-camera sums first (observations are sorted by camera), then scattered to the
        # global layout, where photos of one camera share their lens unknowns.
        bounds = self._cam_bounds
        Ub = np.zeros((nc, k, k))
        for i in range(nc):  # observations are sorted by camera: one product each
            blk = jcw[bounds[i]:bounds[i + 1]].reshape(-1, k)
            Ub[i] = blk.T @ blk
        U = np.zeros((P, P))
        gprior = np.zeros(P)
        for i, cam in enumerate(self.cams):
            idx = self.index[i]
            pr, pj = cam.prior()
            U[np.ix_(idx, idx)] += Ub[i] + pj.T @ pj
            gprior[idx] += pj.T @ pr
        for lens, idx in zip(self.lenses, self.lens_index):
            pr, pj = lens.prior()
            U[np.ix_(idx, idx)] += pj.T @ pj
            gprior[idx] += pj.T @ pr
        V = _group_sum(jpwt @ jpw, p, npnt, order)
        pprior = np.zeros((npnt, b))
        pr = self.points.prior()
        if pr is not None:
            V[:, 2, 2] += pr[1] ** 2
            pprior[:, 2] = pr[1] * pr[0]
        Wb = jcwt @ jpw  # (N, k, b), one block per observation
        # Marquardt damping, plus a floor so that unobserved parameters stay finite.
        di = np.arange(P)
        U[di, di] = U[di, di] * (1 + lam) + 1e-12
        dj = np.arange(b)
        V[:, dj, dj] = V[:, dj, dj] * (1 + lam) + 1e-12
        Vinv = _inv_small(V)
        Y = Wb @ Vinv[p]  # (N, k, b): W V^-1, observation by observation
        gi = self.index[f]  # each observation's camera unknowns in the global layout
        oi, oj = self._pairs
        if len(oi):
            # One product per pair of cameras: (k, m b) @ (m b, k) over the m points they share.
            yg = Y.transpose(1, 0, 2)[:, oi, :]
            wg = Wb.transpose(1, 0, 2)[:, oj, :]
            edges = np.r_[self._pair_starts, len(oi)]
            terms = np.stack([yg[:, s:e].reshape(k, -1) @ wg[:, s:e].reshape(k, -1).T
                              for s, e in zip(edges[:-1], edges[1:])])
            U -= np.bincount(self._pair_cells, weights=terms.ravel(), minlength=P * P).reshape(P, P)
        S = U
        WbT = Wb.transpose(0, 2, 1)

        def solve(res, priors=True):
            rw = res * sw[:, None]
            gc = np.bincount(gi.ravel(), weights=(jcwt @ rw[:, :, None]).ravel(), minlength=P)
            gp = _group_sum((jpwt @ rw[:, :, None])[:, :, 0], p, npnt, order)
            if priors:
                gc, gp = gc + gprior, gp + pprior
            rhs = np.bincount(gi.ravel(), weights=(Y @ gp[p][:, :, None]).ravel(), minlength=P) - gc
            try:
                dc = np.linalg.solve(S, rhs)
            except np.linalg.LinAlgError:
                dc = np.linalg.lstsq(S, rhs, rcond=None)[0]
            back = _group_sum((WbT @ dc[gi][:, :, None])[:, :, 0], p, npnt, order)
            return dc, (Vinv @ (-gp - back)[:, :, None])[:, :, 0]

        return solve

    def _step(self, r, jc, jp, lam):
        """One damped Gauss-Newton step (dc, dp)."""
        return self._system(r, jc, jp, lam)(r)

    def _along(self, jc, jp, dc, dp):
        """J (dc, dp): the linearised change of every residual along a step."""
        gi = self.index[self.f]
        return (jc @ dc[gi][:, :, None])[:, :, 0] + (jp @ dp[self.p][:, :, None])[:, :, 0]

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
        or by less than ``chi2_tol`` (sigma units squared: 0.1 is a step of ~0.3 sigma, too
        small to matter, while a relative 1e-6 of a cost in the thousands is far below that).

        The damping carries over from the previous solve of the same bundle: after outliers
        are removed the next solve starts where this one ended, with full Gauss-Newton steps,
        whose first cost drop then says how far the optimum still is (a solve restarted at a
        high damping took small first steps and stopped on them). Photos' steps follow the
        geodesic (``_accelerated``)."""
        lam = self._lam
        r, jc, jp = self.residuals(True)
        cost = self.cost(r)
        it = 0
        for it in range(1, max_iterations + 1):
            system = self._system(r, jc, jp, lam)
            dc, dp = system(r)
            saved = self._state()
            new_cost = np.inf
            if self._photos:
                dc, dp, bent = self._accelerated(system, r, jc, jp, dc, dp, saved)
                if bent:
                    self._update(dc, dp)
                    new_cost = self.cost()
            else:
                self._update(dc, dp)
                new_cost = self.cost()
                if not (np.isfinite(new_cost) and new_cost <= cost):
                    # Overshot along the curved valley: half the step often still descends,
                    # which saves a new solve at a larger damping.
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
                lam *= 3 if self._photos else 10
                if lam > 1e8:
                    break
        self.iterations += it
        self._lam = lam
        return {"cost": cost, "iterations": it}

    def _accelerated(self, system, r, jc, jp, dc, dp, saved, h=0.1, alpha=0.75):
        """The step plus half its geodesic acceleration (Transtrum and Sethna 2012), and whether
        to take it. A pan of photos determines its focal lengths only together with the angles
        between the photos, along a narrow curved valley where plain steps overshoot and creep
        (boat: 52 iterations before, 38 now; budapest 45, 12): the residuals' second derivative
        along the step, from one evaluation a tenth of the way, bends the step along the valley.
        The step is refused where the bend is not small beside it."""
        self._update(h * dc, h * dp)
        rh = self.residuals()[0]
        self._restore(saved)
        rvv = (2.0 / h) * ((rh - r) / h - self._along(jc, jp, dc, dp))
        rvv[~np.isfinite(rvv) | (np.abs(rh) >= 1e4)] = 0.0
        ac, ap = system(rvv, priors=False)
        ratio = 2.0 * np.sqrt((ac ** 2).sum() + (ap ** 2).sum()) / max(np.sqrt((dc ** 2).sum() + (dp ** 2).sum()), 1e-300)
        return dc + 0.5 * ac, dp + 0.5 * ap, ratio <= alpha

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
