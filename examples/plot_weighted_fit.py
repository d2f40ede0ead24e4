"""
=======================================================
A weighted fit: the density of a target from a proposal
=======================================================

Sample weights let a density estimator fit a distribution other than the one the rows were drawn
from. Here the rows come from a broad Gaussian *proposal* :math:`q`, while the density of interest is
a *target* :math:`p`, two Gaussian clusters; each row gets the importance weight
:math:`w_i = p(x_i) / q(x_i)`. :meth:`OTFlowDensity.fit(X, sample_weight=w)
<sklearn_otflow.OTFlowDensity.fit>` then fits :math:`p`, as if the rows had been repeated in proportion
to their weights: the standardization uses weighted moments, the minibatches are drawn in proportion
to the weights, and validation and early stopping use weighted means. The same applies to survey
weights or to the weights of reweighted simulations.
"""

# %%
# Rows from the proposal, weights for the target
# ----------------------------------------------
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import multivariate_normal

from sklearn_otflow import OTFlowDensity

rng = np.random.default_rng(0)
proposal = multivariate_normal(mean=[0, 0], cov=2.0 * np.eye(2))
centres = np.array([[-1.5, 0.5], [1.5, -0.5]])


def target_log_density(X):
    parts = [
        multivariate_normal(c, 0.3 * np.eye(2)).logpdf(X) for c in centres
    ]
    return np.logaddexp(*parts) - np.log(2)


def target_draws(n):
    return centres[rng.integers(0, 2, n)] + np.sqrt(0.3) * rng.normal(
        size=(n, 2)
    )


X = proposal.rvs(4000, random_state=1)
weights = np.exp(target_log_density(X) - proposal.logpdf(X))
ess = weights.sum() ** 2 / (weights**2).sum()
print(f"{len(X)} rows from the proposal; effective sample size {ess:.0f}")

# %%
# Two fits
# --------
# One flow with the weights, one without (which fits the proposal). To keep this page quick to build,
# each fit takes 400 optimizer steps (``max_iter=400``) instead of the default 2,000. Both are scored
# on 2,000 new draws of the target.
X_test = target_draws(2000)
truth = target_log_density(X_test).mean()
weighted = OTFlowDensity(max_iter=400, random_state=0).fit(
    X, sample_weight=weights
)
unweighted = OTFlowDensity(max_iter=400, random_state=0).fit(X)
print(f"held-out mean log p on target draws: truth {truth:.3f}")
print(f"  weighted fit   {weighted.score(X_test):.3f}")
print(
    f"  unweighted fit {unweighted.score(X_test):.3f} (it fits the proposal)"
)

# %%
# The densities
# -------------
# The weighted flow finds the two clusters; the rows themselves, shaded by weight, show how few of
# them carry most of the target's mass.
grid = np.linspace(-4, 4, 120)
gx, gy = np.meshgrid(grid, grid)
cells = np.c_[gx.ravel(), gy.ravel()]
panels = {
    "rows, shaded by weight": None,
    "target p": np.exp(target_log_density(cells)),
    "weighted fit": np.exp(weighted.score_samples(cells)),
    "unweighted fit": np.exp(unweighted.score_samples(cells)),
}
fig, axes = plt.subplots(
    1, 4, figsize=(13, 3.4), sharey=True, layout="constrained"
)
for ax, (title, density) in zip(axes, panels.items()):
    if density is None:
        order = np.argsort(weights)
        ax.scatter(*X[order].T, c=weights[order], s=3)
        ax.set(xlim=(-4, 4), ylim=(-4, 4))
    else:
        ax.contourf(
            gx, gy, density.reshape(gx.shape), levels=12, cmap="viridis"
        )
    ax.set_title(title)
    ax.set_aspect("equal")
plt.show()
