"""The training budget: optimizer steps and seconds, not passes over the data (``max_iter``, ``max_time``)."""

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from skorch.dataset import Dataset

import sklearn_otflow._auto as auto_module
import sklearn_otflow._budget as budget_module
import sklearn_otflow._training as training_module
from sklearn_otflow import OTFlowDensity
from sklearn_otflow._budget import BatchStream

TINY = dict(hidden_width=8, n_layers=1, n_steps=2, random_state=0)


class _Clock:
    """A stand-in for ``time.perf_counter`` that advances only when told to."""

    def __init__(self):
        self.now = 100.0

    def perf_counter(self):
        return self.now


class _Tick(Callback):
    """Each training step takes ``step`` seconds of the clock, each validation batch ``valid``; records
    the learning rate of every step and the validation rows of every round."""

    def __init__(self, clock, step, valid):
        self.clock, self.step, self.valid = clock, step, valid
        self.lrs, self.valid_rows, self.ends = [], [], []

    def on_epoch_begin(self, net, dataset_valid=None, **kwargs):
        self.valid_rows.append(0 if dataset_valid is None else len(dataset_valid))

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.lrs.append(net.optimizer_.param_groups[0]["lr"])
        self.clock.now += self.step if training else self.valid

    def on_epoch_end(self, net, **kwargs):
        self.ends.append(self.clock.now)


def test_the_budget_is_steps_whatever_the_number_of_rows():
    """max_iter counts optimizer steps: 10 times the rows run the same steps (not 10 times as many),
    and validation scores at most 2,000 held-out rows, every 100 steps."""
    rng = np.random.default_rng(0)
    runs = {}
    for n in (1_000, 30_000):
        tick = _Tick(_Clock(), 0.0, 0.0)
        est = OTFlowDensity(max_iter=250, batch_size=64, callbacks=[tick], **TINY).fit(
            rng.normal(size=(n, 2))
        )
        runs[n] = est, tick
    for est, _ in runs.values():
        assert est.n_iter_ == 250 and est.stopped_by_ == "max_iter"
        assert list(est.history_[:, "iter"]) == [100, 200, 250]
        assert list(est.history_[:, "train_batch_count"]) == [100, 100, 50]
    assert runs[1_000][1].valid_rows == [100] * 3  # validation_fraction of the rows
    assert runs[30_000][1].valid_rows == [2_000] * 3  # at most 2,000
    # the schedule over the steps: constant for 60 % of them, then a linear fall to 0
    lrs = np.array(runs[1_000][1].lrs)
    np.testing.assert_allclose(lrs, 0.02 * np.minimum(1, (1 - np.arange(250) / 250) / 0.4), rtol=1e-12)
    assert lrs[150] == 0.02 and lrs[151] < 0.02


