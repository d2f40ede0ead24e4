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

The integrator is a Butcher tableau (:data:`RK4`) and one generic explicit step. Without gradients,
:func:`flow` runs :func:`odeint_rk4` on the field. Training differentiates through the whole integration
as one autograd node (:class:`_RK4Flow`), whose backward pass is the chain rule of the steps (the
adjoint of the same tableau) and of the field written out: the same gradient as autograd's, in fewer
operations.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, NamedTuple

import torch
from torch import Tensor

from ._potential import Potential

if TYPE_CHECKING:  # the field asks the potential for its tracer
    from ._trace import Tracer

__all__ = ["odeint_rk4", "flow"]

State = tuple[Tensor, ...]


class Tableau(NamedTuple):
    r"""An explicit Runge-Kutta method: stage :math:`i` evaluates
    :math:`k_i = f(t + c_i h, y + h \sum_{j<i} a_{ij} k_j)` and the step is
    :math:`y + \tfrac{h}{q} \sum_i b_i k_i`, the weights :math:`b_i` written as integers over their
    common divisor :math:`q`, as the textbook writes them (and as they round)."""

    c: tuple[float, ...]
    a: tuple[tuple[float, ...], ...]
    b: tuple[int, ...]
    divisor: int


# The classic fourth-order method: y + h/6 (k1 + 2 k2 + 2 k3 + k4).
RK4 = Tableau(c=(0.0, 0.5, 0.5, 1.0), a=((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0)), b=(1, 2, 2, 1), divisor=6)


def rk_step(
    f: Callable[[float, State], State], t: float, h: float, y: State, tableau: Tableau = RK4
) -> State:
    r"""One explicit Runge-Kutta step of ``tableau`` (default :data:`RK4`) from ``(t, y)``."""
    ks: list[State] = []
    for c, a in zip(tableau.c, tableau.a):
        yi = y
        for aij, kj in zip(a, ks):
            if aij:
                yi = tuple(yv + (aij * h) * kv for yv, kv in zip(yi, kj))
        ks.append(f(t + c * h, yi))
    total = [tableau.b[0] * kv for kv in ks[0]]
    for bi, k in zip(tableau.b[1:], ks[1:]):
        total = [sv + bi * kv for sv, kv in zip(total, k)]
    return tuple(yv + (h / tableau.divisor) * sv for yv, sv in zip(y, total))


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
        y = rk_step(f, t0 + k * h, h, y)
    return y


def _field(tracer: Tracer, t: float, y: Tensor, weight: float = 1.0):
    r"""The right-hand side :math:`(-\nabla_x\Phi, -\operatorname{tr}\nabla_x^2\Phi, \tfrac12|\nabla_x\Phi|^2,
    |\partial_t\Phi - \tfrac12|\nabla_x\Phi|^2|)` on the stacked state ``y`` (n, d + 3), and what
    :func:`_field_vjp` needs to differentiate it. ``tracer`` is the potential's for this integration;
    ``weight`` the stage's weight in the step's update.
    """
    d, n = tracer.d, y.shape[0]
    s = tracer.stage_input(y, t, weight)  # (x, c, t), samples last
    grad, trace, saved = tracer.forward(s)
    gx, gt = grad[:d], grad[-1]
    dL = 0.5 * (gx * gx).sum(0)
    r = gt - dL
    out = y.new_empty(n, d + 3)
    torch.neg(gx.t(), out=out[:, :d])
    torch.neg(trace, out=out[:, d])
    out[:, d + 1] = dL
    torch.abs(r, out=out[:, d + 2])
    return out, (gx, torch.sign(r), saved)


def _field_vjp(tracer: Tracer, tape, G_out: Tensor, need_x: bool, w_done: bool = False) -> Tensor | None:
    """The vector-Jacobian product of :func:`_field` with ``G_out`` (n, d + 3): the gradient with respect
    to the state's ``x`` columns, (n, d), a transposed view (``None`` unless ``need_x``; the other columns
    do not feed back into the field). The weights' share goes to ``tracer`` (:meth:`Tracer.backward`)."""
    d = tracer.d
    gx, sign_r, saved = tape
    G_R = sign_r * G_out[:, d + 2]  # |r|, r = g_t - dL
    G = G_out.new_empty(tracer.p.K0.shape[1], G_out.shape[0])  # with respect to grad = (g_x, g_c, g_t)
    torch.addcmul(G_out[:, :d].t().neg(), gx, (G_out[:, d + 1] - G_R).unsqueeze(0), out=G[:d])  # -g_x, dL
    G[d:-1] = 0.0  # the condition's gradient feeds nothing
    G[-1] = G_R
    G_s = tracer.backward(saved, G, -G_out[:, d], need_x, w_done)
    return None if G_s is None else G_s[:d].t()


def _keep_graph() -> bool:
    """Whether the running backward pass keeps the graph (``retain_graph=True``); if torch cannot say, yes.

    torch's own AOTAutograd asks the same private function, to free what a backward pass will not need
    again.
    """
    ask = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if ask is None else bool(ask())


