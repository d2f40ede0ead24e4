"""The potential's analytic gradient and Hessian trace against autograd, the slow obvious reference."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from sklearn_otflow import Potential, _potential
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


@pytest.mark.parametrize("n_layers", [1, 2, 3])
@pytest.mark.parametrize("block", [1 << 20, 40])  # one chunk of samples, and many
@pytest.mark.parametrize("keep_blocks", [True, False])  # several layers: _deep_forward, or the general path
def test_parameter_gradients_through_the_trace_equal_autograd(n_layers, block, keep_blocks, monkeypatch):
    """Training differentiates through grad_and_trace: its custom backward against double autograd."""
    monkeypatch.setattr(_potential, "_BLOCK", block)
    if not keep_blocks:
        monkeypatch.setattr(_potential, "_DEEP_BLOCK", 0)
    phi = random_potential(3, 6, n_layers, 4, seed=n_layers)
    x = torch.randn(7, 3, dtype=F64, requires_grad=True)
    weights = torch.randn(7, dtype=F64)
    params = [p for name, p in phi.named_parameters() if name != "c"] + [x]

    grad, trace = phi.grad_and_trace(x, 0.4)
    ours = torch.autograd.grad((trace * weights).sum() + (grad**2).sum(), params)
    ref_grad, ref_trace = autograd_grad_and_trace(phi, x, 0.4)
    theirs = torch.autograd.grad((ref_trace * weights).sum() + (ref_grad**2).sum(), params)
    for a, b in zip(ours, theirs):
        assert rel_err(a, b) < 1e-10


@pytest.mark.parametrize("n_layers", [1, 3])
def test_evaluation_chunks_give_the_training_trace(n_layers, monkeypatch):
    """Without autograd the trace runs over smaller (cache-sized) chunks of samples: same values. (Several
    layers with small blocks take _deep_forward, without chunks: switched off here.)"""
    monkeypatch.setattr(_potential, "_DEEP_BLOCK", 0)
    phi = random_potential(3, 6, n_layers, 4, seed=n_layers)
    x = torch.randn(50, 3, dtype=F64)
    grad, trace = phi.grad_and_trace(x, 0.4)
    monkeypatch.setattr(_potential, "_EVAL_BLOCK_BYTES", 8 * 3 * 6 * 7)  # chunks of 7 samples
    with torch.no_grad():
        grad_eval, trace_eval = phi.grad_and_trace(x, 0.4)
    assert torch.equal(grad, grad_eval)
    assert rel_err(trace_eval, trace) < 1e-14


@pytest.mark.parametrize("n_layers", [2, 3])
def test_several_layers_give_the_same_values_on_both_paths(n_layers, monkeypatch):
    """Several layers with small blocks keep them (_deep_forward); larger ones take the general path."""
    phi = random_potential(5, 7, n_layers, 4, seed=n_layers)
    x = torch.randn(11, 5, dtype=F64)
    kept = phi.grad_and_trace(x, -0.3)
    monkeypatch.setattr(_potential, "_DEEP_BLOCK", 0)
    general = phi.grad_and_trace(x, -0.3)
    for a, b in zip(kept, general):
        assert rel_err(a, b) < 1e-13


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
