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
instead of storing them. With one residual layer, :func:`_one_layer_forward` spells the same formulas
out in fewer operations, with the blocks as products of one (d m, m) matrix of the weights, and in
training it sums their gradient up in the forward pass: three large products per RK4 stage instead of
four, and at small :math:`d`, where a step is bound by the number of operations rather than their size,
fewer operations (docs: benchmarks). With several layers and small blocks, :func:`_deep_forward` keeps
the blocks for the backward pass and runs 0.7 times the general path's operations. The two share
the activations, the sweep for :math:`z_i` and :math:`\nabla\Phi` (:func:`_forward_prefix`) and
the backward pass through them (:func:`_backward_tail`).
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["Potential", "log_cosh"]


def log_cosh(u: Tensor, out: Tensor | None = None) -> Tensor:
    r"""Overflow-safe :math:`\sigma(u) = \log(2\cosh u) = u + \log(1 + e^{-2u})` (softplus), into
    ``out`` if given.

    >>> log_cosh(torch.tensor([0.0, 1000.0])).tolist()
    [0.6931471824645996, 1000.0]
    """
    # exact to double precision: e^-40 < 1e-17
    return torch.add(u, F.softplus(-2.0 * u, threshold=40.0), out=out)


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
# Largest (d, m, n) block for which _one_layer_forward keeps all its (m, n) activations for the backward
# pass (12 per stage); above, only the 5 it cannot cheaply recompute.
_ONE_LAYER_BLOCK = 1 << 18
# Largest (m, d, n) block for which several residual layers take _deep_forward, which keeps the M blocks
# P_i of each stage for the backward pass instead of computing them again. Two layers, one thread: at
# d = 2, width 32, 256 and 512 rows (16 and 32 K entries), 0.70 times the general path's time; at d = 10,
# width 64, 256 rows (160 K), the same time (184 against 182 ms), its larger blocks' memory traffic
# costing what the saved operations gain.
_DEEP_BLOCK = 1 << 16
# Largest d m^2 for which one residual layer takes _one_layer_forward, whose products go through the
# (d m, m) matrix W of prepare() and its gradient (64 MB each in float32 at this size).
_ONE_LAYER_W = 1 << 24


