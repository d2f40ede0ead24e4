r"""What every trace path shares: the weights as a named structure, the activation, block sizes.

The potential's network (:mod:`sklearn_otflow._potential`) is

.. math::

    u_0 = \sigma(K_0 s + b_0), \qquad u_i = u_{i-1} + h\,\sigma(K_i u_{i-1} + b_i), \quad h = 1/M,

with :math:`\sigma(u) = \log(2\cosh u)`, :math:`\sigma' = \tanh`, :math:`\sigma'' = 1 - \tanh^2`, and
:math:`\Phi(s) = w^\top u_M + \tfrac12 s^\top A^\top A s + b^\top s + c`. Inside the paths every
activation is laid out samples last, (m, n), and :math:`s = (x, c, t)` is (d + q + 1, n): the d
coordinates that flow, the q of a condition :math:`c` (none for a plain density), then time. Gradients
are with respect to all of :math:`s`; the trace is over its first d coordinates only.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor
from torch.nn import functional as F


class Weights(NamedTuple):
    r"""The potential's weights as the trace paths read them: :math:`K_0` (m, d + q + 1), :math:`b_0`
    (m,), :math:`w` (m,), :math:`A` (r, d + q + 1), :math:`b` (d + q + 1,), and the residual layers'
    :math:`K_i` (m, m) and :math:`b_i` (m,), i = 1..M; ``n_context`` is q, the condition's coordinates
    (not a tensor: :meth:`flat` leaves it out). The constant :math:`c` has no gradient or trace."""

    K0: Tensor
    b0: Tensor
    w: Tensor
    A: Tensor
    b: Tensor
    Ks: tuple[Tensor, ...]
    bs: tuple[Tensor, ...]
    n_context: int = 0

    @property
    def d(self) -> int:
        """The number of coordinates that flow: :math:`s = (x, c, t)` has :math:`d + q + 1` entries."""
        return self.K0.shape[1] - 1 - self.n_context

    @property
    def h(self) -> float:
        """The residual step :math:`1 / M`."""
        return 1.0 / len(self.Ks)

    def flat(self) -> tuple[Tensor, ...]:
        """``(K0, b0, w, A, b, K_1..K_M, b_1..b_M)``: one tensor per input of an autograd node."""
        return (self.K0, self.b0, self.w, self.A, self.b, *self.Ks, *self.bs)

    def grads(self, K0=None, b0=None, w=None, A=None, b=None, Ks=None, bs=None) -> list[Tensor | None]:
        """Gradients in the order of :meth:`flat`, ``None`` where there is none."""
        M = len(self.Ks)
        return [K0, b0, w, A, b, *(Ks or [None] * M), *(bs or [None] * M)]


def add_grads(grads: list[Tensor | None], more: list[Tensor | None]) -> list[Tensor | None]:
    """``grads + more`` entry by entry, in place where ``grads`` has a tensor; ``None`` is zero."""
    for i, g in enumerate(more):
        if g is not None:
            grads[i] = g if grads[i] is None else grads[i].add_(g)
    return grads


def log_cosh(u: Tensor, out: Tensor | None = None) -> Tensor:
    r"""Overflow-safe :math:`\sigma(u) = \log(2\cosh u) = u + \log(1 + e^{-2u})` (softplus), into
    ``out`` if given.

    >>> log_cosh(torch.tensor([0.0, 1000.0])).tolist()
    [0.6931471824645996, 1000.0]
    """
    # exact to double precision: e^-40 < 1e-17
    return torch.add(u, F.softplus(-2.0 * u, threshold=40.0), out=out)


def one_minus_square(g: Tensor, out: Tensor | None = None) -> Tensor:
    """:math:`1 - g^2`, into ``out`` if given (the same rounding either way)."""
    return 1.0 - g * g if out is None else torch.mul(g, g, out=out).neg_().add_(1.0)


# Entries of one (m, d, chunk) block in training: cache-sized transients keep the allocator from
# fragmenting the heap.
BLOCK = 1 << 20
# Bytes of one block in evaluation (no autograd): a size that stays in the L2 cache. Training keeps
# BLOCK, whose chunks also serve the backward pass.
EVAL_BLOCK_BYTES = 1 << 20


def block_entries(gemm_dtype: torch.dtype) -> int:
    """Entries per (m, d, chunk) block: ``BLOCK`` when autograd records (training), else 1 MiB."""
    return BLOCK if torch.is_grad_enabled() else EVAL_BLOCK_BYTES // gemm_dtype.itemsize


def chunks(n: int, m: int, d: int, block: int | None = None) -> list[slice]:
    """Sample slices small enough that one (m, d, chunk) block has at most ``block`` entries."""
    step = max(1, (block or BLOCK) // (m * d))
    return [slice(i, min(i + step, n)) for i in range(0, n, step)]
