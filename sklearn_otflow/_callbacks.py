r"""The callbacks of training, on skorch's hooks: what OT-Flow adds to skorch's loop.

- :class:`FiniteGuard` stops at the first non-finite loss and keeps the last finite round's weights.
- :class:`WeightAveraging` keeps an exponential moving average of the weights (torch's
  :class:`~torch.optim.swa_utils.AveragedModel`) and hands it to validation and to the fitted model.
- :class:`StepRefinement` gives training more RK4 steps once the flow starts to exploit the
  discretization error of the ones it has.
- :class:`EarlyStoppingInTheFall` is skorch's early stopping, counting only the rounds of the learning
  rate's fall (:class:`~sklearn_otflow._budget.Budget`), with a public
  :meth:`~EarlyStoppingInTheFall.rebaseline`.
- :class:`Progress` shows a run as one progress bar (tqdm, as skorch's own).
"""

from __future__ import annotations

import copy
import math

import torch
from skorch.callbacks import Callback, EarlyStopping
from torch import Tensor
from torch.optim.swa_utils import AveragedModel

from ._budget import DECAY_SHARE, Budget, StopTraining

__all__ = [
    "EarlyStoppingInTheFall",
    "FiniteGuard",
    "Progress",
    "StepRefinement",
    "TrainingDiverged",
    "WeightAveraging",
]


class TrainingDiverged(RuntimeError):
    """Raised inside the training loop when the loss stops being finite."""


class FiniteGuard(Callback):
    """Stop at the first non-finite batch loss; keep the last weights that gave a finite epoch.

    After a stop, :attr:`best_state` holds the module's state at the end of the last finite epoch (or
    ``None`` if there was none), and :attr:`epoch` the epoch in which the loss diverged.
    """

    def initialize(self):
        self.best_state, self.epoch = None, None
        return self

    def on_batch_end(self, net, batch=None, training=None, loss=None, **kwargs):
        if loss is not None and not math.isfinite(loss.item()):
            self.epoch = len(net.history)
            kind = "training" if training else "validation"
            raise TrainingDiverged(f"the {kind} loss became {loss.item()} in round {self.epoch}")

    def on_epoch_end(self, net, **kwargs):
        losses = [net.history[-1].get(key) for key in ("train_loss", "valid_loss")]
        if all(value is None or math.isfinite(value) for value in losses):
            self.best_state = copy.deepcopy(net.module_.state_dict())


class WeightAveraging(Callback):
    r"""Exponential moving average of the weights: trained with the raw ones, validated and kept averaged.

    After optimiser step :math:`k = 1, 2, \dots`, :math:`\bar\theta \leftarrow \beta_k\bar\theta +
    (1-\beta_k)\theta` with :math:`\beta_k = \min(\beta, k / (k + 9))` (the first step copies
    :math:`\theta`). The warm-up in :math:`\beta_k`, as in TensorFlow's ``ExponentialMovingAverage``
    with ``num_updates``, keeps a short fit from being averaged with its random initial weights. From the
    first validation batch of an epoch to the start of the next one, the module holds :math:`\bar\theta`,
    so validation, early stopping's best weights, :class:`FiniteGuard` and the model left after training
    all see the average; the raw weights, which the optimiser's moments belong to, come back before
    the next training batch. Averaging smooths the round-to-round noise of a high learning rate, so
    that early stopping picks a better round (benchmarks page, "The defaults and why").

    Parameters
    ----------
    decay : float
        :math:`\beta`, per optimiser step; ``1 / (1 - decay)`` steps is the average's memory.
    """

    def __init__(self, decay: float) -> None:
        self.decay = decay

    def initialize(self):
        self.average_, self.raw_ = None, None
        return self

    def on_train_begin(self, net, **kwargs):
        self.average_ = AveragedModel(net.module_, multi_avg_fn=self._update)
        self.raw_ = None

    def on_epoch_begin(self, net, **kwargs):
        if self.raw_ is not None:  # back to the weights that training left
            _copy(net.module_.parameters(), self.raw_)
            self.raw_ = None

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.average_.update_parameters(net.module_)

    def on_batch_begin(self, net, training=False, **kwargs):
        if not training:
            self._hold_average(net)

    def on_epoch_end(self, net, **kwargs):
        self._hold_average(net)  # also without validation: the epoch ends on the average

    def on_train_end(self, net, **kwargs):
        self.average_, self.raw_ = None, None  # the module keeps the average; the copies go

    @torch.no_grad()
    def _update(self, averages: list[Tensor], params: list[Tensor], n_averaged: Tensor) -> None:
        """AveragedModel's ``multi_avg_fn``: called from step ``k = n_averaged + 1`` on (step 1 copies)."""
        k = n_averaged.item() + 1  # one read of the counter per step (a device sync on a GPU)
        beta = min(self.decay, k / (k + 9))
        for average, param in zip(averages, params, strict=True):
            average.lerp_(param, 1.0 - beta)

    def _hold_average(self, net) -> None:
        if self.raw_ is None and self.average_.n_averaged.item() > 0:
            self.raw_ = [p.detach().clone() for p in net.module_.parameters()]
            _copy(net.module_.parameters(), list(self.average_.module.parameters()))


