"""Input checks and standardisation: the first stage, before any tensor exists.

Standardisation is the affine map :math:`\\tilde x = (x - \\mu) / \\sigma`; densities of the caller's
:math:`x` follow from the model's by
:math:`\\log p(x) = \\log \\tilde p(\\tilde x) - \\sum_j \\log \\sigma_j`.
"""

from __future__ import annotations

import warnings

import numpy as np
from sklearn.utils.validation import check_array, validate_data

__all__ = ["check_input", "given_standardization", "standardization"]


def check_input(estimator, X, *, reset: bool, min_samples: int = 1, check_names: bool = True) -> np.ndarray:
    """Validate ``X`` for ``estimator`` in scikit-learn's wording: 2-D, finite, numeric, float64, at
    least ``min_samples`` rows, and C-contiguous (a view with negative strides, ``X[::-1]``, is copied:
    torch cannot share its memory).

    ``reset=True`` (fit) records ``n_features_in_``; ``reset=False`` checks the number of features
    against the fitted one, and, with ``check_names``, the column names against those seen in fit
    (latent points, in ``inverse_transform``, have names of their own).
    """
    if check_names or reset:
        return validate_data(
            estimator, X, reset=reset, dtype=np.float64, order="C", ensure_min_samples=min_samples
        )
    X = check_array(X, dtype=np.float64, order="C", ensure_min_samples=min_samples)
    if X.shape[1] != estimator.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(estimator).__name__} is expecting "
            f"{estimator.n_features_in_} features as input."
        )
    return X


def standardization(X: np.ndarray, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(mean, scale)``; ``(0, 1)`` when not ``enabled``.

    A column whose values are all equal (up to rounding: a spread within a few units in the last place
    of its mean) gets scale ``max(|mean|, 1)``, with a warning: its density is degenerate and the flow
    can only approximate a point mass there. A column of tiny but genuine spread (``1e-15`` around 0)
    is scaled like any other. Both moments are computed on the column divided by a power of 2 near its largest
    magnitude (exactly), so that data near float64's limits (``1e200``) do not overflow when squared.

    >>> mean, scale = standardization(np.array([[0.0, 1.0], [2.0, 3.0]]), enabled=True)
    >>> mean.shape, scale.shape
    ((2,), (2,))
    """
    d = X.shape[1]
    if not enabled:
        return np.zeros(d), np.ones(d)
    unit = np.ldexp(1.0, np.frexp(np.abs(X).max(axis=0))[1] - 1)  # a power of 2: exact to divide by
    mean = (X / unit).mean(axis=0) * unit
    std = (X / unit).std(axis=0) * unit
    constant = std <= 10 * np.finfo(np.float64).eps * np.abs(mean)
    if constant.any():
        warnings.warn(
            f"Feature(s) {np.flatnonzero(constant).tolist()} are constant: their density is a point mass, "
            "which the flow can only approximate; consider dropping them.",
            UserWarning,
            stacklevel=5,
        )
    # a constant column's rounding-level spread (up to 10 eps |mean|) must stay tiny once standardized
    return mean, np.where(constant, np.maximum(np.abs(mean), 1.0), std)


def given_standardization(X: np.ndarray, mean, scale, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` given by the caller, checked; else ``X``'s own (see ``standardization``)."""
    if mean is None and scale is None:
        return standardization(X, enabled)
    d = X.shape[1]
    if mean is None or scale is None:
        raise ValueError(f"Expected both mean and scale or neither; got mean={mean!r}, scale={scale!r}.")
    mean, scale = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (mean, scale))
    if mean.shape != (d,) or scale.shape != (d,):
        raise ValueError(
            f"Expected mean and scale of shape ({d},) for X with {d} features; "
            f"got shapes {mean.shape} and {scale.shape}."
        )
    if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"Expected finite mean and finite positive scale; got mean={mean}, scale={scale}.")
    return mean, scale
