"""The objective's three parts and the log-density, on flows with known answers."""

import math

import torch

from sklearn_otflow import Potential, log_prob, objective
from sklearn_otflow._loss import negative_log_likelihood

F64 = torch.float64


def test_objective_parts_on_a_translation():
    q = torch.tensor([1.0, -0.5], dtype=F64)
    phi = Potential(2, width=4).to(F64)
    with torch.no_grad():
        phi.w.zero_()
        phi.A.zero_()
        phi.b.copy_(torch.cat([q, 0.5 * (q @ q).reshape(1)]))
    x = torch.randn(64, 2, dtype=F64)
    out = objective(phi, x, alpha=7.0, alpha_hjb=3.0, n_steps=2)
    nll = -torch.distributions.Normal(q, 1.0).log_prob(x).sum(1).mean()
    assert abs(out.transport.item() - 0.625) < 1e-12  # |q|^2 / 2
    assert abs(out.hjb.item()) < 1e-12
    assert abs(out.nll.item() - nll.item()) < 1e-12
    assert abs(out.loss.item() - (0.625 + 7.0 * nll.item())) < 1e-10


def test_nll_of_the_identity_flow_is_the_standard_normal():
    z = torch.tensor([[0.0, 0.0], [1.0, 2.0]], dtype=F64)
    nll = negative_log_likelihood(z, torch.zeros(2, dtype=F64))
    assert torch.allclose(nll, torch.tensor([math.log(2 * math.pi), math.log(2 * math.pi) + 2.5], dtype=F64))


def test_loss_weights_enter_linearly():
    torch.manual_seed(0)
    phi = Potential(3, width=8).to(F64)
    x = torch.randn(32, 3, dtype=F64)
    a = objective(phi, x, alpha=1.0, alpha_hjb=0.0, n_steps=3)
    b = objective(phi, x, alpha=5.0, alpha_hjb=2.0, n_steps=3)
    assert torch.allclose(b.loss, a.transport + 5.0 * a.nll + 2.0 * a.hjb)
    assert torch.allclose(log_prob(phi, x, n_steps=3).mean(), -a.nll)


def test_bfloat16_training_loss_and_gradient_are_close_to_float64():
    torch.manual_seed(0)
    phi = Potential(10, width=32, n_layers=2)
    with torch.no_grad():
        phi.w.normal_()  # switch the network on (it starts at w = 0)
    x = torch.randn(128, 10)
    phi64 = Potential(10, width=32, n_layers=2).to(F64)
    phi64.load_state_dict({k: v.double() for k, v in phi.state_dict().items()})
    lo = objective(phi, x, 20.0, 5.0, 4, gemm_dtype=torch.bfloat16)
    hi = objective(phi64, x.double(), 20.0, 5.0, 4)
    assert abs(lo.loss.item() - hi.loss.item()) / abs(hi.loss.item()) < 1e-3
    g_lo = torch.autograd.grad(lo.loss, list(phi.parameters()), allow_unused=True, materialize_grads=True)
    g_hi = torch.autograd.grad(hi.loss, list(phi64.parameters()), allow_unused=True, materialize_grads=True)
    flat_lo = torch.cat([g.flatten() for g in g_lo]).double()
    flat_hi = torch.cat([g.flatten() for g in g_hi])
    assert ((flat_lo - flat_hi).norm() / flat_hi.norm()).item() < 1e-2
