r"""OTFlowConditionalDensity: the conditional density :math:`p(y \mid x)` with conditional OT-Flow.

The potential takes the condition as an input, :math:`\Phi(y, x, t)`, and the flow moves :math:`y` only
(conditional OT-Flow, COT-Flow: Wang, Baptista, Marzouk, Ruthotto and Verma, "Efficient neural network
approaches for conditional optimal transport with applications in Bayesian inference"):
:math:`\dot y = -\nabla_y\Phi(y, x, t)` carries :math:`y` given :math:`x` to a latent
:math:`z = y(1)` meant to be standard normal for every :math:`x`, and
:math:`\log p(y \mid x) = \log\mathcal N(z; 0, I) + \ell(1)`. Training, its budget and its checks are
:class:`~sklearn_otflow.OTFlowDensity`'s (:mod:`._training`), on rows that carry their condition.
"""

from __future__ import annotations

import numbers

import numpy as np
from sklearn.base import _fit_context
from sklearn.utils import RegressorTags, TransformerTags, check_random_state
from sklearn.utils.validation import check_array, check_is_fitted, validate_data

from . import _training
from ._estimator import OTFlowBase, _kept_on_failure, shared_parameters
from ._evaluation import FlowRunner, latent_only, log_prob_only, weighted_mean
from ._validation import standardization

__all__ = ["OTFlowConditionalDensity"]

# Latent draws behind predict: antithetic pairs (z and -z), the same for every row, so that a
# prediction is deterministic, does not depend on the other rows, and is exact for a map that is
# affine in z (a Gaussian conditional).
PREDICT_DRAWS = 128
# Draws that sample and predict flow at once: bounds the memory of the repeated conditions.
DRAWS_AT_ONCE = 1 << 16


