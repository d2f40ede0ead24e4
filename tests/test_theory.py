"""sklearn_otflow.theory: the worked case "2d_A", identities over random Gaussians, a brute-force optimum."""

import sys
from decimal import Decimal

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy.optimize import minimize

from sklearn_otflow.theory import (
    AffineMap,
    brenier_map,
    empirical_moments,
    finite_alpha_optimum,
    gaussian_w2_squared,
    sample_w2_squared,
)

# Worked case "2d_A" of the design notes (theory.md).
M_2D_A = np.array([1.0, -0.5])
S_2D_A = np.array([[2.0, 0.6], [0.6, 0.5]])

FAST = settings(max_examples=40, deadline=None)


@st.composite
def gaussians(draw) -> tuple[np.ndarray, np.ndarray]:
    """(m, S) in d = 1..6, with S = U diag(sigma_i^2) U^T, sigma_i in [0.2, 3] and U orthogonal."""
    d = draw(st.integers(1, 6))
    m = draw(arrays(np.float64, d, elements=st.floats(-3.0, 3.0)))
    sigma = draw(arrays(np.float64, d, elements=st.floats(0.2, 3.0)))
    U, _ = np.linalg.qr(draw(arrays(np.float64, (d, d), elements=st.floats(-1.0, 1.0))))
    S = (U * sigma**2) @ U.T
    return m, 0.5 * (S + S.T)


def printed(value: str) -> pytest.approx:
    """``value`` to its printed precision: half a unit in its last digit."""
    exponent = Decimal(value).as_tuple().exponent
    return pytest.approx(float(value), rel=0, abs=0.5 * 10.0**exponent * (1 + 1e-9))


# --- slow, obviously-correct references ----------------------------------------------------------------


def expected_transport(a: np.ndarray, B: np.ndarray, m: np.ndarray, S: np.ndarray) -> float:
    """E[L] = 1/2 E|T(x) - x|^2 for T(x) = a + B(x - m), x ~ N(m, S)."""
    I = np.eye(len(m))
    return 0.5 * ((a - m) @ (a - m) + np.trace((B - I) @ S @ (B - I).T))


def kl_to_standard_normal(mean: np.ndarray, cov: np.ndarray) -> float:
    """KL(N(mean, cov) || N(0, I)) = 1/2 [tr cov + |mean|^2 - d - log det cov]."""
    sign, logdet = np.linalg.slogdet(cov)
    return 0.5 * (np.trace(cov) + mean @ mean - len(mean) - logdet) if sign > 0 else np.inf


def brute_force_optimum(m: np.ndarray, S: np.ndarray, alpha: float) -> tuple[float, np.ndarray, np.ndarray]:
    """Minimise E[L] + alpha KL over all affine maps a + B(x - m) (B not constrained) with BFGS."""
    d = len(m)

    def f(theta):
        a, B = theta[:d], theta[d:].reshape(d, d)
        J = expected_transport(a, B, m, S) + alpha * kl_to_standard_normal(a, B @ S @ B.T)
        # dJ/da = (a - m) + alpha a;  dJ/dB = (B - I) S + alpha (B S - B^{-T})
        grad_B = (B - np.eye(d)) @ S + alpha * (B @ S - np.linalg.inv(B).T)
        return J, np.concatenate([(1 + alpha) * a - m, grad_B.ravel()])

    res = minimize(
        f, np.concatenate([m, np.eye(d).ravel()]), jac=True, method="BFGS", options={"gtol": 1e-11}
    )
    return res.fun, res.x[:d], res.x[d:].reshape(d, d)


# --- the worked case -------------------------------------------------------------------------------------


def test_worked_case_w2():
    w2 = gaussian_w2_squared(M_2D_A, S_2D_A)
    assert w2 == printed("1.700309")
    assert w2 / 2 == printed("0.850154")


@pytest.mark.parametrize(
    "alpha, transport, kl",
    [
        (1, "0.256250", "0.2062"),
        (4, "0.577826", "0.03057"),
        (16, "0.765341", "0.002576"),
        (64, "0.827594", "0.000175"),
        (256, "0.844423", "1.117e-5"),
    ],
)
def test_worked_case_alpha_path(alpha, transport, kl):
    opt = finite_alpha_optimum(M_2D_A, S_2D_A, alpha)
    assert opt.transport == printed(transport)
    assert opt.kl == printed(kl)
    assert opt.objective == pytest.approx(opt.transport + alpha * opt.kl, rel=1e-14)


