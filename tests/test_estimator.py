"""OTFlowDensity: values (not just shapes), model selection, persistence, reproducibility and bad input."""

import io
import pickle
import warnings

import joblib
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import multivariate_normal
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler
from skorch.callbacks import Callback
from skorch.dataset import Dataset
from torch.utils.data import DataLoader, Subset

import sklearn_otflow._auto as auto_module
import sklearn_otflow._training as _training
from sklearn_otflow import OTFlowDensity
from sklearn_otflow._net import batch_loader

# one layer: the tests' figures (a stiff flow, losses after an epoch) were set with it
SMALL = dict(hidden_width=16, n_layers=1, n_steps=4, batch_size=128, random_state=0)


pytestmark = pytest.mark.usefixtures("rounds_of_one_pass")


@pytest.fixture(scope="module")
def gaussian_data():
    """A correlated 2-D Gaussian, shifted and scaled away from the latent, so that errors show."""
    rng = np.random.default_rng(0)
    cov = np.array([[4.0, 1.2], [1.2, 1.0]])
    return rng.multivariate_normal([3.0, -1.0], cov, size=1500)


@pytest.fixture(scope="module")
def fitted(gaussian_data):
    return OTFlowDensity(max_iter=440, alpha=50.0, learning_rate=0.01, **SMALL).fit(gaussian_data)


def test_density_integrates_to_one(fitted, gaussian_data):
    lo, hi = gaussian_data.min(0) - 4, gaussian_data.max(0) + 4
    xs, ys = (np.linspace(lo[i], hi[i], 161) for i in range(2))
    grid = np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2)
    mass = np.exp(fitted.score_samples(grid)).sum() * (xs[1] - xs[0]) * (ys[1] - ys[0])
    assert abs(mass - 1.0) < 0.01


def test_samples_match_the_data_moments(fitted, gaussian_data):
    samples = fitted.sample(4000, random_state=0)
    assert samples.shape == (4000, 2) and samples.dtype == np.float64
    np.testing.assert_allclose(samples.mean(0), gaussian_data.mean(0), atol=0.1)
    np.testing.assert_allclose(np.cov(samples.T), np.cov(gaussian_data.T), atol=0.25, rtol=0.1)


def test_latent_of_the_training_data_is_standard_normal(fitted, gaussian_data):
    Z = fitted.transform(gaussian_data)
    np.testing.assert_allclose(Z.mean(0), 0.0, atol=0.05)
    np.testing.assert_allclose(np.cov(Z.T), np.eye(2), atol=0.1)


def test_fitted_density_is_close_to_the_true_one(fitted, gaussian_data):
    from scipy.stats import multivariate_normal

    truth = multivariate_normal([3.0, -1.0], [[4.0, 1.2], [1.2, 1.0]])
    rng = np.random.default_rng(1)
    X_test = truth.rvs(2000, random_state=rng)
    assert fitted.score(X_test) > truth.logpdf(X_test).mean() - 0.03


def test_inverse_transform_undoes_transform(fitted, gaussian_data):
    X = gaussian_data[:200]
    np.testing.assert_allclose(fitted.inverse_transform(fitted.transform(X)), X, atol=1e-3)


def test_flow_diagnostics_are_consistent_with_score_samples(fitted, gaussian_data):
    X = gaussian_data[:50]
    diag = fitted.flow_diagnostics(X)
    assert set(diag) == {"latent", "log_det", "transport_cost", "hjb_residual"}
    log_p = -0.5 * (diag.latent**2).sum(1) - np.log(2 * np.pi) + diag.log_det - np.log(fitted.scale_).sum()
    np.testing.assert_allclose(fitted.score_samples(X), log_p, rtol=1e-12)
    np.testing.assert_array_equal(diag.latent, fitted.transform(X))
    assert (diag.transport_cost >= 0).all() and (diag.hjb_residual >= 0).all()


def test_history_records_the_loss_parts(fitted):
    keys = {"train_loss", "train_nll", "train_transport", "train_hjb", "valid_nll", "valid_transport"}
    assert keys <= set(fitted.history_[-1])
    assert (
        fitted.n_iter_ == fitted.history_[-1, "iter"] == sum(fitted.history_[:, "train_batch_count"]) == 440
    )
    nll = fitted.history_[:, "valid_nll"]
    assert nll[-1] < nll[0]  # it learned


