"""Scale: streaming fits (partial_fit), evaluation memory bounded by a batch, threads, Dask."""

import io
import pickle
import threading
import tracemalloc

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from sklearn.model_selection import GridSearchCV, KFold
from skorch.callbacks import Callback

import sklearn_otflow._evaluation as evaluation_module
import sklearn_otflow._net as net_module
from sklearn_otflow import OTFlowDensity
from sklearn_otflow._auto import eval_rows as _eval_rows

SMALL = dict(hidden_width=16, n_steps=4, batch_size=128, learning_rate=0.01, alpha=50.0, random_state=0)
MEAN, COV = np.array([3.0, -1.0]), np.array([[4.0, 1.2], [1.2, 1.0]])


@pytest.fixture(scope="module")
def gaussian_split():
    rng = np.random.default_rng(1)
    X = rng.multivariate_normal(MEAN, COV, size=2000)
    return X[:1500], X[1500:]


@pytest.fixture(scope="module")
def streamed(gaussian_split):
    """15 passes over the training rows, arriving as 3 chunks per pass."""
    X, _ = gaussian_split
    est = OTFlowDensity(**SMALL)
    for _ in range(15):
        for chunk in np.array_split(X, 3):
            est.partial_fit(chunk)
    return est


def test_partial_fit_matches_a_full_fit(streamed, gaussian_split):
    X, X_test = gaussian_split
    full = OTFlowDensity(max_iter=180, early_stopping=False, **SMALL).fit(X)  # 15 passes of 12 steps
    true = multivariate_normal(MEAN, COV).logpdf(X_test).mean()
    assert streamed.n_iter_ == 180  # 15 passes over 3 chunks of 4 steps
    assert abs(streamed.score(X_test) - full.score(X_test)) < 0.05
    assert abs(streamed.score(X_test) - true) < 0.1
    assert np.isfinite(streamed.score_samples(X_test)).all()


def test_partial_fit_fixes_the_standardization_at_the_first_call(gaussian_split):
    X, _ = gaussian_split
    est = OTFlowDensity(**SMALL).partial_fit(X[:200])
    first = est.mean_.copy(), est.scale_.copy()
    np.testing.assert_allclose(first[0], X[:200].mean(0))
    est.partial_fit(X[200:400] * 10.0)
    np.testing.assert_array_equal(est.mean_, first[0])
    np.testing.assert_array_equal(est.scale_, first[1])
    with pytest.raises(ValueError, match="only be given in the first call"):
        est.partial_fit(X[:200], mean=[0.0, 0.0], scale=[1.0, 1.0])


def test_partial_fit_uses_the_standardization_it_is_given(gaussian_split):
    X, _ = gaussian_split
    est = OTFlowDensity(**SMALL).partial_fit(X[:200], mean=MEAN, scale=np.sqrt(np.diag(COV)))
    np.testing.assert_array_equal(est.mean_, MEAN)
    np.testing.assert_array_equal(est.scale_, np.sqrt(np.diag(COV)))
    for mean, scale, match in [
        ([0.0], [1.0], "of shape \\(2,\\)"),
        ([0.0, 0.0], [1.0, 0.0], "positive scale"),
        ([0.0, 0.0], None, "both mean and scale"),
    ]:
        with pytest.raises(ValueError, match=match):
            OTFlowDensity(**SMALL).partial_fit(X[:200], mean=mean, scale=scale)


def test_partial_fit_continues_a_fitted_model(gaussian_split):
    X, X_test = gaussian_split
    est = OTFlowDensity(max_iter=33, verbose=1, **SMALL).fit(X)
    before = est.score_samples(X_test)
    est.partial_fit(X[:500])
    assert est.n_iter_ == 33 + 4 and est.history_[-1, "iter"] == 37  # a pass over 500 rows: 4 steps
    assert est.stopped_by_ == "pass"
    assert est.net_.train_split is None
    names = dict(est.net_.callbacks_)
    assert not {"budget", "progress", "early_stopping", "weight_averaging", "step_refinement"} & set(names)
    # the fit's schedule had annealed the rate to 0: the stream trains at learning_rate again
    assert est.net_.optimizer_.param_groups[0]["lr"] == SMALL["learning_rate"]
    assert not np.allclose(est.score_samples(X_test), before)


