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

Without gradients, :func:`flow` runs :func:`odeint_rk4` on the field. Training differentiates through the
whole integration as one autograd node (:class:`_RK4Flow`), whose backward pass is the chain rule of the
RK4 steps and of the field written out: the same gradient as autograd's, in fewer operations.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ._potential import (
    Potential,
    TraceWork,
    _block_entries,
    add_grads,
    deep,
    grad_trace_backward,
    grad_trace_forward,
    one_layer,
    prepare,
    prepare_vjp,
)

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


def _field(
    d: int,
    h: float,
    gd: torch.dtype,
    block: int,
    t: float,
    y: Tensor,
    params: tuple[Tensor, ...],
    prepared,
    work: TraceWork | None = None,
):
    r"""The right-hand side :math:`(-\nabla_x\Phi, -\operatorname{tr}\nabla_x^2\Phi, \tfrac12|\nabla_x\Phi|^2,
    |\partial_t\Phi - \tfrac12|\nabla_x\Phi|^2|)` on the stacked state ``y`` (n, d + 3), and what
    :func:`_field_vjp` needs to differentiate it.

    ``params`` is :meth:`Potential._flat_parameters` and ``prepared``
    :func:`~sklearn_otflow._potential.prepare` of them; ``gd``, ``block`` and ``work`` as in
    :func:`~sklearn_otflow._potential.grad_trace_forward`.
    """
    n = y.shape[0]
    slots = None if work is None else work.next_stage()
    s = y.new_empty(d + 1, n) if slots is None else slots[0]  # (x, t), samples last
    s[:d] = y[:, :d].t()
    s[d] = t
    grad, trace, saved = grad_trace_forward(d, h, gd, block, s, params, prepared, work)
    gx, gt = grad[:d], grad[d]
    dL = 0.5 * (gx * gx).sum(0)
    r = gt - dL
    out = y.new_empty(n, d + 3)
    torch.neg(gx.t(), out=out[:, :d])
    torch.neg(trace, out=out[:, d])
    out[:, d + 1] = dL
    torch.abs(r, out=out[:, d + 2])
    return out, (gx, torch.sign(r), saved)


def _field_vjp(d: int, h: float, gd: torch.dtype, tape, G_out: Tensor, need_x: bool, w_done: bool = False):
    """The vector-Jacobian product of :func:`_field` with ``G_out`` (n, d + 3).

    Returns ``(G_x, G_params, G_prepared)``: ``G_x`` (n, d), a transposed view, with respect to the
    state's ``x`` columns (``None`` unless ``need_x``; the other columns do not feed back into the
    field), then the gradients with respect to ``params`` and to ``prepared``, as
    :func:`~sklearn_otflow._potential.grad_trace_backward` returns them.
    """
    gx, sign_r, saved = tape
    G_R = sign_r * G_out[:, d + 2]  # |r|, r = g_t - dL
    G = G_out.new_empty(d + 1, G_out.shape[0])  # gradient with respect to grad = (g_x, g_t)
    torch.addcmul(G_out[:, :d].t().neg(), gx, (G_out[:, d + 1] - G_R).unsqueeze(0), out=G[:d])  # -g_x, dL
    G[d] = G_R
    G_s, G_params, G_prepared = grad_trace_backward(d, h, gd, saved, G, -G_out[:, d], need_x, w_done)
    return None if G_s is None else G_s[:d].t(), G_params, G_prepared


def _keep_graph() -> bool:
    """Whether the running backward pass keeps the graph (``retain_graph=True``); if torch cannot say, yes.

    torch's own AOTAutograd asks the same private function, to free what a backward pass will not need
    again.
    """
    ask = getattr(torch._C._autograd, "_get_current_graph_task_keep_graph", None)
    return True if ask is None else bool(ask())