def test_integration_error_is_measured_and_warned_about(fitted, moons, monkeypatch):
    assert 0 <= fitted.integration_error_ < 0.05
    monkeypatch.setattr(auto_module, "MAX_INTEGRATION_ERROR", -1.0)
    with pytest.warns(RuntimeWarning, match="does not resolve the fitted flow"):
        OTFlowDensity(max_iter=5, **SMALL).fit(moons)


def test_a_flow_the_evaluation_steps_do_not_resolve_is_evaluated_with_more(moons, monkeypatch):
    """n_steps_eval=None: after training, 2 * n_steps_ is doubled while doubling moves the training
    rows' mean log-likelihood by more than 0.05 nats, with a warning; scores then match a fine
    integration. A given n_steps_eval is kept, with the warning that scores are unreliable. (Training's
    step refinement, which would resolve this flow first, is switched off.)"""
    monkeypatch.setattr(auto_module, "MAX_STEP_REFINEMENTS", 0)
    est = OTFlowDensity(max_iter=10, **SMALL).fit(moons)
    assert est.n_steps_eval_ == 8
    with torch.no_grad():  # a stiff flow: 8 steps are 0.06 nats off, 16 within 0.01
        est.net_.module_.potential.w.mul_(8.0)
    retrain = dict(warm_start=True, max_iter=5, learning_rate=1e-9)  # keeps the weights
    with pytest.warns(RuntimeWarning, match=r"use 16 \(n_steps_eval_\)"):
        est.set_params(**retrain).fit(moons)
    assert est.n_steps_eval_ == 16 and est.integration_error_ <= 0.05
    fine = _training._log_prob(est, moons, 256) - np.log(est.scale_).sum()
    np.testing.assert_allclose(est.score_samples(moons).mean(), fine.mean(), atol=0.05)
    with pytest.warns(RuntimeWarning, match="scores are unreliable"):
        est.set_params(n_steps_eval=8).fit(moons)
    assert est.n_steps_eval_ == 8 and est.integration_error_ > 0.05


def test_fit_refines_its_steps_and_evaluates_with_twice_the_final_count(moons, monkeypatch):
    """With a tolerance no flow meets, every epoch refines until the cap: n_steps_ is the last count,
    validation and scores follow it, a warm start begins from it, and partial_fit does not refine."""
    est = OTFlowDensity(max_iter=10, **SMALL).fit(moons)  # a smooth early flow: no refinement
    assert est.n_steps_ == 4 and [row["n_steps"] for row in est.history_] == [4, 4]
    monkeypatch.setattr(auto_module, "STEP_TOLERANCE", -1.0)
    est.set_params(max_iter=15).fit(moons)
    assert [row["n_steps"] for row in est.history_] == [4, 6, 9]
    assert est.n_steps_ == 9 and est.net_.module_.n_steps_eval == 18 and est.n_steps_eval_ >= 18
    est.set_params(warm_start=True, max_iter=5).fit(moons)
    assert [row["n_steps"] for row in est.history_] == [9]
    assert est.partial_fit(moons).n_steps_ == 14  # the last fit's refinement (9 -> 14), none here
    assert est.partial_fit(moons).n_steps_ == 14
    given = OTFlowDensity(max_iter=10, n_steps_eval=5, **SMALL).fit(moons)
    assert given.n_steps_ == 9 and given.net_.module_.n_steps_eval == 5 and given.n_steps_eval_ == 5


def test_score_is_the_mean_log_likelihood(fitted, gaussian_data):
    assert fitted.score(gaussian_data[:100]) == pytest.approx(
        fitted.score_samples(gaussian_data[:100]).mean()
    )


def test_same_random_state_gives_identical_fits_and_leaves_torch_rng_alone(moons):
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = OTFlowDensity(max_iter=15, **SMALL).fit(moons)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = OTFlowDensity(max_iter=15, **SMALL).fit(moons)
    np.testing.assert_array_equal(a.score_samples(moons), b.score_samples(moons))
    c = OTFlowDensity(max_iter=15, **{**SMALL, "random_state": 1}).fit(moons)
    assert not np.array_equal(a.score_samples(moons), c.score_samples(moons))


