r"""The general trace path: any number of layers, any block precision, blocks recomputed in chunks.

The sweep, samples last:

.. math::

    a_0 = K_0 s + b_0, \quad u_0 = \sigma(a_0), \quad g_0 = \tanh(a_0), \qquad
    a_i = K_i u_{i-1} + b_i, \quad g_i = \tanh(a_i), \quad u_i = u_{i-1} + h\,\sigma(a_i) \ (i < M),

    z_{M+1} = w, \quad z_i = z_{i+1} + h K_i^\top (g_i z_{i+1}), \qquad
    \nabla_s\Phi = A^\top A s + b + K_0^\top (g_0 z_1).

The network's share of the spatial Hessian trace is :math:`t_0 + h \sum_i t_i` with

.. math::

    t_0 = \sum_j (1 - g_{0,j}^2)\, z_{1,j} \|B_j\|^2, \qquad
    t_i = \sum_{j,l} c_{i,j} (K_i J_{i-1})_{jl}^2, \quad c_i = (1 - g_i^2) z_{i+1},

:math:`B` the first d columns of :math:`K_0` and the Jacobian blocks
:math:`J_0 = \operatorname{diag}(g_0) B`, :math:`J_i = J_{i-1} + h \operatorname{diag}(g_i) K_i J_{i-1}`,
(m, d) per sample. The blocks exist one chunk of samples at a time, in ``gemm_dtype`` (bfloat16 is
allowed: reductions stay in the input's dtype), and the backward pass computes them again, so memory
stays O(m n).
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Weights, chunks, log_cosh


def _sweep(h: float, s: Tensor, p: Weights, AtA: Tensor):
    r"""The activations, the sweep for :math:`z_i` and :math:`\nabla_s\Phi` (module docstring).

    Returns ``g0``, the lists ``us`` and ``gs``, ``zs`` (``zs[i]`` is :math:`z_{i+1}`, i = 0..M, the
    last :math:`w` as an (m, 1) column) and :math:`\nabla_s\Phi`.
    """
    M = len(p.Ks)
    a0 = torch.addmm(p.b0.unsqueeze(1), p.K0, s)
    g0 = torch.tanh(a0)
    u = log_cosh(a0)
    us, gs = [u], []
    for i, (K, bi) in enumerate(zip(p.Ks, p.bs)):
        a = torch.addmm(bi.unsqueeze(1), K, u)
        gs.append(torch.tanh(a))
        if i + 1 < M:
            u = torch.add(u, log_cosh(a), alpha=h)
            us.append(u)
    z, zs = p.w.unsqueeze(1), [p.w.unsqueeze(1)]
    for i in reversed(range(M)):
        z = torch.addmm(z, p.Ks[i].t(), gs[i] * z, alpha=h)
        zs.append(z)
    zs.reverse()
    grad = torch.addmm(torch.addmm(p.b.unsqueeze(1), AtA, s), p.K0.t(), g0 * zs[0])
    return g0, us, gs, zs, grad


def _sweep_backward(d: int, h: float, s, K0, AtA, Ks, acts, G: Tensor, G_tr: Tensor, G_acts, need_s: bool):
    r"""The backward pass of :func:`_sweep`, once the trace's share is known.

    ``acts``: :math:`g_0`, :math:`e_0 = 1 - g_0^2`, :math:`q = g_0 z_1`, and the lists of
    :math:`g_i`, :math:`e_i = 1 - g_i^2` (i = 1..M), :math:`u_i` (i = 0..M - 1) and :math:`z_i`
    (i = 1..M + 1). ``G_acts``: the trace's gradients with respect to :math:`g_0`, the
    :math:`z_i`, the :math:`g_i`, the :math:`K_i` and :math:`B = (K_0)_{:, 1:d}`, which this updates
    in place. Returns the gradient with respect to :math:`s` (``None`` unless ``need_s``), the
    weights' (:meth:`Weights.flat` order, ``None`` for :math:`A`) and the one with respect to
    :math:`A^\top A`.
    """
    g0, e0, q, gs, es, us, zs = acts
    G_g0, G_z, G_g, G_K, G_B = G_acts
    M, z1, zn = len(Ks), zs[0], zs[1:]  # zn[i] = z_{i+2}, what layer i + 1 sees
    # grad = A^T A s + b + K_0^T q, q = g_0 z_1
    G_K0 = q @ G.t()
    G_q = K0 @ G
    G_g0.addcmul_(G_q, z1)
    G_z[0].addcmul_(G_q, g0)
    # z_i = z_{i+1} + h K_i^T y_i, y_i = g_i z_{i+1}, first layer first
    for i in range(M):
        v = Ks[i] @ G_z[i]
        G_K[i].addmm_(gs[i] * zn[i], G_z[i].t(), alpha=h)
        G_z[i + 1].add_(G_z[i]).addcmul_(v, gs[i], value=h)
        G_g[i].addcmul_(v, zn[i], value=h)
    G_w = G_z[M].sum(1)
    # a_i = K_i u_{i-1} + b_i, g_i = tanh(a_i), u_i = u_{i-1} + h log_cosh(a_i) (i < M), last layer first
    G_b, G_u = [None] * M, None
    for i in reversed(range(M)):
        G_a = G_g[i].mul_(es[i])
        if G_u is not None:
            G_a.addcmul_(G_u, gs[i], value=h)
        G_K[i].addmm_(G_a, us[i].t())
        G_b[i] = G_a.sum(1)
        G_u = Ks[i].t() @ G_a if G_u is None else G_u.addmm_(Ks[i].t(), G_a)
    # a_0 = K_0 s + b_0, u_0 = log_cosh(a_0), g_0 = tanh(a_0)
    G_a0 = G_g0.mul_(e0).addcmul_(G_u, g0)
    G_K0.addmm_(G_a0, s.t())
    G_K0[:, :d] += G_B
    # A^T A s in grad, tr((A^T A)[:d, :d]) in the trace
    G_AtA = G @ s.t()
    G_AtA.diagonal()[:d] += G_tr.sum()
    G_s = torch.addmm(AtA @ G, K0.t(), G_a0) if need_s else None
    return G_s, [G_K0, G_a0.sum(1), G_w, None, G.sum(1), *G_K, *G_b], G_AtA


def _jacobian_chain(
    h: float, g0: Tensor, B: Tensor, Ks: list[Tensor], ss: list[Tensor], dtype: torch.dtype
) -> tuple[list[Tensor], list[Tensor]]:
    r"""Forward recursion of the Jacobian blocks, laid out ``(m, d, n)`` (samples innermost).

    :math:`J_0 = \operatorname{diag}(\sigma'(a_0)) K_0 E`, :math:`P_i = K_i J_{i-1}`,
    :math:`J_i = J_{i-1} + h \operatorname{diag}(\sigma'(a_i)) P_i`. Returns ``(Js, Ps)`` with
    ``Js[i] = J_i`` for ``i < M`` and ``Ps[i-1] = P_i``; all in ``dtype``. ``g0`` and ``ss`` come
    transposed, (m, n).
    """
    m, d, n = B.shape[0], B.shape[1], g0.shape[1]
    J = B.to(dtype).unsqueeze(2) * g0.to(dtype).unsqueeze(1)  # (m, d, n)
    Js, Ps = [J], []
    for i, K in enumerate(Ks):
        P = (K.to(dtype) @ J.view(m, d * n)).view(m, d, n)
        Ps.append(P)
        if i + 1 < len(Ks):
            J = J + P * (h * ss[i]).to(dtype).unsqueeze(1)
            Js.append(J)
    return Js, Ps


def _sq_norms(P: Tensor, dtype: torch.dtype) -> Tensor:
    """``sum_l P[j, l, n]**2`` as an (m, n) tensor in ``dtype``, accumulated in ``dtype``."""
    if P.dtype == dtype:
        return torch.linalg.vecdot(P, P, dim=1)
    return P.to(dtype).square_().sum(1)


def _trace_net(h: float, gd: torch.dtype, block: int, g0: Tensor, z1: Tensor, B: Tensor, Ks, ss, zs):
    r"""The network's share of the trace (module docstring) and the (m, n) squared row norms
    :math:`\sum_l (K_i J_{i-1})_{jl}^2`, which :func:`_trace_net_vjp` reuses. Inputs samples last:
    ``g0`` (m, n), ``z1`` (m, n), ``B`` (m, d), the lists ``Ks`` of :math:`K_i`, ``ss`` of :math:`g_i`
    and ``zs`` of :math:`z_{i+1}`.
    """
    sqs = []
    for sl in chunks(g0.shape[1], *B.shape, block):
        _, Ps = _jacobian_chain(h, g0[:, sl], B, Ks, [s[:, sl] for s in ss], gd)
        sqs.append([_sq_norms(P, g0.dtype) for P in Ps])
    sqs = [sq[0] if len(sq) == 1 else torch.cat(sq, 1) for sq in zip(*sqs)]
    tr = (B * B).sum(1) @ ((1.0 - g0 * g0) * z1)
    for s, z, sq in zip(ss, zs, sqs):
        tr = tr + h * (((1.0 - s * s) * z) * sq).sum(0)
    return tr, sqs


def _trace_net_vjp(h: float, gd: torch.dtype, g0, z1, B, Ks, ss, zs, sqs, grad_tr: Tensor):
    """The vector-Jacobian product of :func:`_trace_net`: gradients with respect to g0, z1, B, Ks, ss
    and zs. The blocks are recomputed chunk by chunk, one product per layer."""
    dtype = g0.dtype
    M, (m, d) = len(Ks), B.shape
    KTs = [K.t().to(gd).contiguous() for K in Ks]
    # t_0 = bsq @ ((1 - g0^2) z1)
    bsq_gt = (B * B).sum(1, keepdim=True) * grad_tr
    grad_z1 = (1.0 - g0 * g0) * bsq_gt
    grad_g0 = -2.0 * g0 * z1 * bsq_gt
    grad_B = 2.0 * B * (((1.0 - g0 * g0) * z1) @ grad_tr).unsqueeze(1)
    grad_K = [torch.zeros_like(K) for K in Ks]
    # c_i = (1 - s_i^2) z_{i+1}: t_i's gradient with respect to c_i is h sq_i grad_tr
    grad_cs = [h * sq * grad_tr for sq in sqs]
    grad_z = [gc * (1.0 - s * s) for gc, s in zip(grad_cs, ss)]
    grad_s = [-2.0 * gc * s * z for gc, s, z in zip(grad_cs, ss, zs)]
    wts = [((2.0 * h) * (1.0 - s * s) * z * grad_tr).to(gd) for s, z in zip(ss, zs)]  # d/dP: 2 h c P

    for sl in chunks(g0.shape[1], m, d):
        Js, Ps = _jacobian_chain(h, g0[:, sl], B, list(Ks), [s[:, sl] for s in ss], gd)
        gJ = None  # gradient with respect to J_{i+1}, (m, d, chunk)
        for i in reversed(range(M)):
            P = Ps.pop()
            gP = P * wts[i][:, sl].unsqueeze(1)
            if gJ is not None:  # the path J_{i+1} = J_i + h s_i P_i
                grad_s[i][:, sl] += h * torch.linalg.vecdot(gJ.to(dtype), P.to(dtype), dim=1)
                gP = gP + gJ * (h * ss[i][:, sl]).to(gd).unsqueeze(1)
            grad_K[i] += (gP.view(m, -1) @ Js[i].view(m, -1).t()).to(dtype)
            gJ_prev = (KTs[i] @ gP.view(m, -1)).view(gP.shape)
            gJ = gJ_prev if gJ is None else gJ + gJ_prev
        # J_0 = B[:, :, None] * g0[:, None, :]
        grad_g0[:, sl] += torch.bmm(B.to(gd).unsqueeze(1), gJ).squeeze(1)
        grad_B += torch.bmm(gJ, g0[:, sl].to(gd).unsqueeze(2)).squeeze(2)
    return grad_g0, grad_z1, grad_B, grad_K, grad_s, grad_z


def forward(d: int, h: float, gd: torch.dtype, block: int, s: Tensor, p: Weights, prepared, work=None):
    r""":math:`\nabla_s\Phi` (d + q + 1, n), the trace (n,) and what :func:`backward` needs."""
    g0, us, gs, zs, grad = _sweep(h, s, p, prepared.AtA)
    Ks = list(p.Ks)
    trace, sqs = _trace_net(h, gd, block, g0, zs[0], p.K0[:, :d], Ks, gs, zs[1:])
    trace = trace + prepared.trace_AtA
    return grad, trace, (s, p.K0, p.w, prepared.AtA, g0, *Ks, *gs, *us, *zs[:-1], *sqs)


def backward(d: int, h: float, gd: torch.dtype, saved, G: Tensor, G_tr: Tensor, need_s: bool, w_done=False):
    """Gradients of ``<G, grad> + <G_tr, trace>``: with respect to ``s`` (``None`` unless ``need_s``),
    the weights and the prepared quantities ``(AtA, bsq, W)``."""
    s, K0, w, AtA, g0, *rest = saved
    M = len(rest) // 5
    Ks, gs, us, zs, sqs = (list(rest[i * M : (i + 1) * M]) for i in range(5))
    zs.append(w.unsqueeze(1))  # zs[i] = z_{i+1}, i = 0..M
    G_g0, G_z1, G_B, G_K, G_g, G_zt = _trace_net_vjp(h, gd, g0, zs[0], K0[:, :d], Ks, gs, zs[1:], sqs, G_tr)
    acts = (g0, 1.0 - g0 * g0, g0 * zs[0], gs, [1.0 - g * g for g in gs], us, zs)
    G_acts = (G_g0, [G_z1, *G_zt], G_g, G_K, G_B)
    G_s, G_params, G_AtA = _sweep_backward(d, h, s, K0, AtA, Ks, acts, G, G_tr, G_acts, need_s)
    return G_s, G_params, (G_AtA, None, None)