def test_worked_case_cholesky_map_is_not_optimal():
    """A Cholesky map also pushes N(m, S) to N(0, I) but sits 23% (relative RMS) away from Brenier's."""
    M = brenier_map(M_2D_A, S_2D_A).matrix
    C = np.linalg.inv(np.linalg.cholesky(S_2D_A))
    np.testing.assert_allclose(C @ S_2D_A @ C.T, np.eye(2), atol=1e-12)
    rel_rms = np.sqrt(np.trace((C - M) @ S_2D_A @ (C - M).T) / gaussian_w2_squared(M_2D_A, S_2D_A))
    assert rel_rms == pytest.approx(0.23, abs=0.005)
    cholesky_cost = expected_transport(np.zeros(2), C, M_2D_A, S_2D_A)  # T(x) = C(x - m)
    assert cholesky_cost > gaussian_w2_squared(M_2D_A, S_2D_A) / 2 + 0.01


# --- identities over random Gaussians ------------------------------------------------------------------


@FAST
@given(gaussians())
def test_brenier_map_pushes_to_standard_normal_at_cost_w2(gaussian):
    m, S = gaussian
    T = brenier_map(m, S)
    M = T.matrix
    np.testing.assert_allclose(M @ S @ M.T, np.eye(len(m)), atol=1e-9)
    np.testing.assert_allclose(M, M.T, atol=1e-12)
    assert np.linalg.eigvalsh(M).min() > 0
    np.testing.assert_allclose(T(m), 0.0, atol=1e-9)
    # optimal: its transport cost is W2^2 / 2
    cost = expected_transport(T(m), M, m, S)
    assert cost == pytest.approx(gaussian_w2_squared(m, S) / 2, rel=1e-9, abs=1e-10)


@FAST
@given(st.floats(-3.0, 3.0), st.floats(0.0, 3.0))
def test_w2_in_one_dimension(m, s):
    """W2^2(N(m, s^2), N(0, 1)) = m^2 + (s - 1)^2, Dirac (s = 0) included."""
    w2 = gaussian_w2_squared(np.array([m]), np.array([[s**2]]))
    assert w2 == pytest.approx(m**2 + (s - 1) ** 2, rel=1e-12, abs=1e-12)


@FAST
@given(gaussians(), st.floats(1e-3, 1e4))
def test_finite_alpha_map_pushes_to_its_gaussian(gaussian, alpha):
    m, S = gaussian
    opt = finite_alpha_optimum(m, S, alpha)
    B = opt.map.matrix
    np.testing.assert_allclose(opt.map(m), opt.mean, atol=1e-12)
    np.testing.assert_allclose(opt.mean, m / (1 + alpha), atol=1e-15)
    np.testing.assert_allclose(B @ S @ B.T, opt.cov, atol=1e-9)
    np.testing.assert_allclose(B @ S, S @ B, atol=1e-9)  # B = U diag(sigma'/sigma) U^T
    np.testing.assert_allclose(B, B.T, atol=1e-12)
    # the fields agree with the generic formulas for the map they come with
    assert opt.transport == pytest.approx(expected_transport(opt.mean, B, m, S), rel=1e-8, abs=1e-12)
    assert opt.kl == pytest.approx(kl_to_standard_normal(opt.mean, opt.cov), rel=1e-6, abs=1e-9)


@FAST
@given(gaussians())
def test_transport_rises_and_kl_falls_with_alpha(gaussian):
    m, S = gaussian
    path = [finite_alpha_optimum(m, S, a) for a in [0.01, 0.1, 0.5, 1, 2, 8, 32, 128, 1e3, 1e4]]
    assert np.all(np.diff([o.transport for o in path]) >= -1e-12)
    assert np.all(np.diff([o.kl for o in path]) <= 1e-12)
    assert np.all(np.diff([o.objective for o in path]) >= -1e-12)


@FAST
@given(gaussians())
def test_large_alpha_recovers_optimal_transport(gaussian):
    m, S = gaussian
    opt, T = finite_alpha_optimum(m, S, 1e6), brenier_map(m, S)
    assert opt.transport == pytest.approx(gaussian_w2_squared(m, S) / 2, abs=1e-4)
    np.testing.assert_allclose(opt.map.matrix, T.matrix, atol=1e-4)
    np.testing.assert_allclose(opt.map.offset, T.offset, atol=1e-4)
    np.testing.assert_allclose(opt.cov, np.eye(len(m)), atol=1e-4)


@FAST
@given(gaussians())
def test_transport_gap_decays_like_one_over_alpha(gaussian):
    """W2^2/2 - L_alpha ~ [|m|^2 + 1/2 sum (sigma_i - 1)^2] / alpha."""
    m, S = gaussian
    alpha = 1e4
    sigma = np.sqrt(np.linalg.eigvalsh(S))
    gap = gaussian_w2_squared(m, S) / 2 - finite_alpha_optimum(m, S, alpha).transport
    assert alpha * gap == pytest.approx(m @ m + 0.5 * ((sigma - 1) ** 2).sum(), rel=1e-2, abs=1e-6)


