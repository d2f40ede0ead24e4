r"""The conditional benchmark's datasets: seeded ``(x, y)`` draws and, where known, the true log p(y | x).

Every dataset is a function ``name(seed, n_train=..., n_test=...) -> CondData``: training and test rows of
the conditions ``X`` (``(n, p)``) and the targets ``y`` (always 2-D, ``(n, k)``), drawn with
``numpy.random.default_rng(seed)``, and ``log_density(X, y)``, the true conditional log-density of each row
in ``y``'s own units (nats), or ``None`` where it is unknown. The test set has 2,000 rows by default, the
training set 4,000 (the synthetic datasets); ``n_train`` and ``n_test`` shrink them for smoke tests.

``heteroscedastic`` (p = 1, k = 1)
    :math:`x \sim U(-1.5, 1.5)`, :math:`y \mid x \sim \mathcal N(\sin 3x,\ (0.05 + 0.3|x|)^2)`: a wavy
    mean and a noise level that grows twelvefold from the centre to the edges.
``bimodal`` (p = 1, k = 1)
    :math:`x \sim U(0.1, 1.5)`, :math:`y = s\sqrt x + \varepsilon` with a fair sign :math:`s = \pm 1` and
    :math:`\varepsilon \sim \mathcal N(0, 0.1^2)`: :math:`p(y \mid x) = \tfrac12 \mathcal N(y; \sqrt x,
    0.1^2) + \tfrac12 \mathcal N(y; -\sqrt x, 0.1^2)`, two modes at least 6.3 standard deviations apart.
``gaussian2d_given3d`` (p = 3, k = 2)
    :math:`x \sim \mathcal N(0, I_3)`; :math:`y \mid x` Gaussian with mean
    :math:`(\sin x_1 + \tfrac12 x_2,\ \tfrac12 x_3^2 - \tfrac12)`, standard deviations
    :math:`s_1 = 0.5\,e^{0.3 x_1}`, :math:`s_2 = 0.5\,e^{-0.3 x_2}` and correlation
    :math:`\rho = 0.9 \tanh x_3` (bounded away from :math:`\pm 1`, so that no row is nearly degenerate).
``diabetes`` (p = 10, k = 1)
    ``sklearn.datasets.load_diabetes``: the 10 (scaled) features as ``X``, the disease progression as
    ``y``; ``train_test_split(test_size=0.25, random_state=seed)`` (331 training and 111 test rows).
    Density unknown; ``n_train`` and ``n_test`` are ignored.

``python benchmarks/_conditional_data.py`` checks every known density: that it integrates to 1 over
``y`` for a few ``x`` (quadrature on a fine grid), and that the draws follow it (the mean of
:math:`\log p` over 200,000 draws equals :math:`\int p \log p` by quadrature, and for the Gaussians the
draws' moments match). It then prints each dataset's true mean log-likelihood on its test rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

N_TRAIN, N_TEST = 4000, 2000
LOG_2PI = float(np.log(2 * np.pi))
BIMODAL_SD = 0.1
GAUSSIAN_SCALE, GAUSSIAN_RHO = 0.5, 0.9

LogDensity = Callable[[np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class CondData:
    """A conditional dataset: training and test rows, and the true ``log p(y | x)`` where known.

    Attributes
    ----------
    name : str
    description : str
        One line: how ``(x, y)`` are drawn.
    X_train, X_test : ndarray of shape (n, p)
        The conditions.
    y_train, y_test : ndarray of shape (n, k)
        The targets (2-D even when ``k = 1``).
    log_density : callable or None
        ``log_density(X, y) -> ndarray of shape (n,)``: the true conditional log-density of each row, in
        ``y``'s units; ``None`` where it is unknown.
    """

    name: str
    description: str
    X_train: np.ndarray
    y_train: np.ndarray
    X_test: np.ndarray
    y_test: np.ndarray
    log_density: LogDensity | None


def _as_rows(X: np.ndarray, y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """``X`` as ``(n, p)`` and ``y`` as ``(n, k)`` float arrays (a 1-D ``y`` when ``k = 1``)."""
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64).reshape(len(X), k)
    return X.reshape(len(X), -1), y


def _normal_logpdf(y: np.ndarray, mean: np.ndarray, sd: np.ndarray) -> np.ndarray:
    return -0.5 * LOG_2PI - np.log(sd) - 0.5 * ((y - mean) / sd) ** 2


def _split(
    name: str,
    description: str,
    X: np.ndarray,
    y: np.ndarray,
    n_train: int,
    log_density: LogDensity | None,
) -> CondData:
    """The first ``n_train`` rows for training, the rest for testing."""
    return CondData(name, description, X[:n_train], y[:n_train], X[n_train:], y[n_train:], log_density)


# ------------------------------------------------------------------------------------------ heteroscedastic


def heteroscedastic_sd(x: np.ndarray) -> np.ndarray:
    """The noise's standard deviation at ``x`` (1-D)."""
    return 0.05 + 0.3 * np.abs(x)


