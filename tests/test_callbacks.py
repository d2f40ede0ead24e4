"""The callbacks of training: step refinement, weight averaging, early stopping in the fall, progress."""

import math

import numpy as np
import pytest
import torch
from skorch.callbacks import Callback
from skorch.history import History

import sklearn_otflow._auto as auto_module
import sklearn_otflow._budget as budget_module
import sklearn_otflow._callbacks as callbacks_module
import sklearn_otflow._training as training_module
from sklearn_otflow import OTFlowDensity
from sklearn_otflow._callbacks import EarlyStoppingInTheFall, StepRefinement
from sklearn_otflow._net import FlowModule

# as tests/test_estimator.py's and tests/test_budget.py's, whose figures these tests share
SMALL = dict(hidden_width=16, n_layers=1, n_steps=4, batch_size=128, random_state=0)
TINY = dict(hidden_width=8, n_layers=1, n_steps=2, random_state=0)


@pytest.fixture
def rounds_of_one_pass(monkeypatch):
    """conftest's, for one test at a time: validation after every 5 steps, an epoch of ``moons``."""
    monkeypatch.setattr(auto_module, "VALIDATION_INTERVAL", 5)


def test_step_refinement_adds_steps_where_the_flow_outruns_them(moons):
    """After an epoch, 1.5 times the training steps (and twice that for validation, if it follows) when
    n and 2n steps disagree on a probe's mean NLL by more than the tolerance; at most max_refinements
    times; a smooth flow keeps its steps. Each epoch's count goes to the history."""
    from types import SimpleNamespace

    torch.manual_seed(0)
    X = torch.as_tensor((moons - moons.mean(0)) / moons.std(0), dtype=torch.float32)

    def epochs(module, n_epochs, eval_follows=True):
        net = SimpleNamespace(module_=module, history=History(), device="cpu")
        refine = StepRefinement(0.01, 2, eval_follows).initialize()
        refine.on_train_begin(net, X=X)
        assert refine.probe_.shape == (128, 2)  # strided over all rows
        for _ in range(n_epochs):
            net.history.new_epoch()
            refine.on_epoch_end(net)
        return [row["n_steps"] for row in net.history]

    smooth = FlowModule(2, 16, 1, 10, n_steps=8, n_steps_eval=16)  # w = 0: a linear flow
    assert epochs(smooth, 2) == [8, 8] and (smooth.n_steps, smooth.n_steps_eval) == (8, 16)

    stiff = FlowModule(2, 16, 1, 10, n_steps=2, n_steps_eval=4)
    with torch.no_grad():
        stiff.potential.w.normal_(0.0, 3.0)
    assert epochs(stiff, 4) == [2, 3, 5, 5]  # ceil(1.5 n), twice at most
    assert (stiff.n_steps, stiff.n_steps_eval) == (5, 10)
    given = FlowModule(2, 16, 1, 10, n_steps=2, n_steps_eval=7)
    given.load_state_dict(stiff.state_dict())
    assert epochs(given, 1, eval_follows=False) == [2] and (given.n_steps, given.n_steps_eval) == (3, 7)


