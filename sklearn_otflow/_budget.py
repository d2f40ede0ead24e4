r"""Training's length in optimizer steps and seconds, not in passes over the data.

skorch's loop runs epochs; here an "epoch" is a *round* of at most ``round_len`` minibatches
(:class:`BatchStream`, a shuffled stream of the rows that each round continues), followed by
validation. :class:`Budget` counts the steps and the seconds, sets the learning rate from the share of
the budget used (constant for 60 % of it, then a linear fall to 0) and ends training inside a round when
time is up. Early stopping in that fall and the progress bar are callbacks that read it
(:mod:`sklearn_otflow._callbacks`).
"""

from __future__ import annotations

import math
import time

import torch
from skorch.callbacks import Callback
from torch.utils.data import Dataset

__all__ = ["DECAY_SHARE", "BatchStream", "Budget", "StopTraining", "lr_factor"]


class StopTraining(KeyboardInterrupt):
    """Raised by a callback that ends training (:class:`Budget` once it is spent, early stopping); skorch
    ends the loop on it, as on :class:`~skorch.callbacks.EarlyStopping`'s ``KeyboardInterrupt``, and
    :class:`~sklearn_otflow._net.OTFlowNet` tells it from an interrupt (Ctrl-C) by its type."""


class BatchStream:
    """skorch's ``iterator_train``: each pass over it is one *round* of at most ``round_len`` minibatches.

    The minibatches are consecutive slices of a shuffled order of the rows; a round starts where the
    previous one ended, and a new order is drawn when one is used up, so every row is seen once per
    pass over the data whatever the round length (the last minibatch of a pass may be smaller). With
    ``weighted`` (the dataset's ``y`` are sample weights), a pass is as many rows drawn with
    replacement in proportion to their weights: a minibatch's plain mean is then an unbiased estimate
    of the weighted mean over the data, and a row of weight 2 is drawn as often as two copies of it
    would be. A round ends early when ``budget`` says it is exhausted. Each minibatch is fetched with
    one indexing of the dataset, as in :func:`batch_loader`.

    Parameters
    ----------
    dataset : Dataset
        skorch's training dataset (or torch's ``Subset`` of it); indexed with a list of rows.
    batch_size : int
        Rows per minibatch.
    generator : torch.Generator
        Draws the orders.
    round_len : int or None, default=None
        Minibatches per round; ``None`` is one pass over the data.
    budget : Budget or None, default=None
        Consulted before every minibatch.
    shuffle : bool, default=True
        Draw a random order (else the rows' own).
    weighted : bool, default=False
        Draw the rows in proportion to the dataset's ``y``, their sample weights.

    Examples
    --------
    >>> import torch
    >>> from skorch.dataset import Dataset
    >>> from sklearn_otflow._budget import BatchStream
    >>> stream = BatchStream(Dataset(torch.zeros(10, 2), None), 4, torch.Generator(), round_len=4)
    >>> [len(X) for X, _ in stream], [len(X) for X, _ in stream]
    ([4, 4, 2, 4], [4, 2, 4, 4])
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        generator: torch.Generator | None = None,
        round_len: int | None = None,
        budget: Budget | None = None,
        shuffle: bool = True,
        weighted: bool = False,
    ) -> None:
        self.dataset, self.batch_size, self.generator = dataset, batch_size, generator
        self.round_len, self.budget, self.shuffle, self.weighted = round_len, budget, shuffle, weighted
        self._order, self._pos, self._weights = None, 0, None

    def _next_rows(self) -> list[int]:
        n = len(self.dataset)
        if self._order is None or self._pos >= n:
            if self.weighted:
                if self._weights is None:
                    self._weights = torch.as_tensor(self.dataset[list(range(n))][1], dtype=torch.float64)
                self._order = torch.multinomial(self._weights, n, replacement=True, generator=self.generator)
            elif self.shuffle:
                self._order = torch.randperm(n, generator=self.generator)
            else:
                self._order = torch.arange(n)
            self._pos = 0
        rows = self._order[self._pos : self._pos + self.batch_size]
        self._pos += len(rows)
        return rows.tolist()

    def __len__(self) -> int:
        return self.round_len or math.ceil(len(self.dataset) / self.batch_size)

    def __iter__(self):
        for _ in range(len(self)):
            if self.budget is not None and self.budget.exhausted():
                return
            yield self.dataset[self._next_rows()]


# The learning rate is constant for the first 1 - DECAY_SHARE of the budget, then falls linearly to 0
# (benchmarks page, "The defaults and why").
DECAY_SHARE = 0.4


def lr_factor(progress: float) -> float:
    r"""The learning rate's factor at ``progress`` in [0, 1] of the budget: :math:`\min(1, (1 - p) / 0.4)`.

    >>> [round(lr_factor(p), 6) for p in (0.0, 0.6, 0.8, 1.0)]
    [1.0, 1.0, 0.5, 0.0]
    """
    return min(1.0, max(0.0, 1.0 - progress) / DECAY_SHARE)


class Budget(Callback):
    r"""Training's length in optimizer steps and seconds, and the learning rate that follows it.

    After :math:`k` of ``max_iter`` steps, at time :math:`t` of a run that began at :math:`t_0` and must
    end by the ``deadline`` :math:`T`, the progress is :math:`p = \max(k / K, (t - t_0) / (T - t_0))`,
    and the next step's learning rate is :math:`\eta\,\min(1, (1 - p) / 0.4)` (with ``schedule``):
    constant for the first 60 % of whichever budget runs out first, then falling linearly to 0.
    Training takes no further minibatch once :math:`p` reaches ``stop_at``, or would reach it before
    the next minibatch and the validation that ends its round are done (both estimated from the last
    ones measured); that round is validated and ends as usual, and training stops where the next round
    would begin (:class:`StopTraining`, before any other callback sees the new round: the budget must be
    the first callback). Training takes at least one step, however small the budget. The history's
    ``lr`` column is each round's first learning rate.

    Parameters
    ----------
    max_iter : int
        Optimizer steps of the budget.
    deadline : float or None, default=None
        ``time.perf_counter()`` by which training must end (the caller's clock starts before the net is
        built: a fit's own preparation counts in its budget).
    stop_at : float, default=1.0
        The share of the budget after which training stops (less than 1 for a trial of the beginning
        of a fit).
    schedule : bool, default=True
        Set the learning rate by the progress; else keep the optimiser's.
    """

    def __init__(
        self, max_iter: int, deadline: float | None = None, stop_at: float = 1.0, schedule: bool = True
    ) -> None:
        self.max_iter, self.deadline, self.stop_at, self.schedule = max_iter, deadline, stop_at, schedule

    def initialize(self):
        self.iter_, self.start_, self.stopped_by_, self.lr_ = 0, None, None, None
        self.batch_time_ = self.valid_time_ = None
        return self

    def on_train_begin(self, net, **kwargs):
        self.initialize()
        self.start_ = self._last = time.perf_counter()
        self._valid_start, self._valid_rows, self._train_rows = None, 0, 1

    def _share(self, ahead: float = 0.0) -> float:
        """The share of the budget used, ``ahead`` seconds from now."""
        share = self.iter_ / self.max_iter
        if self.deadline is not None and self.start_ is not None:
            span = max(self.deadline - self.start_, 1e-9)
            share = max(share, (time.perf_counter() + ahead - self.start_) / span)
        return share

    @property
    def progress(self) -> float:
        """The share of the budget used so far, in [0, 1]."""
        return min(self._share(), 1.0)

    def falling(self) -> bool:
        """Whether the learning rate has begun its fall (the last 40 % of the budget)."""
        return self.progress >= 1.0 - DECAY_SHARE

    def exhausted(self) -> bool:
        """Whether training should take no further minibatch (see the class docstring); never before
        the first, so that a fit's model, its history and its validation are never empty."""
        if self.stopped_by_ is None and self.iter_ > 0:
            ahead = 0.0 if self.batch_time_ is None else self.batch_time_ + self._validation_time()
            if self.iter_ >= self.stop_at * self.max_iter:
                self.stopped_by_ = "max_iter"
            elif self.deadline is not None and self._share(ahead) >= self.stop_at:
                self.stopped_by_ = "max_time"
        return self.stopped_by_ is not None

    def _validation_time(self) -> float:
        """The last validation's duration; before one is measured, the time of as many training rows."""
        if self.valid_time_ is not None:
            return self.valid_time_
        return self.batch_time_ * self._valid_rows / self._train_rows

    def on_epoch_begin(self, net, dataset_valid=None, **kwargs):
        if self.exhausted():
            del net.history[-1]  # the row skorch has just begun for a round that will not run
            raise StopTraining
        self._valid_rows = 0 if dataset_valid is None else len(dataset_valid)
        self._last, self._valid_start = time.perf_counter(), None

    def on_batch_begin(self, net, training=False, **kwargs):
        if training and self.schedule:
            self.lr_ = net.lr * lr_factor(self.progress)
            for group in net.optimizer_.param_groups:
                group["lr"] = self.lr_
            if "lr" not in net.history[-1]:  # the round's first
                net.history.record("lr", self.lr_)
        elif not training and self._valid_start is None:
            self._valid_start = time.perf_counter()

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        if training:
            now = time.perf_counter()
            elapsed, self._last = now - self._last, now
            # a moving average: a step's time changes with the RK4 step count
            self.batch_time_ = elapsed if self.batch_time_ is None else 0.8 * self.batch_time_ + 0.2 * elapsed
            self._train_rows = max(1, len(batch[0]))
            self.iter_ += 1

    def on_epoch_end(self, net, **kwargs):
        if self._valid_start is not None:
            self.valid_time_ = time.perf_counter() - self._valid_start
