r"""The benchmark's datasets: seeded generators and, where it is known, the true log-density.

Every generator is a pure function of ``(n, seed)`` returning an ``(n, d)`` float64 array; every
``*_log_density`` function maps an ``(m, d)`` array to the ``(m,)`` log-densities of the distribution the
generator samples from, in the data's own units. ``python benchmarks/_datasets.py`` prints the population
mean log-likelihood (the negative entropy) of each known density, from 200,000 draws.

``moons``
    ``sklearn.datasets.make_moons(n, noise=0.05)``: half of the points on the upper unit half circle
    :math:`(\cos t, \sin t)`, half on :math:`(1 - \cos t, \tfrac12 - \sin t)`, :math:`t \in [0, \pi]`,
    plus :math:`\mathcal N(0, 0.05^2 I)` noise. ``make_moons`` places the angles on a regular grid; with
    10,000 points the grid step (0.0006 rad) is 1/80 of the noise, so the density is that of uniform
    angles, :math:`p(x) = \tfrac12\sum_{\text{moons}} \tfrac1\pi\int_0^\pi \mathcal N(x; c(t), \sigma^2 I)
    \,dt`, computed by Gauss-Legendre quadrature.
``8gaussians``
    FFJORD's toy data (``rtqichen/ffjord``, ``lib/toy_data.py``): a center :math:`4 c_k` drawn uniformly
    among the 8 unit vectors at multiples of 45°, plus :math:`\mathcal N(0, 0.5^2 I)`, all divided by
    1.414. So an equal-weight mixture of 8 isotropic Gaussians with means :math:`4 c_k / 1.414` and standard
    deviation :math:`0.5 / 1.414 \approx 0.354`.
``checkerboard``
    FFJORD's toy data: :math:`x_1 \sim U[-2, 2)`, :math:`x_2` uniform on the two unit intervals of
    :math:`[-2, 2)` whose integer part has the parity of :math:`\lfloor x_1\rfloor`, both times 2. So the
    uniform density :math:`1/32` on the 8 squares of side 2 of a checkerboard on :math:`[-4, 4)^2` where
    :math:`\lfloor x_1/2\rfloor + \lfloor x_2/2\rfloor` is even.
``digits``
    ``sklearn.datasets.load_digits`` (1,797 images) projected on its first 15 principal components,
    ``PCA(15, whiten=False)`` fitted on all images as in scikit-learn's example "Kernel Density Estimation"
    (plot_digits_kde_sampling). Density unknown; ``n`` and ``seed`` are ignored.
``iris``, ``wine``
    ``sklearn.datasets.load_iris`` (150 flowers, 4 measurements) and ``load_wine`` (178 wines, 13 chemical
    measurements), each feature standardized over all rows, so that every method (an isotropic
    KernelDensity included) sees features on one scale. Small tabular data; density unknown; ``n`` and
    ``seed`` are ignored.
``gmm10``
    A 10-D mixture of 5 full-covariance Gaussians (:func:`gmm10_parameters`: fixed, seeded parameters).
``grid9``
    Densities with sharp features: an equal-weight mixture of 9 isotropic Gaussians of standard
    deviation 0.15 centred on the 3 x 3 grid :math:`\{-2, 0, 2\}^2` (a tuned Gaussian mixture is the
    true model; a flow must tear the latent's one mode into nine narrow ones).
``rings``
    Three concentric rings of radii 1, 2 and 3 (equal weights), uniform angle and
    :math:`\mathcal N(0, 0.08^2)` radial noise:
    :math:`p(x) = \tfrac13\sum_k \varphi_{0.08}(r - R_k) / (2\pi r)`, :math:`r = |x|`
    (the mass the radial noise puts below 0 is :math:`< 10^{-30}`).
``banana10``
    ``gmm10`` warped by :math:`y_1 = x_1`, :math:`y_i = x_i + 0.15\,x_{i-1}^2` (:math:`i \ge 2`). The
    Jacobian is triangular with unit diagonal, so :math:`\log p_Y(y) = \log p_X(x(y))` with the inverse
    :math:`x_i = y_i - 0.15\,x_{i-1}^2` solved in order. The same seed warps the same ``gmm10`` draws, so
    the two datasets share their true mean log-likelihood on the same rows.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

MOONS_NOISE = 0.05
CIRCLES_NOISE, CIRCLES_FACTOR = 0.05, 0.5
EIGHT_SCALE, EIGHT_STD, EIGHT_DIVISOR = 4.0, 0.5, 1.414
BANANA_CURVATURE = 0.15
GMM10_SEED = 20240917  # the mixture's parameters; the --seed of a run draws only the samples
_QUADRATURE_NODES = 2000


@dataclass(frozen=True)
class Dataset:
    """A dataset's rows and, where known, its true log-density (``None`` otherwise)."""

    name: str
    X: np.ndarray
    log_density: Callable[[np.ndarray], np.ndarray] | None