class _RK4Flow(torch.autograd.Function):
    r"""``n_steps`` RK4 steps of the characteristics (:func:`_field`) as one autograd node.

    Training differentiates through the discrete integration (discretize, then optimize: the exact
    gradient of the loss that RK4 computes). The forward pass runs :func:`rk4_step` and keeps each stage's
    activations; the backward pass walks the steps in reverse with the chain rule of one RK4 step written
    out. With :math:`y' = y + \tfrac h6(k_1 + 2k_2 + 2k_3 + k_4)` and :math:`k_i = f(y_i)`,
    :math:`y_1 = y`, :math:`y_2 = y + \tfrac h2 k_1`, :math:`y_3 = y + \tfrac h2 k_2`,
    :math:`y_4 = y + h k_3`:

    .. math::

        \bar k_4 = \tfrac h6 \bar y', \quad
        \bar k_3 = \tfrac h3 \bar y' + h J_4^\top \bar k_4, \quad
        \bar k_2 = \tfrac h3 \bar y' + \tfrac h2 J_3^\top \bar k_3, \quad
        \bar k_1 = \tfrac h6 \bar y' + \tfrac h2 J_2^\top \bar k_2, \quad
        \bar y = \bar y' + \textstyle\sum_i J_i^\top \bar k_i,

    :math:`J_i^\top \bar k_i` being :func:`_field_vjp` at stage :math:`i`. Autograd would record some 20
    nodes per RK4 step besides the 4 stages and add up each parameter's gradient stage by stage; at a few
    features a training step is bound by the number of operations, not their size. Each stage's
    activations are released once its product is taken, unless the graph is retained (at d = 43, width
    256, keeping them all to the end of the backward pass cost twice the page faults).

    Inputs: ``d``, ``h`` (the network's), ``gemm_dtype``, ``block``, ``t0``, ``t1``, ``n_steps``, the
    state ``y0`` (n, d + 3), then :meth:`Potential._flat_parameters`.
    """

    @staticmethod
    def forward(ctx, d, h, gd, block, t0, t1, n_steps, y0, *params):
        # the stages' shared scratch, which holds prepare()'s W and accumulates the trace's gradient with
        # respect to it, each stage weighted as its k_i is in the RK4 update (see _one_layer_forward)
        exact, work, (m, n) = gd == y0.dtype, None, (params[0].shape[0], y0.shape[0])
        if one_layer(d, params, exact):
            work = TraceWork(d, m, n, 4 * n_steps, block, params[0])
        elif deep(d, params, n, exact):  # several layers: what the stages keep, in one allocation
            work = TraceWork(d, m, n, 4 * n_steps, block, params[0], n_layers=(len(params) - 5) // 2)
        tape, prepared = [], prepare(d, params, exact, None if work is None else work.W)

        def f(t: float, y: State) -> State:
            if work is not None:
                work.weight = (1.0, 2.0, 2.0, 1.0)[len(tape) % 4] / 6.0
            out, saved = _field(d, h, gd, block, t, y[0], params, prepared, work)
            tape.append(saved)
            return (out,)

        dt = (t1 - t0) / n_steps
        y = (y0,)
        for k in range(n_steps):
            y = rk4_step(f, t0 + k * dt, dt, y)
        ctx.d, ctx.h, ctx.gd, ctx.dt, ctx.n_steps, ctx.tape = d, h, gd, dt, n_steps, tape
        ctx.w_sum = work.sum if work is not None and work.used else None
        ctx.work = work
        ctx.save_for_backward(*params)  # checked: the optimizer must not change them before backward
        return y[0]

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, G: Tensor):
        ctx.saved_tensors  # noqa: B018 -- raises on a changed parameter or a second backward
        d, h, gd, dt, n_steps, tape = ctx.d, ctx.h, ctx.gd, ctx.dt, ctx.n_steps, ctx.tape
        keep = _keep_graph()
        if not keep:  # each stage's activations go as soon as its product is taken, as autograd's would
            ctx.tape = None
        need_y0 = ctx.needs_input_grad[7]
        G_params, G_prepared = None, None
        # the log-determinant feeds nothing back, so stage i of every step receives the gradient
        # -dt b_i G[:, d] for its trace (b = 1/6, 1/3, 1/3, 1/6): where that is the same for every
        # sample, as for a mean over the batch, the forward pass has summed the W part up (ctx.w_sum)
        w_done = ctx.w_sum is not None and bool((G[:, d] == G[0, d]).all())
        w_scale = -2.0 * dt * G[0, d].item() if w_done else 1.0  # see _one_layer_forward: 2 t_bar

        def vjp(stage: int, G_k: Tensor, need_x: bool = True):
            nonlocal G_params, G_prepared
            G_x, grads, grads_prepared = _field_vjp(d, h, gd, tape[stage], G_k, need_x, w_done)
            if not keep:
                tape[stage] = None
            if G_params is None:
                G_params, G_prepared = grads, list(grads_prepared)
            else:
                add_grads(G_params, grads)
                add_grads(G_prepared, grads_prepared)
            return G_x

        for step in reversed(range(n_steps)):
            i = 4 * step
            G_k = G * (dt / 6)  # the update y + dt/6 (k1 + 2 k2 + 2 k3 + k4)
            G_y = G.clone()
            G_x = vjp(i + 3, G_k)
            G_y[:, :d] += G_x
            G_k3 = 2.0 * G_k
            G_k3[:, :d].add_(G_x, alpha=dt)  # y_4 = y + dt k3
            G_x = vjp(i + 2, G_k3)
            G_y[:, :d] += G_x
            G_k2 = 2.0 * G_k
            G_k2[:, :d].add_(G_x, alpha=dt / 2)  # y_3 = y + dt/2 k2
            G_x = vjp(i + 1, G_k2)
            G_y[:, :d] += G_x
            G_k[:, :d].add_(G_x, alpha=dt / 2)  # y_2 = y + dt/2 k1
            G_x = vjp(i, G_k, need_y0 or step > 0)
            if G_x is not None:
                G_y[:, :d] += G_x
            G = G_y
        # the parameter-only quantities of prepare() are the same at every stage: their gradients,
        # summed over the stages, go back to the parameters once
        if w_done:  # no stage added a G_W
            G_prepared[2] = ctx.w_sum
        add_grads(G_params, prepare_vjp(d, ctx.saved_tensors, *G_prepared, w_scale=w_scale))
        if not keep:  # as the tape: the next iteration's forward pass may run while this graph lives
            ctx.w_sum = G_prepared = None
            if ctx.work is not None:  # nothing returned is a view of it: the next integration may take it
                ctx.work.release()
            ctx.work = None
        return (None,) * 7 + (G if need_y0 else None, *G_params)


