"""The potential: its value, initialisation, and its analytic gradient and Hessian trace against autograd,
the slow obvious reference (each trace path against it: tests/test_trace.py)."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_otflow import Potential
from sklearn_otflow._potential import log_cosh

F64 = torch.float64


def autograd_grad_and_trace(phi: Potential, x: torch.Tensor, t: float):
    """Reference: nabla_s Phi by autograd, then the trace by d more backward passes (create_graph kept)."""
    if not x.requires_grad:
        x = x.detach().clone().requires_grad_(True)
    tt = torch.full((x.shape[0], 1), t, dtype=x.dtype, device=x.device, requires_grad=True)
    gx, gt = torch.autograd.grad(phi(x, tt).sum(), (x, tt), create_graph=True)
    trace = sum(torch.autograd.grad(gx[:, i].sum(), x, create_graph=True)[0][:, i] for i in range(x.shape[1]))
    return torch.cat([gx, gt], 1), trace


def random_potential(d, width, n_layers, rank, seed, device="cpu", dtype=F64, scale=1.0):
    torch.manual_seed(seed)
    phi = Potential(d, width=width, n_layers=n_layers, rank=rank).to(device=device, dtype=dtype)
    with torch.no_grad():  # move off the initial point (w = b = c = 0)
        for p in phi.parameters():
            p.normal_(0.0, scale)
    return phi


def rel_err(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


@settings(max_examples=40, deadline=None)
@given(
    d=st.integers(1, 30),
    width=st.integers(1, 24),
    n_layers=st.integers(1, 3),
    rank=st.integers(1, 12),
    n=st.integers(1, 9),
    t=st.floats(-2.0, 2.0),
    x_scale=st.sampled_from([0.1, 1.0, 30.0, 1e3]),
    seed=st.integers(0, 2**16),
)
def test_grad_and_trace_equal_autograd(d, width, n_layers, rank, n, t, x_scale, seed):
    phi = random_potential(d, width, n_layers, rank, seed)
    x = torch.randn(n, d, dtype=F64) * x_scale
    grad, trace = phi.grad_and_trace(x, t)
    ref_grad, ref_trace = autograd_grad_and_trace(phi, x, t)
    assert grad.shape == (n, d + 1) and trace.shape == (n,)
    assert rel_err(grad, ref_grad) < 1e-10
    assert rel_err(trace, ref_trace) < 1e-10


def test_trace_backward_passes_gradcheck():
    phi = random_potential(2, 5, 2, 3, seed=3)
    x = torch.randn(4, 2, dtype=F64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: phi.grad_and_trace(x, 0.7)[1], (x,))


def test_large_inputs_do_not_overflow_in_float32():
    phi = random_potential(4, 16, 2, 5, seed=0, dtype=torch.float32)
    x = torch.full((3, 4), 1e4)
    x[1] = -1e4
    grad, trace = phi.grad_and_trace(x, 1.0)
    assert torch.isfinite(grad).all() and torch.isfinite(trace).all()
    assert torch.isfinite(phi(x, 1.0)).all()
    assert torch.equal(log_cosh(torch.tensor([1e4, -1e4])), torch.tensor([1e4, 1e4]))


def test_log_cosh_is_log_two_cosh():
    u = torch.linspace(-15, 15, 101, dtype=F64)
    assert torch.allclose(log_cosh(u), torch.log(2 * torch.cosh(u)), rtol=1e-14, atol=0)


def test_bfloat16_block_products_are_close_to_exact():
    """Training may run the m x d block products in bfloat16: the loss and its gradient stay close."""
    phi = random_potential(12, 32, 2, 5, seed=1, dtype=torch.float32, scale=0.3)
    x = torch.randn(64, 12)
    grads = []
    for dtype in (None, torch.bfloat16):
        grad, trace = phi.grad_and_trace(x, 0.3, gemm_dtype=dtype)
        grads.append((trace, torch.autograd.grad(trace.square().sum(), list(phi.layers.parameters()))))
    (t32, g32), (t16, g16) = grads
    assert rel_err(t16, t32) < 2e-2
    for a, b in zip(g16, g32):
        assert rel_err(a, b) < 5e-2


def test_layers_are_initialised_independently_and_rank_is_capped():
    phi = Potential(2, width=8, n_layers=3, rank=10)
    w = [layer.weight for layer in phi.layers]
    assert not torch.equal(w[0], w[1]) and not torch.equal(w[1], w[2])
    assert phi.A.shape == (3, 3)
    assert torch.equal(phi.w.data, torch.zeros(8)) and phi.c.item() == 0.0


@pytest.mark.parametrize(
    "kwargs", [dict(n_features=0), dict(n_features=2, width=0), dict(n_features=2, n_layers=0)]
)
def test_bad_sizes_raise(kwargs):
    with pytest.raises(ValueError, match="Expected"):
        Potential(**kwargs)


def test_runs_on_the_requested_device(device):
    phi = random_potential(3, 8, 2, 4, seed=0, device=device)
    x = torch.randn(5, 3, dtype=F64, device=device)
    grad, trace = phi.grad_and_trace(x, 0.5)
    ref_grad, ref_trace = autograd_grad_and_trace(phi, x, 0.5)
    assert grad.device.type == device.type
    assert rel_err(trace, ref_trace) < 1e-10 and rel_err(grad, ref_grad) < 1e-10