# ---------------------------------------------------------------------------------------------- helpers


def _gaussian_mixture_log_density(
    X: np.ndarray, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray
) -> np.ndarray:
    """:math:`\\log\\sum_k w_k\\,\\mathcal N(x; \\mu_k, \\Sigma_k)` for each row of ``X``."""
    d = X.shape[1]
    terms = []
    for w, mu, cov in zip(weights, means, covariances):
        chol = np.linalg.cholesky(cov)
        u = np.linalg.solve(chol, (X - mu).T)  # (d, n): L^{-1} (x - mu)
        log_det = 2.0 * np.log(np.diag(chol)).sum()
        terms.append(math.log(w) - 0.5 * (u * u).sum(0) - 0.5 * log_det - 0.5 * d * math.log(2 * math.pi))
    return logsumexp(np.stack(terms), axis=0)


def _sample_gaussian_mixture(
    n: int, rng: np.random.Generator, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray
) -> np.ndarray:
    labels = rng.choice(len(weights), size=n, p=weights)
    noise = rng.standard_normal((n, means.shape[1]))
    chols = np.linalg.cholesky(covariances)  # (k, d, d)
    return means[labels] + np.einsum("nij,nj->ni", chols[labels], noise)


# ---------------------------------------------------------------------------------------------- moons


def circles(n: int, seed: int) -> np.ndarray:
    from sklearn.datasets import make_circles

    return make_circles(n, noise=CIRCLES_NOISE, factor=CIRCLES_FACTOR, random_state=seed)[0]


def moons(n: int, seed: int) -> np.ndarray:
    from sklearn.datasets import make_moons

    return make_moons(n, noise=MOONS_NOISE, random_state=seed)[0]


def _moon_curves(t: np.ndarray) -> np.ndarray:
    """The two noiseless half circles at angles ``t``: shape (2, len(t), 2)."""
    outer = np.stack([np.cos(t), np.sin(t)], 1)
    inner = np.stack([1.0 - np.cos(t), 0.5 - np.sin(t)], 1)
    return np.stack([outer, inner])


def moons_log_density(X: np.ndarray) -> np.ndarray:
    r""":math:`\log p(x)` of ``make_moons(noise=0.05)`` with uniform angles, by Gauss-Legendre quadrature.

    The integrand :math:`\mathcal N(x; c(t), \sigma^2 I)` varies on a scale of :math:`\sigma = 0.05` rad
    along the curve; 2,000 nodes on :math:`[0, \pi]` put 30 nodes within one :math:`\sigma`.
    """
    nodes, weights = np.polynomial.legendre.leggauss(_QUADRATURE_NODES)
    t = 0.5 * math.pi * (nodes + 1.0)  # [-1, 1] -> [0, pi]
    log_w = np.log(0.5 * math.pi * weights) - math.log(math.pi) + math.log(0.5)  # (1/pi) dt, half per moon
    centers = _moon_curves(t).reshape(-1, 2)  # (2 K, 2)
    log_w = np.concatenate([log_w, log_w])
    var = MOONS_NOISE**2
    out = np.empty(X.shape[0])
    for start in range(0, X.shape[0], 512):
        x = X[start : start + 512]
        sq = ((x[:, None, :] - centers[None]) ** 2).sum(-1)  # (b, 2K)
        out[start : start + 512] = logsumexp(log_w - 0.5 * sq / var, axis=1) - math.log(2 * math.pi * var)
    return out