def test_pickle_and_joblib_round_trips_reproduce_scores(fitted, gaussian_data):
    X = gaussian_data[:100]
    expected = fitted.score_samples(X)
    restored = pickle.loads(pickle.dumps(fitted))
    np.testing.assert_array_equal(restored.score_samples(X), expected)
    buffer = io.BytesIO()
    joblib.dump(fitted, buffer)
    buffer.seek(0)
    np.testing.assert_array_equal(joblib.load(buffer).score_samples(X), expected)


def test_clone_copies_parameters_not_the_fit(fitted):
    twin = clone(fitted)
    assert twin.get_params() == fitted.get_params()
    assert not hasattr(twin, "net_")


def test_grid_search_in_a_pipeline_ranks_by_held_out_log_likelihood(moons):
    pipe = Pipeline(
        [("standardscaler", StandardScaler()), ("otflowdensity", OTFlowDensity(max_iter=15, **SMALL))]
    )
    cv = KFold(3, shuffle=True, random_state=0)
    search = GridSearchCV(pipe, {"otflowdensity__alpha": [1.0, 30.0]}, cv=cv, n_jobs=2).fit(moons)
    scores = search.cv_results_["mean_test_score"]
    assert np.all(np.isfinite(scores))
    assert search.best_index_ == int(np.argmax(scores))
    # the score GridSearchCV ranks by is the held-out mean log-likelihood
    manual = cross_val_score(clone(pipe).set_params(otflowdensity__alpha=30.0), moons, cv=cv)
    np.testing.assert_allclose(scores[1], manual.mean(), rtol=1e-10)
    assert search.best_estimator_.score(moons) == pytest.approx(search.score(moons))


def test_user_callbacks_pass_through_and_verbose_prints(moons, capsys):
    class Count(Callback):
        def initialize(self):
            self.epochs = 0
            return self

        def on_epoch_end(self, net, **kwargs):
            self.epochs += 1

    counter = Count()
    est = OTFlowDensity(max_iter=10, callbacks=[counter], verbose=1, **SMALL).fit(moons)
    assert counter.epochs == len(est.history_) == 2 and est.n_iter_ == 10
    out, err = capsys.readouterr()
    # verbose=1: a progress bar (tqdm, on stderr) with the validation log-likelihood in the data's
    # units, and one summary line
    valid = -est.history_[-1, "valid_nll"] - np.log(est.scale_).sum()
    assert "OTFlowDensity: 100%" in err and f"valid log-lik={valid:.4f}" in err
    assert out.startswith("OTFlowDensity: 10 steps in ") and "stopped by max_iter" in out
    assert "valid_nll" not in out  # skorch's table is verbose=2's
    OTFlowDensity(max_iter=10, verbose=2, **SMALL).fit(moons)
    assert "valid_nll" in capsys.readouterr().out


def test_early_stopping_stops_and_keeps_the_best_weights(moons):
    # a rate so high that the validation score stops improving early in the fall
    est = OTFlowDensity(max_iter=1000, n_iter_no_change=10, learning_rate=0.2, **SMALL).fit(moons)
    assert est.n_iter_ < 1000 and est.stopped_by_ == "early stopping"
    best = min(est.history_[:, "valid_nll"])
    X_valid_nll = [row["valid_nll"] for row in est.history_ if row.get("valid_nll_best")]
    assert X_valid_nll[-1] == best


def test_early_stopping_scores_at_the_evaluation_step_count(moons, monkeypatch):
    """Validation flows with n_steps_eval, as score does: a flow exploiting the training steps'
    discretization error must not look better to early stopping than it is (measured on make_moons,
    200 epochs: validated at the 8 training steps, the validation NLL kept falling while the
    likelihood at 32 steps had been rising since epoch 61)."""
    import sklearn_otflow._net as net_module

    calls = []
    original = net_module.flow

    def spy(potential, x, n_steps, **kwargs):
        calls.append((torch.is_grad_enabled(), n_steps))
        return original(potential, x, n_steps, **kwargs)

    monkeypatch.setattr(net_module, "flow", spy)
    monkeypatch.setattr(auto_module, "MAX_STEP_REFINEMENTS", 0)  # its probe flows without gradients too
    OTFlowDensity(max_iter=5, n_steps_eval=7, **SMALL).fit(moons)
    assert {steps for grad, steps in calls if grad} == {SMALL["n_steps"]}
    assert {steps for grad, steps in calls if not grad} == {7}


