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
matrix products and with no autograd inside. Autograd may still differentiate *through* the result
(training); the expensive part, the products with the :math:`m \times d` Jacobian blocks, goes through
:class:`_Trace`, whose backward recomputes those blocks instead of storing them.
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


class _LogCoshTanh(torch.autograd.Function):
    """``(log_cosh(a), tanh(a))`` saving only ``tanh(a)``, which both backward formulas need."""

    @staticmethod
    def forward(ctx, a: Tensor) -> tuple[Tensor, Tensor]:
        g = torch.tanh(a)
        ctx.save_for_backward(g)
        return log_cosh(a), g

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_u: Tensor | None, grad_g: Tensor | None) -> Tensor:
        (g,) = ctx.saved_tensors
        out = torch.zeros_like(g) if grad_u is None else grad_u * g
        return out if grad_g is None else out + grad_g * (1.0 - g * g)


class _Trace(torch.autograd.Function):
    r"""The network's share of the spatial Hessian trace, :math:`t_0 + h \sum_i t_i`.

    :math:`t_0 = \sum_j (1 - g_{0,j}^2) z_{1,j} \|B_j\|^2` and
    :math:`t_i = \sum_{j,l} c_{i,j} (K_i J_{i-1})_{jl}^2` with :math:`c_i = (1 - s_i^2) z_{i+1}`.
    Inputs, samples last: ``g0 = tanh(a_0)`` (m, n), ``z1`` (m, n), ``B`` the first d columns of
    :math:`K_0` (m, d), then the lists ``K_i`` (m, m), ``s_i = tanh(a_i)`` (m, n) and ``z_{i+1}`` (m, n).
    Output: (n,).

    Autograd memory is O(m n): the forward keeps its inputs (which the gradient sweep keeps anyway)
    and the (m, n) row norms; the backward recomputes the (m, d, n) blocks, one product per layer.
    Both run over chunks of samples so that the blocks stay small. ``gemm_dtype`` (e.g.
    ``torch.bfloat16``) holds the blocks and runs their products in that precision; reductions and
    outputs stay in the inputs' dtype.
    """

    @staticmethod
    def forward(
        ctx, h: float, gemm_dtype: torch.dtype, block: int, g0: Tensor, z1: Tensor, B: Tensor, *layers: Tensor
    ):
        M = len(layers) // 3
        Ks, ss, zs = list(layers[:M]), layers[M : 2 * M], layers[2 * M :]
        sqs = [g0.new_empty(g0.shape) for _ in range(M)]
        for sl in _chunks(g0.shape[1], *B.shape, block):
            _, Ps = _jacobian_chain(h, g0[:, sl], B, Ks, [s[:, sl] for s in ss], gemm_dtype)
            for sq, P in zip(sqs, Ps):
                sq[:, sl] = _sq_norms(P, g0.dtype)
        tr = (B * B).sum(1) @ ((1.0 - g0 * g0) * z1)
        for s, z, sq in zip(ss, zs, sqs):
            tr = tr + h * (((1.0 - s * s) * z) * sq).sum(0)
        ctx.h, ctx.gemm_dtype = h, gemm_dtype
        ctx.save_for_backward(g0, z1, B, *layers, *sqs)
        return tr

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_tr: Tensor):
        g0, z1, B, *rest = ctx.saved_tensors
        h, gd, dtype = ctx.h, ctx.gemm_dtype, g0.dtype
        M = len(rest) // 4
        Ks, ss, zs, sqs = rest[:M], rest[M : 2 * M], rest[2 * M : 3 * M], rest[3 * M :]
        m, d = B.shape
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

        grads = (grad_g0, grad_z1, grad_B, *grad_K, *grad_s, *grad_z)
        return (None, None, None, *(g if ok else None for g, ok in zip(grads, ctx.needs_input_grad[3:])))


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
        d, h, n = self.n_features, self.h, x.shape[0]
        # samples last throughout: every activation is (m, n), s is (d + 1, n)
        s = self._s(x, t).t()
        K0 = self.opening.weight
        u, g0 = _LogCoshTanh.apply(torch.addmm(self.opening.bias.unsqueeze(1), K0, s))
        pre = []  # tanh(a_i), i = 1..M
        for i, layer in enumerate(self.layers):
            a = torch.addmm(layer.bias.unsqueeze(1), layer.weight, u)
            if i + 1 < len(self.layers):
                sigma, g = _LogCoshTanh.apply(a)
                u = u + h * sigma
            else:
                g = torch.tanh(a)
            pre.append(g)
        # backward sweep z_i = z_{i+1} + h K_i^T (tanh(a_i) * z_{i+1}), from z_{M+1} = w
        z = self.w.unsqueeze(1).expand(-1, n)
        zs = [z]
        for layer, g in zip(reversed(self.layers), reversed(pre)):
            z = torch.addmm(z, layer.weight.t(), g * z, alpha=h)
            zs.append(z)
        zs.reverse()  # zs[i] = z_{i+1}, i = 0..M
        AtA = self.A.t() @ self.A
        grad = torch.addmm(self.b.unsqueeze(1), AtA, s) + K0.t() @ (g0 * zs[0])
        Ks = [layer.weight for layer in self.layers]
        gemm_dtype = gemm_dtype or x.dtype
        block = _BLOCK if torch.is_grad_enabled() else _EVAL_BLOCK_BYTES // gemm_dtype.itemsize
        trace = _Trace.apply(h, gemm_dtype, block, g0, zs[0], K0[:, :d], *Ks, *pre, *zs[1:])
        trace = trace + torch.diagonal(AtA)[:d].sum()
        return grad.t(), trace

    def extra_repr(self) -> str:
        sizes = (self.n_features, self.width, self.n_layers, self.A.shape[0])
        return "n_features={}, width={}, n_layers={}, rank={}".format(*sizes)
