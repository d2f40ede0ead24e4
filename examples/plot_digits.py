"""
===========================================
New handwritten digits from a density model
===========================================

scikit-learn's example *Kernel Density Estimation* learns a generative model of the handwritten digits:
it projects the 8x8 images onto their first 15 principal components, fits a
:class:`~sklearn.neighbors.KernelDensity` there with the bandwidth chosen by
:class:`~sklearn.model_selection.GridSearchCV`, and draws 44 new digits. This example does the same with
:class:`~sklearn_otflow.OTFlowDensity`, choosing α by the same cross-validated search, and shows both
models' digits next to real ones.
"""

# %%
# Project the digits onto 15 dimensions
# -------------------------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KernelDensity

from sklearn_otflow import OTFlowDensity

digits = load_digits()
pca = PCA(n_components=15, random_state=0)
data = pca.fit_transform(digits.data)
print(f"{data.shape[0]} digits, {data.shape[1]} dimensions")

# %%
# Two cross-validated searches
# ----------------------------
# Both searches use the same three folds and rank candidates by the same number: the mean log-likelihood
# of the held-out digits. (``KernelDensity.score`` sums over samples, so its search gets an explicit
# scorer; ``OTFlowDensity.score`` already is that mean.)
cv = KFold(n_splits=3, shuffle=True, random_state=0)


def mean_log_likelihood(estimator, X, y=None):
    return estimator.score_samples(X).mean()


kde_search = GridSearchCV(
    KernelDensity(),
    {"bandwidth": np.logspace(-1, 1, 20)},
    cv=cv,
    scoring=mean_log_likelihood,
).fit(data)
print(f"KernelDensity: bandwidth {kde_search.best_params_['bandwidth']:.2f}")

# %%
# For OT-Flow the grid is over α, the weight of the likelihood against the transport cost. To keep this
# page quick to build, training is short: 4 RK4 steps, 300 optimizer steps, with a larger learning rate
# than the default. ``integration_error_`` checks afterwards that 4 steps resolve the fitted flow.
flow_search = GridSearchCV(
    OTFlowDensity(n_steps=4, max_iter=300, learning_rate=0.1, random_state=0),
    {"alpha": [100.0, 1000.0, 10000.0]},
    cv=cv,
).fit(data)
for alpha, score in zip(
    flow_search.cv_results_["param_alpha"],
    flow_search.cv_results_["mean_test_score"],
):
    print(f"OTFlowDensity: alpha {alpha:5.0f}, held-out {score:.2f}")
flow = flow_search.best_estimator_
print(f"best alpha: {flow.alpha:.0f}")
print(f"RK4 integration error: {flow.integration_error_:.1e} nats")

# %%
# The two models, side by side: mean held-out log-likelihood per digit, in the 15 PCA dimensions.
print(f"KernelDensity: {kde_search.best_score_:.2f}")
print(f"OTFlowDensity: {flow_search.best_score_:.2f}")

# %%
# 44 new digits from each model
# -----------------------------
# Each model samples 44 points in the PCA space; ``pca.inverse_transform`` turns them back into images.
real = digits.data[:44]
new_kde = pca.inverse_transform(
    kde_search.best_estimator_.sample(44, random_state=0)
)
new_flow = pca.inverse_transform(flow.sample(44, random_state=0))

panels = {
    "A selection of the input digits": real,
    '"New" digits drawn from the kernel density model': new_kde,
    '"New" digits drawn from the OT-Flow model': new_flow,
}
fig = plt.figure(figsize=(8, 11))
for row, (title, images) in zip(fig.subfigures(3, 1), panels.items()):
    axes = row.subplots(4, 11, subplot_kw=dict(xticks=[], yticks=[]))
    for ax, image in zip(axes.flat, images):
        ax.imshow(
            image.reshape(8, 8),
            cmap="binary",
            vmin=0,
            vmax=16,
            interpolation="nearest",
        )
    row.suptitle(title)
plt.show()