def test_constant_column_and_large_scale_just_work():
    rng = np.random.default_rng(0)
    X = np.column_stack([rng.normal(size=300), np.full(300, 7.0)])
    with pytest.warns(UserWarning, match="constant"):
        est = OTFlowDensity(max_iter=15, **SMALL).fit(X)
    assert np.isfinite(est.score_samples(X)).all() and np.isfinite(est.sample(10, random_state=0)).all()

    # standardization makes the fit invariant to units: 1e6-scaled data give the same model
    small = rng.normal(size=(400, 2))
    big = small * 1e6 + 5e6
    ref = OTFlowDensity(max_iter=15, **SMALL).fit(small)
    est = OTFlowDensity(max_iter=15, **SMALL).fit(big)
    np.testing.assert_allclose(est.score_samples(big), ref.score_samples(small) - 2 * np.log(1e6), atol=1e-3)
    np.testing.assert_allclose(
        est.sample(50, random_state=0), ref.sample(50, random_state=0) * 1e6 + 5e6, rtol=1e-3
    )


class _Poison(Callback):
    """Sets the weights to NaN at the start of epoch ``epoch`` (1-based)."""

    def __init__(self, epoch):
        self.epoch = epoch

    def on_epoch_begin(self, net, **kwargs):
        if len(net.history) == self.epoch:
            with torch.no_grad():
                for p in net.module_.parameters():
                    p.fill_(float("nan"))


def test_divergence_restores_the_last_finite_weights_with_a_warning(moons):
    with pytest.warns(RuntimeWarning, match="last round with a finite loss"):
        est = OTFlowDensity(max_iter=25, callbacks=[_Poison(3)], **SMALL).fit(moons)
    assert np.isfinite(est.score_samples(moons)).all()


def test_divergence_before_any_finite_epoch_raises_and_keeps_the_old_fit(fitted, gaussian_data):
    est = pickle.loads(pickle.dumps(fitted))
    before = est.score_samples(gaussian_data[:20])
    est.set_params(callbacks=[_Poison(1)], max_iter=10)
    with pytest.raises(ValueError, match="Training diverged"):
        est.fit(gaussian_data[:300, ::-1])
    np.testing.assert_array_equal(est.score_samples(gaussian_data[:20]), before)


BAD_INPUTS = {
    "nan": (np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 4.0]]), ValueError, "NaN"),
    "inf": (np.array([[0.0, np.inf], [1.0, 2.0], [3.0, 4.0]]), ValueError, "infinity"),
    "complex": (np.array([[1 + 1j, 2.0], [3.0, 4.0]]), ValueError, "[Cc]omplex"),
    "object": (np.array([["a", "b"], ["c", "d"]], dtype=object), ValueError, "could not convert"),
    "empty": (np.empty((0, 2)), ValueError, "0 sample"),
    "one sample": (np.array([[1.0, 2.0]]), ValueError, "1 sample"),
    "1-d": (np.array([1.0, 2.0, 3.0]), ValueError, "Expected 2D array, got 1D array"),
}


@pytest.mark.parametrize("name", list(BAD_INPUTS))
def test_bad_fit_inputs_raise_clear_errors(name):
    X, error, match = BAD_INPUTS[name]
    with pytest.raises(error, match=match):
        OTFlowDensity(max_iter=5, **SMALL).fit(X)


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n=st.integers(2, 40),
    d=st.integers(1, 5),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    dtype=st.sampled_from([np.float32, np.float64]),
    data=st.data(),
)
def test_non_finite_values_anywhere_are_rejected(fitted, n, d, bad, dtype, data):
    X = np.zeros((n, d), dtype=dtype)
    X[data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, d - 1))] = bad
    with pytest.raises(ValueError, match="NaN|infinity"):
        OTFlowDensity(max_iter=5, **SMALL).fit(X)
    if d == 2:
        with pytest.raises(ValueError, match="NaN|infinity"):
            fitted.score_samples(X)