@FAST
@given(gaussians(), st.floats(1e-3, 1e4))
def test_bounds_from_the_optimal_transport_problem(gaussian, alpha):
    m, S = gaussian
    half_w2 = gaussian_w2_squared(m, S) / 2
    opt = finite_alpha_optimum(m, S, alpha)
    slack = 1e-10 * (1 + half_w2)
    assert opt.objective <= half_w2 + slack
    assert opt.kl <= half_w2 / alpha + slack
    if alpha >= 1:
        assert opt.transport >= half_w2 * (1 - alpha**-0.5) ** 2 - slack


@pytest.mark.parametrize(
    "m, S",
    [
        (np.array([0.7]), np.array([[2.5]])),
        (np.array([-1.0, 2.0]), np.diag([0.3, 4.0])),
        (M_2D_A, S_2D_A),
    ],
    ids=["1d", "2d-diagonal", "2d_A"],
)
@pytest.mark.parametrize("alpha", [0.5, 4.0, 64.0])
def test_finite_alpha_optimum_is_the_brute_force_minimiser(m, S, alpha):
    J, a, B = brute_force_optimum(m, S, alpha)
    opt = finite_alpha_optimum(m, S, alpha)
    assert opt.objective == pytest.approx(J, rel=1e-9)
    np.testing.assert_allclose(opt.map.matrix, B, atol=1e-5)
    np.testing.assert_allclose(opt.mean, a, atol=1e-5)


# --- samples -------------------------------------------------------------------------------------------


def test_empirical_moments_are_the_plug_in_moments():
    X = np.random.default_rng(0).normal(size=(50, 3)) @ np.array([[1.0, 0.5, 0], [0, 1, 0], [0, 0, 2]])
    mean, cov = empirical_moments(X)
    np.testing.assert_allclose(mean, X.mean(0))
    np.testing.assert_allclose(cov, np.cov(X, rowvar=False, bias=True))


def test_sample_w2_needs_pot(monkeypatch):
    monkeypatch.setitem(sys.modules, "ot", None)
    with pytest.raises(ImportError, match="sample_w2_squared needs POT: pip install pot"):
        sample_w2_squared(np.zeros((10, 2)))


def test_sample_w2_agrees_with_the_gaussian_closed_form():
    pytest.importorskip("ot")
    X = np.random.default_rng(0).multivariate_normal(M_2D_A, S_2D_A, size=1000)
    w2 = sample_w2_squared(X, random_state=0)
    assert w2 == pytest.approx(gaussian_w2_squared(*empirical_moments(X)), rel=0.15)
    assert w2 == pytest.approx(gaussian_w2_squared(M_2D_A, S_2D_A), rel=0.15)


# --- input validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mean, cov, match",
    [
        (np.zeros((2, 1)), np.eye(2), r"expected mean of shape \(d,\).*got shape \(2, 1\)"),
        (np.zeros(0), np.eye(0), r"expected mean of shape \(d,\) with d >= 1, got shape \(0,\)"),
        (np.zeros(2), np.eye(3), r"expected cov of shape \(2, 2\) to match mean, got shape \(3, 3\)"),
        (np.zeros(2), np.ones(2), r"expected cov of shape \(2, 2\).*got shape \(2,\)"),
        (np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), "expected a symmetric cov, got max"),
        (np.zeros(2), np.diag([1.0, -0.1]), r"expected a positive (semi-)?definite cov, got smallest"),
        (np.array([np.nan, 0]), np.eye(2), "expected finite mean and cov"),
    ],
)
def test_bad_gaussians_are_rejected(mean, cov, match):
    for check in (gaussian_w2_squared, brenier_map, lambda m, S: finite_alpha_optimum(m, S, 1.0)):
        with pytest.raises(ValueError, match=match):
            check(mean, cov)


def test_maps_need_a_positive_definite_cov():
    singular = np.array([[1.0, 1.0], [1.0, 1.0]])
    assert gaussian_w2_squared(np.zeros(2), singular) == pytest.approx(2 + 2 - 2 * np.sqrt(2))
    for check in (brenier_map, lambda m, S: finite_alpha_optimum(m, S, 1.0)):
        with pytest.raises(ValueError, match="expected a positive definite cov, got smallest eigenvalue"):
            check(np.zeros(2), singular)


@pytest.mark.parametrize("alpha", [0, -1.0, np.inf, np.nan, "1"])
def test_alpha_must_be_positive(alpha):
    with pytest.raises(ValueError, match="expected alpha to be a finite number > 0, got"):
        finite_alpha_optimum(np.zeros(2), np.eye(2), alpha)


def test_bad_samples_are_rejected():
    with pytest.raises(ValueError, match=r"expected X of shape \(n_samples, d\).*got shape \(5,\)"):
        empirical_moments(np.zeros(5))
    with pytest.raises(ValueError, match=r"expected X of shape \(n, 2\) or \(2,\), got shape \(4, 3\)"):
        AffineMap(np.eye(2), np.zeros(2))(np.zeros((4, 3)))