def test_partial_fit_reads_the_current_parameters_and_keeps_the_optimiser_state(gaussian_split):
    """learning_rate, weight_decay, batch_size, alpha and alpha_hjb changed between calls take effect;
    Adam's moments carry over (its step count goes on instead of restarting)."""
    X, _ = gaussian_split
    est = OTFlowDensity(**SMALL).partial_fit(X[:512])  # 4 steps of 128 rows
    est.set_params(learning_rate=0.002, weight_decay=0.3, batch_size=64, alpha=20.0, alpha_hjb=2.0)
    est.partial_fit(X[:512])  # 8 steps of 64 rows
    net = est.net_
    group = net.optimizer_.param_groups[-1]  # the network's weights; the other groups are not decayed
    assert (group["lr"], group["weight_decay"], net.batch_size) == (0.002, 0.3, 64)
    assert {g["lr"] for g in net.optimizer_.param_groups} == {0.002}
    assert (net.criterion_.alpha, net.criterion_.alpha_hjb) == (20.0, 2.0)
    assert (net.criterion__alpha, net.criterion__alpha_hjb) == (20.0, 2.0)
    assert dict(net.callbacks_)["grad_clip"].gradient_clip_value == 20.0 * (1 + 20.0 + 2.0)
    assert {int(state["step"]) for state in net.optimizer_.state.values()} == {12}


def test_a_failed_partial_fit_keeps_the_model(streamed, gaussian_split):
    _, X_test = gaussian_split
    before = streamed.score_samples(X_test)
    n_iter = streamed.n_iter_
    for bad in (X_test[:, :1], np.full((10, 2), np.nan)):
        with pytest.raises(ValueError):
            streamed.partial_fit(bad)
    assert streamed.n_iter_ == n_iter
    np.testing.assert_array_equal(streamed.score_samples(X_test), before)


@pytest.mark.parametrize("how", ["partial_fit", "warm_start fit"])
def test_training_that_fails_midway_keeps_the_model(streamed, gaussian_split, how, monkeypatch):
    """A call that fails after some optimiser steps leaves the fitted weights and attributes as they were."""
    X_train, X_test = gaussian_split
    est = pickle.loads(pickle.dumps(streamed)).set_params(warm_start=True)
    before, n_iter = est.score_samples(X_test), est.n_iter_
    original, steps = net_module.OTFlowNet.train_step, []

    def train_step(net, *args, **kwargs):
        steps.append(1)
        if len(steps) == 3:
            raise RuntimeError("interrupted")
        return original(net, *args, **kwargs)

    monkeypatch.setattr(net_module.OTFlowNet, "train_step", train_step)
    with pytest.raises(RuntimeError, match="interrupted"):
        est.partial_fit(X_train) if how == "partial_fit" else est.fit(X_train)
    assert len(steps) == 3 and est.n_iter_ == n_iter
    np.testing.assert_array_equal(est.score_samples(X_test), before)


def _rows_per_flow_call(monkeypatch):
    rows = []
    original = evaluation_module.flow

    def spy(potential, x, *args, **kwargs):
        rows.append(x.shape[0])
        return original(potential, x, *args, **kwargs)

    monkeypatch.setattr(evaluation_module, "flow", spy)
    return rows