@settings(max_examples=10, deadline=None)
@given(d=st.integers(1, 6).filter(lambda d: d != 2), method=st.sampled_from(["score_samples", "transform"]))
def test_wrong_number_of_features_is_rejected(fitted, d, method):
    with pytest.raises(ValueError, match=f"X has {d} features, but OTFlowDensity is expecting 2 features"):
        getattr(fitted, method)(np.zeros((3, d)))


@pytest.mark.parametrize(
    "method", ["score_samples", "transform", "inverse_transform", "flow_diagnostics", "sample"]
)
def test_calls_before_fit_raise_not_fitted(method):
    est = OTFlowDensity()
    with pytest.raises(NotFittedError):
        getattr(est, method)(*([] if method == "sample" else [np.zeros((3, 2))]))


@pytest.mark.parametrize("n_samples", [0, -1, 2.5])
def test_bad_n_samples(fitted, n_samples):
    with pytest.raises(ValueError, match="n_samples must be a positive integer"):
        fitted.sample(n_samples)


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(alpha=0.0), "alpha"),
        (dict(n_steps=0), "n_steps"),
        (dict(dtype="float16"), "dtype"),
        (dict(validation_fraction=1.0), "validation_fraction"),
        (dict(batch_size="big"), "batch_size"),
        (dict(batch_size=0), "batch_size"),
        (dict(hidden_width="wide"), "hidden_width"),
        (dict(ema_decay=1.0), "ema_decay"),
        (dict(n_init=0), "n_init"),
        (dict(weight_decay=-0.1), "weight_decay"),
        (dict(weight_decay="strong"), "weight_decay"),
    ],
)
def test_bad_parameters_raise(params, match):
    with pytest.raises(ValueError, match=match):
        OTFlowDensity(**params).fit(np.zeros((5, 2)) + np.arange(5)[:, None])


def test_float64_training_and_exact_trace(moons):
    est = OTFlowDensity(max_iter=10, dtype="float64", trace_precision="exact", **SMALL).fit(moons)
    assert est.net_.module_.potential.A.dtype == torch.float64
    assert np.isfinite(est.score(moons))


