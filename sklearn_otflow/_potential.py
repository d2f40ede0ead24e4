r"""The OT-Flow potential and its exact gradient and spatial Hessian trace.

The potential of a sample :math:`s = (x, t) \in \mathbb{R}^{d+1}` (time last) is

.. math::

    \Phi(s) = w^\top N(s) + \tfrac12 s^\top A^\top A s + b^\top s + c,

with :math:`N` a residual network of width :math:`m` and :math:`M` residual layers,

.. math::

    u_0 = \sigma(K_0 s + b_0), \qquad
    u_i = u_{i-1} + h\,\sigma(K_i u_{i-1} + b_i), \quad h = 1/M, \qquad N(s) = u_M,

and the activation :math:`\sigma(u) = \log(2\cosh u)`, so :math:`\sigma' = \tanh` and
:math:`\sigma'' = 1 - \tanh^2`.

:meth:`Potential.grad_and_trace` returns :math:`\nabla_s \Phi` and :math:`\operatorname{tr}\nabla_x^2\Phi`
computed by a hand-written backward sweep (OT-Flow, Onken et al. 2021, section 3), in one pass of dense
matrix products and with no autograd inside. Training differentiates *through* the result (mixed
second derivatives of :math:`\Phi`); that chain rule is written out too (:func:`grad_trace_backward`),
so each call is one autograd node, and its backward recomputes the :math:`m \times d` Jacobian blocks
instead of storing them. With one residual layer and one block of samples, :func:`_one_layer_forward`
spells the same formulas out in fewer operations: at small :math:`d` a training step is bound by the
number of operations, not their size (a make_moons step took 18.5 ms, against 29 ms with autograd's nodes).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Potential", "log_cosh"]


def log_cosh(u: Tensor) -> Tensor:
    r"""Overflow-safe :math:`\sigma(u) = \log(2\cosh u) = u + \log(1 + e^{-2u})` (softplus).

    >>> log_cosh(torch.tensor([0.0, 1000.0])).tolist()
    [0.6931471824645996, 1000.0]
    """
    return u + F.softplus(-2.0 * u, threshold=40.0)  # exact to double precision: e^-40 < 1e-17


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


def _chunks(n: int, m: int, d: int, block: int | None = None) -> list[slice]:
    """Sample slices small enough that one (m, d, chunk) block has at most ``block`` entries."""
    step = max(1, (block or _BLOCK) // (m * d))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]


# Entries of one (m, d, chunk) block: cache-sized transients keep the allocator from fragmenting the heap.
_BLOCK = 1 << 20
# Without autograd (evaluation), blocks of 1 MiB stay in the L2 cache: about 1.5 times the rows per
# second of _BLOCK in float64 at d=10, m=32 (docs/benchmarks.md, "Scale"). Training keeps _BLOCK, whose
# chunks also serve the backward pass.
_EVAL_BLOCK_BYTES = 1 << 20
# Largest (m, d, n) block for which one residual layer takes _one_layer_forward, which keeps two such
# blocks per RK4 stage for its backward (at most 64 MB over a float32 training step of 32 stages).
_ONE_LAYER_BLOCK = 1 << 18


def _block_entries(gemm_dtype: torch.dtype) -> int:
    """Entries per (m, d, chunk) block: ``_BLOCK`` when autograd records (training), else 1 MiB."""
    return _BLOCK if torch.is_grad_enabled() else _EVAL_BLOCK_BYTES // gemm_dtype.itemsize


def _trace_forward(
    h: float, gemm_dtype: torch.dtype, block: int, g0: Tensor, z1: Tensor, B: Tensor, Ks, ss, zs
) -> tuple[Tensor, list[Tensor]]:
    r"""The network's share of the spatial Hessian trace, :math:`t_0 + h \sum_i t_i`, and the row norms.

    :math:`t_0 = \sum_j (1 - g_{0,j}^2) z_{1,j} \|B_j\|^2` and
    :math:`t_i = \sum_{j,l} c_{i,j} (K_i J_{i-1})_{jl}^2` with :math:`c_i = (1 - s_i^2) z_{i+1}`.
    Inputs, samples last: ``g0 = tanh(a_0)`` (m, n), ``z1`` (m, n), ``B`` the first d columns of
    :math:`K_0` (m, d), then the lists ``Ks`` of :math:`K_i` (m, m), ``ss`` of :math:`s_i = \tanh(a_i)`
    and ``zs`` of :math:`z_{i+1}` (m, n). Returns the trace (n,) and the (m, n) squared row norms
    :math:`\sum_l (K_i J_{i-1})_{jl}^2`, which :func:`_trace_vjp` reuses. The (m, d, n) blocks exist
    one chunk of samples (``block`` entries) at a time, in ``gemm_dtype``.
    """
    sqs = []
    for sl in _chunks(g0.shape[1], *B.shape, block):
        _, Ps = _jacobian_chain(h, g0[:, sl], B, Ks, [s[:, sl] for s in ss], gemm_dtype)
        sqs.append([_sq_norms(P, g0.dtype) for P in Ps])
    sqs = [sq[0] if len(sq) == 1 else torch.cat(sq, 1) for sq in zip(*sqs)]
    tr = (B * B).sum(1) @ ((1.0 - g0 * g0) * z1)
    for s, z, sq in zip(ss, zs, sqs):
        tr = tr + h * (((1.0 - s * s) * z) * sq).sum(0)
    return tr, sqs


def _trace_vjp(h: float, gd: torch.dtype, g0, z1, B, Ks, ss, zs, sqs, grad_tr: Tensor):
    """The trace's vector-Jacobian product: gradients with respect to g0, z1, B, Ks, ss and zs.

    Memory stays O(m n): the (m, d, n) blocks are recomputed chunk by chunk, one product per layer.
    """
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

    for sl in _chunks(g0.shape[1], m, d):
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


def prepare(d: int, params: tuple[Tensor, ...]) -> tuple[Tensor, Tensor, Tensor]:
    r"""What :func:`grad_trace_forward` needs of the parameters alone: :math:`A^\top A`,
    :math:`\operatorname{tr}((A^\top A)_{1:d,1:d})` and the squared row norms of :math:`B = (K_0)_{:, 1:d}`.

    An integration computes them once for all its RK4 stages.
    """
    K0, A = params[0], params[3]
    AtA = A.t() @ A
    B = K0[:, :d]
    return AtA, torch.diagonal(AtA)[:d].sum(), (B * B).sum(1)


def grad_trace_forward(
    d: int,
    h: float,
    gd: torch.dtype,
    block: int,
    s: Tensor,
    params: tuple[Tensor, ...],
    prepared: tuple[Tensor, Tensor, Tensor] | None = None,
):
    r""":math:`\nabla_s\Phi` (d + 1, n) and the trace (n,) at ``s`` (d + 1, n), samples last, and what
    :func:`grad_trace_backward` needs. ``params`` is ``(K0, b0, w, A, b, K_1..K_M, b_1..b_M)``;
    ``prepared`` is :func:`prepare`'s result for them (computed here if ``None``).

    No autograd inside: the nodes that train through this (:class:`_GradTrace` here, the dynamics'
    field in :mod:`~sklearn_otflow._dynamics`) call :func:`grad_trace_backward` for their backward.
    Autograd would record the forward's operations as some 80 graph nodes per call and differentiate
    each; written out, the mixed second derivatives of :math:`\Phi` are one node, which saves only
    (m, n) activations.
    """
    K0, b0, w, A, b, *layers = params
    M = len(layers) // 2
    prepared = prepared or prepare(d, params)
    if M == 1 and gd == s.dtype and K0.shape[0] * d * s.shape[1] <= min(block, _ONE_LAYER_BLOCK):
        return _one_layer_forward(d, s, params, prepared)
    Ks, bs = layers[:M], layers[M:]
    a0 = torch.addmm(b0.unsqueeze(1), K0, s)
    g0 = torch.tanh(a0)
    u = log_cosh(a0)
    us, gs = [u], []  # u_0..u_{M-1}; s_i = tanh(a_i), i = 1..M
    for i, (K, bi) in enumerate(zip(Ks, bs)):
        a = torch.addmm(bi.unsqueeze(1), K, u)
        gs.append(torch.tanh(a))
        if i + 1 < M:
            u = u + h * log_cosh(a)
            us.append(u)
    # backward sweep z_i = z_{i+1} + h K_i^T (s_i * z_{i+1}), from z_{M+1} = w
    z = w.unsqueeze(1).expand(-1, s.shape[1])
    zs = [z]
    for K, g in zip(reversed(Ks), reversed(gs)):
        z = torch.addmm(z, K.t(), g * z, alpha=h)
        zs.append(z)
    zs.reverse()  # zs[i] = z_{i+1}, i = 0..M
    AtA, trace_AtA, _ = prepared
    grad = torch.addmm(torch.addmm(b.unsqueeze(1), AtA, s), K0.t(), g0 * zs[0])
    trace, sqs = _trace_forward(h, gd, block, g0, zs[0], K0[:, :d], Ks, gs, zs[1:])
    trace = trace + trace_AtA
    return grad, trace, (s, K0, w, A, AtA, g0, *Ks, *gs, *us, *zs[:-1], *sqs)


def grad_trace_backward(
    d: int, h: float, gd: torch.dtype, saved, G: Tensor, G_tr: Tensor, need_s: bool = True
):
    """Gradients of ``<G, grad> + <G_tr, trace>``.

    Returns ``(G_s or None, G_K0, G_b0, G_w, G_A, G_b, *G_K, *G_bi)``, the order of ``(s, *params)``.
    """
    if saved[0] is None:
        return _one_layer_backward(d, saved[1:], G, G_tr, need_s)
    s, K0, w, A, AtA, g0, *rest = saved
    M = len(rest) // 5
    Ks, gs, us, zs, sqs = (list(rest[i * M : (i + 1) * M]) for i in range(5))
    zs.append(w.unsqueeze(1).expand(-1, s.shape[1]))  # zs[i] = z_{i+1}, i = 0..M
    # trace_net(g0, z_1, B, K_i, s_i, z_{i+1})
    B = K0[:, :d]
    G_g0, G_z1, G_B, G_K, G_g, G_zt = _trace_vjp(h, gd, g0, zs[0], B, Ks, gs, zs[1:], sqs, G_tr)
    G_z = [G_z1, *G_zt]  # G_z[i]: gradient with respect to z_{i+1}
    # grad = A^T A s + b + K_0^T q, q = g_0 z_1
    G_K0 = (g0 * zs[0]) @ G.t()
    G_K0[:, :d] += G_B
    G_q = K0 @ G
    G_g0 = G_g0 + G_q * zs[0]
    G_z[0] = G_z[0] + G_q * g0
    # z_i = z_{i+1} + h K_i^T (s_i z_{i+1}), i = 1..M
    for i in range(M):
        v = Ks[i] @ G_z[i]
        G_K[i] += h * ((gs[i] * zs[i + 1]) @ G_z[i].t())
        G_z[i + 1] = G_z[i + 1] + G_z[i] + h * v * gs[i]
        G_g[i] = G_g[i] + h * v * zs[i + 1]
    G_w = G_z[M].sum(1)
    # a_i = K_i u_{i-1} + b_i, s_i = tanh(a_i), u_i = u_{i-1} + h log_cosh(a_i) (i < M)
    G_b, G_u = [], None
    for i in reversed(range(M)):
        G_a = G_g[i] * (1.0 - gs[i] * gs[i])
        if G_u is not None:
            G_a = G_a + h * G_u * gs[i]
        G_K[i] += G_a @ us[i].t()
        G_b.append(G_a.sum(1))
        G_u = Ks[i].t() @ G_a if G_u is None else G_u + Ks[i].t() @ G_a
    G_b.reverse()
    # a_0 = K_0 s + b_0, u_0 = log_cosh(a_0), g_0 = tanh(a_0)
    G_a0 = G_g0 * (1.0 - g0 * g0) + G_u * g0
    G_K0 += G_a0 @ s.t()
    # the quadratic's A^T A s in grad, tr((A^T A)[:d, :d]) in the trace
    G_AtA = G @ s.t()
    G_AtA.diagonal()[:d] += G_tr.sum()
    G_A = A @ (G_AtA + G_AtA.t())
    G_s = torch.addmm(AtA @ G, K0.t(), G_a0) if need_s else None
    return (G_s, G_K0, G_a0.sum(1), G_w, G_A, G.sum(1), *G_K, *G_b)


def _one_layer_forward(d: int, s: Tensor, params: tuple[Tensor, ...], prepared: tuple[Tensor, ...]):
    r""":func:`grad_trace_forward` for :math:`M = 1` (so :math:`h = 1`) in one exact block of samples.

    The same formulas with fewer operations: training at small :math:`d` is bound by the number of
    tensor operations per RK4 stage, not by their size, and this path spells out the single residual
    layer (:math:`z_2 = w`) without the chunk loop and the lists. ``saved`` starts with ``None`` to
    mark it.
    """
    K0, b0, w, A, b, K, b1 = params
    m, n = K0.shape[0], s.shape[1]
    a0 = torch.addmm(b0.unsqueeze(1), K0, s)
    g0 = torch.tanh(a0)
    u0 = log_cosh(a0)
    g1 = torch.tanh(torch.addmm(b1.unsqueeze(1), K, u0))
    wc = w.unsqueeze(1)
    y1 = g1 * wc
    z1 = torch.addmm(wc, K.t(), y1)  # z_1 = w + K^T (s_1 w)
    q = g0 * z1
    AtA, trace_AtA, bsq = prepared
    grad = torch.addmm(torch.addmm(b.unsqueeze(1), AtA, s), K0.t(), q)
    # trace = t_0 + t_1 + tr((A^T A)[:d, :d]):  t_0 = bsq . (e0 z1),  t_1 = sum_j c1_j |(K J_0)_j|^2,
    # e_i = 1 - g_i^2, c1 = e1 w, bsq_j = |B_j|^2, J_0 = B g_0 (m, d, n)
    B = K0[:, :d]
    J0 = B.unsqueeze(2) * g0.unsqueeze(1)
    P = (K @ J0.view(m, d * n)).view(m, d, n)
    sq = torch.linalg.vecdot(P, P, dim=1)
    e0 = 1.0 - g0 * g0
    e0z1 = e0 * z1
    e1 = 1.0 - g1 * g1
    c1 = e1 * wc
    trace = torch.addmv((c1 * sq).sum(0), e0z1.t(), bsq) + trace_AtA
    return grad, trace, (None, s, K0, w, A, AtA, K, g0, e0, g1, e1, c1, u0, y1, z1, q, e0z1, J0, P, sq, bsq)


def _one_layer_backward(d: int, saved, G: Tensor, G_tr: Tensor, need_s: bool):
    """:func:`grad_trace_backward` for :func:`_one_layer_forward`."""
    s, K0, w, A, AtA, K, g0, e0, g1, e1, c1, u0, y1, z1, q, e0z1, J0, P, sq, bsq = saved
    m, n = K0.shape[0], s.shape[1]
    wc, B, Gt = w.unsqueeze(1), K0[:, :d], G_tr.unsqueeze(0)
    # t_1 = sum_j c1_j sq_j, sq_j = sum_l P_jl^2, P = K J_0
    G_c1 = sq * Gt
    G_P = (P * (2.0 * c1 * Gt).unsqueeze(1)).view(m, d * n)
    G_K = G_P @ J0.view(m, d * n).t()
    G_J0 = (K.t() @ G_P).view(m, d, n)
    G_B = torch.bmm(G_J0, g0.unsqueeze(2)).squeeze(2)
    # t_0 = bsq . (e0 z1), e0 = 1 - g0^2
    bG = bsq.unsqueeze(1) * Gt
    G_B += 2.0 * B * (e0z1 @ G_tr).unsqueeze(1)
    # grad = A^T A s + b + K_0^T q, q = g_0 z_1
    G_K0 = q @ G.t()
    G_K0[:, :d] += G_B
    G_q = K0 @ G
    G_z1 = torch.addcmul(G_q * g0, bG, e0)
    G_g0 = torch.linalg.vecdot(G_J0, B.unsqueeze(2), dim=1)
    G_g0 = torch.addcmul(G_g0, z1, torch.addcmul(G_q, g0, bG, value=-2.0))
    # z_1 = w + K^T y_1, y_1 = g_1 w;  c1 = (1 - g_1^2) w
    v = K @ G_z1
    G_K = torch.addmm(G_K, y1, G_z1.t())
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
    G_A = A @ (G_AtA + G_AtA.t())
    G_s = torch.addmm(AtA @ G, K0.t(), G_a0) if need_s else None
    return (G_s, G_K0, G_a0.sum(1), G_w, G_A, G.sum(1), G_K, G_a1.sum(1))


class _GradTrace(torch.autograd.Function):
    """``(grad, trace)`` of :meth:`Potential.grad_and_trace` as one autograd node, samples last.

    Inputs: ``d``, ``h``, ``gemm_dtype``, ``block``, ``s`` (d + 1, n), then the parameters as in
    :func:`grad_trace_forward`.
    """

    @staticmethod
    def forward(ctx, d: int, h: float, gd: torch.dtype, block: int, s: Tensor, *params: Tensor):
        grad, trace, saved = grad_trace_forward(d, h, gd, block, s, params)
        ctx.d, ctx.h, ctx.gd = d, h, gd
        ctx.save_for_backward(*saved)
        return grad, trace

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G: Tensor, G_tr: Tensor):
        grads = grad_trace_backward(ctx.d, ctx.h, ctx.gd, ctx.saved_tensors, G, G_tr, ctx.needs_input_grad[4])
        return (None,) * 4 + grads


class Potential(nn.Module):
    r"""The OT-Flow potential :math:`\Phi(x, t)` with its exact gradient and Hessian trace.

    Parameters
    ----------
    n_features : int
        Dimension :math:`d` of :math:`x`.
    width : int, default=32
        Width :math:`m` of the residual network.
    n_layers : int, default=1
        Number :math:`M \geq 1` of residual layers (each initialised independently).
    rank : int, default=10
        Rank of :math:`A`; capped at :math:`d + 1`.

    Examples
    --------
    >>> phi = Potential(2, width=8, n_layers=2)
    >>> x = torch.randn(5, 2)
    >>> phi(x, 0.5).shape
    torch.Size([5])
    >>> grad, trace = phi.grad_and_trace(x, 0.5)
    >>> grad.shape, trace.shape
    (torch.Size([5, 3]), torch.Size([5]))
    """

    def __init__(self, n_features: int, width: int = 32, n_layers: int = 1, rank: int = 10) -> None:
        super().__init__()
        if n_features < 1 or width < 1 or n_layers < 1 or rank < 1:
            raise ValueError(
                "Expected n_features, width, n_layers and rank all >= 1; got "
                f"{n_features}, {width}, {n_layers}, {rank}."
            )
        d = n_features
        self.n_features, self.width, self.n_layers = d, width, n_layers
        self.h = 1.0 / n_layers
        self.opening = nn.Linear(d + 1, width)  # K_0, b_0
        self.layers = nn.ModuleList(nn.Linear(width, width) for _ in range(n_layers))  # K_i, b_i
        self.A = nn.Parameter(torch.empty(min(rank, d + 1), d + 1))
        nn.init.xavier_uniform_(self.A)
        self.b = nn.Parameter(torch.zeros(d + 1))
        self.c = nn.Parameter(torch.zeros(()))
        # w = 0: the network starts switched off and the first flow is the quadratic's linear one. The
        # reference code's w = 1 starts from a random nonlinear flow, worse than the identity on
        # standardized data, out of which training fell to the identity and stayed (8gaussians, digits)
        self.w = nn.Parameter(torch.zeros(width))

    def _s(self, x: Tensor, t: float | Tensor) -> Tensor:
        t = torch.as_tensor(t, dtype=x.dtype, device=x.device).expand(x.shape[0], 1)
        return torch.cat([x, t], dim=1)

    def forward(self, x: Tensor, t: float | Tensor) -> Tensor:
        r"""The value :math:`\Phi(x, t)`, shape (n,). ``x`` is (n, d); ``t`` a scalar or (n, 1).

        Examples
        --------
        >>> import torch
        >>> from sklearn_otflow import Potential
        >>> Potential(2, width=8)(torch.randn(5, 2), 0.5).shape
        torch.Size([5])
        """
        s = self._s(x, t)
        u = log_cosh(self.opening(s))
        for layer in self.layers:
            u = u + self.h * log_cosh(layer(u))
        quad = 0.5 * ((s @ self.A.t()) ** 2).sum(1)
        return u @ self.w + quad + s @ self.b + self.c

    def grad_and_trace(
        self, x: Tensor, t: float | Tensor, gemm_dtype: torch.dtype | None = None
    ) -> tuple[Tensor, Tensor]:
        r"""Exact :math:`\nabla_s\Phi` and :math:`\operatorname{tr}\nabla_x^2\Phi`, analytic, in one sweep.

        Backward sweep, :math:`z_{M+1} = w`,
        :math:`z_i = z_{i+1} + h K_i^\top(\sigma'(a_i) \odot z_{i+1})`, then
        :math:`\nabla_s\Phi = K_0^\top(\sigma'(a_0) \odot z_1) + A^\top A s + b`. Trace over the first
        :math:`d` coordinates: :math:`t_0 + h\sum_i t_i + \operatorname{tr}((A^\top A)_{1:d,1:d})` with
        :math:`t_0 = \sum_j \sigma''(a_0)_j z_{1,j} \sum_{l \le d} (K_0)_{jl}^2` and
        :math:`t_i = \sum_{j,l} \sigma''(a_i)_j z_{i+1,j} (K_i J_{i-1})_{jl}^2`.

        Parameters
        ----------
        x : Tensor of shape (n, d)
        t : float or Tensor of shape (n, 1)
        gemm_dtype : torch.dtype, default=None
            Precision of the :math:`m \times d` block products (``None``: that of ``x``). A lower one
            such as ``torch.bfloat16`` is for training only; reductions stay in ``x``'s dtype.

        Returns
        -------
        grad : Tensor of shape (n, d + 1)
            :math:`\nabla_s\Phi`; the last column is :math:`\partial_t\Phi`.
        trace : Tensor of shape (n,)
            :math:`\operatorname{tr}\nabla_x^2\Phi`.

        Examples
        --------
        >>> import torch
        >>> from sklearn_otflow import Potential
        >>> grad, trace = Potential(3, width=8).grad_and_trace(torch.randn(5, 3), 0.5)
        >>> grad.shape, trace.shape
        (torch.Size([5, 4]), torch.Size([5]))
        """
        s = self._s(x, t).t()  # samples last throughout: s is (d + 1, n), every activation (m, n)
        gemm_dtype = gemm_dtype or x.dtype
        block = _block_entries(gemm_dtype)
        grad, trace = _GradTrace.apply(
            self.n_features, self.h, gemm_dtype, block, s, *self._flat_parameters()
        )
        return grad.t(), trace

    def _flat_parameters(self) -> tuple[Tensor, ...]:
        """``(K0, b0, w, A, b, K_1..K_M, b_1..b_M)``, the order of :func:`grad_trace_forward`."""
        Ks = [layer.weight for layer in self.layers]
        bs = [layer.bias for layer in self.layers]
        return (self.opening.weight, self.opening.bias, self.w, self.A, self.b, *Ks, *bs)

    def extra_repr(self) -> str:
        sizes = (self.n_features, self.width, self.n_layers, self.A.shape[0])
        return "n_features={}, width={}, n_layers={}, rank={}".format(*sizes)
