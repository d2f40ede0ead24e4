"""Reliability: reproducible in threads, safe under Ctrl-C, and no silent wrong answer on hostile input.

Each test here failed before its fix (issue 24): concurrent fits that raced on torch's global generator,
interrupts that skorch swallowed, arrays with negative strides, restored weights that were never
checked, overflowing and tiny scales, the pandas round trip, callbacks set between ``partial_fit``
calls, and booleans taken for numbers.
"""

import math
import pickle
import signal
import warnings
from concurrent.futures import ThreadPoolExecutor

import joblib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sklearn.datasets import make_moons
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV
from sklearn.utils._param_validation import InvalidParameterError
from skorch.callbacks import Callback, EarlyStopping

import sklearn_otflow._net as net_module
from sklearn_otflow import OTFlowDensity

TINY = dict(hidden_width=8, n_layers=1, n_steps=2, max_iter=10, random_state=0)


@pytest.fixture(scope="module")
def moons():
    return make_moons(600, noise=0.05, random_state=0)[0]


@pytest.fixture(scope="module")
def fitted(moons):
    return OTFlowDensity(**TINY).fit(moons)


# ---------------------------------------------------------------------------------------------- threads


def _fit_score(moons, seed):
    return OTFlowDensity(**{**TINY, "random_state": seed}).fit(moons).score_samples(moons[:50])


def test_concurrent_fits_are_bit_identical_to_serial_ones_and_leave_the_global_rng_alone(moons):
    serial = [_fit_score(moons, seed) for seed in (0, 1)]
    assert not np.array_equal(serial[0], serial[1])  # the seeds do matter
    torch.manual_seed(123)
    state = torch.get_rng_state()
    with ThreadPoolExecutor(2) as pool:
        for _ in range(20):
            concurrent = list(pool.map(lambda seed: _fit_score(moons, seed), (0, 1)))
            for got, want in zip(concurrent, serial):
                np.testing.assert_array_equal(got, want)
    assert torch.equal(torch.get_rng_state(), state)


def test_grid_search_under_the_threading_backend_is_reproducible(moons):
    search = GridSearchCV(OTFlowDensity(**TINY), {"alpha": [10.0, 100.0]}, cv=2)
    serial = search.fit(moons).cv_results_["mean_test_score"]
    for _ in range(3):
        with joblib.parallel_backend("threading", n_jobs=2):
            threaded = GridSearchCV(OTFlowDensity(**TINY), {"alpha": [10.0, 100.0]}, cv=2, n_jobs=2).fit(
                moons
            )
        np.testing.assert_array_equal(threaded.cv_results_["mean_test_score"], serial)


def test_an_unseeded_potential_still_draws_from_the_global_generator():
    from sklearn_otflow._potential import Potential

    torch.manual_seed(0)
    a = Potential(2, width=8).state_dict()
    b = Potential(2, width=8, generator=torch.Generator().manual_seed(0)).state_dict()
    torch.manual_seed(0)
    c = Potential(2, width=8).state_dict()
    for name in a:
        assert torch.equal(a[name], b[name]) and torch.equal(a[name], c[name])


# ----------------------------------------------------------------------------------------------- Ctrl-C


@pytest.fixture
def interrupt_after(monkeypatch):
    """``interrupt_after(k)``: the ``k``-th training integration from now raises KeyboardInterrupt, as
    Ctrl-C would in the middle of a step; returns the call counter."""

    def arm(k):
        calls = {"n": 0}
        original = net_module.flow

        def flow(*args, **kwargs):
            if torch.is_grad_enabled():
                calls["n"] += 1
                if calls["n"] == k:
                    raise KeyboardInterrupt
            return original(*args, **kwargs)

        monkeypatch.setattr(net_module, "flow", flow)
        return calls

    return arm


def test_an_interrupted_first_fit_propagates_and_leaves_the_estimator_unfitted(moons, interrupt_after):
    est = OTFlowDensity(**TINY)
    interrupt_after(3)
    with pytest.raises(KeyboardInterrupt):
        est.fit(moons)
    with pytest.raises(NotFittedError):
        est.score_samples(moons)


