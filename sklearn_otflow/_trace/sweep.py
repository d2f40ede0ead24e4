r"""The sweep that the paths for :math:`M \ge 2` layers share, forward and backward.

Forward, samples last:

.. math::

    a_0 = K_0 s + b_0, \quad u_0 = \sigma(a_0), \quad g_0 = \tanh(a_0), \qquad
    a_i = K_i u_{i-1} + b_i, \quad g_i = \tanh(a_i), \quad u_i = u_{i-1} + h\,\sigma(a_i) \ (i < M),

    z_{M+1} = w, \quad z_i = z_{i+1} + h K_i^\top (g_i z_{i+1}), \qquad
    \nabla_s\Phi = A^\top A s + b + K_0^\top (g_0 z_1).

The backward pass differentiates these, once the trace's share of the gradients is known.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Weights, log_cosh


def forward(
    h: float, s: Tensor, p: Weights, AtA: Tensor, kept: list | None = None, grad_out: Tensor | None = None
):
    r"""The activations, the sweep for :math:`z_i` and :math:`\nabla_s\Phi` (module docstring).

    ``kept``: where to write them (``None`` entries, or no list: fresh tensors), in the order
    :math:`g_0, z_1, u_0..u_{M-1}, g_1..g_M, z_2..z_M`; ``grad_out``: where to write
    :math:`\nabla_s\Phi`. Returns ``g0``, the lists ``us`` and ``gs``, ``zs`` (``zs[i]`` is
    :math:`z_{i+1}`, i = 0..M, the last :math:`w` as an (m, 1) column) and :math:`\nabla_s\Phi`.
    """
    M = len(p.Ks)
    kept = kept or [None] * (3 * M + 1)
    a0 = torch.addmm(p.b0.unsqueeze(1), p.K0, s)
    g0 = torch.tanh(a0, out=kept[0])
    u = log_cosh(a0, out=kept[2])
    us, gs = [u], []
    for i, (K, bi) in enumerate(zip(p.Ks, p.bs)):
        a = torch.addmm(bi.unsqueeze(1), K, u)
        gs.append(torch.tanh(a, out=kept[M + 2 + i]))
        if i + 1 < M:
            u = torch.add(u, log_cosh(a), alpha=h, out=kept[3 + i])
            us.append(u)
    z, zs = p.w.unsqueeze(1), [p.w.unsqueeze(1)]
    for i in reversed(range(M)):
        z = torch.addmm(z, p.Ks[i].t(), gs[i] * z, alpha=h, out=kept[2 * M + 1 + i] if i else kept[1])
        zs.append(z)
    zs.reverse()
    grad = torch.addmm(torch.addmm(p.b.unsqueeze(1), AtA, s), p.K0.t(), g0 * zs[0], out=grad_out)
    return g0, us, gs, zs, grad


def backward(d: int, h: float, s, K0, AtA, Ks, acts, G: Tensor, G_tr: Tensor, G_acts, need_s: bool):
    r"""The backward pass of :func:`forward`, once the trace's share is known.

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