def heteroscedastic_sample(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One ``y`` (``(n, 1)``) for each condition of ``x`` (``(n, 1)``)."""
    x1 = x[:, 0]
    return (np.sin(3 * x1) + heteroscedastic_sd(x1) * rng.standard_normal(len(x1)))[:, None]


def heteroscedastic_log_density(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True :math:`\\log p(y \\mid x)` of each row."""
    X, y = _as_rows(X, y, 1)
    return _normal_logpdf(y[:, 0], np.sin(3 * X[:, 0]), heteroscedastic_sd(X[:, 0]))


def heteroscedastic(seed: int, n_train: int = N_TRAIN, n_test: int = N_TEST) -> CondData:
    """``x ~ U(-1.5, 1.5)``, ``y | x ~ N(sin 3x, (0.05 + 0.3 |x|)^2)``."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1.5, 1.5, size=(n_train + n_test, 1))
    y = heteroscedastic_sample(X, rng)
    text = "x ~ U(-1.5, 1.5); y | x ~ N(sin 3x, (0.05 + 0.3|x|)^2)"
    return _split("heteroscedastic", text, X, y, n_train, heteroscedastic_log_density)


# --------------------------------------------------------------------------------------------------- bimodal


def bimodal_sample(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One ``y`` (``(n, 1)``) for each condition of ``x`` (``(n, 1)``)."""
    x1 = x[:, 0]
    sign = rng.choice([-1.0, 1.0], size=len(x1))
    return (sign * np.sqrt(x1) + BIMODAL_SD * rng.standard_normal(len(x1)))[:, None]


def bimodal_log_density(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True :math:`\\log p(y \\mid x)`: the equal mixture of :math:`\\mathcal N(\\pm\\sqrt x, 0.1^2)`."""
    X, y = _as_rows(X, y, 1)
    root, sd = np.sqrt(X[:, 0]), np.full(len(X), BIMODAL_SD)
    parts = np.stack([_normal_logpdf(y[:, 0], root, sd), _normal_logpdf(y[:, 0], -root, sd)])
    return logsumexp(parts, axis=0) - np.log(2.0)


def bimodal(seed: int, n_train: int = N_TRAIN, n_test: int = N_TEST) -> CondData:
    """``x ~ U(0.1, 1.5)``, ``y = ±sqrt(x) + N(0, 0.1^2)`` with a fair sign."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(0.1, 1.5, size=(n_train + n_test, 1))
    y = bimodal_sample(X, rng)
    text = "x ~ U(0.1, 1.5); y | x ~ 0.5 N(sqrt x, 0.1^2) + 0.5 N(-sqrt x, 0.1^2)"
    return _split("bimodal", text, X, y, n_train, bimodal_log_density)


# ---------------------------------------------------------------------------------------- gaussian2d_given3d


def gaussian2d_parameters(X: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The conditional mean ``(n, 2)``, standard deviations ``(n, 2)`` and correlation ``(n,)`` at ``X``."""
    x1, x2, x3 = X[:, 0], X[:, 1], X[:, 2]
    mean = np.stack([np.sin(x1) + 0.5 * x2, 0.5 * x3**2 - 0.5], axis=1)
    sd = GAUSSIAN_SCALE * np.exp(np.stack([0.3 * x1, -0.3 * x2], axis=1))
    return mean, sd, GAUSSIAN_RHO * np.tanh(x3)


def gaussian2d_covariance(X: np.ndarray) -> np.ndarray:
    """The conditional covariance matrices ``(n, 2, 2)`` at ``X``."""
    _, sd, rho = gaussian2d_parameters(np.asarray(X, dtype=np.float64))
    off = rho * sd[:, 0] * sd[:, 1]
    return np.stack([np.stack([sd[:, 0] ** 2, off], -1), np.stack([off, sd[:, 1] ** 2], -1)], axis=1)


def gaussian2d_sample(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One ``y`` (``(n, 2)``) for each condition of ``x`` (``(n, 3)``)."""
    mean, sd, rho = gaussian2d_parameters(x)
    e1, e2 = rng.standard_normal((2, len(x)))
    y1 = mean[:, 0] + sd[:, 0] * e1
    y2 = mean[:, 1] + sd[:, 1] * (rho * e1 + np.sqrt(1 - rho**2) * e2)
    return np.stack([y1, y2], axis=1)


def gaussian2d_log_density(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """True :math:`\\log p(y \\mid x)` of the bivariate Gaussian, in closed form."""
    X, y = _as_rows(X, y, 2)
    mean, sd, rho = gaussian2d_parameters(X)
    z = (y - mean) / sd
    one_minus = 1 - rho**2
    quad = (z[:, 0] ** 2 - 2 * rho * z[:, 0] * z[:, 1] + z[:, 1] ** 2) / one_minus
    return -LOG_2PI - np.log(sd).sum(1) - 0.5 * np.log(one_minus) - 0.5 * quad


def gaussian2d_given3d(seed: int, n_train: int = N_TRAIN, n_test: int = N_TEST) -> CondData:
    """``x ~ N(0, I_3)``; ``y | x`` Gaussian with a nonlinear mean and an ``x``-dependent covariance."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n_train + n_test, 3))
    y = gaussian2d_sample(X, rng)
    text = (
        "x ~ N(0, I_3); y | x ~ N((sin x1 + x2/2, x3^2/2 - 1/2), sd (0.5 e^{0.3 x1}, 0.5 e^{-0.3 x2}), "
        "corr 0.9 tanh x3)"
    )
    return _split("gaussian2d_given3d", text, X, y, n_train, gaussian2d_log_density)


# -------------------------------------------------------------------------------------------------- diabetes


def diabetes(seed: int, n_train: int | None = None, n_test: int | None = None) -> CondData:
    """``load_diabetes``: 10 features -> disease progression, a seeded 75 / 25 split (sizes ignored)."""
    from sklearn.datasets import load_diabetes
    from sklearn.model_selection import train_test_split

    X, y = load_diabetes(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(
        X.astype(np.float64), y.astype(np.float64)[:, None], test_size=0.25, random_state=seed
    )
    text = "sklearn load_diabetes: 10 scaled features -> disease progression one year later (25-346)"
    return CondData("diabetes", text, X_train, y_train, X_test, y_test, None)


DATASETS: dict[str, Callable[..., CondData]] = {
    "heteroscedastic": heteroscedastic,
    "bimodal": bimodal,
    "gaussian2d_given3d": gaussian2d_given3d,
    "diabetes": diabetes,
}
SAMPLERS: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "heteroscedastic": heteroscedastic_sample,
    "bimodal": bimodal_sample,
    "gaussian2d_given3d": gaussian2d_sample,
}


def load(name: str, seed: int, n_train: int | None = None, n_test: int | None = None) -> CondData:
    """The dataset ``name`` for ``seed``, with the default sizes unless given (``diabetes`` ignores them).

    Parameters
    ----------
    name : str
        A key of :data:`DATASETS`.
    seed : int
    n_train, n_test : int or None
        Row counts; ``None`` keeps the dataset's default.

    Returns
    -------
    CondData
    """
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; expected one of {tuple(DATASETS)}")
    sizes = {k: v for k, v in (("n_train", n_train), ("n_test", n_test)) if v is not None}
    return DATASETS[name](seed, **sizes)


# ------------------------------------------------------------------------------------------------ self-check


def _check_1d(name: str, log_density: LogDensity, conditions: list[float], rng: np.random.Generator) -> None:
    """Mass and entropy by quadrature in ``y``, against 200,000 draws at each condition."""
    grid = np.linspace(-6.0, 6.0, 240_001)
    for c in conditions:
        X = np.full((len(grid), 1), c)
        log_p = log_density(X, grid[:, None])
        p = np.exp(log_p)
        mass = np.trapezoid(p, grid)
        neg_entropy = np.trapezoid(p * log_p, grid)
        x = np.full((200_000, 1), c)
        draws = SAMPLERS[name](x, rng)
        mc = log_density(x, draws)
        mc_err = mc.std() / np.sqrt(len(mc))
        print(
            f"{name}, x = {c:+.2f}: mass {mass:.6f}; E log p: quadrature {neg_entropy:.4f}, "
            f"draws {mc.mean():.4f} ± {mc_err:.4f}"
        )
        assert abs(mass - 1) < 1e-4 and abs(neg_entropy - mc.mean()) < 5 * mc_err + 1e-3


def _check_gaussian2d(rng: np.random.Generator) -> None:
    """Mass by quadrature on a grid, the draws' moments, and log p against scipy's multivariate normal."""
    from scipy.stats import multivariate_normal

    conditions = np.array([[0.0, 0.0, 0.0], [1.5, -1.0, 1.2], [-2.0, 2.0, -2.5]])
    means, _, _ = gaussian2d_parameters(conditions)
    covariances = gaussian2d_covariance(conditions)
    for c, mean, cov in zip(conditions, means, covariances):
        half = 7 * np.sqrt(np.diag(cov))
        g1 = np.linspace(mean[0] - half[0], mean[0] + half[0], 1201)
        g2 = np.linspace(mean[1] - half[1], mean[1] + half[1], 1201)
        Y = np.stack(np.meshgrid(g1, g2, indexing="ij"), -1).reshape(-1, 2)
        X = np.broadcast_to(c, (len(Y), 3))
        log_p = gaussian2d_log_density(X, Y)
        mass = np.trapezoid(np.trapezoid(np.exp(log_p).reshape(1201, 1201), g2, axis=1), g1)
        scipy_err = np.abs(log_p - multivariate_normal(mean, cov).logpdf(Y)).max()
        x = np.broadcast_to(c, (200_000, 3))
        draws = gaussian2d_sample(x, rng)
        moment_err = max(np.abs(draws.mean(0) - mean).max(), np.abs(np.cov(draws.T) - cov).max())
        print(f"gaussian2d_given3d, x = {c}: mass {mass:.6f}; |log p - scipy| {scipy_err:.2e}; ", end="")
        print(f"moments off by {moment_err:.4f}")
        assert abs(mass - 1) < 1e-4 and scipy_err < 1e-10 and moment_err < 0.02


def main() -> None:
    """Check every known density and print the true mean log-likelihood of each dataset's test rows."""
    rng = np.random.default_rng(12345)
    _check_1d("heteroscedastic", heteroscedastic_log_density, [-1.5, -0.4, 0.0, 0.7, 1.5], rng)
    _check_1d("bimodal", bimodal_log_density, [0.1, 0.5, 1.5], rng)
    _check_gaussian2d(rng)
    for name in DATASETS:
        data = load(name, 0)
        shapes = f"X {data.X_train.shape} / {data.X_test.shape}, y {data.y_train.shape} / {data.y_test.shape}"
        if data.log_density is None:
            print(f"{name} (seed 0): {shapes}; density unknown")
            continue
        log_p = data.log_density(data.X_test, data.y_test)
        se = log_p.std(ddof=1) / np.sqrt(len(log_p))
        print(f"{name} (seed 0): {shapes}; true mean log p(y|x), test rows: {log_p.mean():.4f} ± {se:.4f}")


if __name__ == "__main__":
    main()