class StepRefinement(Callback):
    r"""After each epoch, more RK4 steps for training where the flow has begun to exploit its steps.

    Training minimises the loss of an :math:`n`-step RK4 integration, and a flow can lower that loss by
    growing stiff where :math:`n` steps underestimate its negative log-likelihood, instead of fitting the
    data better (benchmarks page, "The defaults and why"). At the end of every epoch this callback
    integrates a fixed probe of training rows with :math:`n` and :math:`2n` steps (the module's weights,
    without gradients); when their mean NLLs differ by more than ``tolerance`` nats, training continues
    with :math:`\lceil 1.5\,n \rceil` steps (and, where the evaluation count follows the training one,
    validation with twice that, the epoch's ``valid_nll`` and :class:`EarlyStoppingInTheFall`'s best score
    being measured again with the new count), at most ``max_refinements`` times. The history records each
    epoch's ``n_steps``.

    Parameters
    ----------
    tolerance : float
        Largest change of the probe's mean NLL, in nats, from :math:`n` to :math:`2n` steps.
    max_refinements : int
        Most times the step count grows in one training run.
    eval_follows : bool
        Set the module's evaluation (validation) step count to twice the new training count.
    probe_rows : int
        Training rows in the probe, evenly strided over the data.
    """

    def __init__(
        self, tolerance: float, max_refinements: int, eval_follows: bool, probe_rows: int = 128
    ) -> None:
        self.tolerance, self.max_refinements = tolerance, max_refinements
        self.eval_follows, self.probe_rows = eval_follows, probe_rows

    def initialize(self):
        self.probe_, self.refinements_ = None, 0
        return self

    def on_train_begin(self, net, X=None, **kwargs):
        stride = max(1, len(X) // self.probe_rows)
        self.probe_ = torch.as_tensor(X[::stride][: self.probe_rows], device=net.device)
        self.refinements_ = 0

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        module = net.module_
        n = module.n_steps
        if self.refinements_ < self.max_refinements:
            with torch.no_grad():
                coarse, fine = (-module.log_prob(self.probe_, steps).mean().item() for steps in (n, 2 * n))
            if not abs(coarse - fine) <= self.tolerance:  # also NaN: FiniteGuard deals with that
                module.n_steps = math.ceil(1.5 * n)
                if self.eval_follows and 2 * module.n_steps > module.n_steps_eval:
                    module.n_steps_eval = 2 * module.n_steps
                    if dataset_valid is not None:
                        self._revalidate(net, dataset_valid)
                self.refinements_ += 1
        net.history.record("n_steps", n)

    @staticmethod
    def _revalidate(net, dataset_valid) -> None:
        """Validation has a new step count: this epoch's ``valid_nll`` and early stopping's best score
        are measured again with it, so that early stopping goes on comparing like with like (a flow that
        exploits the old count scores better with it)."""
        net.history.record("valid_nll", _valid_nll(net, dataset_valid))
        for _, cb in net.callbacks_:
            if isinstance(cb, EarlyStoppingInTheFall) and cb.best_model_weights_ is not None:
                current = copy.deepcopy(net.module_.state_dict())
                net.module_.load_state_dict(cb.best_model_weights_)
                cb.rebaseline(_valid_nll(net, dataset_valid))
                net.module_.load_state_dict(current)


class EarlyStoppingInTheFall(EarlyStopping):
    """skorch's early stopping, counting only the rounds of the learning rate's fall.

    While ``budget``'s learning rate is constant, a stall of the validation score is what the fall
    resolves, so it stops nothing (the best weights are still kept). From the fall on, training stops
    where the score has not improved for ``patience`` rounds and for half the fall (a fifth of the
    budget: early in a long fall the rate is still near its peak, and the best score of the constant
    phase takes a while to beat). ``budget=None`` is skorch's.
    """

    def __init__(self, budget: Budget | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.budget = budget

    def on_train_begin(self, net, **kwargs):
        super().on_train_begin(net, **kwargs)
        self.since_ = 0.0  # the budget's progress at the last improvement or the fall's start

    def rebaseline(self, score: float) -> None:
        """Take ``score`` as the best score so far (the best weights stay): for when validation
        changes how it measures (:class:`StepRefinement`), so that later rounds compare like with
        like. skorch's rule for the threshold to beat."""
        change = self.threshold * score if self.threshold_mode == "rel" else self.threshold
        self.dynamic_threshold_ = score - change if self.lower_is_better else score + change

    def on_epoch_end(self, net, **kwargs):
        if self.budget is None:
            try:
                return super().on_epoch_end(net, **kwargs)
            except KeyboardInterrupt:  # skorch's way to stop, not an interrupt
                raise StopTraining from None
        falling, progress = self.budget.falling(), self.budget.progress
        try:
            super().on_epoch_end(net, **kwargs)
        except KeyboardInterrupt:
            if falling and progress - self.since_ >= DECAY_SHARE / 2 - 1e-9:
                raise StopTraining from None
            self.misses_ -= 1  # not yet: look again after the next round
        if not falling or self.misses_ == 0:
            self.since_ = progress
        if not falling:
            self.misses_ = 0


class Progress(Callback):
    """One progress bar for a whole training run (tqdm): the share of the budget used, elapsed time,
    estimated time left, and the latest validation log-likelihood in the data's units.

    Parameters
    ----------
    budget : Budget
        The run's budget, whose progress the bar shows.
    log_scale : float
        :math:`\\sum_j \\log\\sigma_j` of the standardization: the data's log-likelihood is the model's
        minus this.
    desc : str
        The bar's label.
    """

    def __init__(self, budget: Budget, log_scale: float = 0.0, desc: str = "OTFlowDensity") -> None:
        self.budget, self.log_scale, self.desc = budget, log_scale, desc

    def initialize(self):
        self.bar_ = None
        return self

    def on_train_begin(self, net, **kwargs):
        from tqdm.auto import tqdm

        bar = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"
        self.bar_ = tqdm(total=1000, desc=self.desc, bar_format=bar, leave=True, dynamic_ncols=True)
        self._postfix = {}

    def _show(self) -> None:
        target = round(1000 * self.budget.progress)
        if target > self.bar_.n:
            self.bar_.update(target - self.bar_.n)

    def on_batch_end(self, net, training=False, **kwargs):
        if training and self.bar_ is not None:
            self._postfix["iter"] = self.budget.iter_
            self._show()

    def on_epoch_end(self, net, **kwargs):
        if self.bar_ is None:
            return
        row = net.history[-1]
        if "valid_nll" in row:
            self._postfix["valid log-lik"] = f"{-row['valid_nll'] - self.log_scale:.4f}"
        if "n_steps" in row:
            self._postfix["RK4 steps"] = row["n_steps"]
        self.bar_.set_postfix(self._postfix, refresh=False)
        self._show()

    def on_train_end(self, net, **kwargs):
        if self.bar_ is not None:
            self.bar_.close()
            self.bar_ = None

    def __getstate__(self):  # a fitted net is pickled; an open bar is not picklable
        state = self.__dict__.copy()
        state["bar_"] = None
        return state


@torch.no_grad()
def _valid_nll(net, dataset) -> float:
    """Mean negative log-likelihood of ``dataset`` under ``net``'s module, with its evaluation steps, as
    validation computes it (``valid_nll``; weighted where the net has sample weights)."""
    module, total, rows = net.module_, 0.0, 0.0
    weighted = net.criterion_.weighted
    for X, w in net.get_iterator(dataset, training=False):
        log_p = module.log_prob(torch.as_tensor(X, device=net.device), module.n_steps_eval)
        w = torch.as_tensor(w, device=net.device, dtype=log_p.dtype) if weighted else None
        total -= (log_p.sum() if w is None else w @ log_p).item()
        rows += len(X) if w is None else w.sum().item()
    return total / rows


@torch.no_grad()
def _copy(targets, sources) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