def _candidate_fit(X, candidate: int, **params) -> OTFlowDensity:
    """The whole fit of the ``candidate``-th initialization that ``n_init`` draws (no trials)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(
            _training, "_pick_initialization", lambda est, X, seeds, deadline=None: seeds[candidate]
        )
        return OTFlowDensity(**params).fit(X)


@pytest.mark.parametrize("early_stopping, nll", [(True, "valid_nll"), (False, "train_nll")])
def test_n_init_keeps_the_initialization_whose_first_epochs_score_best(moons, early_stopping, nll):
    """Each trial is the beginning of its seed's fit (same schedule, batches and validation rows), so
    the fit kept is the whole fit of the candidate whose NLL after the trial, 1/25 of the budget, is
    lowest: the validation NLL, or the training NLL without a validation split."""
    params = dict(max_iter=125, n_init=3, early_stopping=early_stopping, **SMALL)
    fits = [_candidate_fit(moons, i, **params) for i in range(3)]
    trial = [fit.history_[0, nll] for fit in fits]  # after 125 / 25 = 5 steps, the first round
    best = int(np.argmin(trial))
    assert best != 0 and len(set(trial)) == 3  # the data make the choice matter
    est = OTFlowDensity(**params).fit(moons)
    np.testing.assert_array_equal(est.score_samples(moons[:50]), fits[best].score_samples(moons[:50]))
    assert est.n_iter_ == fits[best].n_iter_
    # the first candidate is the fit of n_init=1
    single = OTFlowDensity(**{**params, "n_init": 1}).fit(moons)
    np.testing.assert_array_equal(single.score_samples(moons[:50]), fits[0].score_samples(moons[:50]))


def test_n_init_reports_each_trial_and_a_diverging_trial_loses(moons, monkeypatch, capsys):
    from sklearn_otflow._callbacks import TrainingDiverged

    seeds = _training.seeds_of(OTFlowDensity(random_state=0), 3)
    trained = []
    original = _training._run_net

    def run_net(est, net, X, initialize, start=None, **fit_params):
        trial, seed = dict(net.callbacks)["budget"].stop_at < 1, net.module__seed
        trained.append((seed, trial))
        if trial and seed != seeds[-1]:
            raise TrainingDiverged("the training loss became nan in round 1")
        return original(est, net, X, initialize, start, **fit_params)

    monkeypatch.setattr(_training, "_run_net", run_net)
    est = OTFlowDensity(max_iter=100, n_init=3, verbose=1, **SMALL).fit(moons)
    assert trained == [(seed, True) for seed in seeds] + [(seeds[-1], False)]
    assert est.n_iter_ == 100 and np.isfinite(est.score(moons))
    out = capsys.readouterr().out
    assert "initialization 1/3: NLL inf" in out and "initialization 3/3: NLL" in out


def test_a_warm_start_tries_no_initializations(moons, monkeypatch):
    est = OTFlowDensity(max_iter=10, n_init=2, warm_start=True, **SMALL).fit(moons)

    def fail(est, X, seeds, deadline=None):
        raise AssertionError("a warm start continues the fitted weights: no initializations to try")

    monkeypatch.setattr(_training, "_pick_initialization", fail)
    assert est.fit(moons).n_iter_ == 10


def test_warm_start_continues_from_the_weights_with_the_current_parameters(moons):
    """A warm fit starts from the fitted weights, with the parameters as they are now (as scikit-learn's
    warm_start does): max_iter, learning_rate and alpha set after the first fit take effect."""
    est = OTFlowDensity(max_iter=10, warm_start=True, **SMALL).fit(moons)
    first, weights = est.net_, est.net_.module_.potential.state_dict()
    est.set_params(max_iter=15, learning_rate=0.005, alpha=30.0).fit(moons)
    assert est.net_ is not first and est.n_iter_ == 15 and len(est.history_) == 3
    assert est.net_.lr == 0.005 and est.net_.criterion_.alpha == 30.0
    assert est.history_[0, "lr"] == pytest.approx(0.005)  # a new schedule, not the old one's end
    # the first net is untouched (a failed call keeps the model), and the new one started from it
    torch.testing.assert_close(first.module_.potential.state_dict(), weights, rtol=0, atol=0)
    cold = OTFlowDensity(max_iter=5, learning_rate=0.005, alpha=30.0, **SMALL).fit(moons)
    assert est.history_[0, "train_nll"] < cold.history_[0, "train_nll"] - 0.1


def test_warm_start_with_another_architecture_raises_and_keeps_the_model(moons):
    est = OTFlowDensity(max_iter=5, warm_start=True, **SMALL).fit(moons)
    before = est.score_samples(moons[:20])
    with pytest.raises(ValueError, match="hidden_width=16, n_layers=1 and rank=3; the parameters now give"):
        est.set_params(hidden_width=8).fit(moons)
    np.testing.assert_array_equal(est.set_params(hidden_width=16).score_samples(moons[:20]), before)


def test_transform_in_a_pipeline_gaussianizes(moons):
    pipe = make_pipeline(StandardScaler(), OTFlowDensity(max_iter=10, **SMALL)).fit(moons)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Z = pipe.transform(moons)
    assert Z.shape == moons.shape
    assert list(pipe.get_feature_names_out()) == ["otflowdensity0", "otflowdensity1"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_fit_score_sample(moons):
    est = OTFlowDensity(max_iter=10, device="cuda", **SMALL).fit(moons)
    assert np.isfinite(est.score_samples(moons)).all()
    assert est.sample(5, random_state=0).shape == (5, 2)


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a machine without a GPU")
def test_model_pickled_for_cuda_loads_on_a_cpu_only_machine(fitted, gaussian_data):
    """A model fitted with device="cuda" is pickled with its net's device; skorch maps it to the CPU on load
    where no GPU exists (get_map_location), and evaluation follows the net's device, not the parameter."""
    from skorch.exceptions import DeviceWarning

    twin = pickle.loads(pickle.dumps(fitted))
    twin.set_params(device="cuda")
    twin.net_.device = "cuda"
    with pytest.warns(DeviceWarning, match="no CUDA devices"):
        restored = pickle.loads(pickle.dumps(twin))
    assert torch.device(restored.net_.device).type == "cpu"
    X = gaussian_data[:50]
    np.testing.assert_array_equal(restored.score_samples(X), fitted.score_samples(X))
    assert restored.sample(5, random_state=0).shape == (5, 2)


