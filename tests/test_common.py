"""scikit-learn's API contract, every check, on a tiny configuration."""

from sklearn.utils.estimator_checks import parametrize_with_checks

from sklearn_otflow import OTFlowDensity


def tiny(**kwargs) -> OTFlowDensity:
    params = dict(hidden_width=4, n_steps=2, max_iter=10, batch_size=32, random_state=0)
    return OTFlowDensity(**{**params, **kwargs})


@parametrize_with_checks([tiny(), tiny(early_stopping=False, standardize=False)])
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)
