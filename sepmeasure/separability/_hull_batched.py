"""Batched rounds of the native hull solver: the working-set problems of all pairs in one solve.

Internal module of :mod:`sepmeasure.separability.hull`. The pairs of one pool (for instance
the 45 one-vs-one pairs of a layer) run the rounds of the working-set method together, with
no Python loop over pairs:

* the working sets are padded to one size ``K`` (a mask marks the entries in use) and their
  Gram matrices form one ``(P, K, K)`` tensor;
* the small problems (the minimum norm of ``sum_k x_k y_k`` over the product of two simplices,
  with a ridge of 1e-10) are solved by one batched block principal pivoting method: the
  equality-constrained minimiser on the free weights from a batched Cholesky factor, then all
  negative weights fixed and all fixed weights with negative multipliers freed at once, until
  no pair has an infeasible entry (:func:`_inner_solve`);
* one matrix product gives the scores of every point of every pair; the certificate
  (``upper`` = the norm of the point, ``lower`` = the margin of its hyperplane) and the points
  that violate the optimality conditions most are read from it with masked reductions.

A pair leaves the batch when it is certified within tolerance, when it reaches ``max_iter``,
or when the plain rounds no longer make progress (no violator left, the distance stagnates,
a factorisation fails, the pivoting needs more than :data:`PIVOT_STEPS` steps, or its working
set outgrows :data:`BATCH_MAX_WORKING_SET`): it then
continues in the one-pair-at-a-time rounds of :mod:`._hull_native`, which also refine the
support by QR, warm-started from where the batch left it.
"""
from __future__ import annotations

import math
from typing import Any

import torch

from ._hull_native import RIDGE, PairState, WorkingSet
from ._hull_result import SEPARABLE_FLOOR, HullDistance

__all__ = ["batched_rounds", "states_left", "finish_batch", "BatchOutcome", "BATCH_MAX_WORKING_SET", "PIVOT_STEPS"]

BATCH_MAX_WORKING_SET = 256     # a pair whose working set outgrows this continues on its own
PIVOT_STEPS = 25                # pivoting steps per round; a pair that needs more continues on its own