def test_default_fit_does_not_collapse_to_the_gaussian():
    """Eight symmetric blobs standardize to identity covariance, where the identity flow (the data's
    Gaussian) is a stationary point. Started at w = 1 (the reference's initialisation) the flow fell
    there and stayed: held-out -3.554 against the Gaussian's -3.553. Started at w = 0: -2.61."""
    rng = np.random.default_rng(0)
    angles = np.arange(8) * np.pi / 4
    means = 2.0 * np.stack([np.cos(angles), np.sin(angles)], 1)
    X, X_test = (means[rng.integers(8, size=n)] + 0.25 * rng.normal(size=(n, 2)) for n in (2000, 1000))
    est = OTFlowDensity(max_iter=400, random_state=0).fit(X)
    gaussian = multivariate_normal(X.mean(0), np.cov(X.T)).logpdf(X_test).mean()
    assert est.score(X_test) > gaussian + 0.5


@pytest.mark.parametrize(
    "n, early_stopping, rows",
    [(100, True, 32), (1000, True, 45), (1000, False, 50), (6000, True, 256), (20000, True, 256)],
)
def test_auto_batch_size_gives_small_data_twenty_steps_per_epoch(n, early_stopping, rows):
    """``"auto"``: min(256, max(32, n_train // 20)) rows, n_train after the validation split."""
    X = np.random.default_rng(0).normal(size=(n, 2))
    est = OTFlowDensity(hidden_width=4, n_steps=1, max_iter=5, early_stopping=early_stopping)
    est.fit(X)
    assert est.net_.batch_size == rows
    assert est.set_params(batch_size=7).fit(X[:50]).net_.batch_size == 7


def test_batch_loader_gives_a_shuffling_data_loaders_batches():
    """One indexing per batch, but the rows, order and batches of ``DataLoader(shuffle=True)``."""
    data = Subset(Dataset(torch.arange(40.0).view(20, 2), None), list(range(3, 20)))  # as ValidSplit's
    ours = [X for X, _ in batch_loader(data, 5, shuffle=True, generator=torch.Generator().manual_seed(1))]
    loader = DataLoader(data, 5, shuffle=True, generator=torch.Generator().manual_seed(1))
    assert [tuple(X.shape) for X in ours] == [(5, 2), (5, 2), (5, 2), (2, 2)]
    for X, (Y, _) in zip(ours, loader, strict=True):
        torch.testing.assert_close(X, Y, rtol=0, atol=0)
    assert torch.equal(torch.cat([X for X, _ in batch_loader(data, 5)]), data.dataset.X[3:])


def test_validation_runs_in_evaluation_sized_batches(moons):
    """Validation holds no gradients: its batches are score's (4,096 rows at width 32), not training's."""
    est = OTFlowDensity(max_iter=34, batch_size=16, hidden_width=32, n_steps=1).fit(moons)  # one pass
    batches = est.history_[-1]["batches"]
    assert [b["valid_batch_size"] for b in batches if "valid_batch_size" in b] == [60]
    assert {b["train_batch_size"] for b in batches if "train_batch_size" in b} == {16, 540 % 16}


@pytest.mark.parametrize("d, width", [(1, 32), (2, 32), (3, 64), (15, 64)])
def test_auto_hidden_width_is_32_up_to_two_features_and_64_above(d, width):
    X = np.random.default_rng(0).normal(size=(60, d))
    est = OTFlowDensity(n_steps=1, max_iter=5, random_state=0).fit(X)
    assert est.net_.module_.potential.width == width
    assert est.set_params(hidden_width=5).fit(X).net_.module_.potential.width == 5