class _RK4Flow(torch.autograd.Function):
    r"""``n_steps`` steps of ``tableau`` (:data:`RK4`) on the characteristics (:func:`_field`) as one
    autograd node.

    Training differentiates through the discrete integration (discretize, then optimize: the exact
    gradient of the loss that the integrator computes). The forward pass runs :func:`rk_step` and keeps
    each stage's activations; the backward pass walks the steps in reverse with the adjoint of one
    step. With :math:`y' = y + \tfrac hq \sum_i b_i k_i`, :math:`k_i = f(y_i)` and
    :math:`y_i = y + h \sum_{j<i} a_{ij} k_j`:

    .. math::

        \bar k_i = \tfrac hq b_i \bar y' + h \textstyle\sum_{j>i} a_{ji} J_j^\top \bar k_j, \qquad
        \bar y = \bar y' + \textstyle\sum_i J_i^\top \bar k_i,

    :math:`J_i^\top \bar k_i` being :func:`_field_vjp` at stage :math:`i`. Written out, a step is one
    node instead of some twenty, and each weight's gradient is summed once per integration
    (:meth:`Tracer.weight_grads`) rather than stage by stage. Each stage's activations are released once
    its product is taken, unless the graph is retained.

    Inputs: the potential's ``tracer`` (training), the ``tableau``, ``t0``, ``t1``, ``n_steps``, the
    state ``y0`` (n, d + 3), then the tracer's weights (:meth:`Weights.flat`).
    """

    @staticmethod
    def forward(ctx, tracer, tableau, t0, t1, n_steps, y0, *flat):
        tape, weights = [], [bi / tableau.divisor for bi in tableau.b]

        def f(t: float, y: State) -> State:
            out, saved = _field(tracer, t, y[0], weights[len(tape) % len(weights)])
            tape.append(saved)
            return (out,)

        dt = (t1 - t0) / n_steps
        y = (y0,)
        for k in range(n_steps):
            y = rk_step(f, t0 + k * dt, dt, y, tableau)
        ctx.tracer, ctx.tableau, ctx.dt, ctx.n_steps, ctx.tape = tracer, tableau, dt, n_steps, tape
        ctx.save_for_backward(*flat)  # checked: the optimizer must not change them before backward
        return y[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G: Tensor):
        ctx.saved_tensors  # noqa: B018 -- raises on a changed parameter or a second backward
        tracer, (_, a, b, q), dt, tape = ctx.tracer, ctx.tableau, ctx.dt, ctx.tape
        d, n_stages = tracer.d, len(b)
        keep = _keep_graph()
        if not keep:  # each stage's activations go as soon as its product is taken, as autograd's would
            ctx.tape = None
        need_y0 = ctx.needs_input_grad[5]
        # the log-determinant feeds nothing back, so stage i of every step receives the gradient
        # -dt b_i / q G[:, d] for its trace: where that is the same for every sample, as for a mean
        # over the batch, the forward pass has summed the one-layer path's W part up (Tracer.w_sum)
        w_done = tracer.w_sum is not None and bool((G[:, d] == G[0, d]).all())
        w_scale = -2.0 * dt * G[0, d].item() if w_done else 1.0  # see _trace.one_layer: 2 t_bar

        for step in reversed(range(ctx.n_steps)):
            G_unit = G * (dt / q)  # the update y + dt/q sum_i b_i k_i
            G_y, G_xs = G.clone(), [None] * n_stages
            for i in reversed(range(n_stages)):
                G_k = b[i] * G_unit
                for j in range(i + 1, n_stages):  # y_j = y + dt sum_{i<j} a_ji k_i
                    if a[j][i]:
                        G_k[:, :d].add_(G_xs[j], alpha=a[j][i] * dt)
                need_x = i > 0 or need_y0 or step > 0
                G_xs[i] = _field_vjp(tracer, tape[n_stages * step + i], G_k, need_x, w_done)
                if not keep:
                    tape[n_stages * step + i] = None
                if G_xs[i] is not None:
                    G_y[:, :d] += G_xs[i]
            G = G_y
        # the weight-only quantities of the trace are the same at every stage: their gradients, summed
        # over the stages, go back to the weights once
        G_flat = tracer.weight_grads(w_done, w_scale)
        if not keep:  # nothing returned is a view of the scratch: the next integration may take it
            tracer.release()
        return (None,) * 5 + (G if need_y0 else None, *G_flat)


def _characteristics(tracer: Tracer) -> Callable[[float, State], State]:
    """The right-hand side of OT-Flow's characteristics on one stacked state ``[x, ell, L, R]`` (n, d + 3),
    for integration without gradients (training goes through :class:`_RK4Flow`).

    Only ``x`` feeds back into the field, so the state is one tensor: every stage is one operation on it
    instead of four.
    """
    return lambda t, y: (_field(tracer, t, y[0])[0],)


def flow(
    potential: Potential,
    x: Tensor,
    n_steps: int,
    inverse: bool = False,
    gemm_dtype: torch.dtype | None = None,
    context: Tensor | None = None,
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
    context : Tensor of shape (n, q) or None, default=None
        The condition of each point, for a potential with ``n_context`` q > 0: the flow moves ``x``
        only, along :math:`-\nabla_x\Phi(x, c, t)`.

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
    gd, n = gemm_dtype or x.dtype, x.shape[0]
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in potential.parameters())):
        if n_steps < 1:
            raise ValueError(f"Expected n_steps >= 1, got {n_steps}.")
        tracer = potential.tracer(n, gd, n_stages=len(RK4.c) * n_steps, training=True, context=context)
        y = _RK4Flow.apply(tracer, RK4, t0, t1, n_steps, y0, *tracer.p.flat())
    else:
        tracer = potential.tracer(n, gd, context=context)
        (y,) = odeint_rk4(_characteristics(tracer), (y0,), t0, t1, n_steps)
    return y[:, :d], y[:, d], y[:, d + 1], y[:, d + 2]
