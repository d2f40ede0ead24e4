r"""The exact gradient and spatial Hessian trace of the potential, in one analytic sweep.

For :math:`\Phi(s) = w^\top N(s) + \tfrac12 s^\top A^\top A s + b^\top s + c` (:mod:`.base`), the
backward sweep :math:`z_{M+1} = w`, :math:`z_i = z_{i+1} + h K_i^\top(\sigma'(a_i) \odot z_{i+1})` gives
:math:`\nabla_s\Phi = K_0^\top(\sigma'(a_0) \odot z_1) + A^\top A s + b`, and the trace over the
first :math:`d` coordinates is :math:`t_0 + h\sum_i t_i + \operatorname{tr}((A^\top A)_{1:d,1:d})`
(:mod:`.general`; OT-Flow, Onken et al. 2021, section 3). No autograd runs inside: training
differentiates *through* the result (mixed second derivatives of :math:`\Phi`), and that chain rule is
written out too, each path a ``forward`` and its ``backward``.

The paths compute the same quantities:

* :mod:`.general`: any number of layers and block precision, blocks recomputed in chunks;
* :mod:`.one_layer`: one residual layer, blocks as products with one matrix of the weights. It stays
  because it pays at the defaults above two features (benchmarks page, "The defaults and why").

:func:`choose` is the one place that picks a path; :class:`Tracer` runs one integration's worth of
them (shared parameter-only quantities, scratch memory, summed gradients), and :func:`grad_and_trace`
one call as one autograd node.
"""

from __future__ import annotations

from types import ModuleType
from typing import NamedTuple

import torch
from torch import Tensor

from . import general, one_layer
from .base import Weights, add_grads, block_entries, log_cosh
from .scratch import TraceWork, reuse_scratch

__all__ = ["Tracer", "Weights", "block_entries", "grad_and_trace", "log_cosh", "reuse_scratch"]


def choose(d: int, p: Weights, exact: bool) -> ModuleType:
    """The trace path: :mod:`.one_layer` where it applies (``exact``: the blocks in the weights'
    precision), else :mod:`.general`."""
    return one_layer if one_layer.applies(d, p, exact) else general


class Prepared(NamedTuple):
    r"""What the paths need of the weights alone, the same at every RK4 stage: :math:`A^\top A`, the
    trace of its first :math:`d` diagonal entries, the squared row norms of :math:`B = (K_0)_{:, 1:d}`
    and, on the one-layer path, its matrix :math:`W` (``None`` otherwise)."""

    AtA: Tensor
    trace_AtA: Tensor
    bsq: Tensor
    W: Tensor | None


def prepare(d: int, p: Weights, path: ModuleType, W_out: Tensor | None = None) -> Prepared:
    """:class:`Prepared` for ``path``; ``W_out``: where to write :math:`W` (a :class:`TraceWork`'s)."""
    AtA = p.A.t() @ p.A
    B = p.K0[:, :d]
    W = one_layer.weights_matrix(d, p, W_out) if path is one_layer else None
    return Prepared(AtA, torch.diagonal(AtA)[:d].sum(), (B * B).sum(1), W)


def prepare_vjp(d: int, p: Weights, G_AtA: Tensor, G_bsq, G_W, w_scale: float = 1.0) -> list:
    r"""Gradients, in :meth:`Weights.flat` order (``None`` where there is none), of
    :math:`\langle G_{A^\top A}, A^\top A\rangle + \langle G_{bsq}, bsq\rangle + \langle G_W, W\rangle`
    (the trace of :math:`A^\top A` is a sum of its entries, whose gradient the caller adds to
    ``G_AtA``)."""
    grads = p.grads(A=p.A @ (G_AtA + G_AtA.t()))
    if G_bsq is None and G_W is None:
        return grads
    B, G_K0 = p.K0[:, :d], torch.zeros_like(p.K0)
    if G_bsq is not None:
        G_K0[:, :d] = 2.0 * B * G_bsq.unsqueeze(1)
    if G_W is not None:
        grads[5] = one_layer.weights_matrix_vjp(d, p, G_W, G_K0, w_scale)
    grads[0] = G_K0
    return grads


def _scratch(path: ModuleType, p: Weights, n: int, n_stages: int, block: int):
    """The :class:`TraceWork` that ``path`` keeps its stages in, or ``None`` (:mod:`.general`)."""
    if path is not one_layer:
        return None
    (m, s_rows), d = p.K0.shape, p.d
    rows = one_layer.feature_chunks(d, m, n, block)[0].stop  # the first chunk is the largest
    n_acts = 12 if m * d * n <= one_layer.SMALL_BLOCK else 5
    matrix = (d * m, m)
    return TraceWork(s_rows, m, n, n_stages, p.K0, n_acts, matrix_shape=matrix, block_entries=rows * n)