@pytest.mark.parametrize("how", ["refit", "warm start", "partial_fit"])
def test_an_interrupted_call_keeps_the_fitted_model_intact(fitted, moons, interrupt_after, how):
    est = pickle.loads(pickle.dumps(fitted))
    before = (est.score_samples(moons[:20]), est.n_iter_, len(est.history_), est.net_)
    est.set_params(warm_start=how == "warm start")
    interrupt_after(2)
    with pytest.raises(KeyboardInterrupt):
        est.partial_fit(moons) if how == "partial_fit" else est.fit(moons)
    np.testing.assert_array_equal(est.score_samples(moons[:20]), before[0])
    assert (est.n_iter_, len(est.history_), est.net_) == before[1:]


def test_an_interrupt_during_n_init_trials_is_honoured_at_once(moons, interrupt_after):
    calls = interrupt_after(2)
    with pytest.raises(KeyboardInterrupt):
        OTFlowDensity(**{**TINY, "n_init": 3, "max_iter": 500}).fit(moons)
    assert calls["n"] == 2  # no step after the interrupt


class _CtrlCInACallback(Callback):
    """Sends this process SIGINT, as Ctrl-C does, while a callback runs (at the third minibatch)."""

    def initialize(self):
        self.batches = 0
        return self

    def on_batch_end(self, net, **kwargs):
        self.batches += 1
        if self.batches == 3:
            signal.raise_signal(signal.SIGINT)


def test_ctrl_c_while_a_callback_runs_is_an_interrupt_too(fitted, moons):
    est = pickle.loads(pickle.dumps(fitted))
    before = est.score_samples(moons[:20])
    handler = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        est.set_params(callbacks=[_CtrlCInACallback()]).fit(moons)
    np.testing.assert_array_equal(est.score_samples(moons[:20]), before)
    assert signal.getsignal(signal.SIGINT) is handler  # the fit's own handler is gone


def test_a_users_early_stopping_still_just_stops_training(moons):
    est = OTFlowDensity(
        **{**TINY, "max_iter": 500}, callbacks=[EarlyStopping(patience=1, threshold=10.0)]
    ).fit(moons)
    assert est.n_iter_ < 500 and np.isfinite(est.score(moons))


# ------------------------------------------------------------------------------------------------ input


def _reversed_views(X):
    import pandas as pd

    return {
        "X[::-1]": X[::-1],
        "np.flip(X, 0)": np.flip(X, 0),
        "X[::-1, ::-1][:, ::-1]": X[::-1, ::-1][:, ::-1],
        "Fortran order": np.asfortranarray(X[::-1]),
        "df.iloc[::-1]": pd.DataFrame(X).iloc[::-1],
    }


def test_arrays_with_negative_strides_are_ordinary_arrays(moons):
    X = moons[:200]
    want = OTFlowDensity(**TINY).fit(np.ascontiguousarray(X[::-1]))
    for name, view in _reversed_views(X).items():
        est = OTFlowDensity(**TINY).fit(view)
        np.testing.assert_array_equal(est.score_samples(view), want.score_samples(X[::-1]), err_msg=name)
        np.testing.assert_array_equal(est.transform(view), want.transform(X[::-1]), err_msg=name)
        Z = np.asarray(want.transform(X[::-1]))
        np.testing.assert_array_equal(est.inverse_transform(Z[::-1]), want.inverse_transform(Z[::-1].copy()))
        est.partial_fit(view)
        OTFlowDensity(**TINY).partial_fit(view)


