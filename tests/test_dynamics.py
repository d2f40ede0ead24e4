"""RK4 and the OT-Flow characteristics against exact solutions: no training involved."""

import math

import pytest
import torch

from sklearn_otflow import Potential, flow, log_prob, odeint_rk4
from sklearn_otflow._dynamics import RK4, Tableau, _RK4Flow, rk_step

F64 = torch.float64


def translation(q: torch.Tensor) -> Potential:
    """Phi = q.x + |q|^2 t / 2: the network switched off (w = 0), A = 0."""
    d = q.shape[0]
    phi = Potential(d, width=4).to(F64)
    with torch.no_grad():
        phi.w.zero_()
        phi.A.zero_()
        phi.b.copy_(torch.cat([q, 0.5 * (q @ q).reshape(1)]))
    return phi


def quadratic(d: int, beta: float) -> Potential:
    """Phi = beta |x|^2 / 2: A = sqrt(beta) [I_d 0], w = b = 0."""
    phi = Potential(d, width=4, rank=d).to(F64)
    with torch.no_grad():
        phi.w.zero_()
        phi.A.copy_(math.sqrt(beta) * torch.eye(d, d + 1, dtype=F64))
    return phi


def random_potential(d=2, width=16, n_layers=2, seed=0):
    torch.manual_seed(seed)
    phi = Potential(d, width=width, n_layers=n_layers).to(F64)
    with torch.no_grad():
        for p in phi.parameters():
            p.mul_(0.7).add_(0.1 * torch.randn_like(p))
    return phi


def test_rk4_has_order_four():
    """y' = M y with M a damped rotation: y(1) = expm(M) y0; the error falls ~16x per halving of h."""
    M = torch.tensor([[-0.3, 2.0], [-2.0, -0.3]], dtype=F64)
    y0 = torch.tensor([[1.0, 0.5]], dtype=F64)
    exact = y0 @ torch.linalg.matrix_exp(M).T
    errors = [
        (odeint_rk4(lambda t, y: (y[0] @ M.T,), (y0,), 0.0, 1.0, n)[0] - exact).norm().item()
        for n in (8, 16, 32, 64)
    ]
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    assert all(13.0 < r < 19.0 for r in ratios), ratios


def test_rk4_integrates_time_dependent_fields_backwards():
    """y' = cos t from 1 to 0: y(0) = y(1) - sin 1."""
    (y,) = odeint_rk4(
        lambda t, y: (torch.full_like(y[0], math.cos(t)),), (torch.zeros(1, dtype=F64),), 1.0, 0.0, 8
    )
    assert abs(y.item() + math.sin(1.0)) < 1e-6


def test_rk4_rejects_zero_steps():
    with pytest.raises(ValueError, match="n_steps >= 1"):
        odeint_rk4(lambda t, y: y, (torch.zeros(1),), 0.0, 1.0, 0)


def test_translation_flow_is_exact(device):
    q = torch.tensor([0.7, -1.3, 2.0], dtype=F64)
    phi = translation(q).to(device)
    x = torch.randn(11, 3, dtype=F64, device=device)
    z, ell, L, R = flow(phi, x, n_steps=3)
    assert (z - (x - q.to(device))).abs().max() < 1e-9
    assert ell.abs().max() < 1e-9
    assert (L - 0.5 * (q @ q)).abs().max() < 1e-9
    assert R.abs().max() < 1e-9
    expected = torch.distributions.Normal(q.to(device), 1.0).log_prob(x).sum(1)
    assert (log_prob(phi, x, n_steps=3) - expected).abs().max() < 1e-9


@pytest.mark.parametrize("beta", [0.5, 1.5])
def test_quadratic_flow_matches_closed_form(beta):
    d = 3
    phi = quadratic(d, beta)
    x = torch.randn(9, d, dtype=F64)
    z, ell, L, R = flow(phi, x, n_steps=16)
    sq = (x * x).sum(1)
    L_exact = beta / 4 * sq * (1 - math.exp(-2 * beta))
    assert (z - math.exp(-beta) * x).abs().max() < 1e-4
    assert (ell + beta * d).abs().max() < 1e-9  # the trace is constant: RK4 is exact here
    assert ((L - L_exact) / L_exact).abs().max() < 1e-4
    assert ((R - L_exact) / L_exact).abs().max() < 1e-4  # dPhi/dt = 0, so R = L
    expected = torch.distributions.Normal(0.0, math.exp(beta)).log_prob(x).sum(1)
    assert (log_prob(phi, x, n_steps=16) - expected).abs().max() < 1e-4


