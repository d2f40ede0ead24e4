r"""Closed-form references for Gaussian data pushed to the standard normal.

For data :math:`\rho_0 = N(m, S)` in any dimension :math:`d` and the target :math:`\gamma = N(0, I_d)`, the
quantities OT-Flow estimates have closed forms: the squared 2-Wasserstein distance, the Brenier (optimal
transport) map, and, for a finite weight :math:`\alpha`, the exact minimiser of
:math:`\mathbb E[L] + \alpha\,\mathrm{KL}(\rho(\cdot, 1)\,\|\,\gamma)` with :math:`L = \tfrac12|T(x) - x|^2`.
They serve as test oracles for the consequences of Li & Jing's convergence results that we check: as
:math:`\alpha` grows the optimum approaches the optimal transport map, :math:`L` rises to :math:`W_2^2/2`
and the KL falls to zero. Evaluate them at the training sample's plug-in moments (:func:`empirical_moments`)
to compare with a flow fitted to that sample; :func:`sample_w2_squared` gives :math:`W_2^2` for
non-Gaussian data through POT.
"""

from __future__ import annotations

from numbers import Real
from typing import NamedTuple

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.utils import check_random_state

__all__ = [
    "AffineMap",
    "FiniteAlphaOptimum",
    "brenier_map",
    "empirical_moments",
    "finite_alpha_optimum",
    "gaussian_w2_squared",
    "sample_w2_squared",
]

_SYMMETRY_RTOL = 1e-8


class AffineMap(NamedTuple):
    r"""The affine map :math:`T(x) = A x + b`, applied row-wise.

    It pushes :math:`N(\mu, \Sigma)` to :math:`N(A\mu + b, A \Sigma A^\top)`.

    Attributes
    ----------
    matrix : ndarray of shape (d, d)
        :math:`A`.
    offset : ndarray of shape (d,)
        :math:`b`.

    Examples
    --------
    >>> T = AffineMap(2.0 * np.eye(3), np.ones(3))
    >>> T(np.zeros((5, 3))).shape
    (5, 3)
    """

    matrix: NDArray[np.float64]
    offset: NDArray[np.float64]

    def __call__(self, X: ArrayLike) -> NDArray[np.float64]:
        """Map the rows of X, of shape (n, d) (or one point of shape (d,)), to :math:`T(x)`, same shape."""
        X = np.asarray(X, dtype=np.float64)
        d = self.offset.shape[0]
        if X.ndim not in (1, 2) or X.shape[-1] != d:
            raise ValueError(f"expected X of shape (n, {d}) or ({d},), got shape {X.shape}")
        return X @ self.matrix.T + self.offset


class FiniteAlphaOptimum(NamedTuple):
    r"""The exact minimiser of :math:`J = \mathbb E[L] + \alpha\,\mathrm{KL}` for Gaussian data.

    Attributes
    ----------
    mean : ndarray of shape (d,)
        :math:`m_\alpha`, the mean of the pushed-forward distribution :math:`\rho(\cdot, 1)`.
    cov : ndarray of shape (d, d)
        :math:`S_\alpha`, its covariance.
    map : AffineMap
        :math:`T_\alpha`, the optimal map from the data to :math:`\rho(\cdot, 1)`.
    transport : float
        :math:`L_\alpha = \tfrac12\mathbb E|T_\alpha(x) - x|^2`.
    kl : float
        :math:`\mathrm{KL}_\alpha = \mathrm{KL}(N(m_\alpha, S_\alpha)\,\|\,N(0, I))`.
    objective : float
        :math:`J_\alpha = L_\alpha + \alpha\,\mathrm{KL}_\alpha`.

    Examples
    --------
    >>> opt = finite_alpha_optimum(np.zeros(2), np.eye(2), alpha=1.0)
    >>> type(opt).__name__, opt.mean.shape, opt.cov.shape, opt.map.matrix.shape
    ('FiniteAlphaOptimum', (2,), (2, 2), (2, 2))
    """

    mean: NDArray[np.float64]
    cov: NDArray[np.float64]
    map: AffineMap
    transport: float
    kl: float
    objective: float