def test_fit_releases_the_scratch_memory_its_integrations_shared(moons):
    from sklearn_otflow._trace import scratch

    OTFlowDensity(max_iter=10, **SMALL).fit(moons).partial_fit(moons)
    assert not scratch._SPARE and not scratch._REUSE


@pytest.mark.parametrize("d, layers", [(1, 2), (2, 2), (3, 1), (15, 1)])
def test_auto_n_layers_is_2_up_to_two_features_and_1_above(d, layers):
    X = np.random.default_rng(0).normal(size=(60, d))
    est = OTFlowDensity(hidden_width=4, n_steps=1, max_iter=5, random_state=0).fit(X)
    assert est.net_.module_.potential.n_layers == layers
    assert np.isfinite(est.score_samples(X)).all()
    assert est.set_params(n_layers=3).fit(X).net_.module_.potential.n_layers == 3


def _decays(est) -> dict[str, float]:
    """Each of the potential's parameters' weight decay in the fitted net's optimiser, by name."""
    names = {id(p): name for name, p in est.net_.module_.potential.named_parameters()}
    groups = est.net_.optimizer_.param_groups
    return {names[id(p)]: group["weight_decay"] for group in groups for p in group["params"]}


DECAYED = {"w", "opening.weight", "layers.0.weight", "layers.1.weight"}


@pytest.mark.parametrize("d, decay", [(1, 0.0), (2, 0.0), (3, 0.1), (15, 0.1)])
def test_auto_weight_decay_is_zero_up_to_two_features_and_0_1_above(d, decay):
    X = np.random.default_rng(0).normal(size=(60, d))
    est = OTFlowDensity(hidden_width=4, n_steps=1, max_iter=5, random_state=0).fit(X)
    assert {v for k, v in _decays(est).items() if k in DECAYED} == {decay}
    assert {v for k, v in _decays(est.partial_fit(X)).items() if k in DECAYED} == {decay}
    est.set_params(weight_decay=0.05).fit(X)
    assert {v for k, v in _decays(est).items() if k in DECAYED} == {0.05}


@pytest.mark.parametrize("fit", ["fit", "partial_fit"])
def test_weight_decay_acts_on_the_network_weights_only(fit):
    """The residual network's weight matrices (K_0, K_i, w) are decayed; the biases and the quadratic and
    linear terms A, b, c (the potential's Gaussian part) are not, also after partial_fit changes the decay."""
    X = np.random.default_rng(0).normal(size=(60, 3))
    est = OTFlowDensity(hidden_width=4, n_layers=2, n_steps=1, max_iter=5, weight_decay=0.2, random_state=0)
    getattr(est, fit)(X)
    expected = {
        "A": 0.0, "b": 0.0, "c": 0.0, "opening.bias": 0.0, "layers.0.bias": 0.0, "layers.1.bias": 0.0,
        "w": 0.2, "opening.weight": 0.2, "layers.0.weight": 0.2, "layers.1.weight": 0.2,
    }  # fmt: skip
    assert _decays(est) == expected
    est.set_params(weight_decay=0.5).partial_fit(X)
    assert _decays(est) == {k: 0.5 if v else 0.0 for k, v in expected.items()}
    assert est.net_.optimizer__weight_decay == 0.5


def test_weight_decay_shrinks_the_weights(moons):
    """Decoupled decay (AdamW): every step scales each weight by 1 - learning_rate * weight_decay before
    Adam's step, so a strong decay ends far below the undecayed fit; a decay that is not passed to the
    optimiser fails this."""
    fit = dict(max_iter=10, early_stopping=False, ema_decay=0.0, learning_rate=0.02, **SMALL)
    plain = OTFlowDensity(weight_decay=0.0, **fit).fit(moons)
    strong = OTFlowDensity(weight_decay=20.0, **fit).fit(moons)

    def norm(est):
        return float(est.net_.module_.potential.layers[0].weight.detach().norm())

    # each of the 10 steps scales by 1 - 0.02 * 20 * c_k, c_k the schedule's factor (1 for 6 steps,
    # then 1 - 0.25 j): 0.6 to 0.9; Adam's steps, at most about the rate per entry, cannot make up for it
    assert norm(strong) < 0.25 * norm(plain)