# ---------------------------------------------------------------------------------------------- FFJORD's


def _eight_means() -> np.ndarray:
    angles = np.arange(8) * math.pi / 4
    return EIGHT_SCALE * np.stack([np.cos(angles), np.sin(angles)], 1) / EIGHT_DIVISOR


def eight_gaussians(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = rng.integers(8, size=n)
    return _eight_means()[labels] + rng.standard_normal((n, 2)) * (EIGHT_STD / EIGHT_DIVISOR)


def eight_gaussians_log_density(X: np.ndarray) -> np.ndarray:
    std = EIGHT_STD / EIGHT_DIVISOR
    covariances = np.repeat((std**2 * np.eye(2))[None], 8, axis=0)
    return _gaussian_mixture_log_density(X, np.full(8, 1 / 8), _eight_means(), covariances)


def checkerboard(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x1 = rng.uniform(-2.0, 2.0, n)
    x2 = rng.uniform(0.0, 1.0, n) - 2.0 * rng.integers(2, size=n) + np.floor(x1) % 2
    return 2.0 * np.stack([x1, x2], 1)


def checkerboard_log_density(X: np.ndarray) -> np.ndarray:
    """``-log 32`` on the 8 black squares, ``-inf`` elsewhere."""
    cells = np.floor(X / 2.0)
    inside = np.all((cells >= -2) & (cells <= 1), axis=1) & (cells.sum(1) % 2 == 0)
    return np.where(inside, -math.log(32.0), -np.inf)


# ---------------------------------------------------------------------------------------------- sharp

GRID_STD, RING_RADII, RING_STD = 0.15, (1.0, 2.0, 3.0), 0.08


def _grid_means() -> np.ndarray:
    return np.stack(np.meshgrid([-2.0, 0.0, 2.0], [-2.0, 0.0, 2.0]), -1).reshape(-1, 2)


def grid9(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return _grid_means()[rng.integers(9, size=n)] + GRID_STD * rng.standard_normal((n, 2))


def grid9_log_density(X: np.ndarray) -> np.ndarray:
    covariances = np.repeat((GRID_STD**2 * np.eye(2))[None], 9, axis=0)
    return _gaussian_mixture_log_density(X, np.full(9, 1 / 9), _grid_means(), covariances)


def rings(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    radius = np.asarray(RING_RADII)[rng.integers(len(RING_RADII), size=n)]
    radius = radius + RING_STD * rng.standard_normal(n)
    angle = rng.uniform(0.0, 2 * math.pi, n)
    return np.stack([radius * np.cos(angle), radius * np.sin(angle)], 1)


def rings_log_density(X: np.ndarray) -> np.ndarray:
    r = np.linalg.norm(X, axis=1)
    terms = [-0.5 * ((r - R) / RING_STD) ** 2 for R in RING_RADII]
    log_radial = logsumexp(np.stack(terms), axis=0) - math.log(
        len(RING_RADII) * RING_STD * math.sqrt(2 * math.pi)
    )
    return log_radial - np.log(2 * math.pi * r)


# ---------------------------------------------------------------------------------------------- digits


def digits_pca15(n: int | None = None, seed: int | None = None) -> np.ndarray:
    from sklearn.datasets import load_digits
    from sklearn.decomposition import PCA

    return PCA(n_components=15, whiten=False).fit_transform(load_digits().data)


def _standardized(X: np.ndarray) -> np.ndarray:
    return (X - X.mean(axis=0)) / X.std(axis=0)


def iris(n: int | None = None, seed: int | None = None) -> np.ndarray:
    from sklearn.datasets import load_iris

    return _standardized(load_iris().data)


def wine(n: int | None = None, seed: int | None = None) -> np.ndarray:
    from sklearn.datasets import load_wine

    return _standardized(load_wine().data)


# ---------------------------------------------------------------------------------------------- 10-D


def gmm10_parameters() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""``(weights (5,), means (5, 10), covariances (5, 10, 10))`` of the ``gmm10`` mixture.

    From ``numpy.random.default_rng(GMM10_SEED)``, in this order: weights ~ Dirichlet(5, ..., 5); means
    with i.i.d. :math:`\mathcal N(0, 1.5^2)` entries; for each component a random rotation :math:`Q` (QR of
    a standard normal matrix, signs fixed by :math:`R`'s diagonal) and eigenvalues log-uniform on
    [0.2, 2], :math:`\Sigma = Q \operatorname{diag}(\lambda) Q^\top` (condition number at most 10).
    """
    rng = np.random.default_rng(GMM10_SEED)
    k, d = 5, 10
    weights = rng.dirichlet(np.full(k, 5.0))
    means = rng.normal(0.0, 1.5, (k, d))
    covariances = np.empty((k, d, d))
    for i in range(k):
        q, r = np.linalg.qr(rng.standard_normal((d, d)))
        q = q * np.sign(np.diag(r))
        eigenvalues = np.exp(rng.uniform(math.log(0.2), math.log(2.0), d))
        covariances[i] = (q * eigenvalues) @ q.T
    return weights, means, covariances


def gmm10(n: int, seed: int) -> np.ndarray:
    return _sample_gaussian_mixture(n, np.random.default_rng(seed), *gmm10_parameters())


def gmm10_log_density(X: np.ndarray) -> np.ndarray:
    return _gaussian_mixture_log_density(X, *gmm10_parameters())


def banana_warp(X: np.ndarray) -> np.ndarray:
    """:math:`y_i = x_i + 0.15\\,x_{i-1}^2` for :math:`i \\ge 2` (0-based: columns 1 onwards)."""
    Y = X.copy()
    Y[:, 1:] += BANANA_CURVATURE * X[:, :-1] ** 2
    return Y


def banana_unwarp(Y: np.ndarray) -> np.ndarray:
    """The inverse of :func:`banana_warp`, column by column."""
    X = Y.copy()
    for i in range(1, Y.shape[1]):
        X[:, i] = Y[:, i] - BANANA_CURVATURE * X[:, i - 1] ** 2
    return X


def banana10(n: int, seed: int) -> np.ndarray:
    return banana_warp(gmm10(n, seed))


def banana10_log_density(Y: np.ndarray) -> np.ndarray:
    return gmm10_log_density(banana_unwarp(Y))  # unit Jacobian determinant


# ---------------------------------------------------------------------------------------------- registry

GENERATORS: dict[str, tuple[Callable[[int, int], np.ndarray], Callable | None]] = {
    "moons": (moons, moons_log_density),
    "8gaussians": (eight_gaussians, eight_gaussians_log_density),
    "checkerboard": (checkerboard, checkerboard_log_density),
    "grid9": (grid9, grid9_log_density),
    "circles": (circles, None),
    "rings": (rings, rings_log_density),
    "digits": (digits_pca15, None),
    "iris": (iris, None),
    "wine": (wine, None),
    "gmm10": (gmm10, gmm10_log_density),
    "banana10": (banana10, banana10_log_density),
}


def load(name: str, n: int, seed: int) -> Dataset:
    """Dataset ``name`` with ``n`` rows drawn with ``seed`` (the real datasets: all their rows)."""
    generate, log_density = GENERATORS[name]
    return Dataset(name, generate(n, seed), log_density)


if __name__ == "__main__":  # the population mean log-likelihood (negative entropy) of each known density
    for name, (generate, log_density) in GENERATORS.items():
        if log_density is not None:
            log_p = log_density(generate(200_000, 12345))
            print(f"{name}: E[log p] = {log_p.mean():.4f} ± {log_p.std() / np.sqrt(len(log_p)):.4f}")