def test_max_time_ends_training_by_the_deadline_and_anneals_by_the_clock(monkeypatch):
    """With max_time binding, training takes no step that, with the validation after it, would end past
    the deadline; the learning rate anneals over the seconds; the best validated weights are kept."""
    clock = _Clock()
    monkeypatch.setattr(budget_module, "time", clock)
    monkeypatch.setattr(training_module, "time", clock)
    start = clock.now
    tick = _Tick(clock, step=0.1, valid=0.25)  # 100 rows of validation: one batch
    X = np.random.default_rng(0).normal(size=(1_000, 2))
    est = OTFlowDensity(max_iter=10_000, max_time=30.0, callbacks=[tick], **TINY).fit(X)
    assert est.stopped_by_ == "max_time"
    assert tick.ends[-1] - start <= 30.0  # the estimates are exact here: no slack needed
    assert tick.ends[-1] - start > 30.0 - 0.1 - 0.25 - 1e-9  # and no step was left unused
    assert est.n_iter_ == len(tick.lrs) == sum(est.history_[:, "train_batch_count"])
    assert 270 <= est.n_iter_ < 300  # 30 s of 0.1 s steps, less the validations
    # the schedule follows the clock: a factor min(1, (1 - t / 30) / 0.4) at time t of a step's start
    times = np.cumsum([0.0] + [0.1] * (len(tick.lrs) - 1))
    times += 0.25 * (np.arange(len(tick.lrs)) // 100)  # the validations so far
    np.testing.assert_allclose(tick.lrs, 0.02 * np.minimum(1, (1 - times / 30.0) / 0.4), rtol=1e-9)
    best = int(np.argmin(est.history_[:, "valid_nll"]))
    assert est.history_[best, "valid_nll_best"]


def test_the_first_round_is_cut_by_a_short_deadline(monkeypatch):
    """Before any validation has been timed, its cost is estimated from the training steps' time per row."""
    clock = _Clock()
    monkeypatch.setattr(budget_module, "time", clock)
    monkeypatch.setattr(training_module, "time", clock)
    start = clock.now
    tick = _Tick(clock, step=0.1, valid=0.1)  # 100 validation rows cost as much as 64 training rows
    X = np.random.default_rng(0).normal(size=(1_000, 2))
    est = OTFlowDensity(max_iter=10_000, max_time=3.0, batch_size=64, callbacks=[tick], **TINY).fit(X)
    assert est.stopped_by_ == "max_time" and len(est.history_) == 1
    assert tick.ends[-1] - start <= 3.0 * 1.05


def test_a_trial_of_n_init_runs_the_first_25th_of_the_budget(monkeypatch):
    """With max_time, each trial stops after 1/25 of it, and the winner's fit ends by the deadline."""
    clock = _Clock()
    monkeypatch.setattr(budget_module, "time", clock)
    monkeypatch.setattr(training_module, "time", clock)
    start = clock.now
    runs = []

    class Run(_Tick):
        def on_train_begin(self, net, **kwargs):
            runs.append([clock.now, 0])

        def on_batch_end(self, net, training=False, **kwargs):
            runs[-1][1] += training
            super().on_batch_end(net, training=training, **kwargs)

    X = np.random.default_rng(0).normal(size=(1_000, 2))
    tick = Run(clock, step=0.1, valid=0.0)
    OTFlowDensity(max_iter=10_000, max_time=50.0, n_init=2, callbacks=[tick], **TINY).fit(X)
    assert len(runs) == 3
    for _, steps in runs[:2]:  # the trials: at most 2 s of the 50 each
        assert 15 <= steps <= 20
    assert runs[2][1] > 400 and tick.ends[-1] - start <= 50.0


def test_batch_stream_continues_its_pass_across_rounds():
    """Every row once per pass, whatever the round length; a new order for each pass."""
    data = Dataset(torch.arange(10.0).view(10, 1), None)
    stream = BatchStream(data, 4, torch.Generator().manual_seed(0), round_len=2)
    rounds = [[X.flatten().tolist() for X, _ in stream] for _ in range(3)]  # 6 batches: 10 + 10 + 4 rows
    rows = [row for batches in rounds for batch in batches for row in batch]
    assert [len(batch) for batches in rounds for batch in batches] == [4, 4, 2, 4, 4, 2]
    assert sorted(rows[:10]) == sorted(rows[10:20]) == list(range(10)) and rows[:10] != rows[10:20]
    whole = BatchStream(data, 4, torch.Generator().manual_seed(0))  # round_len=None: one pass
    assert [len(X) for X, _ in whole] == [4, 4, 2]


def test_budget_parameters_are_validated():
    X = np.zeros((10, 2))
    for params, match in [
        (dict(max_iter=0), "max_iter"),
        (dict(max_time=0.0), "max_time"),
        (dict(max_time=-1), "max_time"),
        (dict(max_time="60"), "max_time"),
    ]:
        with pytest.raises(ValueError, match=match):
            OTFlowDensity(**params).fit(X)


def test_the_interval_of_validation_is_the_estimators(monkeypatch):
    monkeypatch.setattr(auto_module, "VALIDATION_INTERVAL", 7)
    X = np.random.default_rng(0).normal(size=(300, 2))
    est = OTFlowDensity(max_iter=20, **TINY).fit(X)
    assert list(est.history_[:, "iter"]) == [7, 14, 20]
