"""Fitting a flow: from checked rows to a trained net and the fitted attributes.

:func:`fit` and :func:`partial_fit` are the estimators' methods of those names, written out: they check
the rows and their sample weights, standardize, build or continue a skorch net
(:mod:`sklearn_otflow._net`), train it, and record on the estimator what was fitted (``net_``,
``history_``, ``n_iter_``, ``stopped_by_``, ``n_steps_``, ``n_steps_eval_``, ``integration_error_``).
The estimator says what its rows are (``_check_fit_data``: the values that flow, and a condition for
a conditional density) and how they are standardized (``_standardize``). After training, the
evaluation step count is checked against twice itself (:func:`resolve_eval_steps`): a flow that RK4
does not resolve gets more steps, or a warning.
"""

from __future__ import annotations

import copy
import math
import time
import warnings

import numpy as np
import torch
from sklearn.utils import check_random_state

from . import _auto
from ._callbacks import TrainingDiverged
from ._evaluation import log_prob_only
from ._hardware import thread_share
from ._net import DTYPES, Interrupted, OTFlowNet, build_net, continue_net
from ._potential import Potential
from ._validation import check_weights

__all__ = ["fit", "partial_fit"]


def fit(est, X, y=None, sample_weight=None):
    """``est.fit(X, y, sample_weight)``: see :meth:`~sklearn_otflow.OTFlowDensity.fit`."""
    started = time.perf_counter()
    warm = est.warm_start and hasattr(est, "net_")
    X, context, weights = _fit_data(est, X, y, sample_weight, reset=not warm, min_samples=2)
    if not warm:
        est._standardize(X, context, weights)
    data = _Data(est, X, context, weights)
    seeds = seeds_of(est, 1 if warm else est.n_init)
    # warm: a new net with the current parameters, starting from the fitted weights (the fitted net
    # itself is left as it is, see OTFlowDensity.fit) and at least the steps they ended with
    start = est.net_.module_.potential if warm else None
    steps = max(est.n_steps, getattr(est, "n_steps_", 0)) if warm else est.n_steps
    deadline = None if est.max_time is None else started + est.max_time
    seed = _pick_initialization(est, data, seeds, deadline) if len(seeds) > 1 else seeds[0]
    net = build_net(
        est, seed, len(X), n_steps=steps, split_seed=seeds[0], deadline=deadline, weighted=data.weighted
    )
    _train(est, net, data, initialize=True, start=start)
    est.fit_time_ = time.perf_counter() - started
    if est.verbose:
        print(_summary(est), flush=True)
    return est


def partial_fit(est, X, y=None, sample_weight=None, mean=None, scale=None):
    """``est.partial_fit(X, y, sample_weight, mean=mean, scale=scale)``: see
    :meth:`~sklearn_otflow.OTFlowDensity.partial_fit`."""
    first = not hasattr(est, "net_")
    X, context, weights = _fit_data(est, X, y, sample_weight, reset=first, min_samples=2 if first else 1)
    if not first and (mean is not None or scale is not None):
        raise ValueError(
            "mean and scale can only be given in the first call to partial_fit; the standardization "
            f"is fixed after it (mean_={est.mean_!r}, scale_={est.scale_!r})."
        )
    if first:
        est._standardize(X, context, weights, mean, scale)
    data = _Data(est, X, context, weights)
    if first:
        net = build_net(est, seeds_of(est, 1)[0], len(X), streaming=True, weighted=data.weighted)
    else:
        net = copy.deepcopy(est.net_)  # the fitted net stays as it is until this call succeeds
        continue_net(est, net, len(X), data.weighted)
    return _train(est, net, data, initialize=first, epochs=1)


def _fit_data(est, X, y, sample_weight, reset: bool, min_samples: int):
    """The rows that flow (caller's units), their condition (or ``None``) and their sample weights (or
    ``None``), checked. Rows of zero weight are dropped, as if absent; weights that are all the same
    are no weights (the fit is then that of the rows without weights)."""
    rows, context = est._check_fit_data(X, y, reset=reset, min_samples=min_samples)
    weights = check_weights(sample_weight, len(rows))
    if weights is None:
        return rows, context, None
    kept = weights > 0
    if kept.sum() < min_samples:
        raise ValueError(
            f"Expected at least {min_samples} rows with a positive sample_weight; got {int(kept.sum())}."
        )
    if not kept.all():
        rows, weights = rows[kept], weights[kept]
        context = None if context is None else context[kept]
    if (weights == weights[0]).all():
        return rows, context, None
    return rows, context, weights / weights.mean()


