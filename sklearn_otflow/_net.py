r"""The skorch side of training: a module that flows a batch, OT-Flow's loss as a criterion, and the net.

skorch owns the loop (batches, validation split, callbacks, early stopping, learning-rate schedule,
progress); this module only supplies what is specific to OT-Flow:

- :class:`FlowModule` pushes a batch along the flow: ``(z, ell, L, R)``; in training mode with the
  training step count and block precision, in evaluation mode (validation) exactly and with the
  evaluation step count, so that early stopping sees the likelihood that ``score`` will report, not one
  that a flow exploiting the training steps' discretization error can inflate.
- :class:`OTFlowLoss` turns that into :math:`J = \operatorname{mean}[L + \alpha C + \alpha_{hjb} R]`.
- :class:`OTFlowNet` records the three parts per batch (``train_nll``, ``valid_nll``, ...), which
  :class:`skorch.callbacks.PassthroughScoring` turns into per-epoch history columns.
- :func:`batch_loader` fetches each minibatch with one indexing of the rows, where torch's default
  :class:`~torch.utils.data.DataLoader` fetches row by row and stacks them.
- :class:`WeightAveraging` keeps an exponential moving average of the weights (torch's
  :class:`~torch.optim.swa_utils.AveragedModel`), :math:`\bar\theta \leftarrow \beta_k\bar\theta +
  (1-\beta_k)\theta` after optimiser step :math:`k`, and hands it to validation and to the fitted
  model.
- :class:`StepRefinement` gives training more RK4 steps once the flow starts to exploit the
  discretization error of the ones it has.
- The training budget (rounds of steps, the learning rate's schedule, early stopping in its fall, the
  progress bar) is in :mod:`sklearn_otflow._budget`.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import threading
from collections.abc import Callable, Iterator

import torch
from skorch import NeuralNet
from skorch.callbacks import Callback, EarlyStopping
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from ._budget import StopTraining
from ._dynamics import flow
from ._loss import Objective, log_prob, weighted_objective
from ._potential import Potential
from ._trace import reuse_scratch

__all__ = [
    "FlowModule",
    "OTFlowLoss",
    "OTFlowNet",
    "TrainingDiverged",
    "Interrupted",
    "FiniteGuard",
    "WeightAveraging",
    "StepRefinement",
    "batch_loader",
]


class FlowModule(nn.Module):
    """The potential, called on a batch: returns its end state ``(z, ell, L, R)`` along the flow."""

    def __init__(
        self,
        n_features: int,
        width: int,
        n_layers: int,
        rank: int,
        n_steps: int,
        n_steps_eval: int | None = None,
        dtype: torch.dtype = torch.float32,
        gemm_dtype: torch.dtype | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        # a generator of its own: fits in concurrent threads neither race on torch's global one nor move it
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.potential = Potential(n_features, width, n_layers, rank, generator).to(dtype)
        self.n_steps, self.n_steps_eval, self.gemm_dtype = n_steps, n_steps_eval or n_steps, gemm_dtype

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if self.training:
            return flow(self.potential, x, self.n_steps, gemm_dtype=self.gemm_dtype)
        return flow(self.potential, x, self.n_steps_eval)


class OTFlowLoss(nn.Module):
    """OT-Flow's objective from a flowed batch: ``Objective(loss, transport, nll, hjb)``."""

    def __init__(self, alpha: float, alpha_hjb: float) -> None:
        super().__init__()
        self.alpha, self.alpha_hjb = alpha, alpha_hjb

    def forward(self, y_pred: tuple[Tensor, ...], y_true=None) -> Objective:
        return weighted_objective(y_pred, self.alpha, self.alpha_hjb)


class OTFlowNet(NeuralNet):
    """skorch's :class:`~skorch.NeuralNet` with OT-Flow's loss; records its parts in the history."""

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's loop, with each training integration's memory reused by the next
        (:func:`~sklearn_otflow._potential.reuse_scratch`).

        skorch's ``partial_fit`` swallows every ``KeyboardInterrupt``, which its callbacks raise to end
        training; an interrupt (Ctrl-C) leaves the loop as :class:`Interrupted` instead, past it. An
        interrupt is a ``KeyboardInterrupt`` that the SIGINT handler raised (seen by
        :func:`_watching_sigint` in the main thread, wherever it lands, a callback included), or one that
        no callback raised.
        """
        with reuse_scratch(), _watching_sigint() as signalled:
            try:
                return super().fit_loop(X, y, epochs=epochs, **fit_params)
            except KeyboardInterrupt as exc:
                if not signalled() and (isinstance(exc, StopTraining) or _raised_by_callback(exc)):
                    raise  # a callback ending training
                raise Interrupted(exc) from exc

    rebalance_threads_ = None  # set while training: see sklearn_otflow._threads.thread_share

    def on_epoch_begin(self, net, **kwargs):
        """skorch's new history row; then each round takes its share of the threads again."""
        super().on_epoch_begin(net, **kwargs)
        if self.rebalance_threads_ is not None:
            self.rebalance_threads_()

    def on_epoch_end(self, net, **kwargs):
        """Record ``iter``: the optimizer steps run by the end of this round, over the whole history."""
        before = self.history[-2].get("iter", 0) if len(self.history) > 1 else 0
        self.history.record("iter", before + self.history[-1].get("train_batch_count", 0))

    def get_loss(self, y_pred, y_true, X=None, training=False) -> Tensor:
        out = self.criterion_(y_pred)
        prefix = "train" if training else "valid"
        for name in ("nll", "transport", "hjb"):
            self.history.record_batch(f"{prefix}_{name}", getattr(out, name).item())
        return out.loss


