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

from ._potential import Potential, _block_entries, grad_trace_backward, grad_trace_forward

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


class _OTField(torch.autograd.Function):
    r"""The right-hand side :math:`(-\nabla_x\Phi, -\operatorname{tr}\nabla_x^2\Phi, \tfrac12|\nabla_x\Phi|^2,
    |\partial_t\Phi - \tfrac12|\nabla_x\Phi|^2|)` on the stacked state (n, d + 3), as one autograd node.

    Training differentiates through every RK4 stage: one node per stage, whose backward is the chain
    rule of the four lines above written out in front of
    :func:`~sklearn_otflow._potential.grad_trace_backward`. Inputs: ``d``, ``h``, ``gemm_dtype``,
    ``block``, ``t``, the state ``y``, then :meth:`Potential._flat_parameters`.
    """

    @staticmethod
    def forward(ctx, d: int, h: float, gd: torch.dtype, block: int, t: float, y: Tensor, *params: Tensor):
        n = y.shape[0]
        s = y.new_empty(d + 1, n)  # (x, t), samples last
        s[:d] = y[:, :d].t()
        s[d] = t
        grad, trace, saved = grad_trace_forward(d, h, gd, block, s, params)
        gx, gt = grad[:d], grad[d]
        dL = 0.5 * (gx * gx).sum(0)
        r = gt - dL
        out = y.new_empty(n, d + 3)
        torch.neg(gx.t(), out=out[:, :d])
        torch.neg(trace, out=out[:, d])
        out[:, d + 1] = dL
        torch.abs(r, out=out[:, d + 2])
        ctx.d, ctx.h, ctx.gd = d, h, gd
        ctx.save_for_backward(gx, torch.sign(r), *saved)
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G_out: Tensor):
        d = ctx.d
        gx, sign_r, *saved = ctx.saved_tensors
        G_R = sign_r * G_out[:, d + 2]  # |r|, r = g_t - dL
        G = G_out.new_empty(d + 1, G_out.shape[0])  # gradient with respect to grad = (g_x, g_t)
        torch.addcmul(G_out[:, :d].t().neg(), gx, (G_out[:, d + 1] - G_R).unsqueeze(0), out=G[:d])  # -g_x, dL
        G[d] = G_R
        grads = grad_trace_backward(d, ctx.h, ctx.gd, saved, G, -G_out[:, d], ctx.needs_input_grad[5])
        G_s, rest = grads[0], grads[1:]
        G_y = None
        if G_s is not None:
            G_y = G_out.new_zeros(G_out.shape)
            G_y[:, :d] = G_s[:d].t()
        return (None,) * 5 + (G_y, *rest)


def ot_dynamics(
    potential: Potential, gemm_dtype: torch.dtype | None = None
) -> Callable[[float, State], State]:
    """The right-hand side of OT-Flow's characteristics on one stacked state ``[x, ell, L, R]`` (n, d + 3).

    Only ``x`` feeds back into the field, so the state is one tensor: every RK4 stage is one operation
    on it instead of four, and one autograd node (:class:`_OTField`).
    """
    d, h, params = potential.n_features, potential.h, potential._flat_parameters()

    def f(t: float, y: State) -> State:
        gd = gemm_dtype or y[0].dtype
        return (_OTField.apply(d, h, gd, _block_entries(gd), t, y[0], *params),)

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
