"""Input checks and standardisation: the first stage, before any tensor exists.

Standardisation is the affine map :math:`\\tilde x = (x - \\mu) / \\sigma`; densities of the caller's
:math:`x` follow from the model's by
:math:`\\log p(x) = \\log \\tilde p(\\tilde x) - \\sum_j \\log \\sigma_j`. With sample weights
:math:`w_i`, :math:`\\mu` and :math:`\\sigma` are the weighted moments, those of the data with each row
repeated :math:`w_i` times.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from sklearn.utils.validation import check_array, validate_data

__all__ = ["check_input", "check_weights", "given_standardization", "standardization"]


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


def check_weights(sample_weight, n_samples: int) -> np.ndarray | None:
    """``sample_weight`` checked for ``n_samples`` rows, in scikit-learn's wording: ``None`` (no
    weights) stays ``None``, a number applies to every row, else a 1-D array of finite, non-negative
    numbers, not all zero, one per row; float64.

    >>> check_weights([1, 0, 2], 3)
    array([1., 0., 2.])
    """
    if sample_weight is None:
        return None
    if isinstance(sample_weight, numbers.Number) and not isinstance(sample_weight, (bool, np.bool_)):
        sample_weight = np.full(n_samples, sample_weight, dtype=np.float64)
    w = check_array(sample_weight, ensure_2d=False, dtype=np.float64, input_name="sample_weight")
    if w.ndim != 1 or w.shape[0] != n_samples:
        raise ValueError(f"Expected sample_weight of shape ({n_samples},), one per row; got shape {w.shape}.")
    if (w < 0).any():
        first = int(np.flatnonzero(w < 0)[0])
        raise ValueError(
            f"Expected non-negative sample_weight; got {int((w < 0).sum())} negative value(s), the first "
            f"{float(w[first])} at row {first}."
        )
    if not w.sum() > 0:
        raise ValueError("Expected sample_weight with a positive sum; got all zeros.")
    return w


def standardization(
    X: np.ndarray, enabled: bool, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-feature ``(mean, scale)``, weighted by ``weights`` if given; ``(0, 1)`` when not ``enabled``.

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
    X = X / unit
    if weights is None:
        mean, std = X.mean(axis=0) * unit, X.std(axis=0) * unit
    else:
        mean = np.average(X, axis=0, weights=weights)
        std = np.sqrt(np.average((X - mean) ** 2, axis=0, weights=weights)) * unit
        mean = mean * unit
    constant = std <= 10 * np.finfo(np.float64).eps * np.abs(mean)
    if constant.any():
        warnings.warn(
            f"Feature(s) {np.flatnonzero(constant).tolist()} are constant: their density is a point mass, "
            "which the flow can only approximate; consider dropping them.",
            UserWarning,
            stacklevel=7,
        )
    # a constant column's rounding-level spread (up to 10 eps |mean|) must stay tiny once standardized
    return mean, np.where(constant, np.maximum(np.abs(mean), 1.0), std)


def given_standardization(
    X: np.ndarray, mean, scale, enabled: bool, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` given by the caller, checked; else ``X``'s own (see ``standardization``)."""
    if mean is None and scale is None:
        return standardization(X, enabled, weights)
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