def _feature_chunks(d: int, m: int, n: int, block: int) -> list[slice]:
    """Row slices of :func:`prepare`'s (d m, m) :math:`W`, whole features :math:`l` at a time, whose
    products with (m, n) activations have at most ``block`` entries (at least one feature each)."""
    step = m * max(1, block // (m * n))
    return [slice(i, min(i + step, d * m)) for i in range(0, d * m, step)]


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


def one_layer(d: int, params: tuple[Tensor, ...], exact: bool = True) -> bool:
    """Whether the trace takes :func:`_one_layer_forward` (and :func:`prepare` builds :math:`W`): one
    residual layer, exact blocks, and :math:`d m^2` at most ``_ONE_LAYER_W``."""
    return exact and len(params) == 7 and d * params[0].shape[0] ** 2 <= _ONE_LAYER_W


def prepare(
    d: int, params: tuple[Tensor, ...], exact: bool = True, W_out: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    r"""What :func:`grad_trace_forward` needs of the parameters alone: :math:`A^\top A`,
    :math:`\operatorname{tr}((A^\top A)_{1:d,1:d})`, the squared row norms of :math:`B = (K_0)_{:, 1:d}`
    and, for one residual layer (:func:`_one_layer_forward`), :math:`W` of shape (d m, m) with
    :math:`W_{(l, j), k} = K_{jk} B_{kl}` (``None`` otherwise, and where the blocks are not ``exact``:
    with lower-precision blocks the general path runs).

    An integration computes them once for all its RK4 stages, and :func:`prepare_vjp` takes their
    gradients, summed over the stages, back to the parameters once. ``W_out``: where to write
    :math:`W` (a :class:`TraceWork`'s).
    """
    K0, A = params[0], params[3]
    AtA = A.t() @ A
    B = K0[:, :d]
    W = None
    if one_layer(d, params, exact):
        K = params[5]
        out = K.new_empty(d, *K.shape) if W_out is None else W_out.view(d, *K.shape)
        W = torch.mul(K.unsqueeze(0), B.t().unsqueeze(1), out=out).view(-1, K.shape[1])
    return AtA, torch.diagonal(AtA)[:d].sum(), (B * B).sum(1), W


def prepare_vjp(
    d: int,
    params: tuple[Tensor, ...],
    G_AtA: Tensor,
    G_bsq: Tensor | None,
    G_W: Tensor | None,
    w_scale: float = 1.0,
):
    r"""Gradients, in the order of ``params`` (``None`` where there is none), of
    :math:`\langle G_{A^\top A}, A^\top A\rangle + \langle G_{bsq}, bsq\rangle + \langle G_W, W\rangle`
    for :func:`prepare`'s quantities (the trace of :math:`A^\top A` is a sum of its entries, whose
    gradient the caller adds to ``G_AtA``)."""
    K0, A = params[0], params[3]
    grads: list[Tensor | None] = [None] * len(params)
    grads[3] = A @ (G_AtA + G_AtA.t())
    if G_bsq is None and G_W is None:
        return grads
    B, G_K0 = K0[:, :d], torch.zeros_like(K0)
    if G_bsq is not None:
        G_K0[:, :d] = 2.0 * B * G_bsq.unsqueeze(1)
    if G_W is not None:  # W[l, j, k] = K[j, k] B[k, l], one l at a time (no (d, m, m) temporaries)
        K = params[5]
        G_W = G_W.view(d, *K.shape)
        G_K = torch.zeros_like(K)
        for l in range(d):
            G_K.addcmul_(G_W[l], B[:, l], value=w_scale)
            G_K0[:, l].add_(torch.linalg.vecdot(G_W[l], K, dim=0), alpha=w_scale)
        grads[5] = G_K
    grads[0] = G_K0
    return grads


def deep(d: int, params: tuple[Tensor, ...], n: int, exact: bool = True) -> bool:
    """Whether the trace over ``n`` samples takes :func:`_deep_forward`: several residual layers, exact
    blocks, and (m, d, n) blocks of ``_DEEP_BLOCK`` entries at most."""
    return exact and len(params) > 7 and params[0].shape[0] * d * n <= _DEEP_BLOCK


# TraceWork allocations that training integrations have released, for the next ones to reuse; only
# while reuse_scratch() is active (a fit), and emptied when it ends.
_SPARE: list[Tensor] = []
_SPARE_LOCK = threading.Lock()
_REUSE = 0


@contextlib.contextmanager
def reuse_scratch() -> Iterator[None]:
    """Within this context, each training integration's one allocation (:class:`TraceWork`) goes back
    to a pool after its backward pass, and the next integration of the same size takes it from there
    instead of asking the C library for new memory. Allocations of more than a few tens of MB are
    mapped afresh each time, and the kernel faults their pages in one by one: at d = 10, width 64,
    two layers, 29 000 page faults per training iteration, 40 % of its time. The pool is emptied when
    the outermost context ends."""
    global _REUSE
    with _SPARE_LOCK:
        _REUSE += 1
    try:
        yield
    finally:
        with _SPARE_LOCK:
            _REUSE -= 1
            if not _REUSE:
                _SPARE.clear()


def _aligned(numel: int) -> int:
    """``numel`` rounded up to a multiple of 16 entries (64 bytes in float32)."""
    return -(-numel // 16) * 16


def _take_scratch(numel: int, like: Tensor) -> Tensor:
    """A 1-D tensor of ``numel`` entries like ``like``: a released one of that size if any, else new."""
    with _SPARE_LOCK:
        for i, t in enumerate(_SPARE):
            if t.numel() == numel and t.dtype == like.dtype and t.device == like.device:
                return _SPARE.pop(i)
    return like.new_empty(numel)


class TraceWork:
    r"""Scratch that the ``n_stages`` stages of a training integration over ``n`` samples share, for one
    residual layer (:func:`one_layer`) or for several with small blocks (:func:`deep`).

    For one layer: :func:`prepare`'s :math:`W`, and

    * ``sum``, which accumulates each stage's ``weight`` times the trace's gradient with respect to
      :math:`W`, summed over the samples (see :func:`_one_layer_forward`); ``used`` says whether any
      stage added to it;
    * a buffer for one chunk of a stage's blocks (:meth:`blocks`; ``block`` entries at most, as
      :func:`_feature_chunks` cuts them);
    * what each stage keeps for the backward pass: its input :math:`s` and :math:`\nabla_s\Phi`,
      (d + 1, n) each, and twelve (m, n) activations, or five above ``_ONE_LAYER_BLOCK`` entries
      (:meth:`next_stage`).

    For :math:`M \ge 2` layers (``n_layers``), what each stage keeps: :math:`s`, :math:`\nabla_s\Phi`,
    :math:`4 M + 1` activations and the :math:`M` blocks :math:`P_i` (see :func:`_deep_forward`).

    All are slices of one allocation. Allocated one by one, stage by stage, kept activations and
    transient blocks interleave on the heap and leave holes too small to reuse: at d = 43, width 256,
    512 samples, the C library's heap grew to 1.5 times what was in use at the end of a forward pass
    (2.4 times after the backward pass), and the peak RSS of a training iteration varied by 140 MB
    from run to run. At d = 2, the C library handed the stages' tensors back to the system after each
    backward pass and took them again in the next forward pass, page by page: 5300 page faults per
    iteration with two layers (a quarter of its time), 500 with one; one allocation of the same size
    stays in the heap and is reused.
    """

    def __init__(
        self, d: int, m: int, n: int, n_stages: int, block: int, like: Tensor, n_layers: int = 1
    ) -> None:
        if n_layers == 1:
            rows = _feature_chunks(d, m, n, block)[0].stop  # the first chunk is the largest
            n_acts, n_blocks = (5 if m * d * n > _ONE_LAYER_BLOCK else 12), 0
            scratch = (d * m * m, d * m * m, rows * n)
        else:
            n_acts, n_blocks = 4 * n_layers + 1, n_layers
            scratch = (0, 0, 0)
        # every piece starts 64 bytes (16 entries) in, as a fresh tensor would: the vectorized reductions
        # then round as they do on fresh tensors, and the fits are the same as without this allocation
        self._shapes = [(d + 1, n), (d + 1, n)] + [(m, n)] * n_acts + [(m, d, n)] * n_blocks
        self._pieces = [_aligned(math.prod(shape)) for shape in self._shapes]
        per_stage = sum(self._pieces) if n_acts else 0
        sizes = (*(_aligned(k) for k in scratch), n_stages * per_stage)
        self._buffer = _take_scratch(sum(sizes), like)
        W, S, blocks, kept = self._buffer.split(sizes)
        self.W = self.sum = None
        if n_layers == 1:
            self.W, self.sum = W[: d * m * m].view(d * m, m), S[: d * m * m].view(d * m, m).zero_()
        self.weight, self.used = 1.0, False
        self._blocks = blocks
        self._kept = kept.view(n_stages, per_stage) if per_stage else None
        self._n_acts, self._stage = n_acts, 0
        self.current: tuple[Tensor, Tensor, list[Tensor], list[Tensor]] | None = None

    def next_stage(self) -> tuple[Tensor, Tensor, list[Tensor], list[Tensor]] | None:
        r"""Moves on to the next stage; ``current`` becomes, and this returns, where the stage keeps
        :math:`s` (d + 1, n), :math:`\nabla_s\Phi` (d + 1, n), its (m, n) activations (a list) and its
        (m, d, n) blocks (a list, empty for one layer), or ``None`` once the stages are all used."""
        self.current = None
        if self._kept is not None and self._stage < self._kept.shape[0]:
            pieces = self._kept[self._stage].split(self._pieces)
            views = [p[: math.prod(shape)].view(shape) for p, shape in zip(pieces, self._shapes)]
            k = 2 + self._n_acts
            self.current = (views[0], views[1], views[2:k], views[k:])
            self._stage += 1
        return self.current

    def blocks(self, rows: int, n: int) -> Tensor:
        """A (rows, n) buffer for one chunk of a stage's blocks, the same memory every time."""
        return self._blocks[: rows * n].view(rows, n)

    def release(self) -> None:
        """The integration is done with this memory: within :func:`reuse_scratch`, the next one of
        the same size takes it (at most two are kept). Nothing may use this object afterwards."""
        buffer, self._buffer = self._buffer, None
        self.W = self.sum = self._blocks = self._kept = self.current = None
        with _SPARE_LOCK:
            if _REUSE and buffer is not None:
                _SPARE.append(buffer)
                del _SPARE[:-2]


def grad_trace_forward(
    d: int,
    h: float,
    gd: torch.dtype,
    block: int,
    s: Tensor,
    params: tuple[Tensor, ...],
    prepared: tuple[Tensor, ...] | None = None,
    work: TraceWork | None = None,
):
    r""":math:`\nabla_s\Phi` (d + 1, n) and the trace (n,) at ``s`` (d + 1, n), samples last, and what
    :func:`grad_trace_backward` needs (first the name of the path taken: ``"one"``, ``"deep"`` or
    ``"general"``). ``params`` is ``(K0, b0, w, A, b, K_1..K_M, b_1..b_M)``;
    ``prepared`` is :func:`prepare`'s result for them (computed here if ``None``). ``work``, a
    :class:`TraceWork`, is the scratch that the stages of an integration share in
    :func:`_one_layer_forward` and :func:`_deep_forward` (see there).

    No autograd inside: the nodes that train through this (:class:`_GradTrace` here, the dynamics'
    field in :mod:`~sklearn_otflow._dynamics`) call :func:`grad_trace_backward` for their backward.
    Autograd would record the forward's operations as some 80 graph nodes per call and differentiate
    each; written out, the mixed second derivatives of :math:`\Phi` are one node, which saves only
    (m, n) activations.
    """
    K0, w, M = params[0], params[2], (len(params) - 5) // 2
    prepared = prepared or prepare(d, params, exact=gd == s.dtype)
    if M == 1 and gd == s.dtype and prepared[3] is not None:
        return _one_layer_forward(d, s, params, prepared, block, work)
    if deep(d, params, s.shape[1], gd == s.dtype):
        return _deep_forward(d, h, s, params, prepared, work)
    Ks, (AtA, trace_AtA) = params[5 : 5 + M], prepared[:2]
    g0, us, gs, zs, grad = _forward_prefix(h, s, params, AtA)
    trace, sqs = _trace_forward(h, gd, block, g0, zs[0], K0[:, :d], Ks, gs, zs[1:])
    trace = trace + trace_AtA
    return grad, trace, ("general", s, K0, w, AtA, g0, *Ks, *gs, *us, *zs[:-1], *sqs)


def grad_trace_backward(
    d: int,
    h: float,
    gd: torch.dtype,
    saved,
    G: Tensor,
    G_tr: Tensor,
    need_s: bool = True,
    w_done: bool = False,
):
    """Gradients of ``<G, grad> + <G_tr, trace>``.

    Returns ``(G_s or None, G_params, G_prepared)``: ``G_params`` in the order of ``params``, ``None``
    where a gradient only flows through :func:`prepare`'s quantities, and ``G_prepared`` the gradients
    with respect to those, ``(G_AtA, G_bsq, G_W)``, which :func:`prepare_vjp` takes to the parameters
    (once per integration: they are the same at every stage). ``w_done``: the caller has the
    gradient with respect to :math:`W` from the forward pass (:class:`TraceWork`), so ``G_W`` is
    ``None`` where the forward pass accumulated it.
    """
    kind, *saved = saved
    if kind == "one":
        return _one_layer_backward(d, saved, G, G_tr, need_s, w_done)
    if kind == "deep":
        return _deep_backward(d, h, saved, G, G_tr, need_s)
    s, K0, w, AtA, g0, *rest = saved
    M = len(rest) // 5
    Ks, gs, us, zs, sqs = (list(rest[i * M : (i + 1) * M]) for i in range(5))
    zs.append(w.unsqueeze(1))  # zs[i] = z_{i+1}, i = 0..M
    # trace_net(g0, z_1, B, K_i, s_i, z_{i+1})
    G_g0, G_z1, G_B, G_K, G_g, G_zt = _trace_vjp(h, gd, g0, zs[0], K0[:, :d], Ks, gs, zs[1:], sqs, G_tr)
    acts = (g0, 1.0 - g0 * g0, g0 * zs[0], gs, [1.0 - g * g for g in gs], us, zs)
    G_acts = (G_g0, [G_z1, *G_zt], G_g, G_K, G_B)
    G_s, G_params, G_AtA = _backward_tail(d, h, s, K0, AtA, Ks, acts, G, G_tr, G_acts, need_s)
    return G_s, G_params, (G_AtA, None, None)


def _one_layer_forward(
    d: int,
    s: Tensor,
    params: tuple[Tensor, ...],
    prepared: tuple[Tensor, ...],
    block: int,
    work: TraceWork | None = None,
):
    r""":func:`grad_trace_forward` for :math:`M = 1` (so :math:`h = 1`), exact.

    The same formulas in fewer operations, with the Jacobian blocks of the trace as products of
    :func:`prepare`'s :math:`W`: row :math:`j` of :math:`P_n = K J_0 = K \operatorname{diag}(g_{0,n}) B`
    is :math:`(W_l g_{0,n})_j` for :math:`l = 1..d`, so the (d m, n) products :math:`P = W g_0` need no
    (m, d, n) block :math:`J_0`, and their backward pass is two products with :math:`W` (the gradient
    with respect to :math:`W` goes to :math:`K` and :math:`B` once per integration, in
    :func:`prepare_vjp`).

    The blocks are computed a few features :math:`l` at a time (at most ``block`` entries, over all the
    samples: a product over a few samples runs far below the machine's rate; d = 43, m = 256, one
    thread: 39 GFLOP/s over 95 samples, 79 over 512) and not kept. Their backward pass would need them
    again, a fourth product, but two of its products need no incoming gradient: with
    :math:`C = c_1 \odot P`, the trace's gradient with respect to :math:`g_0` is
    :math:`2 \bar t \odot W^\top C` for any incoming gradient :math:`\bar t` (one number per sample),
    so :math:`W^\top C` is kept, an (m, n) activation; and its gradient with respect to :math:`W`,
    :math:`2 \sum_n \bar t_n C_n g_{0,n}^\top`, is :math:`2 \bar t\, C g_0^\top` where :math:`\bar t`
    is the same for every sample, as for training's mean loss. So in training (a :class:`TraceWork`
    ``work``) the forward pass adds ``work.weight`` :math:`C g_0^\top` to ``work.sum``, and the caller,
    who knows :math:`\bar t`, skips the fourth product (``w_done`` in :func:`grad_trace_backward`);
    otherwise the backward pass computes the blocks again. Above ``_ONE_LAYER_BLOCK`` entries only the
    (m, n) activations that the backward pass cannot cheaply recompute are kept.
    """
    K0, b0, w, A, b, K, b1 = params
    AtA, trace_AtA, bsq, W = prepared
    m, n = K0.shape[0], s.shape[1]
    small = m * d * n <= _ONE_LAYER_BLOCK  # keep the activations rather than recompute them
    # in training, the kept activations go to the integration's one allocation (TraceWork.current)
    slots = None if work is None else work.current
    names = _ONE_LAYER_SMALL if small else _ONE_LAYER_LARGE
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
    e0 = _one_minus_square(g0, out.get("e0"))
    e0z1 = torch.mul(e0, z1, out=out.get("e0z1"))
    e1 = _one_minus_square(g1, out.get("e1"))
    c1 = torch.mul(e1, wc, out=out.get("c1"))
    sq = WtC = None
    for rows in _feature_chunks(d, m, n, block):
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
    return grad, trace, ("one", s, K0, w, AtA, K, W, *saved, sq, bsq)


# What _one_layer_forward keeps of each stage in a TraceWork (its activations, then the gradient): all
# twelve where the blocks are small, else the five that the backward pass cannot cheaply recompute.
_ONE_LAYER_SMALL = ("g0", "u0", "g1", "y1", "z1", "q", "e0", "e0z1", "e1", "c1", "WtC", "sq", "grad")
_ONE_LAYER_LARGE = ("a0", "g1", "z1", "WtC", "sq", "grad")


def _one_minus_square(g: Tensor, out: Tensor | None = None) -> Tensor:
    """:math:`1 - g^2`, into ``out`` if given (the same rounding either way)."""
    return 1.0 - g * g if out is None else torch.mul(g, g, out=out).neg_().add_(1.0)


def _one_layer_backward(d: int, saved, G: Tensor, G_tr: Tensor, need_s: bool, w_done: bool):
    """:func:`grad_trace_backward` for :func:`_one_layer_forward`."""
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
    if WtC is not None and w_done:  # see _one_layer_forward
        G_g0 = 2.0 * WtC * Gt
    else:  # the blocks again, a few features at a time, as the forward pass computed them
        C = 2.0 * c1 * Gt
        G_W, G_g0 = torch.empty_like(W), torch.zeros_like(g0)
        for rows in _feature_chunks(d, m, n, _BLOCK):
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


def _forward_prefix(
    h: float,
    s: Tensor,
    params: tuple[Tensor, ...],
    AtA: Tensor,
    kept: list | None = None,
    grad_out: Tensor | None = None,
):
    r"""The forward pass that the paths for :math:`M \ge 2` layers share: the activations, the sweep
    for :math:`z_i` and :math:`\nabla_s\Phi`, samples last.

    .. math::

        a_0 = K_0 s + b_0, \quad u_0 = \sigma(a_0), \quad g_0 = \tanh(a_0), \qquad
        a_i = K_i u_{i-1} + b_i, \quad g_i = \tanh(a_i), \quad u_i = u_{i-1} + h\,\sigma(a_i) \ (i < M),

        z_{M+1} = w, \quad z_i = z_{i+1} + h K_i^\top (g_i z_{i+1}), \qquad
        \nabla_s\Phi = A^\top A s + b + K_0^\top (g_0 z_1).

    ``kept``: where to write them (``None`` entries, or no list: fresh tensors), in the order of
    :func:`_deep_forward`'s kept activations, :math:`g_0, z_1, u_0..u_{M-1}, g_1..g_M, z_2..z_M`;
    ``grad_out``: where to write :math:`\nabla_s\Phi`. Returns ``g0``, the lists ``us`` and ``gs``,
    ``zs`` (``zs[i]`` is :math:`z_{i+1}`, i = 0..M, the last :math:`w` as an (m, 1) column) and
    :math:`\nabla_s\Phi`.
    """
    K0, b0, w, _, b, *layers = params
    M = len(layers) // 2
    Ks, bs = layers[:M], layers[M:]
    kept = kept or [None] * (3 * M + 1)
    a0 = torch.addmm(b0.unsqueeze(1), K0, s)
    g0 = torch.tanh(a0, out=kept[0])
    u = log_cosh(a0, out=kept[2])
    us, gs = [u], []
    for i, (K, bi) in enumerate(zip(Ks, bs)):
        a = torch.addmm(bi.unsqueeze(1), K, u)
        gs.append(torch.tanh(a, out=kept[M + 2 + i]))
        if i + 1 < M:
            u = torch.add(u, log_cosh(a), alpha=h, out=kept[3 + i])
            us.append(u)
    z, zs = w.unsqueeze(1), [w.unsqueeze(1)]
    for i in reversed(range(M)):
        z = torch.addmm(z, Ks[i].t(), gs[i] * z, alpha=h, out=kept[2 * M + 1 + i] if i else kept[1])
        zs.append(z)
    zs.reverse()
    grad = torch.addmm(torch.addmm(b.unsqueeze(1), AtA, s), K0.t(), g0 * zs[0], out=grad_out)
    return g0, us, gs, zs, grad


def _backward_tail(d: int, h: float, s, K0, AtA, Ks, acts, G: Tensor, G_tr: Tensor, G_acts, need_s: bool):
    r"""The backward pass that the paths for :math:`M \ge 2` layers share: through
    :math:`\nabla_s\Phi`, the sweep for :math:`z_i`, the activations and :math:`a_0`
    (:func:`_forward_prefix`), once the trace's share is known.

    ``acts``: :math:`g_0`, :math:`e_0 = 1 - g_0^2`, :math:`q = g_0 z_1`, and the lists of
    :math:`g_i`, :math:`e_i = 1 - g_i^2` (i = 1..M), :math:`u_i` (i = 0..M - 1) and :math:`z_i`
    (i = 1..M + 1). ``G_acts``: the trace's gradients with respect to :math:`g_0`, the
    :math:`z_i`, the :math:`g_i`, the :math:`K_i` and :math:`B`, which this updates in place. Returns
    the gradient with respect to :math:`s` (``None`` unless ``need_s``), the parameters' (in the
    order of :func:`grad_trace_forward`, ``None`` for :math:`A`) and the one with respect to
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


def _deep_forward(
    d: int,
    h: float,
    s: Tensor,
    params: tuple[Tensor, ...],
    prepared: tuple[Tensor, ...],
    work: TraceWork | None = None,
):
    r""":func:`grad_trace_forward` for :math:`M \ge 2` layers whose (m, d, n) blocks are small
    (:func:`deep`), exact.

    The formulas of the general path, over all the samples at once, keeping for the backward pass the
    blocks :math:`P_i = K_i J_{i-1}` that the general path computes again (the :math:`J_i` cost one
    operation each to rebuild from them). At a few features a step is bound by the number of
    operations, not their size (d = 2, width 32, 256 samples: a few microseconds each), and this path
    takes 0.7 times as many (per RK4 stage of a make_moons iteration: 237 against 339). In training,
    what a stage keeps goes to ``work.current``: :math:`4M + 1` activations,
    :math:`g_0, z_1, u_0..u_{M-1}, g_1..g_M, z_2..z_M, sq_1..sq_M`, and the blocks.
    """
    K0, M = params[0], (len(params) - 5) // 2
    Ks = params[5 : 5 + M]
    AtA, trace_AtA, bsq, _ = prepared
    m, n = K0.shape[0], s.shape[1]
    slots = None if work is None else work.current
    kept = [None] * (4 * M + 1) if slots is None else slots[2]
    blocks = [None] * M if slots is None else [P.view(m, d * n) for P in slots[3]]
    grad_out = None if slots is None else slots[1]
    g0, us, gs, zs, grad = _forward_prefix(h, s, params, AtA, kept, grad_out)
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
    return grad, trace, ("deep", s, K0, params[2], AtA, bsq, g0, *(x for xs in lists for x in xs))


def _deep_backward(d: int, h: float, saved, G: Tensor, G_tr: Tensor, need_s: bool):
    """:func:`grad_trace_backward` for :func:`_deep_forward`."""
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
    G_s, G_params, G_AtA = _backward_tail(
        d, h, s, K0, AtA, Ks, acts, G, G_tr, (G_g0, G_z, G_g, G_K, G_B), need_s
    )
    return G_s, G_params, (G_AtA, G_bsq, None)


class _GradTrace(torch.autograd.Function):
    """``(grad, trace)`` of :meth:`Potential.grad_and_trace` as one autograd node, samples last.

    Inputs: ``d``, ``h``, ``gemm_dtype``, ``block``, ``s`` (d + 1, n), then the parameters as in
    :func:`grad_trace_forward`.
    """

    @staticmethod
    def forward(ctx, d: int, h: float, gd: torch.dtype, block: int, s: Tensor, *params: Tensor):
        grad, trace, (kind, *saved) = grad_trace_forward(d, h, gd, block, s, params)
        ctx.d, ctx.h, ctx.gd, ctx.n_params, ctx.kind = d, h, gd, len(params), kind
        ctx.save_for_backward(*saved, *params)
        return grad, trace

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G: Tensor, G_tr: Tensor):
        saved, params = ctx.saved_tensors[: -ctx.n_params], ctx.saved_tensors[-ctx.n_params :]
        G_s, grads, G_prepared = grad_trace_backward(
            ctx.d, ctx.h, ctx.gd, (ctx.kind, *saved), G, G_tr, ctx.needs_input_grad[4]
        )
        return (None,) * 4 + (G_s, *add_grads(grads, prepare_vjp(ctx.d, params, *G_prepared)))


def add_grads(grads: list[Tensor | None], more: list[Tensor | None]) -> list[Tensor | None]:
    """``grads + more`` entry by entry, in place where ``grads`` has a tensor; ``None`` is zero."""
    for i, g in enumerate(more):
        if g is not None:
            grads[i] = g if grads[i] is None else grads[i].add_(g)
    return grads


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
    generator : torch.Generator or None, default=None
        Draws the initial weights; ``None`` draws them from torch's global generator. With a generator
        of its own the potential leaves the global one untouched, and its weights are those that the
        global generator seeded alike would draw.

    Examples
    --------
    >>> phi = Potential(2, width=8, n_layers=2, generator=torch.Generator().manual_seed(0))
    >>> x = torch.randn(5, 2)
    >>> phi(x, 0.5).shape
    torch.Size([5])
    >>> grad, trace = phi.grad_and_trace(x, 0.5)
    >>> grad.shape, trace.shape
    (torch.Size([5, 3]), torch.Size([5]))
    """

    def __init__(
        self,
        n_features: int,
        width: int = 32,
        n_layers: int = 1,
        rank: int = 10,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if n_features < 1 or width < 1 or n_layers < 1 or rank < 1:
            raise ValueError(
                "Expected n_features, width, n_layers and rank all >= 1; got "
                f"{n_features}, {width}, {n_layers}, {rank}."
            )
        d = n_features
        self.n_features, self.width, self.n_layers = d, width, n_layers
        self.h = 1.0 / n_layers
        # built without drawing (on the meta device), then drawn by reset_parameters from `generator`
        self.opening = nn.Linear(d + 1, width, device="meta")  # K_0, b_0
        layers = (nn.Linear(width, width, device="meta") for _ in range(n_layers))
        self.layers = nn.ModuleList(layers)  # K_i, b_i
        self.A = nn.Parameter(torch.empty(min(rank, d + 1), d + 1, device="meta"))
        self.b = nn.Parameter(torch.empty(d + 1, device="meta"))
        self.c = nn.Parameter(torch.empty((), device="meta"))
        self.w = nn.Parameter(torch.empty(width, device="meta"))
        self.to_empty(device="cpu")
        self.reset_parameters(generator)

    @torch.no_grad()
    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        r"""Draw the initial weights, in the order and from the distributions of torch's defaults.

        :math:`K_i, b_i`: :class:`torch.nn.Linear`'s (uniform on :math:`\pm 1/\sqrt{\text{fan-in}}`),
        layer by layer; :math:`A`: Glorot-uniform; :math:`b, c` and :math:`w` zero. With :math:`w = 0`
        the network starts switched off and the first flow is the quadratic's linear one (the reference
        code's :math:`w = 1` starts from a random nonlinear flow, out of which training fell to the
        identity and stayed there on 8gaussians and digits).

        Examples
        --------
        >>> phi = Potential(2, width=8)
        >>> phi.reset_parameters(torch.Generator().manual_seed(0))
        >>> float(phi.w.abs().sum()), tuple(phi.A.shape)
        (0.0, (3, 3))
        """
        for linear in (self.opening, *self.layers):
            nn.init.kaiming_uniform_(linear.weight, a=math.sqrt(5), generator=generator)
            bound = 1 / math.sqrt(linear.in_features)
            nn.init.uniform_(linear.bias, -bound, bound, generator=generator)
        nn.init.xavier_uniform_(self.A, generator=generator)
        for zero in (self.b, self.c, self.w):
            zero.zero_()

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