def _pad(seqs: list[torch.Tensor], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = torch.tensor([s.numel() for s in seqs], device=device)
    width = int(lengths.max())
    valid = torch.arange(width, device=device)[None, :] < lengths[:, None]
    out = torch.zeros(len(seqs), width, dtype=torch.long, device=device)
    out[valid] = torch.cat(seqs).to(device)
    return out, valid


def _compact(keep: torch.Tensor, *tensors: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Move the kept entries of every row to the front and drop the columns no row uses."""
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)
    width = max(int(keep.sum(1).max()), 1)
    order = order[:, :width]
    return (keep.gather(1, order),) + tuple(t.gather(1, order) for t in tensors)


def _inner_solve(H: torch.Tensor, x: torch.Tensor, valid: torch.Tensor, in_b: torch.Tensor,
                 max_steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Minimise ``x @ (H + eps I) @ x`` over both simplices, for every pair at once.

    Block principal pivoting (Júdice and Pires 1994; Kim and Park 2011, for NNLS): the
    equality-constrained minimiser on the free entries is solved exactly (batched Cholesky of the
    free block plus a 2 x 2 Schur complement for the two sums); every free entry that turns
    negative is fixed at zero and every fixed entry whose multiplier is negative is freed, all at
    once; a pair whose count of infeasible entries has not dropped for three steps exchanges only
    its last infeasible entry (the backup rule that makes the method finite). ``eps`` is a ridge
    of ``1e-10`` of the mean diagonal, which makes the problem strictly convex. The pairs still
    pivoting are gathered into smaller tensors only when some of them settle.

    Returns ``(x, active, ok)``: the weights (0 where fixed), the free entries and, per pair,
    whether it settled (``False``: a factorisation failed or ``max_steps`` ran out; ``x`` is then
    the feasible start, every valid entry free).
    """
    p, K = x.shape
    dt, dev = H.dtype, H.device
    diag = H.diagonal(dim1=1, dim2=2)
    mean_diag = (diag * valid).sum(1) / valid.sum(1).clamp_min(1)
    eps = torch.where(mean_diag > 0, RIDGE * mean_diag, torch.ones_like(mean_diag))
    x = x.clone()
    active = valid.clone()
    ok = torch.zeros(p, dtype=torch.bool, device=dev)
    cols = torch.arange(K, device=dev)
    # the state of the pairs still pivoting (rows of todo)
    todo = torch.arange(p, device=dev)
    Ht, es, vt, act_t = H, eps[:, None], valid, valid.clone()
    sides = torch.stack([~in_b, in_b], 2).to(dt)                              # (p, K, 2)
    ib_t = in_b
    best = torch.full((p,), K + 1, dtype=torch.long, device=dev)
    budget = torch.full((p,), 3, dtype=torch.long, device=dev)
    for _ in range(max_steps):
        act = act_t.to(dt)
        M = Ht * (act[:, :, None] * act[:, None, :])
        M.diagonal(dim1=1, dim2=2).add_(es * act + (1 - act))
        L, info = torch.linalg.cholesky_ex(M)
        E = sides * act[:, :, None]                                          # (q, K, 2)
        Zc = torch.cholesky_solve(E, L)                                      # (q, K, 2)
        S = (E[:, :, :, None] * Zc[:, :, None, :]).sum(1)                    # (q, 2, 2)
        s00, s01, s10, s11 = S[:, 0, 0], S[:, 0, 1], S[:, 1, 0], S[:, 1, 1]
        det = s00 * s11 - s01 * s10
        k_a, k_b = ((s11 - s01) / det)[:, None], ((s00 - s10) / det)[:, None]
        y = Zc[:, :, 0] * k_a + Zc[:, :, 1] * k_b                             # minimiser on the free entries
        g = (Ht * y[:, None, :]).sum(2) + es * y                             # gradient; = kappa on the free ones
        mu = g - torch.where(ib_t, k_b, k_a)
        thr = 1e-11 * (g.abs() * act).amax(1, keepdim=True)
        drop = act_t & (y < 0)
        infeasible = drop | (vt & ~act_t & (mu < -thr))
        n_inf = infeasible.sum(1)
        bad = (info != 0) | ~torch.isfinite(y).all(1) | ~(det > 0)
        settled = (n_inf == 0) & ~bad
        # exchange: all infeasible entries while their count drops (or within three tries), else the last one
        improved = n_inf < best
        best = torch.where(improved, n_inf, best)
        budget = torch.where(improved, torch.full_like(budget, 3), budget - 1)
        single = ~improved & (budget < 0)
        budget = torch.where(single, torch.zeros_like(budget), budget)
        last = torch.where(infeasible, cols, -1).amax(1, keepdim=True)
        swap = torch.where(single[:, None], infeasible & (cols == last), infeasible)
        act_t = act_t ^ swap
        leave = settled | bad
        if bool(leave.any()):
            s_idx = todo[settled]
            x[s_idx] = y[settled]
            ok[s_idx] = True
            active[s_idx] = act_t[settled] ^ swap[settled]     # settled: swap is empty
            keep = ~leave
            todo = todo[keep]
            if todo.numel() == 0:
                break
            Ht, es, vt, act_t, sides, ib_t = Ht[keep], es[keep], vt[keep], act_t[keep], sides[keep], ib_t[keep]
            best, budget = best[keep], budget[keep]
    # pairs that did not settle keep their feasible start, all of its entries free
    lost = ~ok
    active[lost] = valid[lost]
    return x, active & (x > 0) | (active & ~ok[:, None]), ok


class BatchOutcome:
    """Where the batched rounds left every pair (tensors over the ``P`` pairs, padded to ``L`` points)."""

    def __init__(self, **fields: Any) -> None:
        self.__dict__.update(fields)


def batched_rounds(pairs: list[tuple[torch.Tensor, torch.Tensor]], Xw: torch.Tensor, *, tol: float,
                   zero_tol: float, max_iter: int, add: int, k0: int) -> BatchOutcome:
    """Run the rounds of the working-set method for all ``pairs`` of the centred pool ``Xw`` at once.

    The outcome holds every pair's certified bounds and best points; ``outcome.left`` lists the
    pairs to continue one by one (:func:`states_left`), the others are finished
    (:func:`finish_batch`) with ``outcome.status[k]`` "converged" or "max_iter".
    """
    P = len(pairs)
    dev, dt = Xw.device, Xw.dtype
    rows, loc_valid = _pad([torch.cat([ra, rb]) for ra, rb in pairs], dev)
    L = rows.shape[1]
    n_a = torch.tensor([ra.numel() for ra, _ in pairs], device=dev)
    n_b = torch.tensor([rb.numel() for _, rb in pairs], device=dev)
    pos = torch.arange(L, device=dev)[None, :]
    is_b = pos >= n_a[:, None]
    is_a_valid = loc_valid & ~is_b
    is_b_valid = loc_valid & is_b
    sign = 1.0 - 2.0 * is_b.to(dt)
    # each pair's mean, scale (largest distance from its mean) and mean difference, through (P, N) weights
    N = Xw.shape[0]
    vm = loc_valid.to(dt)
    wa = is_a_valid.to(dt) / is_a_valid.sum(1, keepdim=True)
    wb = is_b_valid.to(dt) / is_b_valid.sum(1, keepdim=True)
    Wc = torch.zeros(P, N, dtype=dt, device=dev).scatter_add_(1, rows, vm / vm.sum(1, keepdim=True))
    Wd = torch.zeros(P, N, dtype=dt, device=dev).scatter_add_(1, rows, wa - wb)
    C = Wc @ Xw
    w0 = Wd @ Xw
    sq = (Xw * Xw).sum(1)
    dist2 = sq[rows] - 2 * (C @ Xw.T).gather(1, rows) + (C * C).sum(1, keepdim=True)
    scale = (dist2.clamp_min(0).sqrt() * vm).amax(1)
    # initial working sets: the k0 extreme points of each set along the mean difference
    s0 = (w0 @ Xw.T).gather(1, rows)
    add = min(add, k0)   # few points per round keep the batched problems small (supports are found in a few rounds)
    kk = min(k0, L)
    ia = torch.where(is_a_valid, s0, math.inf).topk(kk, dim=1, largest=False).indices
    ib = torch.where(is_b_valid, -s0, math.inf).topk(kk, dim=1, largest=False).indices
    q = torch.cat([ia, ib], 1)
    wv = torch.cat([is_a_valid.gather(1, ia), is_b_valid.gather(1, ib)], 1)
    ws_b = is_b.gather(1, q)
    cnt_a = (wv & ~ws_b).sum(1, keepdim=True).to(dt)
    cnt_b = (wv & ws_b).sum(1, keepdim=True).to(dt)
    x = torch.where(ws_b, 1.0 / cnt_b, 1.0 / cnt_a) * wv

    lower = torch.zeros(P, dtype=dt, device=dev)
    upper = torch.full((P,), math.inf, dtype=dt, device=dev)
    prev_upper = torch.full((P,), math.inf, dtype=dt, device=dev)
    best_w = torch.zeros(P, L, dtype=dt, device=dev)
    best_z = torch.zeros(P, Xw.shape[1], dtype=dt, device=dev)
    best_lz = torch.zeros_like(best_z)
    has_lz = torch.zeros(P, dtype=torch.bool, device=dev)
    rounds = torch.zeros(P, dtype=torch.long, device=dev)
    status = [""] * P
    handed: dict[int, tuple[torch.Tensor, torch.Tensor, bool]] = {}

    # the pairs still in the batch (al) and their state, gathered again only when some of them leave;
    # q, wv, x, ws_b are their working sets (positions in the pair, in use, weights, in B)
    al = torch.arange(P, device=dev)
    sg, rw, isb, isa_v, isb_v, lval = sign, rows, is_b, is_a_valid, is_b_valid, loc_valid
    Cl, sc = C, scale
    lw, up, pu, bw, bz, blz, hlz, rd = lower, upper, prev_upper, best_w, best_z, best_lz, has_lz, rounds
    kadd = min(add, L)
    while al.numel():
        Y = sg.gather(1, q)[:, :, None] * (Xw[rw.gather(1, q)] - Cl[:, None, :]) * wv[:, :, None]
        H = Y @ Y.mT
        x, active, ok = _inner_solve(H, x, wv, ws_b, max_steps=PIVOT_STEPS)
        xa = x * active
        sa_ = (xa * ~ws_b).sum(1, keepdim=True)
        sb_ = (xa * ws_b).sum(1, keepdim=True)
        xa = torch.where(ws_b, xa / sb_, xa / sa_)
        z = torch.einsum("pk,pkd->pd", xa, Y)
        T = (z @ Xw.T).gather(1, rw)                                        # scores of every point of each pair
        nz = z.norm(dim=1)
        better = nz < up
        up = torch.where(better, nz, up)
        dense = torch.zeros_like(bw).scatter_add_(1, q, xa)
        bw = torch.where(better[:, None], dense, bw)
        bz = torch.where(better[:, None], z, bz)
        lo = torch.where(isa_v, T, math.inf).amin(1) - torch.where(isb_v, T, -math.inf).amax(1)
        lo = torch.where(nz > 0, lo / nz.clamp_min(1e-300), torch.zeros_like(lo))
        lbetter = lo > lw
        lw = torch.where(lbetter, lo, lw)
        blz = torch.where(lbetter[:, None], z, blz)
        hlz = hlz | lbetter
        rd = rd + 1
        done = (up <= zero_tol * sc) | ((lw > SEPARABLE_FLOOR * sc) & (up - lw <= tol * up))
        # the points that violate the optimality conditions most, per set
        cz = (Cl * z).sum(1)
        u = sg * (T - cz[:, None])
        uF = (Y @ z[:, :, None])[:, :, 0]
        lam_a = torch.where(active & ~ws_b, uF, math.inf).amin(1)
        lam_b = torch.where(active & ws_b, uF, math.inf).amin(1)
        mu = u - torch.where(isb, lam_b[:, None], lam_a[:, None])
        member = torch.zeros_like(lval).scatter_(1, q, active)
        mu = mu.masked_fill(member | ~lval, math.inf)
        tolv = (1e-13 * sc * nz.clamp_min(1e-300))[:, None]
        va, na_ = mu.masked_fill(isb, math.inf).topk(kadd, dim=1, largest=False)
        vb, nb_ = mu.masked_fill(~isb, math.inf).topk(kadd, dim=1, largest=False)
        new_q = torch.cat([na_, nb_], 1)
        new_v = torch.cat([va < -tolv, vb < -tolv], 1)
        stagnant = (pu - nz) <= 1e-3 * tol * nz
        pu = nz
        n_new = new_v.sum(1)
        leave_done = done | ((rd >= max_iter) & ok)
        hand = ~leave_done & (~ok | stagnant | (n_new == 0) | (active.sum(1) + n_new > BATCH_MAX_WORKING_SET))
        leave = leave_done | hand
        if bool(leave.any()):
            al_list = al.tolist()
            for i in torch.nonzero(leave_done).flatten().tolist():
                status[al_list[i]] = "converged" if bool(done[i]) else "max_iter"
            for i in torch.nonzero(hand).flatten().tolist():
                handed[al_list[i]] = (q[i][active[i]], xa[i][active[i]], bool(stagnant[i]) or int(n_new[i]) == 0)
            lower[al], upper[al], prev_upper[al], rounds[al] = lw, up, pu, rd
            best_w[al], best_z[al], best_lz[al], has_lz[al] = bw, bz, blz, hlz
            cont = ~leave
            al = al[cont]
            if not al.numel():
                break
            sg, rw, isb, isa_v, isb_v, lval = sg[cont], rw[cont], isb[cont], isa_v[cont], isb_v[cont], lval[cont]
            Cl, sc = Cl[cont], sc[cont]
            lw, up, pu, bw, bz, blz, hlz, rd = lw[cont], up[cont], pu[cont], bw[cont], bz[cont], blz[cont], \
                hlz[cont], rd[cont]
            q, xa, active, new_q, new_v = q[cont], xa[cont], active[cont], new_q[cont], new_v[cont]
        wv, q, x = _compact(torch.cat([active, new_v], 1), torch.cat([q, new_q], 1),
                            torch.cat([xa, torch.zeros_like(new_q, dtype=dt)], 1))
        ws_b = isb.gather(1, q)

    return BatchOutcome(pairs=pairs, rows=rows, n_a=n_a, n_b=n_b, is_b=is_b, C=C, scale=scale, lower=lower,
                        upper=upper, prev_upper=prev_upper, best_w=best_w, best_z=best_z, best_lz=best_lz,
                        has_lz=has_lz, rounds=rounds, status=status, handed=handed,
                        left=sorted(handed))


def states_left(out: BatchOutcome, Xw: torch.Tensor) -> dict[int, PairState]:
    """One-pair states, with their working sets and certified bounds, of the pairs the batch handed on."""
    states = {}
    for k in out.left:
        ra, rb = out.pairs[k]
        st = PairState(ra, rb, Xw)
        st.rounds = int(out.rounds[k])
        st.lower, st.upper, st.prev_upper = float(out.lower[k]), float(out.upper[k]), float(out.prev_upper[k])
        if bool(out.has_lz[k]):
            st.best_lower_z = out.best_lz[k].clone()
        if math.isfinite(st.upper):
            sup = out.best_w[k] > 0
            st.best_upper = (out.rows[k][sup], out.is_b[k][sup], out.best_w[k][sup], out.best_z[k].clone())
        qk, xk, idle = out.handed[k]
        st.ws = WorkingSet(Xw, st.center, out.rows[k][qk], out.is_b[k][qk], xk)
        st.idle = 1 if idle else 0
        states[k] = st
    return states


def finish_batch(out: BatchOutcome, X64: torch.Tensor, basis: torch.Tensor | None, tol: float, zero_tol: float,
                 seconds: float) -> dict[int, HullDistance]:
    """The results of the pairs that finished in the batch (as :func:`._hull_native.finish_pair` would give)."""
    done = [k for k in range(len(out.pairs)) if k not in out.handed]
    if not done:
        return {}
    dev = X64.device
    idx = torch.tensor(done, device=dev)
    sc, up, lw = out.scale[idx], out.upper[idx], out.lower[idx]
    meets = up <= zero_tol * sc
    lower = torch.where(meets, torch.zeros_like(lw), lw.clamp_min(0))
    separable = ~meets & (lower > SEPARABLE_FLOOR * sc)
    zdir = torch.where((separable & out.has_lz[idx])[:, None], out.best_lz[idx], out.best_z[idx])
    zn = zdir.norm(dim=1)
    has_normal = torch.isfinite(up) & (zn > 0)
    normal = zdir / zn.clamp_min(1e-300)[:, None]
    if basis is not None:
        normal = normal @ basis.T
        normal = normal / normal.norm(dim=1, keepdim=True).clamp_min(1e-300)
    rows = out.rows[idx]
    is_b = out.is_b[idx]
    valid = torch.arange(rows.shape[1], device=dev)[None, :] < (out.n_a[idx] + out.n_b[idx])[:, None]
    T = (normal @ X64.T).gather(1, rows)
    off = (torch.where(valid & ~is_b, T, math.inf).amin(1) + torch.where(valid & is_b, T, -math.inf).amax(1)) / 2
    w = out.best_w[idx]
    d = X64.shape[1]
    results = {}
    up_l, lo_l, sc_l, off_l = up.tolist(), lower.tolist(), sc.tolist(), off.tolist()
    meets_l, sep_l, hn_l = meets.tolist(), separable.tolist(), has_normal.tolist()
    na_l, nb_l, rounds_l = out.n_a[idx].tolist(), out.n_b[idx].tolist(), out.rounds[idx].tolist()
    for i, k in enumerate(done):
        n, m = na_l[i], nb_l[i]
        upper = up_l[i] if math.isfinite(up_l[i]) else math.nan
        results[k] = HullDistance(
            distance=upper, lower=lo_l[i], upper=upper, separable=False if meets_l[i] else (True if sep_l[i] else None),
            normal=normal[i].clone() if hn_l[i] else None, offset=off_l[i] if hn_l[i] else math.nan,
            weights_a=w[i, :n].clone(), weights_b=w[i, n:n + m].clone(), iterations=rounds_l[i], method="native",
            status=out.status[k], tol=tol, zero_tol=zero_tol, scale=sc_l[i], n_a=n, n_b=m, d=d, seconds=seconds)
    return results
