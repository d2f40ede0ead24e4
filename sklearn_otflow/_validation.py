"""Input checks and standardisation: the first stage, before any tensor exists.

Standardisation is the affine map :math:`\\tilde x = (x - \\mu) / \\sigma`; densities of the caller's
:math:`x` follow from the model's by
:math:`\\log p(x) = \\log \\tilde p(\\tilde x) - \\sum_j \\log \\sigma_j`.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.utils.validation import validate_data

__all__ = ["check_input", "standardization"]


def check_input(estimator, X, *, reset: bool) -> np.ndarray:
    """Validate ``X`` for ``estimator`` in scikit-learn's wording: 2-D, finite, numeric, float64.

    ``reset=True`` (fit) records ``n_features_in_`` and asks for at least 2 samples; ``reset=False``
    checks the number of features against the fitted one.
    """
    return validate_data(estimator, X, reset=reset, dtype=np.float64, ensure_min_samples=2 if reset else 1)


def standardization(X: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(mean, scale)``; ``(0, 1)`` when not ``enabled``.

    A column with (numerically) zero variance keeps scale 1, with a warning: its density is degenerate
    and the flow can only approximate a point mass there.

    >>> mean, scale = standardization(np.array([[0.0, 1.0], [2.0, 3.0]]), enabled=True)
    >>> mean.shape, scale.shape
    ((2,), (2,))
    """
    d = X.shape[1]
    if not enabled:
        return np.zeros(d), np.ones(d)
    mean = X.mean(axis=0)
    std = X.std(axis=0)
    constant = std <= 10 * np.finfo(np.float64).eps * np.maximum(np.abs(mean), 1.0)
    if constant.any():
        warnings.warn(
            f"Feature(s) {np.flatnonzero(constant).tolist()} are constant: their density is a point mass, "
            "which the flow can only approximate; consider dropping them.",
            UserWarning,
            stacklevel=5,
        )
    return mean, np.where(constant, 1.0, std)
