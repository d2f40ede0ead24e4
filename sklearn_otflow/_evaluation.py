"""Evaluation of a fitted flow: its public methods, and rows in, numpy out, in float64 batches.

:class:`FittedFlowMixin` holds what a fitted flow answers (``score_samples``, ``score``, ``sample``,
``transform``, ``inverse_transform``, ``flow_diagnostics``), as scikit-learn's ``BaseMixture`` holds
what a fitted mixture answers; an estimator that fits a flow sets ``net_``, ``mean_``, ``scale_``,
``n_features_in_`` and ``n_steps_eval_``. :func:`evaluate` runs the flow over rows in batches.
"""

from __future__ import annotations

import copy
import numbers

import numpy as np
import torch
from sklearn.base import TransformerMixin
from sklearn.utils import Bunch, check_random_state
from sklearn.utils.validation import check_is_fitted

from ._auto import eval_rows
from ._dynamics import flow
from ._hardware import thread_share
from ._loss import negative_log_likelihood
from ._potential import Potential
from ._validation import check_input, check_weights

__all__ = ["FittedFlowMixin", "FlowRunner", "evaluate", "latent_only", "log_prob_only", "weighted_mean"]


def evaluate(
    potential: Potential,
    X: np.ndarray,
    mean: np.ndarray,
    scale: np.ndarray,
    n_steps: int,
    inverse: bool = False,
    keep=None,
    finite: bool = True,
    device: torch.device | str = "cpu",
    context: np.ndarray | None = None,
) -> tuple[np.ndarray, ...]:
    """Flow rows ``X`` in float64 through batches of bounded size; numpy outputs.

    Forward, ``X`` is data in the caller's units, standardized batch by batch with ``mean`` and
    ``scale``; inverse, ``X`` is latent and the first output comes back in the caller's units.
    ``context``: each row's condition, standardized, for a conditional potential. ``keep``
    maps a batch's end state ``(z, ell, L, R)`` to the tensors to return (default: all four), so that
    only what the caller needs is kept for every row. Memory beyond ``X`` and the outputs is one batch's
    worth. With ``finite``, a row whose outputs are not finite (float64 overflows along its flow) raises.
    """
    potential = copy.deepcopy(potential).to(device=device, dtype=torch.float64)
    rows = eval_rows(potential.width)
    mean, scale = (torch.as_tensor(a, device=device) for a in (mean, scale))
    outs = None  # allocated once the first batch gives the shapes; filled in place
    with torch.no_grad(), thread_share() as rebalance:
        for start in range(0, X.shape[0], rows):
            rebalance()
            # a copy: as_tensor would share a read-only X's memory, which torch warns about
            x = torch.tensor(X[start : start + rows], dtype=torch.float64, device=device)
            c = None if context is None else torch.tensor(context[start : start + rows], device=device)
            state = flow(potential, x if inverse else (x - mean) / scale, n_steps, inverse=inverse, context=c)
            if inverse:
                state = (state[0] * scale + mean, *state[1:])
            parts = [t.cpu().numpy() for t in (keep(*state) if keep else state)]
            if outs is None:
                outs = tuple(np.empty((X.shape[0], *part.shape[1:])) for part in parts)
            for out, part in zip(outs, parts):
                out[start : start + rows] = part
    if finite:
        _check_finite(outs, "latent points" if inverse else "rows")
    return outs


def _check_finite(outs: tuple[np.ndarray, ...], what: str) -> None:
    """Raise where a row's outputs are not finite: float64 overflows along the flow of rows so far from
    the training data (about 1e150 of its standard deviations) that no density is representable."""
    bad = np.zeros(len(outs[0]), dtype=bool)
    for out in outs:
        bad |= ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if bad.any():
        raise ValueError(
            f"The flow overflows float64 for {bad.sum()} of {len(bad)} {what} (the first is row "
            f"{np.flatnonzero(bad)[0]}): they lie too far from the training data for their results to "
            "be represented. Expected rows within about 1e150 standard deviations of the training data."
        )


def weighted_mean(values: np.ndarray, sample_weight) -> float:
    """The mean of ``values``, weighted by ``sample_weight`` (checked) if given."""
    weights = check_weights(sample_weight, len(values))
    return float(np.mean(values) if weights is None else np.average(values, weights=weights))


def latent_only(z, ell, L, R):
    """What ``transform``, ``inverse_transform`` and ``sample`` keep of each evaluated batch."""
    return (z,)