def test_log_det_equals_autograd_jacobian():
    phi = random_potential(d=3, seed=1)
    x = torch.randn(4, 3, dtype=F64)
    _, ell, _, _ = flow(phi, x, n_steps=16)
    for i in range(4):
        jac = torch.autograd.functional.jacobian(lambda xi: flow(phi, xi[None], n_steps=16)[0][0], x[i])
        assert abs(ell[i].item() - torch.linalg.slogdet(jac)[1].item()) < 1e-4


def test_inverse_undoes_forward_and_carries_the_log_det():
    phi = random_potential(d=2, seed=2)
    x = 1.5 * torch.randn(50, 2, dtype=F64)
    z, ell, _, _ = flow(phi, x, n_steps=16)
    x_back, ell_back, _, _ = flow(phi, z, n_steps=16, inverse=True)
    assert (x_back - x).abs().max() < 1e-3
    assert (ell_back + ell).abs().max() < 1e-3


def test_density_integrates_to_one_on_a_grid():
    phi = random_potential(d=2, seed=3)
    side = torch.linspace(-12.0, 12.0, 241, dtype=F64)
    grid = torch.cartesian_prod(side, side)
    with torch.no_grad():
        p = log_prob(phi, grid, n_steps=12).exp()
    cell = (side[1] - side[0]) ** 2
    assert abs((p.sum() * cell).item() - 1.0) < 1e-3
    # and the grid covers the support: the edges carry no mass
    edge = p.reshape(241, 241)
    assert max(edge[0].max(), edge[-1].max(), edge[:, 0].max(), edge[:, -1].max()) < 1e-5


def test_flow_is_differentiable_in_float32_and_keeps_shapes():
    phi = Potential(4, width=8, n_layers=2)
    x = torch.randn(6, 4)
    z, ell, L, R = flow(phi, x, n_steps=2)
    (z.sum() + ell.sum() + L.sum() + R.sum()).backward()
    assert all(p.grad is not None for n, p in phi.named_parameters() if n != "c")
    assert z.dtype == torch.float32 and z.shape == (6, 4) and ell.shape == L.shape == R.shape == (6,)