def ot_dynamics(
    potential: Potential, gemm_dtype: torch.dtype | None = None
) -> Callable[[float, State], State]:
    """The right-hand side of OT-Flow's characteristics on one stacked state ``[x, ell, L, R]`` (n, d + 3),
    for integration without gradients (training goes through :class:`_RK4Flow`).

    Only ``x`` feeds back into the field, so the state is one tensor: every RK4 stage is one operation
    on it instead of four.
    """
    d, h, params = potential.n_features, potential.h, potential._flat_parameters()
    prepared = prepare(d, params, exact=gemm_dtype in (None, params[0].dtype))

    def f(t: float, y: State) -> State:
        gd = gemm_dtype or y[0].dtype
        return (_field(d, h, gd, _block_entries(gd), t, y[0], params, prepared)[0],)

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
    params = potential._flat_parameters()
    if torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in params)):
        if n_steps < 1:
            raise ValueError(f"Expected n_steps >= 1, got {n_steps}.")
        gd = gemm_dtype or x.dtype
        y = _RK4Flow.apply(d, potential.h, gd, _block_entries(gd), t0, t1, n_steps, y0, *params)
    else:
        (y,) = odeint_rk4(ot_dynamics(potential, gemm_dtype), (y0,), t0, t1, n_steps)
    return y[:, :d], y[:, d], y[:, d + 1], y[:, d + 2]
