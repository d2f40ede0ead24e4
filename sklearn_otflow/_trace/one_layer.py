r"""The trace path for one residual layer (:math:`M = 1`, so :math:`h = 1`), exact blocks.

With one layer the Jacobian blocks are products of one (d m, m) matrix of the weights,

.. math::

    W_{(l, j), k} = K_{jk} B_{kl}, \qquad
    (K J_0)_{jl} = (K \operatorname{diag}(g_0) B)_{jl} = (W_l\, g_0)_j,

so the blocks :math:`P = W g_0` need no (m, d, n) block :math:`J_0`, and their backward pass is two
products with :math:`W`. :func:`weights_matrix` builds :math:`W` once per integration and
:func:`weights_matrix_vjp` takes the gradient with respect to it back to :math:`K` and :math:`B`
once. The trace is :math:`t_0 + t_1 + \operatorname{tr}((A^\top A)_{1:d,1:d})`,
:math:`t_0 = \sum_j \|B_j\|^2 (1 - g_{0,j}^2) z_{1,j}` and :math:`t_1 = \sum_j c_{1,j} \sum_l P_{lj}^2`,
:math:`c_1 = (1 - g_1^2) w`.

Why a path of its own: at one layer it runs fewer and larger operations than the general path (three
large products per RK4 stage instead of four; the benchmarks page, "The defaults and why", gives the
gain).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import base
from .base import Weights, log_cosh, one_minus_square

# Largest (d, m, n) block for which the forward pass keeps all twelve (m, n) activations for the
# backward pass; above, only the five it cannot cheaply recompute.
SMALL_BLOCK = 1 << 18
# Largest d m^2 for which one residual layer takes this path: W and its gradient are (d m, m) each.
MAX_W = 1 << 24
# What a stage keeps in a TraceWork (its activations, then the gradient): all twelve where the blocks
# are small, else the five that the backward pass cannot cheaply recompute.
KEPT_SMALL = ("g0", "u0", "g1", "y1", "z1", "q", "e0", "e0z1", "e1", "c1", "WtC", "sq", "grad")
KEPT_LARGE = ("a0", "g1", "z1", "WtC", "sq", "grad")


def applies(d: int, p: Weights, exact: bool) -> bool:
    """Whether the trace takes this path: one residual layer, exact blocks, :math:`d m^2` at most
    ``MAX_W``."""
    return exact and len(p.Ks) == 1 and d * p.K0.shape[0] ** 2 <= MAX_W


def feature_chunks(d: int, m: int, n: int, block: int) -> list[slice]:
    """Row slices of :math:`W`, whole features :math:`l` at a time, whose products with (m, n)
    activations have at most ``block`` entries (at least one feature each)."""
    step = m * max(1, block // (m * n))
    return [slice(i, min(i + step, d * m)) for i in range(0, d * m, step)]


def weights_matrix(d: int, p: Weights, out: Tensor | None = None) -> Tensor:
    """:math:`W` (d m, m), into ``out`` if given (a :class:`~.scratch.TraceWork`'s)."""
    K, B = p.Ks[0], p.K0[:, :d]
    out = K.new_empty(d, *K.shape) if out is None else out.view(d, *K.shape)
    return torch.mul(K.unsqueeze(0), B.t().unsqueeze(1), out=out).view(-1, K.shape[1])


def weights_matrix_vjp(d: int, p: Weights, G_W: Tensor, G_K0: Tensor, w_scale: float) -> Tensor:
    """Adds ``w_scale`` times :math:`\\langle G_W, W \\rangle`'s gradient with respect to :math:`B` to
    ``G_K0`` and returns the one with respect to :math:`K`."""
    K, B = p.Ks[0], p.K0[:, :d]
    G_W = G_W.view(d, *K.shape)
    G_K = torch.zeros_like(K)
    for l in range(d):  # W[l, j, k] = K[j, k] B[k, l], one l at a time (no (d, m, m) temporaries)
        G_K.addcmul_(G_W[l], B[:, l], value=w_scale)
        G_K0[:, l].add_(torch.linalg.vecdot(G_W[l], K, dim=0), alpha=w_scale)
    return G_K


def forward(d: int, h: float, gd: torch.dtype, block: int, s: Tensor, p: Weights, prepared, work=None):
    r""":math:`\nabla_s\Phi` (d + q + 1, n), the trace (n,) and what :func:`backward` needs.

    The blocks are computed a few features :math:`l` at a time (at most ``block`` entries, over all the
    samples: products over few samples run far below the machine's rate) and not kept. Their backward
    pass would need them again, a fourth product, but two of its products need no incoming gradient:
    with :math:`C = c_1 \odot P`, the trace's gradient with respect to :math:`g_0` is
    :math:`2 \bar t \odot W^\top C` for any incoming gradient :math:`\bar t` (one number per sample),
    so :math:`W^\top C` is kept, an (m, n) activation; and its gradient with respect to :math:`W`,
    :math:`2 \sum_n \bar t_n C_n g_{0,n}^\top`, is :math:`2 \bar t\, C g_0^\top` where :math:`\bar t`
    is the same for every sample, as for training's mean loss. So in training (a
    :class:`~.scratch.TraceWork` ``work``) the forward pass adds ``work.weight`` :math:`C g_0^\top` to
    ``work.sum``, and the caller, who knows :math:`\bar t`, skips the fourth product (``w_done`` in
    :func:`backward`); otherwise the backward pass computes the blocks again. Above ``SMALL_BLOCK``
    entries only the (m, n) activations that the backward pass cannot cheaply recompute are kept.
    """
    K0, b0, w, b = p.K0, p.b0, p.w, p.b
    K, b1 = p.Ks[0], p.bs[0]
    AtA, trace_AtA, bsq, W = prepared
    m, n = K0.shape[0], s.shape[1]
    small = m * d * n <= SMALL_BLOCK  # keep the activations rather than recompute them
    # in training, the kept activations go to the integration's one allocation (TraceWork.current)
    slots = None if work is None else work.current
    names = KEPT_SMALL if small else KEPT_LARGE
    out = {} if slots is None else dict(zip(names, [*slots[2], slots[1]]))
    a0 = torch.addmm(b0.unsqueeze(1), K0, s, out=out.get("a0"))
    g0 = torch.tanh(a0, out=out.get("g0"))
    u0 = log_cosh(a0, out=out.get("u0"))
    g1 = torch.addmm(b1.unsqueeze(1), K, u0, out=out.get("g1")).tanh_()
    wc = w.unsqueeze(1)
    y1 = torch.mul(g1, wc, out=out.get("y1"))
    z1 = torch.addmm(wc, K.t(), y1, out=out.get("z1"))  # z_1 = w + K^T (s_1 w)
    q = torch.mul(g0, z1, out=out.get("q"))
    grad = torch.addmm(torch.addmm(b.unsqueeze(1), AtA, s), K0.t(), q, out=out.get("grad"))
    # trace = t_0 + t_1 + tr((A^T A)[:d, :d]):  t_0 = bsq . (e0 z1),  t_1 = sum_j c1_j sq_j with
    # sq_j = sum_l P_lj^2, P = W g0 (d, m, n); e_i = 1 - g_i^2, c1 = e1 w, bsq_j = |B_j|^2
    e0 = one_minus_square(g0, out.get("e0"))
    e0z1 = torch.mul(e0, z1, out=out.get("e0z1"))
    e1 = one_minus_square(g1, out.get("e1"))
    c1 = torch.mul(e1, wc, out=out.get("c1"))
    sq = WtC = None
    for rows in feature_chunks(d, m, n, block):
        buffer = None if work is None else work.blocks(rows.stop - rows.start, n)
        Pc = torch.mm(W[rows], g0, out=buffer).view(-1, m, n)
        if sq is None:
            sq = torch.linalg.vecdot(Pc, Pc, dim=0, out=out.get("sq"))
        else:
            sq.add_(torch.linalg.vecdot(Pc, Pc, dim=0))
        if work is not None:
            C = Pc.mul_(c1).view(-1, n)
            if WtC is None:
                WtC = torch.mm(W[rows].t(), C, out=out.get("WtC"))
            else:
                WtC.addmm_(W[rows].t(), C)
            work.sum[rows].addmm_(C, g0.t(), alpha=work.weight)
            work.used = True
    if small:
        saved = (g0, e0, g1, e1, c1, u0, y1, z1, q, e0z1, WtC)
    else:
        saved = (a0, None, g1, None, None, None, None, z1, None, None, WtC)
    trace = torch.addmv((c1 * sq).sum(0), e0z1.t(), bsq) + trace_AtA
    return grad, trace, (s, K0, w, AtA, K, W, *saved, sq, bsq)


def backward(d: int, h: float, gd: torch.dtype, saved, G: Tensor, G_tr: Tensor, need_s: bool, w_done=False):
    """Gradients of ``<G, grad> + <G_tr, trace>``: with respect to ``s`` (``None`` unless ``need_s``),
    the weights and the prepared quantities ``(AtA, bsq, W)``. ``w_done``: the caller has the
    gradient with respect to :math:`W` from the forward pass (see :func:`forward`)."""
    s, K0, w, AtA, K, W, g0, e0, g1, e1, c1, u0, y1, z1, q, e0z1, WtC, sq, bsq = saved
    m, n = K0.shape[0], s.shape[1]
    wc, Gt = w.unsqueeze(1), G_tr.unsqueeze(0)
    if e0 is None:  # the large-block path kept only what these are made of
        g0, u0 = torch.tanh(g0), log_cosh(g0)  # from a_0
        e0, e1 = 1.0 - g0 * g0, 1.0 - g1 * g1
        c1, y1, q, e0z1 = e1 * wc, g1 * wc, g0 * z1, e0 * z1
    # t_1 = sum_j c1_j sq_j, sq_j = sum_l P_lj^2, P = W g0: the gradient with respect to P is C P
    G_c1 = sq * Gt
    G_W = None
    if WtC is not None and w_done:  # see forward
        G_g0 = 2.0 * WtC * Gt
    else:  # the blocks again, a few features at a time, as the forward pass computed them
        C = 2.0 * c1 * Gt
        G_W, G_g0 = torch.empty_like(W), torch.zeros_like(g0)
        for rows in feature_chunks(d, m, n, base.BLOCK):
            G_P = (W[rows] @ g0).view(-1, m, n).mul_(C).view(-1, n)
            torch.mm(G_P, g0.t(), out=G_W[rows])
            G_g0.addmm_(W[rows].t(), G_P)
    # t_0 = bsq . (e0 z1), e0 = 1 - g0^2
    bG = bsq.unsqueeze(1) * Gt
    G_bsq = e0z1 @ G_tr
    # grad = A^T A s + b + K_0^T q, q = g_0 z_1
    G_K0 = q @ G.t()
    G_q = K0 @ G
    G_z1 = torch.addcmul(G_q * g0, bG, e0)
    G_g0 = torch.addcmul(G_g0, z1, torch.addcmul(G_q, g0, bG, value=-2.0))
    # z_1 = w + K^T y_1, y_1 = g_1 w;  c1 = (1 - g_1^2) w
    v = K @ G_z1
    G_K = y1 @ G_z1.t()
    G_w = torch.addcmul(torch.addcmul(G_z1, v, g1), e1, G_c1).sum(1)
    # a_1 = K u_0 + b_1, g_1 = tanh(a_1)
    G_a1 = torch.addcmul(v, g1, G_c1, value=-2.0) * wc * e1
    G_K = torch.addmm(G_K, G_a1, u0.t())
    # a_0 = K_0 s + b_0, u_0 = log_cosh(a_0), g_0 = tanh(a_0)
    G_a0 = torch.addcmul(G_g0 * e0, K.t() @ G_a1, g0)
    G_K0 = torch.addmm(G_K0, G_a0, s.t())
    # A^T A s in grad, tr((A^T A)[:d, :d]) in the trace
    G_AtA = G @ s.t()
    G_AtA.diagonal()[:d] += G_tr.sum()
    G_s = torch.addmm(AtA @ G, K0.t(), G_a0) if need_s else None
    return G_s, [G_K0, G_a0.sum(1), G_w, None, G.sum(1), G_K, G_a1.sum(1)], (G_AtA, G_bsq, G_W)
