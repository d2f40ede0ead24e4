"""alpha_path: the API around the fits (the convergence values are in test_convergence.py)."""

import numpy as np
import pytest

from sklearn_otflow import OTFlowDensity, alpha_path

TINY = dict(hidden_width=4, n_steps=2, max_iter=8, batch_size=64, random_state=0)


@pytest.fixture(scope="module")
def X():
    return np.random.default_rng(0).multivariate_normal([1.0, -0.5], [[2.0, 0.6], [0.6, 0.5]], size=300)


def test_parallel_and_serial_paths_agree(X):
    serial = alpha_path(OTFlowDensity(**TINY), X, [1.0, 5.0], random_state=0, gaussian_reference=True)
    parallel = alpha_path(
        OTFlowDensity(**TINY), X, [1.0, 5.0], random_state=0, gaussian_reference=True, n_jobs=2
    )
    for key in ("test_nll", "transport", "hjb", "straightness", "kl", "reference_transport", "map_error"):
        np.testing.assert_allclose(serial[key], parallel[key], rtol=1e-12)
    assert [est.alpha for est in serial.estimators] == [1.0, 5.0]
    assert np.all(np.diff(serial.reference_transport) > 0) and serial.w2_half > serial.reference_transport[-1]


def test_kl_estimate_is_the_training_nll_minus_the_gaussian_entropy(X):
    path = alpha_path(
        OTFlowDensity(standardize=False, **TINY), X, [3.0], X_test=X[:50], gaussian_reference=True
    )
    est = path.estimators[0]
    cov = np.cov(X.T, bias=True)
    entropy = 0.5 * (2 * np.log(2 * np.pi * np.e) + np.linalg.slogdet(cov)[1])
    assert path.kl[0] == pytest.approx(-est.score(X) - entropy, rel=1e-10)
    assert path.test_nll[0] == pytest.approx(-est.score(X[:50]))


@pytest.mark.parametrize("alphas", [[], [0.0, 1.0], [[1.0]], [-2.0]])
def test_bad_alphas(X, alphas):
    with pytest.raises(ValueError, match="alphas must be a non-empty 1-D sequence of positive numbers"):
        alpha_path(OTFlowDensity(**TINY), X, alphas)