@pytest.mark.usefixtures("rounds_of_one_pass")
def test_a_refinement_measures_validation_again_so_early_stopping_compares_like_with_like(moons, monkeypatch):
    """When validation's step count grows, the epoch's valid_nll and early stopping's best score are
    measured again with the new count: after every epoch both equal what that count gives (a stiff
    flow, for which 8 and 12 steps differ by 0.05 nats)."""
    from sklearn_otflow._callbacks import _valid_nll

    seen = []

    class Check(Callback):  # user callbacks run after early stopping
        def on_epoch_end(self, net, dataset_valid=None, **kwargs):
            stop, current = dict(net.callbacks_)["early_stopping"], net.module_.state_dict()
            recorded, now = net.history[-1, "valid_nll"], _valid_nll(net, dataset_valid)
            saved = {k: v.clone() for k, v in current.items()}
            net.module_.load_state_dict(stop.best_model_weights_)
            best = _valid_nll(net, dataset_valid)
            net.module_.load_state_dict(saved)
            count, net.module_.n_steps_eval = net.module_.n_steps_eval, 8  # the count before any refinement
            before = _valid_nll(net, dataset_valid)
            net.module_.n_steps_eval = count
            seen.append((count, recorded, now, stop.dynamic_threshold_, best, before))

    est = OTFlowDensity(max_iter=10, **SMALL).fit(moons)
    with torch.no_grad():
        est.net_.module_.potential.w.mul_(8.0)
    monkeypatch.setattr(auto_module, "STEP_TOLERANCE", -1.0)  # every epoch refines, twice at most
    est.set_params(warm_start=True, max_iter=15, learning_rate=1e-9, callbacks=[Check()]).fit(moons)
    assert [row[0] for row in seen] == [12, 18, 18]
    for _, recorded, now, threshold, best, _ in seen:
        assert recorded == pytest.approx(now, rel=1e-5) and threshold == pytest.approx(best, rel=1e-5)
    assert abs(seen[0][1] - seen[0][5]) > 0.01  # the counts disagree on this flow


class _Record(Callback):
    """The module's weights before and after each training step and at each validation batch."""

    def initialize(self):
        self.before, self.after, self.valid = [], [], []
        return self

    def _weights(self, net):
        return torch.cat([p.detach().flatten().clone() for p in net.module_.parameters()])

    def on_batch_begin(self, net, training=False, **kwargs):
        (self.before if training else self.valid).append(self._weights(net))

    def on_batch_end(self, net, training=False, **kwargs):
        if training:
            self.after.append(self._weights(net))


@pytest.mark.parametrize("early_stopping", [True, False])
@pytest.mark.usefixtures("rounds_of_one_pass")
def test_weight_averaging_is_validated_and_kept_while_training_goes_on_raw(moons, early_stopping):
    """ema_decay: the average of the weights after each step, with the warm-up min(decay, k/(k+9)),
    is what validation sees and what the fit keeps; each step starts from the previous raw weights."""
    record = _Record()
    est = OTFlowDensity(
        max_iter=15, ema_decay=0.9, early_stopping=early_stopping, callbacks=[record], **SMALL
    )
    est.fit(moons)
    average = record.after[0].clone()
    for k, raw in enumerate(record.after[1:], start=2):
        average.lerp_(raw, 1 - min(0.9, k / (k + 9)))
    final = torch.cat([p.detach().flatten() for p in est.net_.module_.potential.parameters()])
    if early_stopping:  # the best epoch's average; the last epoch's validation saw the last average
        torch.testing.assert_close(record.valid[-1], average, rtol=0, atol=1e-6)
        assert any(torch.allclose(final, w, rtol=0, atol=1e-6) for w in record.valid)
    else:
        torch.testing.assert_close(final, average, rtol=0, atol=1e-6)
    # training continues from the raw weights, not from the average
    for before, after in zip(record.before[1:], record.after[:-1]):
        torch.testing.assert_close(before, after, rtol=0, atol=0)
    assert not torch.allclose(average, record.after[-1], atol=1e-4)


@pytest.mark.usefixtures("rounds_of_one_pass")
def test_without_weight_averaging_the_fit_keeps_the_last_raw_weights(moons):
    record = _Record()
    est = OTFlowDensity(max_iter=10, ema_decay=0.0, early_stopping=False, callbacks=[record], **SMALL)
    est.fit(moons)
    final = torch.cat([p.detach().flatten() for p in est.net_.module_.potential.parameters()])
    torch.testing.assert_close(final, record.after[-1], rtol=0, atol=0)
    assert "weight_averaging" not in dict(est.net_.callbacks_)


