"""Native hull-distance solver, one pair at a time: working set, active set, certificate.

Internal module of :mod:`sepmeasure.separability.hull` (see its notes for the method). The
pairs of one pool are solved together round by round: each round every pair solves its small
working-set problem (:class:`WorkingSet`), then the scores of every point for every pair come
from a single matrix product.
"""
from __future__ import annotations

import math

import torch

from .._progress import progress_bar
from ._hull_result import SEPARABLE_FLOOR, HullDistance

__all__ = ["NumericalFailure", "WorkingSet", "PairState", "initial_working_set", "certify", "is_done",
           "one_round", "one_pair_rounds", "finish_pair", "RIDGE"]

RIDGE = 1e-10          # relative ridge of the working-set Gram matrix (float64)
SCALE_ROWS = 2048      # rows per block when a pair's scale is measured
Z_STEP = 1e-14         # proximal steps stop once the point moves less than this times the rms norm of the points


def take_rows(X: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``X[rows]``, as a view (no copy) when ``rows`` are consecutive ascending indices.

    A single pair of :func:`~sepmeasure.separability.hull.hull_distance` indexes the two halves
    of its pool, so every gather of a set's points would otherwise copy it (measured: 22 ms for
    10 000 x 512 float64 points, four gathers per solve)."""
    k = rows.numel()
    if k and int(rows[-1]) - int(rows[0]) == k - 1 and (k < 2 or bool((rows[1:] - rows[:-1] == 1).all())):
        return X[int(rows[0]): int(rows[0]) + k]
    return X[rows]


class NumericalFailure(Exception):
    pass


class WorkingSet:
    """The small problem of one pair: ``min |sum_k x_k y_k|`` over the working set ``F``.

    ``y_k = s_k (x_{F_k} - c)`` are the signed, centred points (``s = +1`` for A, ``-1`` for B),
    ``x`` lies on the product of the two simplices (one per set). ``H`` is the Gram matrix of
    the ``y_k``. The solve is a primal active-set method from the current feasible ``x``:
    equality-constrained proximal steps on the free variables, a ratio test when a weight
    would turn negative, and released constraints added through a Schur complement so that
    the Cholesky factor of ``H + eps I`` is reused until many constraints have changed.
    """

    def __init__(self, X: torch.Tensor, center: torch.Tensor, F: torch.Tensor, in_b: torch.Tensor,
                 x: torch.Tensor) -> None:
        self.X, self.center = X, center
        self.F, self.in_b, self.x = F, in_b, x
        Y = self.points(F, in_b)
        self.H = Y @ Y.T
        self.steps = 0

    def points(self, F: torch.Tensor, in_b: torch.Tensor) -> torch.Tensor:
        sign = 1.0 - 2.0 * in_b.to(self.X.dtype)
        return sign[:, None] * (self.X[F] - self.center)

    def add(self, F: torch.Tensor, in_b: torch.Tensor) -> None:
        Yn = self.points(F, in_b)
        Hn = Yn @ self.points(self.F, self.in_b).T
        self.H = torch.cat([torch.cat([self.H, Hn.T], 1), torch.cat([Hn, Yn @ Yn.T], 1)], 0)
        self.F = torch.cat([self.F, F])
        self.in_b = torch.cat([self.in_b, in_b])
        self.x = torch.cat([self.x, self.x.new_zeros(F.numel())])

    def keep(self, keep: torch.Tensor) -> None:
        self.F, self.in_b, self.x = self.F[keep], self.in_b[keep], self.x[keep]
        self.H = self.H[keep][:, keep]

    def z(self, x: torch.Tensor | None = None) -> torch.Tensor:
        return self.points(self.F, self.in_b).T @ (self.x if x is None else x)

    def normalise(self) -> None:
        x = self.x.clamp_min(0)
        sa = x[~self.in_b].sum()
        sb = x[self.in_b].sum()
        self.x = torch.where(self.in_b, x / sb, x / sa)

    def solve(self, n_prox: int = 30) -> torch.Tensor:
        """Minimise over the working set from the current feasible ``x``; return ``z``."""
        dev, dt = self.X.device, self.X.dtype
        for _refactor in range(10_000):
            K = self.F.numel()
            E = torch.stack([~self.in_b, self.in_b]).to(dt)
            scale = float(self.H.diagonal().mean())
            eye = torch.eye(K, dtype=dt, device=dev)
            eps = RIDGE * scale if scale > 0 else 1.0
            for _ in range(6):
                L, info = torch.linalg.cholesky_ex(self.H + eps * eye)
                if int(info) == 0:
                    break
                eps *= 100.0
            else:
                raise NumericalFailure("the working-set Gram matrix could not be factorised")
            Zc = torch.cholesky_solve(E.T.contiguous(), L)
            removed: list[int] = []
            x = self.x
            active = torch.ones(K, dtype=torch.bool, device=dev)
            refactor = False
            for _minor in range(20 * K + 100):
                S = torch.cat([E @ Zc, Zc[removed, :]], 0) if removed else E @ Zc
                Sfac, info = torch.linalg.cholesky_ex(S)
                if int(info) != 0:
                    raise NumericalFailure("the working-set constraints became dependent")
                rhs_c = torch.zeros(S.shape[0], dtype=dt, device=dev)
                rhs_c[:2] = 1.0
                neg = None
                for _ in range(n_prox):
                    self.steps += 1
                    v = torch.cholesky_solve((eps * x)[:, None], L)[:, 0]
                    Cv = torch.cat([E @ v, v[removed]]) if removed else E @ v
                    kappa = torch.cholesky_solve((rhs_c - Cv)[:, None], Sfac)[:, 0]
                    y = v + Zc @ kappa
                    if removed:
                        y[removed] = 0.0
                    neg = active & (y <= 0)
                    if bool(neg.any()):
                        break
                    step = y - x
                    change = float(step.abs().max())
                    moved = float(step @ (self.H @ step))      # |change of z|^2
                    x = y
                    neg = None
                    if change <= 1e-15 * float(x.max()) or moved <= Z_STEP ** 2 * scale:
                        break
                if neg is None:
                    break
                ratios = torch.where(neg, x / (x - y).clamp_min(1e-300), torch.full_like(x, math.inf))
                j = int(ratios.argmin())
                t = ratios[j]
                x = (x + t * (y - x)).clamp_min(0)
                hit = torch.nonzero(neg & (x <= 0)).flatten().tolist()
                if j not in hit:
                    hit.append(j)
                x[hit] = 0.0
                active[hit] = False
                removed.extend(hit)
                if len(removed) > max(8, K // 8):
                    refactor = True
                    break
                e = torch.zeros(K, len(hit), dtype=dt, device=dev)
                e[hit, torch.arange(len(hit), device=dev)] = 1.0
                Zc = torch.cat([Zc, torch.cholesky_solve(e, L)], 1)
            else:
                raise NumericalFailure("the active-set loop did not settle")
            self.x = x
            if removed:
                self.keep(active)
            if not refactor:
                break
        self.normalise()
        return self.z()

    def polish(self, max_steps: int = 20) -> bool:
        """Re-solve on the support by QR, dropping points that leave the simplex; True if ``x`` changed.

        The Gram matrix squares the condition number; the direction of ``z`` (which the lower
        bound needs) is recovered accurately from a QR factorisation of the support's affine
        differences, with a small proximal term towards the current weights. When the solution
        leaves the simplex, a ratio-test step is taken and the blocking points are dropped.
        """
        changed = False
        for _ in range(max_steps):
            x, in_b = self.x, self.in_b
            ia = torch.nonzero(~in_b).flatten()
            ib = torch.nonzero(in_b).flatten()
            a0 = ia[x[ia].argmax()]
            b0 = ib[x[ib].argmax()]
            oa, ob = ia[ia != a0], ib[ib != b0]
            if oa.numel() + ob.numel() == 0:
                return changed
            Y = self.points(self.F, in_b)
            D = torch.cat([Y[oa] - Y[a0], Y[ob] - Y[b0]], 0).T
            c0 = Y[a0] + Y[b0]
            t0 = torch.cat([x[oa], x[ob]])
            p = D.shape[1]
            s = float(D.norm(dim=0).max()) * 1e-7
            M = torch.cat([D, s * torch.eye(p, dtype=D.dtype, device=D.device)], 0)
            rhs = torch.cat([-c0, s * t0])
            Q, R = torch.linalg.qr(M)
            if not bool(R.diagonal().abs().min() > 0):
                return changed
            t = torch.linalg.solve_triangular(R, (Q.T @ rhs)[:, None], upper=True)[:, 0]
            y = torch.zeros_like(x)
            y[oa] = t[: oa.numel()]
            y[ob] = t[oa.numel():]
            y[a0] = 1 - y[oa].sum()
            y[b0] = 1 - y[ob].sum()
            if not bool(torch.isfinite(y).all()):
                return changed
            neg = y <= 0
            if not bool(neg.any()):
                self.x = y
                return True
            ratios = torch.where(neg, x / (x - y).clamp_min(1e-300), torch.full_like(x, math.inf))
            j = int(ratios.argmin())
            x = (x + ratios[j] * (y - x)).clamp_min(0)
            x[j] = 0.0
            self.x = x
            self.keep(x > 0)
            self.normalise()
            changed = True
        return changed


class PairState:
    def __init__(self, rows_a: torch.Tensor, rows_b: torch.Tensor, X: torch.Tensor) -> None:
        self.rows_a, self.rows_b = rows_a, rows_b
        self.n, self.m = rows_a.numel(), rows_b.numel()
        pts = take_rows(X, torch.cat([rows_a, rows_b]))
        self.center = pts.mean(0)
        # the largest distance from the centre, a block of rows at a time: no temporary the size of the
        # pool (a fresh 41 MB allocation at 10 000 x 512), and one host sync
        self.scale = float(torch.stack([(pts[i:i + SCALE_ROWS] - self.center).norm(dim=1).max()
                                        for i in range(0, pts.shape[0], SCALE_ROWS)]).max())
        self.lower, self.upper = 0.0, math.inf
        self.best_lower_z: torch.Tensor | None = None
        self.best_upper: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self.prev_upper = math.inf
        self.idle = 0
        self.rounds = 0
        self.status = ""
        self.ws: WorkingSet | None = None


def initial_working_set(st: PairState, X: torch.Tensor, k0: int, warm: HullDistance | None) -> WorkingSet:
    dev = X.device
    Xa, Xb = take_rows(X, st.rows_a), take_rows(X, st.rows_b)
    w = Xa.mean(0) - Xb.mean(0)
    if warm is not None and warm.normal is not None and warm.normal.shape[0] == X.shape[1]:
        w = warm.normal.to(X)
    sa, sb = Xa @ w, Xb @ w
    ia = sa.topk(min(k0, st.n), largest=False).indices
    ib = sb.topk(min(k0, st.m), largest=True).indices
    if warm is not None:
        ia = torch.unique(torch.cat([ia, torch.nonzero(warm.weights_a.to(dev) > 0).flatten()]))
        ib = torch.unique(torch.cat([ib, torch.nonzero(warm.weights_b.to(dev) > 0).flatten()]))
    F = torch.cat([st.rows_a[ia], st.rows_b[ib]])
    in_b = torch.cat([torch.zeros(ia.numel(), dtype=torch.bool, device=dev),
                      torch.ones(ib.numel(), dtype=torch.bool, device=dev)])
    x = torch.cat([torch.full((ia.numel(),), 1.0 / ia.numel(), dtype=X.dtype, device=dev),
                   torch.full((ib.numel(),), 1.0 / ib.numel(), dtype=X.dtype, device=dev)])
    return WorkingSet(X, st.center, F, in_b, x)


def one_pair_rounds(states: dict[int, PairState], Xw: torch.Tensor, *, tol: float, zero_tol: float, max_iter: int,
                    add: int, progress: bool = False) -> None:
    """Run the rounds of every state to its end, each pair's working-set problem solved on its own.

    The scores of every point for every pair still come from one matrix product per round.
    """
    todo = list(states)
    bar = progress_bar(desc="hull distance", unit="round", progress=progress, total=None, leave=False)
    try:
        while todo:
            zs = []
            alive = []
            for k in todo:
                st = states[k]
                try:
                    zs.append(st.ws.solve())
                    alive.append(k)
                except NumericalFailure:
                    st.status = "numerical_error"
                    st.ws.normalise()
                    z = st.ws.z()
                    certify(st, z, take_rows(Xw, st.rows_a) @ z, take_rows(Xw, st.rows_b) @ z)
            if not alive:
                break
            S = Xw @ torch.stack(zs, 1)
            nxt = []
            for col, k in enumerate(alive):
                st = states[k]
                st.rounds += 1
                if one_round(st, zs[col], S[:, col], Xw, tol=tol, zero_tol=zero_tol, add=add):
                    continue
                if st.rounds >= max_iter:
                    st.status = "max_iter"
                    continue
                nxt.append(k)
            todo = nxt
            bar.update(1)
            bar.set_postfix(pairs_left=len(todo))
    finally:
        bar.close()


def certify(st: PairState, z: torch.Tensor, sa: torch.Tensor, sb: torch.Tensor) -> float:
    """Update the certified bounds with the point ``z`` and the hyperplane with normal ``z``."""
    nz = float(z.norm())
    if nz < st.upper:
        st.upper = nz
        ws = st.ws
        st.best_upper = (ws.F.clone(), ws.in_b.clone(), ws.x.clone(), z.clone())
    if nz > 0:
        lo = float(sa.min() - sb.max()) / nz
        if lo > st.lower:
            st.lower = lo
            st.best_lower_z = z.clone()
    return nz


def is_done(st: PairState, tol: float, zero_tol: float) -> bool:
    if st.upper <= zero_tol * st.scale:
        return True
    return st.lower > SEPARABLE_FLOOR * st.scale and st.upper - st.lower <= tol * st.upper


def one_round(st: PairState, z: torch.Tensor, scores: torch.Tensor, Xw: torch.Tensor, *, tol: float,
           zero_tol: float, add: int) -> bool:
    """One round for one pair after its working-set solve; True when the pair is finished."""
    sa, sb = scores[st.rows_a], scores[st.rows_b]
    nz = certify(st, z, sa, sb)
    if is_done(st, tol, zero_tol):
        st.status = "converged"
        return True
    ws = st.ws
    stagnant = (st.prev_upper - nz) <= 1e-3 * tol * nz or st.idle > 0
    st.prev_upper = nz
    if stagnant and ws.polish():
        zp = ws.z()
        if float(zp.norm()) <= nz * (1 + 1e-12):
            z = zp
            sa, sb = take_rows(Xw, st.rows_a) @ z, take_rows(Xw, st.rows_b) @ z
            nz = certify(st, z, sa, sb)
            if is_done(st, tol, zero_tol):
                st.status = "converged"
                return True
    cz = float(st.center @ z)
    ua = sa - cz            # signed, centred scores; optimality: every score >= its set's level
    ub = -(sb - cz)
    uF = ws.points(ws.F, ws.in_b) @ z
    lam_a = float(uF[~ws.in_b].min())
    lam_b = float(uF[ws.in_b].min())
    tolv = 1e-13 * st.scale * max(nz, 1e-300)
    new_f, new_b = [], []
    for rows, u, lam, flag in ((st.rows_a, ua, lam_a, False), (st.rows_b, ub, lam_b, True)):
        mu = u - lam
        member = torch.isin(rows, ws.F[ws.in_b == flag])
        mu = mu.masked_fill(member, math.inf)
        vals, idx = mu.topk(min(add, rows.numel()), largest=False)
        idx = idx[vals < -tolv]
        new_f.append(rows[idx])
        new_b.append(torch.full((idx.numel(),), flag, dtype=torch.bool, device=rows.device))
    F_new = torch.cat(new_f)
    if F_new.numel():
        ws.add(F_new, torch.cat(new_b))
        st.idle = 0
    else:
        st.idle += 1
        if st.idle >= 3:
            st.status = "stalled"
            return True
    return False


def finish_pair(st: PairState, X64: torch.Tensor, mean: torch.Tensor, basis: torch.Tensor | None, tol: float,
            zero_tol: float, seconds: float) -> HullDistance:
    dev = X64.device
    n, m = st.n, st.m
    wa = torch.zeros(n, dtype=torch.float64, device=dev)
    wb = torch.zeros(m, dtype=torch.float64, device=dev)
    if st.best_upper is not None:
        F, in_b, x, _ = st.best_upper
        pos_a = torch.searchsorted(st.rows_a, F[~in_b]) if _sorted(st.rows_a) else _positions(st.rows_a, F[~in_b])
        pos_b = torch.searchsorted(st.rows_b, F[in_b]) if _sorted(st.rows_b) else _positions(st.rows_b, F[in_b])
        wa[pos_a] = x[~in_b]
        wb[pos_b] = x[in_b]
    upper = st.upper if math.isfinite(st.upper) else math.nan
    meets = st.upper <= zero_tol * st.scale
    lower = 0.0 if meets else max(st.lower, 0.0)
    separable = False if meets else (True if lower > SEPARABLE_FLOOR * st.scale else None)
    if separable and st.best_lower_z is not None:
        zdir = st.best_lower_z
    else:
        zdir = st.best_upper[3] if st.best_upper is not None else None
    normal, offset = None, math.nan
    if zdir is not None and float(zdir.norm()) > 0:
        normal = zdir / zdir.norm()
        if basis is not None:
            normal = basis @ normal
            normal = normal / normal.norm()
        Xa, Xb = take_rows(X64, st.rows_a), take_rows(X64, st.rows_b)
        offset = float((Xa @ normal).min() + (Xb @ normal).max()) / 2
    status = st.status or "max_iter"
    if status == "converged" and not is_done(st, tol, zero_tol):
        status = "stalled"
    return HullDistance(distance=upper, lower=lower, upper=upper, separable=separable, normal=normal, offset=offset,
                        weights_a=wa, weights_b=wb, iterations=st.rounds, method="native", status=status, tol=tol,
                        zero_tol=zero_tol, scale=st.scale, n_a=n, n_b=m, d=X64.shape[1], seconds=seconds)


def _sorted(rows: torch.Tensor) -> bool:
    return rows.numel() < 2 or bool((rows[1:] > rows[:-1]).all())


def _positions(rows: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    order = torch.argsort(rows)
    return order[torch.searchsorted(rows[order], values)]


# ----------------------------------------------------------------------------
