"""sample_weight: the checks, weighted moments, zero weights as dropped rows, integer weights as repeated
rows, and the routing of weights through Pipeline and GridSearchCV (scikit-learn's metadata routing)."""

import numpy as np
import pytest
import sklearn
from sklearn.exceptions import UnsetMetadataPassedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

import sklearn_otflow._training as _training
from sklearn_otflow import OTFlowDensity
from sklearn_otflow._validation import check_weights, standardization

TINY = dict(hidden_width=4, n_steps=2, max_iter=10, batch_size=32, random_state=0)


@pytest.mark.parametrize(
    "weights, message",
    [
        (
            [1.0, -0.5, 2.0],
            r"Expected non-negative sample_weight; got 1 negative value\(s\), the first -0.5 at row 1",
        ),
        ([1.0, np.nan, 2.0], "Input sample_weight contains NaN"),
        ([1.0, np.inf, 2.0], "Input sample_weight contains infinity"),
        ([0.0, 0.0, 0.0], "Expected sample_weight with a positive sum; got all zeros"),
        ([1.0, 2.0], r"Expected sample_weight of shape \(3,\), one per row; got shape \(2,\)"),
        ([[1.0, 2.0, 3.0]], r"Expected sample_weight of shape \(3,\), one per row; got shape \(1, 3\)"),
    ],
)
def test_bad_weights_get_a_clear_error_and_leave_a_fitted_model_as_it_was(weights, message):
    X = np.random.default_rng(0).normal(size=(3, 2))
    with pytest.raises(ValueError, match=message):
        check_weights(weights, 3)
    est = OTFlowDensity(**TINY).fit(np.random.default_rng(1).normal(size=(50, 2)))
    before = est.score_samples(X)
    with pytest.raises(ValueError, match=message):
        est.fit(X, sample_weight=weights)
    assert np.array_equal(est.score_samples(X), before)


def test_fewer_than_two_weighted_rows_are_refused():
    X = np.random.default_rng(0).normal(size=(5, 2))
    with pytest.raises(ValueError, match="Expected at least 2 rows with a positive sample_weight; got 1"):
        OTFlowDensity(**TINY).fit(X, sample_weight=[0, 0, 3, 0, 0])


def test_weighted_moments_are_those_of_repeated_rows():
    rng = np.random.default_rng(0)
    X, counts = rng.normal(size=(40, 3)) * [1.0, 1e3, 1e-3], rng.integers(1, 4, size=40)
    for ours, theirs in zip(
        standardization(X, True, counts.astype(float)), standardization(np.repeat(X, counts, 0), True)
    ):
        assert np.allclose(ours, theirs, rtol=1e-12)
    assert np.allclose(check_weights(2.5, 4), 2.5)  # a number weighs every row alike


def test_zero_weights_drop_rows_and_equal_weights_are_no_weights():
    """Exactly: the same fit, draw by draw, as without those rows or without weights."""
    rng = np.random.default_rng(0)
    X, test = rng.normal(size=(120, 2)), rng.normal(size=(20, 2))
    weights = np.where(rng.random(120) < 0.3, 0.0, 1.0)
    dropped = OTFlowDensity(**TINY).fit(X[weights > 0]).score_samples(test)
    assert np.array_equal(OTFlowDensity(**TINY).fit(X, sample_weight=weights).score_samples(test), dropped)
    plain = OTFlowDensity(**TINY).fit(X).score_samples(test)
    assert np.array_equal(
        OTFlowDensity(**TINY).fit(X, sample_weight=np.full(120, 3.0)).score_samples(test), plain
    )


def skewed_gaussian(n, seed):
    """N(0, 1) in one dimension, and weights 4 on its positive half: the weighted density puts 4/5 of
    its mass there (the unweighted fit is 0.19 nats from it)."""
    x = np.random.default_rng(seed).normal(size=(n, 1))
    return x, np.where(x[:, 0] > 0, 4.0, 1.0)


def test_integer_weights_fit_as_repeated_rows_do():
    """Held out on draws of the weighted density, weights 4 score as rows repeated four times (within
    seed noise), and well above the unweighted fit: a fit that ignored the weights would fail."""
    X, weights = skewed_gaussian(600, seed=0)
    test = np.random.default_rng(1).normal(size=(20000, 1))
    test = test[np.random.default_rng(2).random(20000) < np.where(test[:, 0] > 0, 1.0, 0.25)]
    params = dict(hidden_width=16, n_steps=4, max_iter=150, random_state=0)
    weighted = OTFlowDensity(**params).fit(X, sample_weight=weights).score(test)
    repeated = OTFlowDensity(**params).fit(np.repeat(X, weights.astype(int), 0)).score(test)
    plain = OTFlowDensity(**params).fit(X).score(test)
    assert abs(weighted - repeated) < 0.05
    assert weighted > plain + 0.1


def test_score_takes_weights():
    X, weights = skewed_gaussian(200, seed=0)
    est = OTFlowDensity(**TINY).fit(X)
    log_p = est.score_samples(X)
    assert est.score(X, sample_weight=weights) == pytest.approx(np.average(log_p, weights=weights))


@pytest.fixture
def fits_seen(monkeypatch):
    """The sample_weight each fit receives (its length), however the fit was reached."""
    seen, fit = [], _training.fit

    def spy(est, X, y=None, sample_weight=None):
        seen.append(None if sample_weight is None else len(sample_weight))
        return fit(est, X, y, sample_weight)

    monkeypatch.setattr(_training, "fit", spy)
    return seen


def test_pipeline_and_grid_search_pass_the_weights_on(fits_seen):
    """Without metadata routing (scikit-learn's default), fit parameters go to the estimator, split
    along with the rows."""
    X, weights = skewed_gaussian(60, seed=0)
    make_pipeline(StandardScaler(), OTFlowDensity(**TINY)).fit(X, otflowdensity__sample_weight=weights)
    GridSearchCV(OTFlowDensity(**TINY), {"alpha": [10.0, 100.0]}, cv=KFold(2)).fit(X, sample_weight=weights)
    assert fits_seen == [60, 30, 30, 30, 30, 60]


def test_metadata_routing_routes_the_weights_as_requested(fits_seen, monkeypatch):
    """With routing on, the weights go where the estimator requests them: fit's to its fit, the test
    rows' to its score."""
    X, weights = skewed_gaussian(60, seed=0)
    scored = []
    score = OTFlowDensity.score
    monkeypatch.setattr(
        OTFlowDensity,
        "score",
        lambda self, X, y=None, sample_weight=None: (
            scored.append(len(sample_weight)) or score(self, X, y, sample_weight)
        ),
    )
    with sklearn.config_context(enable_metadata_routing=True):
        est = OTFlowDensity(**TINY).set_fit_request(sample_weight=True).set_score_request(sample_weight=True)
        search = GridSearchCV(est, {"alpha": [10.0, 100.0]}, cv=KFold(2)).fit(X, sample_weight=weights)
        assert fits_seen == [30, 30, 30, 30, 60] and scored == [30, 30, 30, 30]
        assert np.isfinite(search.best_score_)
        with pytest.raises(UnsetMetadataPassedError, match="sample_weight"):
            GridSearchCV(OTFlowDensity(**TINY), {"alpha": [10.0]}, cv=KFold(2)).fit(X, sample_weight=weights)