def test_progress_shows_the_budget_and_a_summary(capsys):
    X = np.random.default_rng(0).normal(size=(300, 2))
    est = OTFlowDensity(max_iter=150, verbose=1, **TINY).fit(X)
    out, err = capsys.readouterr()
    assert "OTFlowDensity: 100%" in err and "valid log-lik=" in err  # the bar, on stderr
    best = int(np.argmin(est.history_[:, "valid_nll"]))
    log_lik = -est.history_[best, "valid_nll"] - np.log(est.scale_).sum()
    assert out == (
        f"OTFlowDensity: 150 steps in {est.fit_time_:.1f} s, stopped by max_iter; best validation "
        f"log-likelihood {log_lik:.4f} per sample at step {est.history_[best, 'iter']}; RK4 steps "
        f"{est.n_steps_} in training, {est.n_steps_eval_} in evaluation.\n"
    )
    assert math.isfinite(est.fit_time_)


def test_early_stopping_counts_the_rounds_of_the_fall_only():
    """A validation score that stalls while the learning rate is constant stops nothing (the fall is what
    resolves a plateau); during the fall, n_iter_no_change steps without improvement, and half the fall
    (a fifth of the budget), stop training."""
    budget = budget_module.Budget(1_000)
    budget.on_train_begin(None)
    budget.iter_ = 599
    assert not budget.falling()
    budget.iter_ = 600
    assert budget.falling()

    X = np.random.default_rng(0).normal(size=(500, 2))
    # a rate so small that the validation score never moves after the first round: the constant phase
    # runs through (its last round ends at 1,100 steps); two rounds of the fall without improvement are
    # not enough, a fifth of the budget (400 steps) after 1,100 is
    est = OTFlowDensity(max_iter=2_000, learning_rate=1e-12, n_iter_no_change=200, **TINY).fit(X)
    assert est.stopped_by_ == "early stopping" and est.n_iter_ == 1_500
    assert est.history_[0, "valid_nll_best"] and not any(est.history_[1:, "valid_nll_best"])
    # skorch's own early stopping would have stopped after the first two rounds without improvement
    plain = OTFlowDensity(max_iter=2_000, learning_rate=1e-12, n_iter_no_change=200, **TINY)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(training_module, "build_net", _with_plain_early_stopping(training_module.build_net))
        assert plain.fit(X).n_iter_ == 300


def _with_plain_early_stopping(build):
    def wrapped(*args, **kwargs):
        net = build(*args, **kwargs)
        for _, cb in net.callbacks:
            if isinstance(cb, callbacks_module.EarlyStoppingInTheFall):
                cb.budget = None
        return net

    return wrapped


def test_rebaseline_makes_a_score_the_one_to_beat():
    """After validation changes how it measures, the best score so far is measured again: the next round
    must beat that, not the old figure."""
    stop = EarlyStoppingInTheFall(monitor="valid_nll", threshold=0.0, lower_is_better=True)
    stop.dynamic_threshold_ = 1.0
    stop.rebaseline(1.25)
    assert stop.dynamic_threshold_ == 1.25
    stop = EarlyStoppingInTheFall(monitor="valid_nll", threshold=0.1, threshold_mode="rel")
    stop.rebaseline(2.0)
    assert stop.dynamic_threshold_ == pytest.approx(1.8)  # skorch's rule: score (1 - threshold)


@pytest.mark.parametrize(
    ("budget_stop", "misses", "expected"),
    [
        ("max_time", 3, "max_time"),  # the budget ran out; early stopping agreeing at that round says nothing
        ("max_iter", 3, "max_iter"),
        (None, 3, "early stopping"),  # early stopping ended training before the budget ran out
        (None, 1, "max_iter"),
    ],
)
def test_stopped_by_names_what_ended_training(budget_stop, misses, expected):
    from types import SimpleNamespace

    budget = SimpleNamespace(stopped_by_=budget_stop)
    stop = SimpleNamespace(misses_=misses, patience=3)
    net = SimpleNamespace(callbacks_=[("budget", budget), ("early_stopping", stop)])
    assert training_module._stop_reason(net) == expected