@pytest.mark.parametrize("learning_rate", [1e6, 1e3, 10.0])
def test_a_diverged_fit_whose_restored_weights_are_no_model_raises(fitted, moons, monkeypatch, learning_rate):
    """Rounds of one step: the first ends with a finite loss (computed before its update) and weights
    that are no model (scores of -inf or -1e260); the second diverges and restores them."""
    import sklearn_otflow._auto as auto_module

    monkeypatch.setattr(auto_module, "VALIDATION_INTERVAL", 1)
    est = pickle.loads(pickle.dumps(fitted))
    before = est.score_samples(moons[:20])
    with pytest.raises(ValueError, match="Training diverged"):
        est.set_params(learning_rate=learning_rate, early_stopping=False).fit(moons)
    np.testing.assert_array_equal(est.score_samples(moons[:20]), before)


def test_a_diverged_partial_fit_whose_restored_weights_are_no_model_raises(moons):
    est = OTFlowDensity(**{**TINY, "batch_size": 32}).fit(moons)
    est.set_params(learning_rate=1e3)
    with pytest.warns(RuntimeWarning, match="does not resolve"):
        est.partial_fit(moons[:32])  # one step: a finite loss, then weights that are no model
    before = est.score_samples(moons[:20])
    with pytest.raises(ValueError, match="Training diverged"):
        est.partial_fit(moons[:32])  # diverges, and the weights it would restore are those
    np.testing.assert_array_equal(est.score_samples(moons[:20]), before)


@pytest.mark.parametrize("unit", [1e-15, 1e200])
def test_the_fit_is_invariant_to_the_data_units_down_to_tiny_and_up_to_huge(moons, unit):
    ref = OTFlowDensity(**TINY).fit(moons)
    with warnings.catch_warnings():  # no "constant feature", no overflow
        warnings.simplefilter("error")
        warnings.filterwarnings("ignore", category=RuntimeWarning, message="RK4")  # tiny fits, few steps
        est = OTFlowDensity(**TINY).fit(moons * unit)
    assert np.all(np.isfinite(est.scale_)) and np.all(est.scale_ > 0)
    scores = est.score_samples(moons[:50] * unit)
    np.testing.assert_allclose(scores, ref.score_samples(moons[:50]) - 2 * np.log(unit), rtol=1e-6)
    if unit < 1:  # the true log-density of data at 1e-15 is about +67: it is no "constant" feature
        assert scores.mean() > 60
    np.testing.assert_allclose(
        est.sample(20, random_state=0), ref.sample(20, random_state=0) * unit, rtol=1e-5
    )


def test_the_pandas_output_round_trips(moons):
    import pandas as pd

    df = pd.DataFrame(moons, columns=["x", "y"])
    est = OTFlowDensity(**TINY).set_output(transform="pandas").fit(df)
    latent = est.transform(df)
    assert list(latent.columns) == list(est.get_feature_names_out())
    back = est.inverse_transform(latent)
    np.testing.assert_allclose(np.asarray(back), moons, atol=1e-4)


class _Count(Callback):
    def initialize(self):
        self.rounds = 0
        return self

    def on_epoch_end(self, net, **kwargs):
        self.rounds += 1


def test_callbacks_set_between_partial_fit_calls_are_used(fitted, moons):
    est = pickle.loads(pickle.dumps(fitted))
    counter = _Count()
    est.set_params(callbacks=[counter]).partial_fit(moons)
    assert counter.rounds == 1
    est.partial_fit(moons)  # the same object goes on counting, not a copy of it
    assert counter.rounds == 2
    with pytest.raises(ValueError, match="skorch.callbacks.Callback.*got 1 .*position 0"):
        est.set_params(callbacks=[1]).partial_fit(moons)


BOOLEANS = ["alpha", "alpha_hjb", "hidden_width", "n_layers", "rank", "n_steps", "n_steps_eval", "max_iter"]
BOOLEANS += ["max_time", "n_init", "batch_size", "learning_rate", "ema_decay", "n_iter_no_change"]
BOOLEANS += ["validation_fraction", "weight_decay"]


@pytest.mark.parametrize("name", BOOLEANS)
@pytest.mark.parametrize("value", [True, np.True_])
def test_booleans_are_no_numbers(moons, name, value):
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        OTFlowDensity(**{**TINY, name: value}).fit(moons)