class _Data:
    """A fit's rows as training reads them: ``rows`` (the values that flow, caller's units),
    ``context`` (their condition, standardized, or ``None``) and ``weights`` (or ``None``)."""

    def __init__(self, est, rows: np.ndarray, context: np.ndarray | None, weights: np.ndarray | None):
        self.rows, self.weights = rows, weights
        self.context = None if context is None else est._standardized_context(context)
        self.weighted = weights is not None

    def __len__(self) -> int:
        return len(self.rows)

    def head(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The first ``n`` rows and their condition."""
        return self.rows[:n], None if self.context is None else self.context[:n]

    def tensors(self, est, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
        """skorch's ``X`` and ``y``: the standardized rows followed by their condition, and the
        weights."""
        X = (self.rows - est.mean_) / est.scale_
        if self.context is not None:
            X = np.hstack([X, self.context])
        weights = None if self.weights is None else torch.as_tensor(self.weights, dtype=dtype)
        return torch.as_tensor(X, dtype=dtype), weights


def seeds_of(est, n: int) -> list[int]:
    """``n`` torch seeds drawn from ``est.random_state`` (the first is the same for every ``n``)."""
    rng = check_random_state(est.random_state)
    return [int(rng.randint(np.iinfo(np.int32).max)) for _ in range(n)]


def resolve_eval_steps(est, X: np.ndarray, context: np.ndarray | None = None) -> None:
    """Set ``n_steps_eval_`` and ``integration_error_`` from rows ``X`` (caller's units) and their
    standardized ``context``.

    From the evaluation step count, double while that moves the rows' mean log-likelihood by more than
    ``MAX_INTEGRATION_ERROR`` (``n_steps_eval=None`` only, up to ``MAX_EVAL_DOUBLINGS`` times);
    ``integration_error_`` is the last change measured.
    """
    steps = _auto.eval_steps(est.n_steps_eval, est.n_steps_)
    limit = _auto.MAX_EVAL_DOUBLINGS if est.n_steps_eval is None else 0
    log_p = _log_prob(est, X, steps, context)
    if not np.isfinite(log_p).all():  # the weights training ended with (or restored) are no model
        raise ValueError(
            f"Training diverged: the fitted flow gives {np.sum(~np.isfinite(log_p))} of {len(X)} "
            "training rows a log-likelihood that is not finite. Try a smaller learning_rate, "
            "standardize=True, or dtype='float64'."
        )
    log_p = log_p.mean()
    for doubling in range(limit + 1):
        finer = _log_prob(est, X, 2 * steps, context).mean()
        error = abs(log_p - finer)
        if error <= _auto.MAX_INTEGRATION_ERROR or doubling == limit or not np.isfinite(finer):
            break
        steps, log_p = 2 * steps, finer
    est.n_steps_eval_, est.integration_error_ = steps, float(error)


def _pick_initialization(est, data: _Data, seeds: list[int], deadline: float | None = None) -> int:
    """The seed, of ``seeds``, whose trial (the first 1/25 of its fit) ends with the lowest NLL.

    Each trial is the beginning of the fit that its seed would give (the same schedule, batches and
    validation rows, ``seeds[0]`` seeding the split for all), so the fit that follows repeats the
    winner's trial and goes on. The NLL compared is the trial's last ``valid_nll`` (``train_nll``
    without early stopping); a trial whose loss diverged loses.
    """
    scores = []
    for i, seed in enumerate(seeds):
        net = build_net(
            est, seed, len(data), split_seed=seeds[0], deadline=deadline, trial=True, weighted=data.weighted
        )
        try:
            _run_net(est, net, data, initialize=True)
            key = "valid_nll" if "valid_nll" in net.history[-1] else "train_nll"
            score = float(net.history[-1, key])
        except TrainingDiverged:
            score = math.inf
        scores.append(score if math.isfinite(score) else math.inf)
        if est.verbose:
            steps = _steps_run(net.history or [])
            print(f"initialization {i + 1}/{len(seeds)}: NLL {score:.4f} after {steps} steps")
    return seeds[int(np.argmin(scores))]


def _train(est, net: OTFlowNet, data: _Data, initialize: bool, start: Potential | None = None, **fit_params):
    """Train ``net`` on ``data`` with skorch, then record the fitted attributes.

    ``initialize`` builds the net's module, optimiser and callbacks first; ``start``, a potential of
    the same architecture whose weights to begin from instead of the random initialisation.
    """
    diverged = None
    try:
        _run_net(est, net, data, initialize, start, **fit_params)
        est.stopped_by_ = _stop_reason(net)
    except TrainingDiverged as exc:
        guard = dict(net.callbacks_)["finite_guard"]
        if guard.best_state is None:
            raise ValueError(
                f"Training diverged: {exc}, before any round finished with a finite loss. Try a smaller "
                "learning_rate, standardize=True, or dtype='float64'."
            ) from exc
        net.module_.load_state_dict(guard.best_state)  # checked below: do they give a model?
        est.stopped_by_, diverged = "divergence", exc
    est.net_ = net
    est.history_ = net.history
    est.n_iter_ = _steps_run(net.history)
    est.n_steps_ = net.module_.n_steps
    validated = _auto.eval_steps(est.n_steps_eval, est.n_steps_)  # the count validation ended with
    resolve_eval_steps(est, *data.head(512))
    if diverged is not None:
        if not est.integration_error_ <= _auto.MAX_INTEGRATION_ERROR:  # the restored weights are no model
            raise ValueError(
                f"Training diverged: {diverged}; the weights of the last round with a finite loss "
                f"give a flow that RK4 does not resolve (the training rows' mean log-likelihood moves "
                f"by {est.integration_error_:.3g} nats with twice its {est.n_steps_eval_} steps). "
                "Try a smaller learning_rate, standardize=True, or dtype='float64'."
            ) from diverged
        warnings.warn(
            f"Training stopped: {diverged}. The weights of the last round with a finite loss were restored.",
            RuntimeWarning,
            stacklevel=5,
        )
    if not est.integration_error_ <= _auto.MAX_INTEGRATION_ERROR:  # also NaN
        warnings.warn(
            f"RK4 with {est.n_steps_eval_} steps does not resolve the fitted flow: "
            f"the training data's mean log-likelihood moves by {est.integration_error_:.3g} nats "
            "with twice the steps, so scores are unreliable. Increase n_steps or n_steps_eval.",
            RuntimeWarning,
            stacklevel=5,
        )
    elif est.n_steps_eval_ > validated:
        warnings.warn(
            f"RK4 with {validated} steps does not resolve the fitted flow, so scores, "
            f"samples and transforms use {est.n_steps_eval_} (n_steps_eval_). Early stopping "
            f"validated with {validated} and may have kept a flow that exploits their "
            "integration error: try a smaller learning_rate or a larger n_steps.",
            RuntimeWarning,
            stacklevel=5,
        )
    return est


def _run_net(
    est, net: OTFlowNet, data: _Data, initialize: bool, start: Potential | None = None, **fit_params
):
    """skorch's training of ``net`` on ``data``; see :func:`_train`."""
    Xt, weights = data.tensors(est, DTYPES[est.dtype])
    width = net.module__width
    work = width * net.batch_size * (Xt.shape[1] + 1)  # entries of an activation
    with thread_share(work) as rebalance:
        if initialize:
            net.initialize()
            if start is not None:
                _load_weights(net.module_.potential, start)
        net.rebalance_threads_ = rebalance
        try:
            net.partial_fit(Xt, weights, **fit_params)
        except Interrupted as exc:  # Ctrl-C: on to the caller, the estimator as it was before
            raise exc.interrupt from None
        finally:
            net.rebalance_threads_ = None


def _log_prob(est, X: np.ndarray, n_steps: int, context: np.ndarray | None = None) -> np.ndarray:
    """Log-density of rows ``X`` (caller's units) given their standardized ``context``, in the model's
    standardized coordinates, with ``n_steps`` RK4 steps; a non-finite value is returned, not raised
    (the caller checks)."""
    return est._run(X, keep=log_prob_only, n_steps=n_steps, finite=False, context=context)[0]


def _summary(est) -> str:
    """The line that ``verbose`` prints after a fit."""
    line = f"{type(est).__name__}: {est.n_iter_} steps in {est.fit_time_:.1f} s, stopped by {est.stopped_by_}"
    if "valid_nll" in est.history_[-1]:
        nll = est.history_[:, "valid_nll"]
        best = int(np.argmin(nll))
        log_lik = -nll[best] - np.log(est.scale_).sum()
        line += (
            f"; best validation log-likelihood {log_lik:.4f} per sample at step {est.history_[best, 'iter']}"
        )
    return line + f"; RK4 steps {est.n_steps_} in training, {est.n_steps_eval_} in evaluation."


def _steps_run(history) -> int:
    """Optimizer steps recorded in a skorch history, a round that ended early (divergence) included."""
    return sum(sum("train_loss" in batch for batch in row["batches"]) for row in history)


def _stop_reason(net: OTFlowNet) -> str:
    """Why ``net``'s training ended, as ``stopped_by_`` says."""
    callbacks = dict(net.callbacks_)
    budget = callbacks.get("budget")
    if budget is not None and budget.stopped_by_ is not None:
        return budget.stopped_by_  # the budget ran out (early stopping may agree at that last round)
    stop = callbacks.get("early_stopping")
    if stop is not None and stop.misses_ >= stop.patience:
        return "early stopping"
    if budget is None:  # partial_fit: one pass over its chunk
        return "pass"
    return "max_iter"


def _load_weights(new: Potential, old: Potential) -> None:
    """Start ``new`` from ``old``'s weights (a warm start); their architectures must be the same."""
    sizes = [(p.width, p.n_layers, p.A.shape[0]) for p in (old, new)]
    if sizes[0] != sizes[1]:
        raise ValueError(
            "warm_start=True continues the fitted network, which has hidden_width={}, n_layers={} and "
            "rank={}; the parameters now give hidden_width={}, n_layers={} and rank={}. Set "
            "warm_start=False to fit a new network.".format(*sizes[0], *sizes[1])
        )
    new.load_state_dict(old.state_dict())