def log_prob_only(z, ell, L, R):
    """What the log-density keeps of each evaluated batch: log p = -C, in the model's coordinates."""
    return (-negative_log_likelihood(z, ell),)


class FlowRunner:
    """What runs a fitted flow (:meth:`_run`): the mixin of every estimator that fits one."""

    def _run(
        self,
        X: np.ndarray,
        inverse: bool = False,
        keep=None,
        n_steps: int | None = None,
        finite: bool = True,
        context: np.ndarray | None = None,
    ) -> tuple[np.ndarray, ...]:
        """:func:`evaluate` with the fitted flow and ``n_steps`` (default ``n_steps_eval_``), on the net's
        device (skorch loads a CUDA-pickled net on the CPU where none exists); ``context``: the rows'
        standardized condition (conditional density)."""
        potential, device = self.net_.module_.potential, torch.device(self.net_.device)
        return evaluate(
            potential,
            X,
            self.mean_,
            self.scale_,
            n_steps or self.n_steps_eval_,
            inverse=inverse,
            keep=keep,
            finite=finite,
            device=device,
            context=context,
        )


class FittedFlowMixin(FlowRunner, TransformerMixin):
    """The public methods of a fitted flow: densities, samples, and the map to the latent space (a
    transformer: scikit-learn's ``set_output`` wraps its ``transform``)."""

    def score_samples(self, X):
        """Log-density of each sample, in the caller's units.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            :math:`\\log p(x)`, float64, the standardization's Jacobian included.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> est.score_samples(X[:5]).shape
        (5,)
        """
        return self._flow(X, keep=log_prob_only)[0] - np.log(self.scale_).sum()

    def score(self, X, y=None, sample_weight=None):
        """Mean log-likelihood of ``X`` (scikit-learn's convention for GaussianMixture), higher is better.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.
        sample_weight : array-like of shape (n_samples,), default=None
            Weights of the rows: the mean becomes :math:`\\sum_i w_i \\log p(x_i) / \\sum_i w_i`.

        Returns
        -------
        log_likelihood : float
            Mean of :meth:`score_samples` over ``X``.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> type(est.score(X)).__name__
        'float'
        """
        return weighted_mean(self.score_samples(X), sample_weight)

    def sample(self, n_samples=1, random_state=None):
        """Draw samples: latent :math:`z \\sim \\mathcal N(0, I)` flowed back from :math:`t = 1` to 0.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        random_state : int, RandomState instance or None, default=None
            Seeds the latent draws.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Samples in the caller's units.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> est.sample(3, random_state=0).shape
        (3, 2)
        """
        check_is_fitted(self)
        if not isinstance(n_samples, numbers.Integral) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        z = check_random_state(random_state).standard_normal((n_samples, self.n_features_in_))
        return self._run(z, inverse=True, keep=latent_only)[0]

    def transform(self, X):
        """Map ``X`` to the latent space: :math:`z = x(1)`, meant to be standard normal.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> est.transform(X[:4]).shape
        (4, 2)
        """
        return self._flow(X, keep=latent_only)[0]

    def inverse_transform(self, X):
        """Map latent points back to the data space (the inverse flow), in the caller's units.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Latent points.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> Z = est.transform(X[:4])
        >>> est.inverse_transform(Z).shape
        (4, 2)
        """
        check_is_fitted(self)
        Z = check_input(self, X, reset=False, check_names=False)  # latent columns: their own names
        return self._run(Z, inverse=True, keep=latent_only)[0]

    def flow_diagnostics(self, X):
        """Per-sample quantities along the flow, in the model's standardized coordinates.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        diagnostics : Bunch
            ``latent`` (n_samples, n_features): :math:`z = x(1)`; ``log_det`` (n_samples,):
            :math:`\\ell(1) = \\log|\\det \\partial z / \\partial \\tilde x|` with :math:`\\tilde x` the
            standardized input; ``transport_cost`` (n_samples,): :math:`L = \\int_0^1 \\tfrac12|v|^2 dt`;
            ``hjb_residual`` (n_samples,): :math:`R`.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> diagnostics = est.flow_diagnostics(X[:4])
        >>> diagnostics.latent.shape, diagnostics.log_det.shape, diagnostics.transport_cost.shape
        ((4, 2), (4,), (4,))
        """
        z, ell, L, R = self._flow(X)
        return Bunch(latent=z, log_det=ell, transport_cost=L, hjb_residual=R)

    # ------------------------------------------------------------------ private

    def _flow(self, X, keep=None):
        check_is_fitted(self)
        X = check_input(self, X, reset=False)
        return self._run(X, keep=keep)