def _check_gaussian(
    mean: ArrayLike, cov: ArrayLike, *, definite: bool
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Validate (mean, cov); return m and the eigendecomposition S = U diag(lam) U^T as (m, lam, U)."""
    m = np.asarray(mean, dtype=np.float64)
    S = np.asarray(cov, dtype=np.float64)
    if m.ndim != 1 or m.shape[0] == 0:
        raise ValueError(f"expected mean of shape (d,) with d >= 1, got shape {m.shape}")
    d = m.shape[0]
    if S.shape != (d, d):
        raise ValueError(f"expected cov of shape ({d}, {d}) to match mean, got shape {S.shape}")
    if not (np.isfinite(m).all() and np.isfinite(S).all()):
        raise ValueError("expected finite mean and cov, got NaN or infinity")
    scale = max(np.abs(S).max(), np.finfo(np.float64).tiny)
    asymmetry = np.abs(S - S.T).max()
    if asymmetry > _SYMMETRY_RTOL * scale:
        raise ValueError(f"expected a symmetric cov, got max |cov - cov.T| = {asymmetry:.3g}")
    lam, U = np.linalg.eigh(0.5 * (S + S.T))
    tol = d * np.finfo(np.float64).eps * scale
    if definite and lam[0] <= tol:
        raise ValueError(f"expected a positive definite cov, got smallest eigenvalue {lam[0]:.3g}")
    if lam[0] < -tol:
        raise ValueError(f"expected a positive semi-definite cov, got smallest eigenvalue {lam[0]:.3g}")
    return m, np.clip(lam, 0.0, None), U


def gaussian_w2_squared(mean: ArrayLike, cov: ArrayLike) -> float:
    r"""Squared 2-Wasserstein distance between :math:`N(m, S)` and :math:`N(0, I_d)`.

    .. math:: W_2^2 = |m|^2 + \operatorname{tr} S + d - 2 \operatorname{tr} S^{1/2}.

    Parameters
    ----------
    mean : array-like of shape (d,)
        :math:`m`.
    cov : array-like of shape (d, d)
        :math:`S`, symmetric positive semi-definite.

    Returns
    -------
    w2_squared : float
        :math:`W_2^2`. The optimal expected transport cost :math:`\mathbb E[L]` is half of it.

    Examples
    --------
    >>> w2 = gaussian_w2_squared(np.zeros(2), np.eye(2))
    >>> type(w2).__name__
    'float'
    """
    m, lam, _ = _check_gaussian(mean, cov, definite=False)
    d = m.shape[0]
    return float(m @ m + lam.sum() + d - 2.0 * np.sqrt(lam).sum())


def brenier_map(mean: ArrayLike, cov: ArrayLike) -> AffineMap:
    r"""The optimal transport (Brenier) map from :math:`N(m, S)` to :math:`N(0, I_d)`.

    .. math:: T^*(x) = S^{-1/2}(x - m),

    with the symmetric square root :math:`S^{1/2} = U \operatorname{diag}(\sigma_i) U^\top`. Other maps push
    :math:`N(m, S)` to :math:`N(0, I)` (e.g. through a Cholesky factor), but only this one is optimal.

    Parameters
    ----------
    mean : array-like of shape (d,)
        :math:`m`.
    cov : array-like of shape (d, d)
        :math:`S`, symmetric positive definite.

    Returns
    -------
    map : AffineMap
        ``matrix`` :math:`= S^{-1/2}`, ``offset`` :math:`= -S^{-1/2} m`.

    Examples
    --------
    >>> T = brenier_map(np.array([1.0, -0.5]), np.array([[2.0, 0.6], [0.6, 0.5]]))
    >>> T.matrix.shape, T(np.zeros((4, 2))).shape
    ((2, 2), (4, 2))
    """
    m, lam, U = _check_gaussian(mean, cov, definite=True)
    M = (U / np.sqrt(lam)) @ U.T  # S^{-1/2} = U diag(1/sigma_i) U^T
    return AffineMap(M, -M @ m)


def finite_alpha_optimum(mean: ArrayLike, cov: ArrayLike, alpha: float) -> FiniteAlphaOptimum:
    r"""The exact optimum of OT-Flow's objective at a finite :math:`\alpha`, for Gaussian data.

    Minimises :math:`\mathbb E[L] + \alpha\,\mathrm{KL}(\rho(\cdot, 1)\,\|\,N(0, I))` over maps :math:`T` with
    :math:`L = \tfrac12|T(x) - x|^2` (one JKO step of size :math:`\alpha`). With
    :math:`S = U \operatorname{diag}(\sigma_i^2) U^\top`:

    .. math::

        \sigma'_i = \frac{\sigma_i + \sqrt{\sigma_i^2 + 4\alpha(1+\alpha)}}{2(1+\alpha)}, \qquad
        m_\alpha = \frac{m}{1+\alpha}, \qquad S_\alpha = U \operatorname{diag}(\sigma_i'^2) U^\top,

        T_\alpha(x) = m_\alpha + U \operatorname{diag}(\sigma'_i/\sigma_i) U^\top (x - m),

        L_\alpha = \tfrac12\Bigl[\tfrac{\alpha^2 |m|^2}{(1+\alpha)^2}
        + \textstyle\sum_i (\sigma_i - \sigma'_i)^2\Bigr],
        \qquad
        \mathrm{KL}_\alpha = \tfrac12\Bigl[\textstyle\sum_i \sigma_i'^2 + |m_\alpha|^2 - d
        - 2\sum_i \log\sigma'_i\Bigr],

    and :math:`J_\alpha = L_\alpha + \alpha\,\mathrm{KL}_\alpha`. As :math:`\alpha \to \infty`,
    :math:`T_\alpha` tends to :func:`brenier_map` and :math:`L_\alpha` to :math:`W_2^2/2`.

    Parameters
    ----------
    mean : array-like of shape (d,)
        :math:`m`.
    cov : array-like of shape (d, d)
        :math:`S`, symmetric positive definite.
    alpha : float
        The weight :math:`\alpha > 0` of the KL (likelihood) term.

    Returns
    -------
    optimum : FiniteAlphaOptimum
        ``(mean, cov, map, transport, kl, objective)``.

    Examples
    --------
    >>> opt = finite_alpha_optimum(np.array([1.0, -0.5]), np.array([[2.0, 0.6], [0.6, 0.5]]), alpha=4.0)
    >>> opt.mean.shape, opt.cov.shape, opt.map(np.zeros((3, 2))).shape
    ((2,), (2, 2), (3, 2))
    """
    if not isinstance(alpha, Real) or not np.isfinite(alpha) or alpha <= 0:
        raise ValueError(f"expected alpha to be a finite number > 0, got {alpha!r}")
    m, lam, U = _check_gaussian(mean, cov, definite=True)
    a = float(alpha)
    d = m.shape[0]
    sigma = np.sqrt(lam)
    sigma_a = (sigma + np.sqrt(sigma**2 + 4.0 * a * (1.0 + a))) / (2.0 * (1.0 + a))
    m_a = m / (1.0 + a)
    S_a = (U * sigma_a**2) @ U.T
    B = (U * (sigma_a / sigma)) @ U.T
    transport = 0.5 * (a**2 * (m @ m) / (1.0 + a) ** 2 + ((sigma - sigma_a) ** 2).sum())
    kl = 0.5 * ((sigma_a**2).sum() + m_a @ m_a - d - 2.0 * np.log(sigma_a).sum())
    return FiniteAlphaOptimum(
        mean=m_a,
        cov=S_a,
        map=AffineMap(B, m_a - B @ m),
        transport=float(transport),
        kl=float(kl),
        objective=float(transport + a * kl),
    )


def empirical_moments(X: ArrayLike) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    r"""Plug-in mean and covariance of a sample, the covariance with the :math:`1/N` normalisation.

    .. math:: \hat m = \frac1N \sum_n x_n, \qquad \hat S = \frac1N \sum_n (x_n - \hat m)(x_n - \hat m)^\top.

    Parameters
    ----------
    X : array-like of shape (n_samples, d)
        The sample.

    Returns
    -------
    mean : ndarray of shape (d,)
    cov : ndarray of shape (d, d)

    Examples
    --------
    >>> mean, cov = empirical_moments(np.random.default_rng(0).normal(size=(100, 3)))
    >>> mean.shape, cov.shape
    ((3,), (3, 3))
    """
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"expected X of shape (n_samples, d) with n_samples, d >= 1, got shape {X.shape}")
    mean = X.mean(axis=0)
    Xc = X - mean
    return mean, Xc.T @ Xc / X.shape[0]


def sample_w2_squared(
    X: ArrayLike, n_max: int = 2000, random_state: int | np.random.RandomState | None = None
) -> float:
    r"""Squared 2-Wasserstein distance between a sample and :math:`N(0, I_d)`, by exact optimal transport.

    Solves the discrete OT problem (POT's ``ot.emd2``, squared Euclidean cost) between the uniform measure on
    the rows of ``X`` and the uniform measure on as many draws from :math:`N(0, I_d)`. It is a noisy estimate,
    biased upwards at finite size, of :math:`W_2^2` between the data's distribution and :math:`N(0, I_d)`.
    Needs the optional dependency POT (``pip install pot``).

    Parameters
    ----------
    X : array-like of shape (n_samples, d)
        The sample.
    n_max : int, default=2000
        At most this many rows are used (a random subset when ``n_samples > n_max``): the exact solver's cost
        grows faster than quadratically.
    random_state : int, RandomState instance or None, default=None
        Seeds the subset and the standard-normal sample.

    Returns
    -------
    w2_squared : float

    Examples
    --------
    >>> w2 = sample_w2_squared(np.ones((50, 2)), random_state=0)  # doctest: +SKIP
    >>> type(w2).__name__  # doctest: +SKIP
    'float'
    """
    try:
        import ot
    except ImportError as exc:
        raise ImportError("sample_w2_squared needs POT: pip install pot") from exc
    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise ValueError(f"expected X of shape (n_samples, d) with n_samples, d >= 1, got shape {X.shape}")
    if not isinstance(n_max, int | np.integer) or n_max < 1:
        raise ValueError(f"expected n_max to be an integer >= 1, got {n_max!r}")
    rng = check_random_state(random_state)
    if X.shape[0] > n_max:
        X = X[rng.choice(X.shape[0], size=n_max, replace=False)]
    Z = rng.standard_normal(size=X.shape)
    cost = ot.dist(X, Z, metric="sqeuclidean")
    return float(ot.emd2([], [], cost, numItermax=10_000_000))