@pytest.mark.parametrize("name", ["alpha", "learning_rate", "max_time", "alpha_hjb"])
@pytest.mark.parametrize("value", [math.inf, math.nan])
def test_infinities_and_nan_are_no_parameters(moons, name, value):  # scikit-learn's Interval: a guard
    with pytest.raises(InvalidParameterError, match=f"'{name}' parameter"):
        OTFlowDensity(**{**TINY, name: value}).fit(moons)


@pytest.mark.parametrize("n_samples", [True, np.True_, np.float64(2.0), "3"])
def test_sample_counts_are_integers(fitted, n_samples):
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        fitted.sample(n_samples)


@pytest.mark.parametrize("device", ["meta", "gpu", "cpu:x", "mps"])
def test_devices_other_than_cpu_and_cuda_are_refused(moons, device):
    with pytest.raises(ValueError, match="device must be 'cpu', 'cuda' or 'cuda:<index>'"):
        OTFlowDensity(**{**TINY, "device": device}).fit(moons)


@pytest.mark.parametrize("n_init", [1, 3])
def test_a_budget_too_small_for_one_step_still_takes_one(moons, n_init):
    est = OTFlowDensity(**TINY, max_time=1e-9, n_init=n_init).fit(moons)
    assert (est.n_iter_, est.stopped_by_, len(est.history_)) == (1, "max_time", 1)
    assert np.isfinite(est.score(moons))


def test_partial_fit_needs_two_rows_first_and_one_after(moons):
    with pytest.raises(ValueError, match="1 sample"):
        OTFlowDensity(**TINY).partial_fit(moons[:1])
    est = OTFlowDensity(**TINY).partial_fit(moons[:2])
    assert np.isfinite(est.partial_fit(moons[2:3]).score(moons))


# ---------------------------------------------------------------------------------------- drawn inputs


@st.composite
def hostile_arrays(draw):
    """An array as users hand them over: any dtype, shape, memory layout and magnitude, a NaN or an
    infinity here and there, or a DataFrame."""
    n, d = draw(st.integers(0, 12)), draw(st.integers(1, 3))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    X = rng.normal(size=(n, d)) * 10.0 ** draw(st.sampled_from([-300, -15, 0, 15, 150, 300]))
    X += 10.0 ** draw(st.sampled_from([-300, 0, 8, 300])) * draw(st.sampled_from([0, 1]))
    if n and draw(st.booleans()):
        X[draw(st.integers(0, n - 1)), draw(st.integers(0, d - 1))] = draw(
            st.sampled_from([np.nan, np.inf, -np.inf])
        )
    dtype = draw(st.sampled_from([np.float64, np.float32, np.int64, np.int8, np.bool_, object]))
    with np.errstate(all="ignore"):
        X = X.astype(dtype)
    layout = draw(st.sampled_from(["C", "reversed", "F", "strided", "frame"]))
    if layout == "reversed":
        X = X[::-1]
    elif layout == "F":
        X = np.asfortranarray(X)
    elif layout == "strided":
        X = np.repeat(X, 2, axis=0)[::2]
    elif layout == "frame":
        import pandas as pd

        X = pd.DataFrame(X)
    return X


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(X=hostile_arrays())
def test_any_array_gets_a_clear_error_or_finite_results(fitted, X):
    """A ``ValueError`` saying what was expected, or finite scores and samples: never a silent NaN or
    infinity, never a crash from torch or numpy."""
    try:
        est = OTFlowDensity(**{**TINY, "max_iter": 3}).fit(X)
    except ValueError as exc:
        assert str(exc)
    else:
        assert np.isfinite(est.score_samples(X)).all()
        assert np.isfinite(est.sample(5, random_state=0)).all()
        assert np.isfinite(est.transform(X)).all()
    if np.shape(X)[1:] == (2,):
        try:
            scores = fitted.score_samples(X)
        except ValueError as exc:
            assert str(exc)
        else:
            assert np.isfinite(scores).all()