def autograd_field(phi: Potential):
    """The characteristics' right-hand side by plain autograd: the reference for the fused node."""
    d = phi.n_features

    def f(t, y):
        x = y[0][:, :d]
        tt = torch.full((x.shape[0], 1), t, dtype=x.dtype, requires_grad=True)
        gx, gt = torch.autograd.grad(phi(x, tt).sum(), (x, tt), create_graph=True)
        trace = sum(torch.autograd.grad(gx[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(d))
        dL = 0.5 * (gx * gx).sum(1)
        return (torch.cat([-gx, torch.stack([-trace, dL, (gt[:, 0] - dL).abs()], 1)], 1),)

    return f


# two more explicit methods, as tableaux: their order shows that the step reads the tableau
EULER = Tableau(c=(0.0,), a=((),), b=(1,), divisor=1)
MIDPOINT = Tableau(c=(0.0, 0.5), a=((), (0.5,)), b=(0, 1), divisor=1)


@pytest.mark.parametrize("tableau, order", [(EULER, 1), (MIDPOINT, 2), (RK4, 4)])
def test_the_generic_step_has_each_tableaus_order(tableau, order):
    """y' = -y from 1 over [0, 1]: halving the step divides the error by 2^order."""

    def solve(n):
        y, h = (torch.ones(1, dtype=F64),), 1.0 / n
        for k in range(n):
            y = rk_step(lambda t, y: (-y[0],), k * h, h, y, tableau)
        return abs(y[0].item() - math.exp(-1.0))

    rate = math.log2(solve(16) / solve(32))
    assert abs(rate - order) < 0.15


@pytest.mark.parametrize("n_layers", [1, 2])
def test_the_training_node_differentiates_any_tableau_as_autograd_does(n_layers):
    """The adjoint reads the stage weights and couplings from the tableau: with the midpoint method
    too, its gradients are autograd's through the same steps."""
    phi = random_potential(d=2, width=5, n_layers=n_layers, seed=11)
    x = torch.randn(6, 2, dtype=F64, requires_grad=True)
    cot = torch.randn(6, 5, dtype=F64)
    params = [p for name, p in phi.named_parameters() if name != "c"] + [x]
    y0 = torch.cat([x, x.new_zeros(6, 3)], 1)
    tracer = phi.tracer(6, F64, n_stages=2 * 3, training=True)
    y = _RK4Flow.apply(tracer, MIDPOINT, 0.0, 1.0, 3, y0, *tracer.p.flat())
    ours = torch.autograd.grad((y * cot).sum(), params)
    f, ref = autograd_field(phi), (y0,)
    for k in range(3):
        ref = rk_step(f, k / 3, 1 / 3, ref, MIDPOINT)
    theirs = torch.autograd.grad((ref[0] * cot).sum(), params)
    torch.testing.assert_close(y, ref[0], rtol=1e-12, atol=1e-12)
    for a, b in zip(ours, theirs):
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-10


@pytest.mark.parametrize("inverse", [False, True])
@pytest.mark.parametrize("n_layers", [1, 2])
@pytest.mark.parametrize("block", [1 << 20, 40])  # the one-block path (M = 1), and chunks of samples
@pytest.mark.parametrize("same_ell_weight", [False, True])  # True: the W part from the forward pass
# False: one layer keeps 5 activations, in one buffer (two layers take the general path either way)
@pytest.mark.parametrize("keep_all", [True, False])
def test_training_gradients_through_the_flow_equal_autograd(
    n_layers, block, inverse, same_ell_weight, keep_all, monkeypatch
):
    """Training backpropagates through the whole RK4 integration as one node: against double autograd.

    Where ell's weight is the same for every sample (as in a mean loss), the one-layer trace's gradient
    with respect to W comes from the forward pass. Where its blocks are large, one layer keeps only five
    activations per stage, all stages' in one allocation (TraceWork.kept). Several layers compute the
    blocks again."""
    from sklearn_otflow._trace import base, one_layer

    monkeypatch.setattr(base, "BLOCK", block)
    if not keep_all:
        monkeypatch.setattr(one_layer, "SMALL_BLOCK", 0)
    phi = random_potential(d=3, width=6, n_layers=n_layers, seed=4)
    x = torch.randn(9, 3, dtype=F64, requires_grad=True)
    cot = torch.randn(9, 6, dtype=F64)  # weights on z, ell, L and R
    if same_ell_weight:
        cot[:, 3] = -1.7
    params = [p for name, p in phi.named_parameters() if name != "c"] + [x]

    z, ell, L, R = flow(phi, x, n_steps=3, inverse=inverse)
    assert type(z.grad_fn.next_functions[0][0]).__name__.startswith("_RK4FlowBackward")  # one node
    ours = torch.autograd.grad((torch.cat([z, torch.stack([ell, L, R], 1)], 1) * cot).sum(), params)
    y0 = torch.cat([x, x.new_zeros(9, 3)], 1)
    (y,) = odeint_rk4(autograd_field(phi), (y0,), *((1.0, 0.0) if inverse else (0.0, 1.0)), 3)
    theirs = torch.autograd.grad((y * cot).sum(), params)
    assert torch.allclose(y, torch.cat([z, torch.stack([ell, L, R], 1)], 1), rtol=1e-12, atol=1e-12)
    for a, b in zip(ours, theirs):
        assert ((a - b).abs().max() / b.abs().max()).item() < 1e-10


def test_training_node_parameter_gradients_do_not_depend_on_the_data_needing_one():
    """The first stage skips the data's gradient when the data need none, and nothing else changes."""
    phi = random_potential(d=2, width=5, n_layers=1, seed=6)
    x = torch.randn(7, 2, dtype=F64)
    params = [p for name, p in phi.named_parameters() if name != "c"]

    def grads(x):
        z, ell, L, R = flow(phi, x, n_steps=2)
        return torch.autograd.grad((z.sum() + ell.sum() + L.sum() + 3 * R.sum()), params)

    for a, b in zip(grads(x), grads(x.clone().requires_grad_())):
        assert torch.equal(a, b)


def test_training_node_refuses_parameters_changed_before_backward():
    phi = random_potential(d=2, width=5, seed=7)
    z, ell, _, _ = flow(phi, torch.randn(4, 2, dtype=F64), n_steps=2)
    with torch.no_grad():
        phi.w.add_(1.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        (z.sum() + ell.sum()).backward()


def test_flow_without_gradients_builds_no_graph():
    phi = random_potential(d=2, width=5, seed=8)
    with torch.no_grad():
        z, *_ = flow(phi, torch.randn(4, 2, dtype=F64), n_steps=2)
    assert z.grad_fn is None
    with pytest.raises(ValueError, match="n_steps >= 1"):
        flow(phi, torch.randn(4, 2, dtype=F64), n_steps=0)


def test_training_node_keeps_its_activations_only_for_a_retained_graph():
    phi = random_potential(d=2, width=5, n_layers=1, seed=9)
    z, ell, _, _ = flow(phi, torch.randn(4, 2, dtype=F64), n_steps=2)
    loss = z.sum() + ell.sum()
    first = torch.autograd.grad(loss, phi.w, retain_graph=True)[0]
    assert torch.equal(torch.autograd.grad(loss, phi.w)[0], first)
    with pytest.raises(RuntimeError, match="second time"):
        torch.autograd.grad(loss, phi.w)


def test_training_integrations_reuse_their_scratch_memory_only_within_a_fit():
    """Within reuse_scratch() (a fit), an integration's one allocation goes to the next after the
    backward pass; the gradients do not change, a retained graph keeps its memory, and nothing stays
    allocated once the context ends. (One layer: the path that keeps its stages in one allocation.)"""
    from sklearn_otflow._trace import scratch

    phi = random_potential(d=2, width=5, n_layers=1, seed=10)
    xs = torch.randn(3, 6, 2, dtype=F64)
    params = [p for name, p in phi.named_parameters() if name != "c"]

    def grads(x, retain=False):
        z, ell, L, R = flow(phi, x, n_steps=2)
        return torch.autograd.grad(z.sum() + ell.mean() + L.sum() + R.sum(), params, retain_graph=retain)

    plain = [grads(x) for x in xs]
    with scratch.reuse_scratch():
        reused = [grads(x) for x in xs]
        assert len(scratch._SPARE) == 1
        taken = scratch._SPARE[0].data_ptr()
        z, ell, _, _ = flow(phi, xs[0], n_steps=2)  # takes it
        assert not scratch._SPARE
        grads_kept = torch.autograd.grad(z.sum() + ell.mean(), params, retain_graph=True)
        assert not scratch._SPARE  # the retained graph still holds it
        assert z.grad_fn.next_functions[0][0].tracer.work._buffer.data_ptr() == taken
    assert not scratch._SPARE
    for a, b in zip(plain, reused):
        for ga, gb in zip(a, b):
            assert torch.equal(ga, gb)
    assert all(torch.isfinite(g).all() for g in grads_kept)


def test_training_scratch_is_freed_by_the_backward_pass_not_by_the_graph():
    """Outside a fit, an integration's one allocation goes when its backward pass ends, although the
    graph (and so the node) lives on: the next iteration's forward pass must not find it still held."""
    import weakref

    phi = random_potential(d=2, width=5, n_layers=1, seed=10)
    z, ell, _, _ = flow(phi, torch.randn(6, 2, dtype=F64), n_steps=2)
    node = z.grad_fn.next_functions[0][0]
    buffer = weakref.ref(node.tracer.work._buffer)
    (z.sum() + ell.sum()).backward()
    assert buffer() is None