class Tracer:
    r""":math:`\nabla_s\Phi` and the trace at every stage of one integration over ``n`` samples, and
    the chain rule back through them.

    The parameter-only quantities (:class:`Prepared`) are computed once; in ``training`` the stages
    keep their activations in one :class:`TraceWork`. :meth:`backward` takes one stage's gradients back;
    :meth:`weight_grads` sums them up for the weights, once per integration.

    Parameters
    ----------
    p : Weights
        The potential's weights.
    gemm_dtype : torch.dtype
        Precision of the block products (the weights' dtype: exact).
    block : int
        Entries per (m, d, chunk) block (:func:`block_entries`).
    n : int
        Number of samples.
    n_stages : int, default=1
        Number of stages that keep activations in ``training``.
    training : bool, default=False
        Keep the stages in one allocation for a backward pass.
    context : Tensor of shape (n, q) or None, default=None
        The condition :math:`c` of each sample, the same at every stage, for :meth:`stage_input`.
    """

    def __init__(self, p, gemm_dtype, block, n, n_stages=1, training=False, context=None) -> None:
        self.p, self.d, self.h, self.gd, self.block = p, p.d, p.h, gemm_dtype, block
        self.context = None if context is None else context.t()
        self.path = choose(p.d, p, gemm_dtype == p.K0.dtype)
        self.work = _scratch(self.path, p, n, n_stages, block) if training else None
        with torch.no_grad():
            self.prepared = prepare(p.d, p, self.path, None if self.work is None else self.work.W)
        self._grads: list | None = None
        self._grads_prepared: list | None = None

    def stage_input(self, y: Tensor, t: float, weight: float = 1.0) -> Tensor:
        r"""The next stage's input :math:`s = (x, c, t)`, (d + q + 1, n), for the state ``y`` of its n
        samples (its first d columns are :math:`x`) at time ``t``; ``weight`` is the stage's weight in
        the integration's update (see :mod:`.one_layer`)."""
        slots = None if self.work is None else self.work.next_stage()
        if self.work is not None:
            self.work.weight = weight
        s = y.new_empty(self.p.K0.shape[1], y.shape[0]) if slots is None else slots[0]
        s[: self.d] = y[:, : self.d].t()
        if self.context is not None:
            s[self.d : -1] = self.context
        s[-1] = t
        return s

    def forward(self, s: Tensor) -> tuple[Tensor, Tensor, tuple]:
        r""":math:`\nabla_s\Phi` (d + q + 1, n) and the trace (n,) at ``s`` (d + q + 1, n), and what
        :meth:`backward` needs."""
        return self.path.forward(self.d, self.h, self.gd, self.block, s, self.p, self.prepared, self.work)

    @property
    def w_sum(self) -> Tensor | None:
        """The one-layer path's gradient with respect to :math:`W`, summed in the forward pass."""
        return self.work.sum if self.work is not None and self.work.used else None

    def backward(self, saved: tuple, G: Tensor, G_tr: Tensor, need_s: bool, w_done: bool = False):
        """The gradient of ``<G, grad> + <G_tr, trace>`` with respect to ``s`` (``None`` unless
        ``need_s``); the weights' share is added up for :meth:`weight_grads`. ``w_done``: the
        forward pass has summed the one-layer path's :math:`W` gradient up (:attr:`w_sum`)."""
        G_s, grads, grads_prepared = self.path.backward(
            self.d, self.h, self.gd, saved, G, G_tr, need_s, w_done
        )
        if self._grads is None:
            self._grads, self._grads_prepared = grads, list(grads_prepared)
        else:
            add_grads(self._grads, grads)
            add_grads(self._grads_prepared, grads_prepared)
        return G_s

    def weight_grads(self, w_done: bool = False, w_scale: float = 1.0) -> list:
        """The weights' gradients (:meth:`Weights.flat` order) summed over the stages taken back since
        the last call; with ``w_done``, :attr:`w_sum` times ``w_scale`` stands for the :math:`W`
        gradient."""
        grads, prepared = self._grads, self._grads_prepared
        self._grads = self._grads_prepared = None
        if w_done:  # no stage added a G_W
            prepared[2] = self.w_sum
        return add_grads(grads, prepare_vjp(self.d, self.p, *prepared, w_scale=w_scale))

    def release(self) -> None:
        """Hands the scratch memory on (:func:`reuse_scratch`); the tracer is done. Its prepared
        quantities go too: on the one-layer path :math:`W` is a view of the scratch, which would
        otherwise stay allocated as long as the autograd graph that holds the tracer."""
        if self.work is not None:
            self.work.release()
        self.work = self.prepared = None


class _GradTrace(torch.autograd.Function):
    """``(grad, trace)`` of one :class:`Tracer` stage as one autograd node, samples last."""

    @staticmethod
    def forward(ctx, tracer: Tracer, s: Tensor, *flat: Tensor):
        grad, trace, saved = tracer.forward(s)
        ctx.tracer, ctx.n_flat = tracer, len(flat)
        ctx.save_for_backward(*saved, *flat)
        return grad, trace

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G: Tensor, G_tr: Tensor):
        saved = ctx.saved_tensors[: -ctx.n_flat]
        G_s = ctx.tracer.backward(saved, G, G_tr, ctx.needs_input_grad[1])
        return (None, G_s, *ctx.tracer.weight_grads())


def grad_and_trace(p: Weights, s: Tensor, gemm_dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    r""":math:`\nabla_s\Phi` (d + q + 1, n) and :math:`\operatorname{tr}\nabla_x^2\Phi` (n,) at ``s``
    (d + q + 1, n), samples last, as one autograd node."""
    tracer = Tracer(p, gemm_dtype, block_entries(gemm_dtype), s.shape[1])
    return _GradTrace.apply(tracer, s, *p.flat())
