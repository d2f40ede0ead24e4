r"""The OT-Flow objective and the exact log-density.

Per sample, with :math:`(z, \ell, L, R)` the end state of :func:`~sklearn_otflow._dynamics.flow`,

.. math::

    C = \tfrac12\|z\|^2 + \tfrac d2\log 2\pi - \ell \quad\text{(negative log-likelihood, nats)},
    \qquad J = \operatorname{mean}\bigl[L + \alpha C + \alpha_{\mathrm{hjb}} R\bigr],

and :math:`\log p(x) = -C`. With sample weights :math:`w_i` the mean is
:math:`\sum_i w_i(\cdot)_i / \sum_i w_i`. For a conditional density the flow and :math:`C` are those
of :math:`x` given its condition. :math:`\alpha` weighs the likelihood against the transport cost (Li & Jing's
:math:`\alpha`); model selection should use the held-out :math:`-C`, never :math:`J`, which moves with
:math:`\alpha`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from ._dynamics import flow
from ._potential import Potential

__all__ = ["Objective", "batch_objective", "objective", "log_prob", "negative_log_likelihood"]


class Objective(NamedTuple):
    """The batch objective and the means of its three parts (all 0-d tensors).

    Attributes
    ----------
    loss : Tensor
        :math:`J`, the mean of :math:`L + \\alpha C + \\alpha_{hjb} R`.
    transport : Tensor
        Mean transport cost :math:`L`.
    nll : Tensor
        Mean negative log-likelihood :math:`C`.
    hjb : Tensor
        Mean Hamilton-Jacobi-Bellman residual :math:`R`.

    Examples
    --------
    >>> import torch
    >>> from sklearn_otflow import Potential, objective
    >>> out = objective(Potential(2, width=8), torch.randn(16, 2), alpha=10.0, alpha_hjb=1.0, n_steps=4)
    >>> type(out).__name__, out.transport.shape
    ('Objective', torch.Size([]))
    """

    loss: Tensor
    transport: Tensor  # mean L
    nll: Tensor  # mean C
    hjb: Tensor  # mean R


def negative_log_likelihood(z: Tensor, ell: Tensor) -> Tensor:
    r"""Per-sample :math:`C = \tfrac12\|z\|^2 + \tfrac d2 \log 2\pi - \ell`, shape (n,)."""
    d = z.shape[1]
    return 0.5 * (z * z).sum(1) + 0.5 * d * math.log(2.0 * math.pi) - ell


def batch_objective(
    state: tuple[Tensor, ...], alpha: float, alpha_hjb: float, weights: Tensor | None = None
) -> Objective:
    r""":math:`J` and its parts from a flowed batch's end state ``(z, ell, L, R)``; with ``weights``
    (n,), their weighted means."""
    z, ell, L, R = state
    C = negative_log_likelihood(z, ell)
    if weights is None:
        L, C, R = L.mean(), C.mean(), R.mean()
    else:
        L, C, R = (weights @ v / weights.sum() for v in (L, C, R))
    return Objective(L + alpha * C + alpha_hjb * R, L, C, R)


def objective(
    potential: Potential,
    x: Tensor,
    alpha: float,
    alpha_hjb: float,
    n_steps: int,
    gemm_dtype: torch.dtype | None = None,
    context: Tensor | None = None,
    weights: Tensor | None = None,
) -> Objective:
    r"""OT-Flow's batch objective :math:`J` and its parts.

    :math:`J = \operatorname{mean}(L + \alpha C + \alpha_{hjb} R)` over the batch, from one pass of
    :func:`flow`; differentiable with respect to the potential's parameters.

    Parameters
    ----------
    potential : Potential
        The potential :math:`\Phi`.
    x : Tensor of shape (n, d)
        A batch of (standardized) data.
    alpha : float
        Weight :math:`\alpha` of the negative log-likelihood.
    alpha_hjb : float
        Weight of the HJB residual.
    n_steps : int
        Number of RK4 steps.
    gemm_dtype : torch.dtype, default=None
        Precision of the trace's block products (see :meth:`Potential.grad_and_trace`).
    context : Tensor of shape (n, q) or None, default=None
        The condition of each row, for a conditional potential (see :func:`flow`).
    weights : Tensor of shape (n,) or None, default=None
        Sample weights: the means become :math:`\sum_i w_i(\cdot)_i / \sum_i w_i`.

    Returns
    -------
    objective : Objective
        ``(loss, transport, nll, hjb)``, 0-d tensors.

    Examples
    --------
    >>> import torch
    >>> from sklearn_otflow import Potential, objective
    >>> phi = Potential(2, width=8)
    >>> out = objective(phi, torch.randn(16, 2), alpha=10.0, alpha_hjb=1.0, n_steps=4)
    >>> out.loss.shape, out.nll.shape
    (torch.Size([]), torch.Size([]))
    """
    state = flow(potential, x, n_steps, gemm_dtype=gemm_dtype, context=context)
    return batch_objective(state, alpha, alpha_hjb, weights)


def log_prob(potential: Potential, x: Tensor, n_steps: int, context: Tensor | None = None) -> Tensor:
    r"""Exact :math:`\log p(x) = -\tfrac12\|z(1)\|^2 - \tfrac d2\log 2\pi + \ell(1)`, shape (n,).

    Exact up to the RK4 integration, in the potential's coordinates (no standardization).

    Parameters
    ----------
    potential : Potential
        The potential :math:`\Phi`.
    x : Tensor of shape (n, d)
        Points to score.
    n_steps : int
        Number of RK4 steps.
    context : Tensor of shape (n, q) or None, default=None
        The condition of each point, for a conditional potential: :math:`\log p(x \mid c)`.

    Returns
    -------
    log_p : Tensor of shape (n,)
        The log-density of each point, in nats.

    Examples
    --------
    >>> import torch
    >>> from sklearn_otflow import Potential, log_prob
    >>> phi = Potential(2, width=8)
    >>> log_prob(phi, torch.randn(5, 2), n_steps=4).shape
    torch.Size([5])
    """
    z, ell, _, _ = flow(potential, x, n_steps, context=context)
    return -negative_log_likelihood(z, ell)
