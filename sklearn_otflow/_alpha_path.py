r"""The :math:`\alpha`-path: one estimator configuration fitted over a list of likelihood weights.

Li & Jing show that as :math:`\alpha \to \infty` OT-Flow's objective :math:`E[L] + \alpha\,\mathrm{KL}`
approaches the optimal transport problem. :func:`alpha_path` lets a user watch this on their own data: per
:math:`\alpha`, the held-out negative log-likelihood, the transport cost :math:`E[L]`, the HJB residual
:math:`E[R]`, and the Jensen straightness ratio :math:`E[L] / (\tfrac12 E|z(1) - x|^2) - 1` (zero exactly
for straight paths, which optimal transport has); for Gaussian data also the closed-form optimum of
:mod:`sklearn_otflow.theory` beside them.
"""

from __future__ import annotations

import numpy as np
import torch
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import train_test_split
from sklearn.utils import Bunch

from ._loss import negative_log_likelihood
from .theory import brenier_map, empirical_moments, finite_alpha_optimum, gaussian_w2_squared

__all__ = ["alpha_path"]


def _fit(estimator, alpha: float, X: np.ndarray):
    return clone(estimator).set_params(alpha=alpha).fit(X)


def _mean_nll(z: np.ndarray, log_det: np.ndarray) -> float:
    """Mean negative log-likelihood in the model's coordinates, from the flow's end state."""
    return negative_log_likelihood(torch.from_numpy(z), torch.from_numpy(log_det)).mean().item()


def _gaussian_entropy(cov: np.ndarray) -> float:
    d = cov.shape[0]
    return 0.5 * (d * np.log(2 * np.pi * np.e) + np.linalg.slogdet(cov)[1])


def alpha_path(
    estimator,
    X,
    alphas,
    *,
    X_test=None,
    test_size: float = 0.2,
    gaussian_reference: bool = False,
    n_jobs: int | None = None,
    random_state=None,
) -> Bunch:
    r"""Fit ``estimator`` for each :math:`\alpha` in ``alphas`` and measure the flow.

    All quantities are in the model's coordinates (after its standardization), where the flow acts;
    with ``standardize=False`` these are the data's own.

    Parameters
    ----------
    estimator : OTFlowDensity
        The configuration to fit; cloned for each :math:`\alpha`.
    X : array-like of shape (n_samples, n_features)
        Training data (or all data, split when ``X_test`` is None).
    alphas : sequence of float
        The weights :math:`\alpha` to fit.
    X_test : array-like of shape (n_test, n_features), default=None
        Held-out data; if None, ``test_size`` of ``X`` is held out.
    test_size : float, default=0.2
        Fraction held out when ``X_test`` is None.
    gaussian_reference : bool, default=False
        Also return the closed-form optimum for Gaussian data with the training sample's plug-in mean
        and covariance, and the flow's estimate of :math:`\mathrm{KL}(\rho(\cdot, 1) \| N(0, I))`
        (its mean NLL minus the Gaussian entropy of the training sample).
    n_jobs : int, default=None
        Fits run in parallel through joblib, as in scikit-learn's searches.
    random_state : int, RandomState instance or None, default=None
        Seeds the held-out split.

    Returns
    -------
    path : Bunch
        Arrays of shape (n_alphas,): ``alpha``, ``test_nll``, ``transport``, ``hjb``, ``straightness``;
        with ``gaussian_reference`` also ``kl``, ``reference_transport``, ``reference_kl``,
        ``reference_objective`` (:math:`L_\alpha`, :math:`\mathrm{KL}_\alpha`, :math:`J_\alpha`),
        ``map_error`` (RMS of :math:`z(1) - T_\alpha(x)` over RMS of :math:`T^*(x) - x`) and the scalar
        ``w2_half`` (:math:`W_2^2/2`, the :math:`\alpha \to \infty` limit of the transport cost). Also
        ``estimators``, the fitted models.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_otflow import OTFlowDensity, alpha_path
    >>> X = np.random.default_rng(0).normal(size=(200, 2))
    >>> est = OTFlowDensity(hidden_width=4, n_steps=2, max_iter=10, random_state=0)
    >>> path = alpha_path(est, X, [1.0, 10.0], random_state=0)
    >>> path.test_nll.shape, path.straightness.shape
    ((2,), (2,))
    """
    alphas = np.asarray(alphas, dtype=float)
    if alphas.ndim != 1 or alphas.size == 0 or not np.all(alphas > 0):
        raise ValueError(f"alphas must be a non-empty 1-D sequence of positive numbers, got {alphas!r}.")
    X = np.asarray(X, dtype=float)
    if X_test is None:
        X, X_test = train_test_split(X, test_size=test_size, random_state=random_state)
    fitted = Parallel(n_jobs=n_jobs)(delayed(_fit)(estimator, alpha, X) for alpha in alphas)

    rows = []
    for est in fitted:
        X_model = (X - est.mean_) / est.scale_
        diag = est.flow_diagnostics(X)
        transport = diag.transport_cost.mean()
        chord = 0.5 * ((diag.latent - X_model) ** 2).sum(1).mean()
        rows.append(
            dict(
                test_nll=-est.score(X_test),
                transport=transport,
                hjb=diag.hjb_residual.mean(),
                straightness=transport / chord - 1.0,
                train_nll_model=_mean_nll(diag.latent, diag.log_det),
                latent=diag.latent,
                X_model=X_model,
            )
        )
    path = Bunch(alpha=alphas, estimators=fitted)
    for key in ("test_nll", "transport", "hjb", "straightness"):
        path[key] = np.array([row[key] for row in rows])
    if gaussian_reference:
        mean, cov = empirical_moments(rows[0]["X_model"])
        entropy = _gaussian_entropy(cov)
        brenier = brenier_map(mean, cov)
        path.w2_half = 0.5 * gaussian_w2_squared(mean, cov)
        refs = [finite_alpha_optimum(mean, cov, alpha) for alpha in alphas]
        path.kl = np.array([row["train_nll_model"] - entropy for row in rows])
        path.reference_transport = np.array([ref.transport for ref in refs])
        path.reference_kl = np.array([ref.kl for ref in refs])
        path.reference_objective = np.array([ref.objective for ref in refs])
        scale = np.sqrt(((brenier(rows[0]["X_model"]) - rows[0]["X_model"]) ** 2).sum(1).mean())
        path.map_error = np.array(
            [
                np.sqrt(((row["latent"] - ref.map(row["X_model"])) ** 2).sum(1).mean()) / scale
                for row, ref in zip(rows, refs)
            ]
        )
    return path
