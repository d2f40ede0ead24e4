"""Every trace path against autograd, the slow obvious reference, and against each other."""

import pytest
import torch
from test_potential import F64, autograd_grad_and_trace, random_potential, rel_err

from sklearn_otflow import _trace
from sklearn_otflow._trace import base, general, one_layer

# each kept path with the layer counts it serves (the general path serves all)
PATHS = [(general, 1), (general, 2), (general, 3), (one_layer, 1)]


def take(path, monkeypatch):
    """Force ``path`` wherever the trace chooses one."""
    monkeypatch.setattr(_trace, "choose", lambda *args: path)


@pytest.mark.parametrize("path, n_layers", PATHS, ids=lambda v: getattr(v, "__name__", v))
@pytest.mark.parametrize("block", [1 << 20, 40])  # one chunk of samples, and many
def test_parameter_gradients_through_the_trace_equal_autograd(path, n_layers, block, monkeypatch):
    """Training differentiates through grad_and_trace: its custom backward against double autograd."""
    monkeypatch.setattr(base, "BLOCK", block)
    take(path, monkeypatch)
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
    """Without autograd the general path runs over smaller (cache-sized) chunks of samples: same values."""
    take(general, monkeypatch)
    phi = random_potential(3, 6, n_layers, 4, seed=n_layers)
    x = torch.randn(50, 3, dtype=F64)
    grad, trace = phi.grad_and_trace(x, 0.4)
    monkeypatch.setattr(base, "EVAL_BLOCK_BYTES", 8 * 3 * 6 * 7)  # chunks of 7 samples
    with torch.no_grad():
        grad_eval, trace_eval = phi.grad_and_trace(x, 0.4)
    assert torch.equal(grad, grad_eval)
    assert rel_err(trace_eval, trace) < 1e-14


@pytest.mark.parametrize("path, n_layers", [p for p in PATHS if p[0] is not general], ids=str)
def test_every_path_gives_the_general_paths_values(path, n_layers, monkeypatch):
    phi = random_potential(5, 7, n_layers, 4, seed=n_layers)
    x = torch.randn(11, 5, dtype=F64)
    take(path, monkeypatch)
    special = phi.grad_and_trace(x, -0.3)
    take(general, monkeypatch)
    for a, b in zip(special, phi.grad_and_trace(x, -0.3)):
        assert rel_err(a, b) < 1e-13


@pytest.mark.parametrize(
    "d, width, n_layers, exact, path",
    [
        (3, 6, 1, True, one_layer),
        (3, 6, 1, False, general),  # bfloat16 blocks
        (3, 6, 2, True, general),
        (300, 256, 1, True, general),  # W of d m^2 > 2^24 entries
    ],
)
def test_choose_takes_each_path_where_it_applies(d, width, n_layers, exact, path):
    weights = random_potential(d, width, n_layers, 4, seed=0).weights()
    assert _trace.choose(d, weights, exact) is path