def batch_loader(
    dataset: Dataset, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> DataLoader:
    """skorch's ``iterator_train`` / ``iterator_valid``: minibatches fetched by one indexing each.

    The same batches, in the same order for the same ``generator``, as
    ``DataLoader(dataset, batch_size, shuffle=shuffle, generator=generator)``, which calls the dataset
    once per row and stacks the rows: for a make_moons epoch (7,200 rows of 2 features) that took 35 ms
    against 7 ms here, beside some 600 ms of training. skorch's datasets (and torch's ``Subset`` of
    them, from the validation split) accept a list of row indices.

    Examples
    --------
    >>> import torch
    >>> from skorch.dataset import Dataset
    >>> from sklearn_otflow._net import batch_loader
    >>> [tuple(X.shape) for X, _ in batch_loader(Dataset(torch.zeros(10, 2), None), batch_size=4)]
    [(4, 2), (4, 2), (2, 2)]
    """
    rows = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(rows, batch_size, drop_last=False)
    # the generator also goes to the loader, which draws a base seed from it before the permutation;
    # without one, a generator of the loader's own keeps it off torch's global one
    generator = torch.Generator() if generator is None else generator
    return DataLoader(dataset, batch_size=None, sampler=batches, generator=generator)


class TrainingDiverged(RuntimeError):
    """Raised inside the training loop when the loss stops being finite."""


class Interrupted(Exception):
    """An interrupt (Ctrl-C) on its way out of skorch's loop; ``interrupt`` is the ``KeyboardInterrupt``."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__("training was interrupted")
        self.interrupt = interrupt


@contextlib.contextmanager
def _watching_sigint() -> Iterator[Callable[[], bool]]:
    """Yield a function that says whether SIGINT (Ctrl-C) arrived in the block.

    In the main thread, where Python delivers signals, the block's SIGINT handler records the signal
    and then calls the handler it replaced (Python's default raises ``KeyboardInterrupt``); the old
    handler is back when the block ends. Elsewhere, or where the handler is not Python's (``SIG_IGN``,
    ``SIG_DFL``, or set outside Python), nothing is installed and the function says ``False``.
    """
    previous = (
        signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    )
    if not callable(previous):
        yield lambda: False
        return
    seen = []

    def handler(signum, frame):
        seen.append(signum)
        previous(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, previous)


def _raised_by_callback(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in a skorch callback's method (a user's ``EarlyStopping`` stopping)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and isinstance(tb.tb_frame.f_locals.get("self"), Callback)


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
    the next training batch. Averaging smooths the epoch-to-epoch noise of a high learning rate: the
    validation likelihood stops swinging, and early stopping picks a better epoch (see the benchmarks
    page).

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
    data better. Measured on make_moons (one seed, 8 steps): from epoch 50 on the training NLL fell while
    the validation NLL rose; by epoch 77 the raw weights' NLL was 0.80 nats with 8 steps and 2.65 with
    64 (standardized units), and early stopping had kept epoch 54's flow, which scored -0.384. At the
    end of every epoch this callback integrates a fixed probe of training rows with :math:`n` and
    :math:`2n` steps (the module's weights, without gradients); when their mean NLLs differ by more
    than ``tolerance`` nats, training continues with :math:`\lceil 1.5\,n \rceil` steps (and, where
    the evaluation count follows the training one, validation with twice that, the epoch's
    ``valid_nll`` and :class:`~skorch.callbacks.EarlyStopping`'s best score being measured again with
    the new count), at most ``max_refinements`` times. The same seed then scored -0.331, in 311 s
    instead of 162 (the extra steps cost time). The history records each epoch's ``n_steps``.

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
                coarse, fine = (
                    -log_prob(module.potential, self.probe_, steps).mean().item() for steps in (n, 2 * n)
                )
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
            if isinstance(cb, EarlyStopping) and cb.best_model_weights_ is not None:
                current = copy.deepcopy(net.module_.state_dict())
                net.module_.load_state_dict(cb.best_model_weights_)
                cb.dynamic_threshold_ = cb._calc_new_threshold(_valid_nll(net, dataset_valid))
                net.module_.load_state_dict(current)


@torch.no_grad()
def _valid_nll(net, dataset) -> float:
    """Mean negative log-likelihood of ``dataset`` under ``net``'s module, with its evaluation steps, as
    validation computes it (``valid_nll``)."""
    module, total, rows = net.module_, 0.0, 0
    for X, _ in net.get_iterator(dataset, training=False):
        X = torch.as_tensor(X, device=net.device)
        total -= log_prob(module.potential, X, module.n_steps_eval).sum().item()
        rows += len(X)
    return total / rows


@torch.no_grad()
def _copy(targets, sources) -> None:
    for target, source in zip(targets, sources, strict=True):
        target.copy_(source)