@shared_parameters
class OTFlowConditionalDensity(FlowRunner, OTFlowBase):
    r"""Conditional density estimation :math:`p(y \mid x)` with OT-Flow.

    The potential :math:`\Phi(y, x, t)` takes the condition :math:`x` as an input, and the flow moves
    :math:`y` only, along :math:`\dot y = -\nabla_y\Phi(y, x, t)` from :math:`t = 0` to a latent
    :math:`z = y(1)` meant to be standard normal whatever :math:`x`. The gradient and the exact trace
    of the Hessian in :math:`y` are analytic, so :math:`\log p(y \mid x) = \log\mathcal N(z; 0, I) +
    \ell(1)` is exact up to the RK4 integration. Training, its budget, progress and checks are those of
    :class:`OTFlowDensity`; its parameters are the same. Where an ``"auto"`` rule below counts
    features, it counts those of ``X`` and ``y`` together.

    Parameters
    ----------
    %(parameters)s

    Attributes
    ----------
    n_features_in_ : int
        Number of features of ``X`` (the condition) seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the features seen during fit, when ``X`` has string column names.
    n_targets_ : int
        Number of columns of ``y``, the variable whose density is modelled.
    mean_ : ndarray of shape (`n_targets_`,)
        Per-column mean of ``y`` removed before the flow (zeros when ``standardize=False``).
    scale_ : ndarray of shape (`n_targets_`,)
        Per-column scale of ``y`` divided out before the flow (ones when ``standardize=False``).
    X_mean_ : ndarray of shape (`n_features_in_`,)
        Per-feature mean of ``X`` removed before it enters the potential.
    X_scale_ : ndarray of shape (`n_features_in_`,)
        Per-feature scale of ``X`` divided out before it enters the potential.
    net_ : skorch.NeuralNet
        The trained skorch net; ``net_.module_.potential`` is the potential :math:`\Phi(y, x, t)`.
    history_ : skorch.History
        A row per round of 100 training steps, as :class:`OTFlowDensity`'s.
    n_iter_ : int
        Number of optimizer steps run by the last ``fit``.
    stopped_by_ : str
        Why the last ``fit`` ended: ``"max_iter"``, ``"max_time"``, ``"early stopping"`` or
        ``"divergence"``.
    fit_time_ : float
        Seconds of the last ``fit``.
    n_steps_ : int
        RK4 steps that training ended with (see ``n_steps``).
    n_steps_eval_ : int
        RK4 steps that the evaluations use (see ``n_steps_eval``).
    integration_error_ : float
        Change of the mean log-likelihood of (up to 512 of) the training rows, in nats, from
        ``n_steps_eval_`` steps to twice as many.

    See Also
    --------
    OTFlowDensity : The unconditional density of the same flow.

    References
    ----------
    Z. O. Wang, R. Baptista, Y. Marzouk, L. Ruthotto, D. Verma. Efficient neural network approaches for
    conditional optimal transport with applications in Bayesian inference (COT-Flow). Preprint, 2023.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn_otflow import OTFlowConditionalDensity
    >>> rng = np.random.default_rng(0)
    >>> X = rng.uniform(-1, 1, size=(200, 1))
    >>> y = np.sin(3 * X[:, 0]) + 0.1 * rng.normal(size=200)
    >>> est = OTFlowConditionalDensity(hidden_width=8, max_iter=20, random_state=0).fit(X, y)
    >>> est.score_samples(X[:5], y[:5]).shape
    (5,)
    >>> est.sample(X[:3], n_samples=4, random_state=0).shape
    (3, 4)
    >>> est.predict(X[:3]).shape
    (3,)
    """

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y, sample_weight=None):
        """Fit the conditional density of ``y`` given ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The conditions; finite values.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            The variable whose density given ``X`` is modelled; at least 2 samples, finite values.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the rows, as in :meth:`OTFlowDensity.fit`.

        Returns
        -------
        self : OTFlowConditionalDensity
            The fitted estimator.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_otflow import OTFlowConditionalDensity
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(200, 2)), rng.normal(size=(200, 3))
        >>> est = OTFlowConditionalDensity(hidden_width=8, max_iter=20, random_state=0).fit(X, y)
        >>> est.n_features_in_, est.n_targets_, est.X_mean_.shape, est.mean_.shape
        (2, 3, (2,), (3,))
        """
        with _kept_on_failure(self):
            return _training.fit(self, X, y, sample_weight=sample_weight)

    def score_samples(self, X, y):
        r"""Conditional log-density of each row of ``y`` given the same row of ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The conditions.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
            The values whose density is evaluated.

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            :math:`\log p(y_i \mid x_i)` in ``y``'s units, float64.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_otflow import OTFlowConditionalDensity
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(200, 1)), rng.normal(size=200)
        >>> est = OTFlowConditionalDensity(hidden_width=8, max_iter=20, random_state=0).fit(X, y)
        >>> est.score_samples(X[:5], y[:5]).shape
        (5,)
        """
        context, Y = self._check_rows(X, y)
        return self._run(Y, keep=log_prob_only, context=context)[0] - np.log(self.scale_).sum()

    def score(self, X, y, sample_weight=None):
        r"""Mean conditional log-likelihood of ``y`` given ``X``: higher is better.

        ``GridSearchCV`` and ``cross_val_score`` rank by it with no ``scoring`` argument.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : array-like of shape (n_samples,) or (n_samples, n_targets)
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows: the mean becomes :math:`\sum_i w_i \log p(y_i \mid x_i) / \sum_i w_i`.

        Returns
        -------
        log_likelihood : float
            Mean of :meth:`score_samples`.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_otflow import OTFlowConditionalDensity
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(200, 1)), rng.normal(size=200)
        >>> est = OTFlowConditionalDensity(hidden_width=8, max_iter=20, random_state=0).fit(X, y)
        >>> type(est.score(X, y)).__name__
        'float'
        """
        return weighted_mean(self.score_samples(X, y), sample_weight)

    def sample(self, X, n_samples=1, random_state=None):
        """Draw ``y`` given each row of ``X``: latent :math:`z \\sim \\mathcal N(0, I)` flowed back.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
            The conditions.
        n_samples : int, default=1
            Draws per row of ``X``.
        random_state : int, RandomState instance or None, default=None
            Seeds the latent draws.

        Returns
        -------
        y : ndarray of shape (n_rows, n_samples) or (n_rows, n_samples, n_targets)
            Draws in ``y``'s units; the last axis only where ``y`` had two dimensions in ``fit``.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_otflow import OTFlowConditionalDensity
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(200, 1)), rng.normal(size=(200, 2))
        >>> est = OTFlowConditionalDensity(hidden_width=8, max_iter=20, random_state=0).fit(X, y)
        >>> est.sample(X[:3], n_samples=5, random_state=0).shape
        (3, 5, 2)
        """
        check_is_fitted(self)
        if not isinstance(n_samples, numbers.Integral) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        context = self._check_conditions(X)
        z = check_random_state(random_state).standard_normal((len(context), n_samples, self.n_targets_))
        return self._draws(context, z)

    def predict(self, X):
        r"""The conditional mean :math:`\mathbb E[y \mid x]`, estimated from samples.

        For each row, the mean of :math:`y` drawn at 128 latent points (64 antithetic pairs :math:`\pm z`,
        the same for every row): deterministic, independent of the other rows, and exact where the
        fitted map is affine in :math:`z` (a Gaussian conditional). It costs 128 sampling integrations
        per row.

        Parameters
        ----------
        X : array-like of shape (n_rows, n_features)
            The conditions.

        Returns
        -------
        y_mean : ndarray of shape (n_rows,) or (n_rows, n_targets)
            In ``y``'s units; the second axis only where ``y`` had two dimensions in ``fit``.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_otflow import OTFlowConditionalDensity
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(200, 1)), rng.normal(size=200)
        >>> est = OTFlowConditionalDensity(hidden_width=8, max_iter=20, random_state=0).fit(X, y)
        >>> est.predict(X[:3]).shape
        (3,)
        """
        check_is_fitted(self)
        context = self._check_conditions(X)
        half = np.random.RandomState(0).standard_normal((PREDICT_DRAWS // 2, self.n_targets_))
        z = np.broadcast_to(np.vstack([half, -half]), (len(context), PREDICT_DRAWS, self.n_targets_))
        return self._draws(context, z).mean(axis=1)

    def transform(self, X, y):
        """Map ``y`` given ``X`` to the latent space: :math:`z = y(1)`, meant to be standard normal.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            The conditions.
        y : array-like of shape (n_samples,) or (n_samples, n_targets)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_targets)

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_otflow import OTFlowConditionalDensity
        >>> rng = np.random.default_rng(0)
        >>> X, y = rng.normal(size=(200, 1)), rng.normal(size=200)
        >>> est = OTFlowConditionalDensity(hidden_width=8, max_iter=20, random_state=0).fit(X, y)
        >>> est.transform(X[:4], y[:4]).shape
        (4, 1)
        """
        context, Y = self._check_rows(X, y)
        return self._run(Y, keep=latent_only, context=context)[0]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.estimator_type = "regressor"  # predict gives E[y | x]; score is the log-likelihood
        tags.regressor_tags = RegressorTags(poor_score=True)  # score is a log-likelihood, not R^2
        tags.transformer_tags = TransformerTags(preserves_dtype=["float64"])  # transform(X, y): y's latent
        tags.target_tags.required = True
        tags.target_tags.multi_output = True
        tags.input_tags.allow_nan = False
        tags.non_deterministic = False
        return tags

    # ------------------------------------------------------------------ private

    def _draws(self, context: np.ndarray, z: np.ndarray) -> np.ndarray:
        """``y`` for the latent points ``z`` (rows, n_samples, n_targets) given each row of the
        standardized ``context``, shaped (rows, n_samples[, n_targets]); a few rows at a time, so that
        the repeated conditions take memory for at most ``DRAWS_AT_ONCE`` draws."""
        n_samples = z.shape[1]
        y = np.empty(z.shape)
        step = max(1, DRAWS_AT_ONCE // n_samples)
        for start in range(0, len(context), step):
            rows = slice(start, start + step)
            repeated = np.repeat(context[rows], n_samples, axis=0)
            latent = z[rows].reshape(len(repeated), self.n_targets_)
            y[rows] = self._run(latent, inverse=True, keep=latent_only, context=repeated)[0].reshape(
                -1, n_samples, self.n_targets_
            )
        return y[..., 0] if self._y_1d_ else y

    def _check_conditions(self, X) -> np.ndarray:
        """``X`` checked against fit and standardized."""
        X = validate_data(self, X, reset=False, dtype=np.float64, order="C")
        return self._standardized_context(X)

    def _check_rows(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """The standardized conditions and the rows of ``y`` (2-D, ``y``'s units), checked."""
        check_is_fitted(self)
        context = self._check_conditions(X)
        Y = check_array(y, ensure_2d=False, dtype=np.float64, order="C", input_name="y")
        Y = Y.reshape(-1, 1) if Y.ndim == 1 else Y
        if Y.ndim != 2 or Y.shape[1] != self.n_targets_ or len(Y) != len(context):
            shape = (len(context), self.n_targets_)
            raise ValueError(
                f"Expected y of shape {shape}{f' or ({len(context)},)' if self.n_targets_ == 1 else ''}: "
                f"one row per row of X, with the {self.n_targets_} column(s) seen in fit; got shape "
                f"{np.shape(y)}."
            )
        return context, Y

    # what _training asks

    def _check_fit_data(self, X, y, reset: bool, min_samples: int):
        """The rows that flow (``y``, 2-D) and their condition (``X``)."""
        X, y = validate_data(
            self,
            X,
            y,
            reset=reset,
            multi_output=True,
            y_numeric=True,
            dtype=np.float64,
            order="C",
            ensure_min_samples=min_samples,
        )
        columns = 1 if y.ndim == 1 else y.shape[1]
        if reset:
            self._y_1d_, self.n_targets_ = y.ndim == 1, columns
        elif columns != self.n_targets_:
            raise ValueError(f"y has {columns} columns, but the fitted model has {self.n_targets_}.")
        return np.ascontiguousarray(y.reshape(len(y), -1)), X

    def _standardize(self, Y, X, weights, mean=None, scale=None) -> None:
        """Set ``mean_`` and ``scale_`` of ``Y``, ``X_mean_`` and ``X_scale_`` of the conditions."""
        self.mean_, self.scale_ = standardization(Y, self.standardize, weights)
        self.X_mean_, self.X_scale_ = standardization(X, self.standardize, weights)

    def _standardized_context(self, X: np.ndarray) -> np.ndarray:
        return (X - self.X_mean_) / self.X_scale_

    def _flow_dims(self) -> tuple[int, int]:
        """The number of coordinates that flow (``y``'s) and of their condition (``X``'s)."""
        return self.n_targets_, self.n_features_in_
