r"""OT-Flow dynamics along the characteristics, and a fixed-step RK4 integrator.

With velocity :math:`v = -\nabla_x\Phi`, the state :math:`(x, \ell, L, R)` obeys

.. math::

    \dot x = -\nabla_x\Phi(x, t), \quad
    \dot\ell = -\operatorname{tr}\nabla_x^2\Phi(x, t), \quad
    \dot L = \tfrac12\|\nabla_x\Phi\|^2, \quad
    \dot R = \bigl|\partial_t\Phi - \tfrac12\|\nabla_x\Phi\|^2\bigr|,

from :math:`(x_0, 0, 0, 0)` at :math:`t = 0` to :math:`t = 1`:
:math:`\ell(1) = \log|\det \partial x(1)/\partial x_0|`, :math:`L` is the transport cost and :math:`R` the
Hamilton-Jacobi-Bellman residual. The inverse map integrates the same field from :math:`t = 1` back to
:math:`t = 0`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._potential import Potential

__all__ = ["odeint_rk4", "flow"]

State = tuple[Tensor, ...]


def _axpy(y: State, a: float, k: State) -> State:
    return tuple(yi + a * ki for yi, ki in zip(y, k))


def rk4_step(f: Callable[[float, State], State], t: float, h: float, y: State) -> State:
    r"""One classic Runge-Kutta step: :math:`y + \tfrac h6 (k_1 + 2k_2 + 2k_3 + k_4)`."""
    k1 = f(t, y)
    k2 = f(t + h / 2, _axpy(y, h / 2, k1))
    k3 = f(t + h / 2, _axpy(y, h / 2, k2))
    k4 = f(t + h, _axpy(y, h, k3))
    return tuple(yi + (h / 6) * (a + 2 * b + 2 * c + e) for yi, a, b, c, e in zip(y, k1, k2, k3, k4))


def odeint_rk4(f: Callable[[float, State], State], y0: State, t0: float, t1: float, n_steps: int) -> State:
    r"""Integrate :math:`\dot y = f(t, y)` from ``t0`` to ``t1`` (either direction) in ``n_steps`` RK4 steps.

    The classic fourth-order Runge-Kutta method with the fixed step :math:`h = (t_1 - t_0) / n`; the global
    error is :math:`O(h^4)`.

    Parameters
    ----------
    f : callable
        The right-hand side ``f(t, y)``: a float ``t`` and a tuple of tensors ``y``, returning a tuple of
        tensors of the same shapes.
    y0 : tuple of Tensor
        The state at ``t0``.
    t0, t1 : float
        Start and end times; ``t1 < t0`` integrates backwards.
    n_steps : int
        Number of steps, at least 1.

    Returns
    -------
    y1 : tuple of Tensor
        The state at ``t1``, shaped like ``y0``.

    Examples
    --------
    >>> import torch
    >>> from sklearn_otflow import odeint_rk4
    >>> y = odeint_rk4(lambda t, y: (-y[0],), (torch.ones(3),), 0.0, 1.0, 8)
    >>> y[0].shape
    torch.Size([3])
    """
    if n_steps < 1:
        raise ValueError(f"Expected n_steps >= 1, got {n_steps}.")
    h = (t1 - t0) / n_steps
    y = y0
    for k in range(n_steps):
        y = rk4_step(f, t0 + k * h, h, y)
    return y


def ot_dynamics(
    potential: Potential, gemm_dtype: torch.dtype | None = None
) -> Callable[[float, State], State]:
    """The right-hand side of OT-Flow's characteristics on one stacked state ``[x, ell, L, R]`` (n, d + 3).

    Only ``x`` feeds back into the field, so the state is one tensor: every RK4 stage is one operation
    on it instead of four.
    """
    d = potential.n_features

    def f(t: float, y: State) -> State:
        grad, trace = potential.grad_and_trace(y[0][:, :d], t, gemm_dtype)
        gx, gt = grad[:, :d], grad[:, d]
        dL = 0.5 * (gx * gx).sum(1)
        return (torch.cat([-gx, torch.stack([-trace, dL, (gt - dL).abs()], 1)], 1),)

    return f


def flow(
    potential: Potential,
    x: Tensor,
    n_steps: int,
    inverse: bool = False,
    gemm_dtype: torch.dtype | None = None,
) -> State:
    r"""Push ``x`` along the flow; returns ``(z, ell, L, R)``, each with a leading batch dimension.

    Forward (``inverse=False``): ``x`` is data at :math:`t = 0`, ``z`` is :math:`x(1)`, ``ell`` is
    :math:`\log|\det\partial z/\partial x|`, ``L`` and ``R`` the transport cost and HJB residual.
    Inverse: ``x`` is a latent point at :math:`t = 1`, ``z`` its pre-image at :math:`t = 0` and ``ell``
    :math:`\log|\det\partial z/\partial x|` of that backward map (so the forward log-determinant at
    ``z`` is ``-ell``); ``L`` and ``R``, integrated backwards, are minus those of the forward path.

    Parameters
    ----------
    potential : Potential
        The potential :math:`\Phi`.
    x : Tensor of shape (n, d)
        Start points: data (forward) or latent points (inverse).
    n_steps : int
        Number of RK4 steps.
    inverse : bool, default=False
        Integrate from :math:`t = 1` back to :math:`t = 0`.
    gemm_dtype : torch.dtype, default=None
        Precision of the trace's block products (see :meth:`Potential.grad_and_trace`).

    Returns
    -------
    z : Tensor of shape (n, d)
        End points.
    ell : Tensor of shape (n,)
        Log-determinant of the map's Jacobian.
    L : Tensor of shape (n,)
        Transport cost :math:`\int_0^1 \tfrac12 |\nabla_x\Phi|^2 dt`.
    R : Tensor of shape (n,)
        Hamilton-Jacobi-Bellman residual.

    Examples
    --------
    >>> import torch
    >>> from sklearn_otflow import Potential, flow
    >>> phi = Potential(2, width=8)
    >>> z, ell, L, R = flow(phi, torch.randn(4, 2), n_steps=4)
    >>> z.shape, ell.shape, L.shape, R.shape
    (torch.Size([4, 2]), torch.Size([4]), torch.Size([4]), torch.Size([4]))
    """
    d = x.shape[1]
    y0 = torch.cat([x, x.new_zeros(x.shape[0], 3)], 1)
    t0, t1 = (1.0, 0.0) if inverse else (0.0, 1.0)
    (y,) = odeint_rk4(ot_dynamics(potential, gemm_dtype), (y0,), t0, t1, n_steps)
    return y[:, :d], y[:, d], y[:, d + 1], y[:, d + 2]