@pytest.mark.parametrize("method", ["score_samples", "transform", "inverse_transform"])
def test_evaluation_memory_is_bounded_by_a_batch(streamed, method, monkeypatch):
    """Twice the rows: the batches stay the same size and nothing but the output grows.

    tracemalloc sees numpy's allocations (the inputs' copies and the outputs), not torch's; torch's
    working memory is one batch's, and the spy checks that no call flows more rows than one batch.
    """
    rows = _rows_per_flow_call(monkeypatch)
    batch = _eval_rows(streamed.hidden_width)
    for n in (3 * batch // 2, 3 * batch):
        X = np.random.default_rng(0).normal(size=(n, 2))
        tracemalloc.start()
        out = getattr(streamed, method)(X)
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        # the output and at most a few batch-sized temporaries; a copy of X would add n * 16 bytes
        assert peak <= out.nbytes + 64 * batch, (n, peak, out.nbytes)
    assert max(rows) == batch and len(rows) == 2 + 3


def test_concurrent_evaluations_share_the_threads(streamed, monkeypatch):
    """Two scoring calls in threads of one process split torch's threads, and leave them as they were."""
    seen, barrier = [], threading.Barrier(2)
    original = evaluation_module.flow

    def spy(potential, x, *args, **kwargs):
        barrier.wait(timeout=60)  # both calls are running from here on
        seen.append(torch.get_num_threads())
        return original(potential, x, *args, **kwargs)

    monkeypatch.setattr(evaluation_module, "flow", spy)
    total = torch.get_num_threads()
    batch = _eval_rows(streamed.hidden_width)
    X = np.zeros((2 * batch, 2))
    threads = [threading.Thread(target=streamed.score_samples, args=(X,)) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # every batch after the first in each thread sees both calls running
    assert len(seen) == 4 and sorted(seen)[:2] == [max(1, total // 2)] * 2
    assert torch.get_num_threads() == total


def test_grid_search_on_a_dask_cluster_equals_the_local_one(gaussian_split):
    distributed = pytest.importorskip("distributed")
    import joblib

    X, _ = gaussian_split
    params = dict(hidden_width=8, n_steps=4, max_iter=15, random_state=0)

    def search():
        grid = {"alpha": [10.0, 50.0]}
        return GridSearchCV(OTFlowDensity(**params), grid, cv=KFold(2), n_jobs=2).fit(X[:600])

    local = search()
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None, processes=True
        ) as cluster,
        distributed.Client(cluster),
        joblib.parallel_backend("dask"),
    ):
        on_dask = search()
    np.testing.assert_allclose(
        on_dask.cv_results_["mean_test_score"], local.cv_results_["mean_test_score"], rtol=1e-6
    )
    assert on_dask.best_params_ == local.best_params_
    np.testing.assert_allclose(on_dask.score(X[600:]), local.score(X[600:]), rtol=1e-6)


def test_evaluation_takes_no_more_threads_than_the_free_cpus(streamed, monkeypatch):
    """Beside a busy process (one CPU free) scoring runs on one thread; on a free machine, on torch's
    threads; and as the machine's load changes during a call, the count follows it, batch by batch."""
    import sklearn_otflow._hardware as threads_module

    seen, free = [], iter([2, 1, 2])
    original = evaluation_module.flow

    def spy(potential, x, *args, **kwargs):
        seen.append(torch.get_num_threads())
        return original(potential, x, *args, **kwargs)

    monkeypatch.setattr(evaluation_module, "flow", spy)
    monkeypatch.setattr(threads_module, "free_cpus", lambda: next(free))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        streamed.score_samples(np.zeros((2 * _eval_rows(streamed.hidden_width), 2)))
        assert seen == [1, 2]  # checked at the call's start (2 free), then before each batch
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_free_cpus_counts_other_processes_runnable_tasks(monkeypatch):
    """CPUs this process may use less the runnable tasks of other processes (/proc/loadavg counts the
    whole machine's, this process's own included)."""
    import sklearn_otflow._hardware as threads_module

    if not hasattr(threads_module.os, "sched_getaffinity"):
        pytest.skip("Linux only")
    monkeypatch.setattr(threads_module.os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
    monkeypatch.setattr(threads_module.os, "cpu_count", lambda: 4)
    monkeypatch.setattr(threads_module, "_own_running", lambda: 1)
    loadavg = {"text": ""}
    real_open = open

    def fake_open(path, *args, **kwargs):
        if path == "/proc/loadavg":
            return io.StringIO(loadavg["text"])
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", fake_open)
    for runnable, free in [(1, 4), (2, 3), (4, 1), (9, 1)]:
        loadavg["text"] = f"0.50 0.40 0.30 {runnable}/345 12345\n"
        assert threads_module.free_cpus() == free
    loadavg["text"] = "unreadable"
    assert threads_module.free_cpus() == 4


def test_small_training_runs_on_one_thread_and_restores_the_count():
    """Steps bound by per-operation overhead train on one thread; evaluation keeps all of them."""
    seen = []

    class Record(Callback):
        def on_epoch_begin(self, net, **kwargs):
            seen.append(torch.get_num_threads())

    before = torch.get_num_threads()
    X = np.random.default_rng(0).normal(size=(300, 2))
    OTFlowDensity(hidden_width=8, n_steps=2, max_iter=200, callbacks=[Record()]).fit(X)  # 2 rounds
    assert seen == [1, 1] and torch.get_num_threads() == before
