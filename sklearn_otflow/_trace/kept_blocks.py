r"""The trace path for :math:`M \ge 2` layers with small blocks, exact: the blocks kept, not recomputed.

The formulas of :mod:`.general`, over all the samples at once, keeping for the backward pass the blocks
:math:`P_i = K_i J_{i-1}` that the general path computes again (the :math:`J_i` cost one operation each
to rebuild from them). At a few features a step is bound by the number of operations rather than their
size, and this path runs fewer of them (the benchmarks page, "The defaults and why", gives the gain).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import sweep
from .base import Weights

# Largest (m, d, n) block for which several residual layers take this path: above, the larger blocks'
# memory traffic costs what the saved operations gain.
MAX_BLOCK = 1 << 16


def applies(d: int, p: Weights, n: int, exact: bool) -> bool:
    """Whether the trace over ``n`` samples takes this path: several residual layers, exact blocks,
    and (m, d, n) blocks of ``MAX_BLOCK`` entries at most."""
    return exact and len(p.Ks) > 1 and p.K0.shape[0] * d * n <= MAX_BLOCK


def forward(d: int, h: float, gd: torch.dtype, block: int, s: Tensor, p: Weights, prepared, work=None):
    r""":math:`\nabla_s\Phi` (d + 1, n), the trace (n,) and what :func:`backward` needs.

    In training, what a stage keeps goes to ``work.current`` (a :class:`~.scratch.TraceWork`):
    :math:`4M + 1` activations, :math:`g_0, z_1, u_0..u_{M-1}, g_1..g_M, z_2..z_M, sq_1..sq_M`, and
    the blocks.
    """
    K0, Ks, M = p.K0, p.Ks, len(p.Ks)
    AtA, trace_AtA, bsq, _ = prepared
    m, n = K0.shape[0], s.shape[1]
    slots = None if work is None else work.current
    kept = [None] * (4 * M + 1) if slots is None else slots[2]
    blocks = [None] * M if slots is None else [P.view(m, d * n) for P in slots[3]]
    grad_out = None if slots is None else slots[1]
    g0, us, gs, zs, grad = sweep.forward(h, s, p, AtA, kept, grad_out)
    # blocks J_0 = diag(g_0) B, P_i = K_i J_{i-1}, J_i = J_{i-1} + h diag(g_i) P_i, laid out (m, d, n)
    J = K0[:, :d].unsqueeze(2) * g0.unsqueeze(1)
    Ps, sqs = [], []
    for i, K in enumerate(Ks):
        P = torch.mm(K, J.view(m, -1), out=blocks[i]).view(m, d, n)
        Ps.append(P)
        sqs.append(torch.linalg.vecdot(P, P, dim=1, out=kept[3 * M + 1 + i]))
        if i + 1 < M:
            J = torch.addcmul(J, P, gs[i].unsqueeze(1), value=h)
    # trace = bsq . (e_0 z_1) + h sum_i sum_j c_ij sq_ij + tr((A^T A)[:d, :d]), c_i = e_i z_{i+1}
    S = (1.0 - gs[0] * gs[0]).mul_(zs[1]).mul_(sqs[0])
    for g, z, sq in zip(gs[1:], zs[2:], sqs[1:]):
        S.addcmul_((1.0 - g * g).mul_(z), sq)
    e0z1 = (1.0 - g0 * g0).mul_(zs[0])
    trace = torch.addmv(S.sum(0), e0z1.t(), bsq, beta=h).add_(trace_AtA)
    lists = (Ks, gs, us, zs[:M], Ps, sqs)
    return grad, trace, (s, K0, p.w, AtA, bsq, g0, *(x for xs in lists for x in xs))


def backward(d: int, h: float, gd: torch.dtype, saved, G: Tensor, G_tr: Tensor, need_s: bool, w_done=False):
    """Gradients of ``<G, grad> + <G_tr, trace>``: with respect to ``s`` (``None`` unless ``need_s``),
    the weights and the prepared quantities ``(AtA, bsq, W)``."""
    s, K0, w, AtA, bsq, g0, *rest = saved
    M = len(rest) // 6
    Ks, gs, us, zs, Ps, sqs = (rest[i * M : (i + 1) * M] for i in range(6))
    m, n = K0.shape[0], s.shape[1]
    z1, zn = zs[0], [*zs[1:], w.unsqueeze(1)]  # zn[i] = z_{i+2}, what layer i + 1 sees
    es = [1.0 - g * g for g in gs]
    hGt = (h * G_tr).unsqueeze(0)
    # the blocks again: J_0 = diag(g_0) B, J_i = J_{i-1} + h diag(g_i) P_i
    B = K0[:, :d]
    Js = [B.unsqueeze(2) * g0.unsqueeze(1)]
    for i in range(M - 1):
        Js.append(torch.addcmul(Js[-1], Ps[i], gs[i].unsqueeze(1), value=h))
    # last layer first: t_i = sum_j c_ij sum_l P_ijl^2 gives P_i the gradient 2 h c_i P_i
    G_g: list = [None] * M
    G_K: list = [None] * M
    gJ = None  # gradient with respect to J_i, (m, d, n)
    for i in reversed(range(M)):
        gP = Ps[i] * (es[i] * zn[i]).mul_(2.0 * hGt).unsqueeze(1)
        if gJ is not None:  # J_{i+1} = J_i + h g_i P_i
            G_g[i] = torch.linalg.vecdot(gJ, Ps[i], dim=1).mul_(h)
            gP.addcmul_(gJ, gs[i].unsqueeze(1), value=h)
        gP = gP.view(m, -1)
        G_K[i] = torch.mm(gP, Js[i].view(m, -1).t())
        gJ = (Ks[i].t() @ gP if gJ is None else gJ.view(m, -1).addmm_(Ks[i].t(), gP)).view(m, d, n)
    # J_0 = diag(g_0) B
    G_g0 = torch.bmm(B.unsqueeze(1), gJ).squeeze(1)
    G_B = torch.linalg.vecdot(gJ, g0.unsqueeze(1), dim=2)
    # c_i = e_i z_{i+1}, e_i = 1 - g_i^2: the gradient with respect to c_i is h sq_i G_tr
    G_z: list = [None] * (M + 1)  # G_z[i]: with respect to z_{i+1}
    for i in range(M):
        G_c = sqs[i] * hGt
        G_z[i + 1] = G_c * es[i]
        G_y = G_c.mul_(gs[i]).mul_(zn[i])  # -2 g_i z_{i+1} G_c is the gradient for g_i
        G_g[i] = G_y.mul_(-2.0) if G_g[i] is None else G_g[i].add_(G_y, alpha=-2.0)
    # t_0 = bsq . (e_0 z_1), e_0 = 1 - g_0^2
    e0 = 1.0 - g0 * g0
    bG = bsq.unsqueeze(1) * G_tr.unsqueeze(0)
    G_bsq = (e0 * z1) @ G_tr
    G_z[0] = bG * e0
    q = g0 * z1
    G_g0.addcmul_(q, bG, value=-2.0)
    acts = (g0, e0, q, gs, es, us, [z1, *zn])
    G_acts = (G_g0, G_z, G_g, G_K, G_B)
    G_s, G_params, G_AtA = sweep.backward(d, h, s, K0, AtA, Ks, acts, G, G_tr, G_acts, need_s)
    return G_s, G_params, (G_AtA, G_bsq, None)
