"""
===========================================================
Two moons: OT-Flow beside KernelDensity and GaussianMixture
===========================================================

This example fits three density estimators to the two-moons dataset: scikit-learn's
:class:`~sklearn.neighbors.KernelDensity` and :class:`~sklearn.mixture.GaussianMixture`, each tuned by
cross-validation, and :class:`~sklearn_otflow.OTFlowDensity` with its default parameters. It compares
their held-out log-likelihoods, draws their densities :math:`\\exp(\\text{score\\_samples})` and their
samples, and then opens OT-Flow up: the paths along which the flow carries each data point to the
standard normal latent space, which only the flow has. With two features a tuned mixture or kernel
density scores better and fits faster (:doc:`/when_to_use`); the flow earns its time on data with
more features, as in the :ref:`digits example <sphx_glr_auto_examples_plot_digits.py>`.
"""

# %%
# Data
# ----
# Two interleaved half circles with a little noise; a quarter of the points is held out.
import copy

import matplotlib.pyplot as plt
import numpy as np
import torch
from sklearn.datasets import make_moons
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.neighbors import KernelDensity

from sklearn_otflow import OTFlowDensity, odeint_rk4

X, y = make_moons(n_samples=2000, noise=0.08, random_state=0)
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, random_state=0
)

# %%
# Three density estimators
# ------------------------
# KernelDensity's bandwidth and GaussianMixture's number of components are chosen by 5-fold
# cross-validated log-likelihood. OTFlowDensity uses its defaults, which standardize the data and
# stop training when the likelihood of a held-out tenth of the training set stops improving.
kde = GridSearchCV(
    KernelDensity(), {"bandwidth": np.logspace(-1.5, -0.5, 11)}
).fit(X_train)
gmm = GridSearchCV(
    GaussianMixture(random_state=0), {"n_components": [4, 8, 16, 32]}
).fit(X_train)
flow = OTFlowDensity(random_state=0).fit(X_train)

models = {
    "KernelDensity": kde.best_estimator_,
    "GaussianMixture": gmm.best_estimator_,
    "OTFlowDensity": flow,
}
print(f"KernelDensity bandwidth: {kde.best_params_['bandwidth']:.3f}")
print(f"GaussianMixture components: {gmm.best_params_['n_components']}")
print(f"OTFlowDensity optimizer steps: {flow.n_iter_}")
print(f"RK4 integration error: {flow.integration_error_:.1e} nats")

# %%
# The three models score the same held-out points. ``score_samples`` is the log-density in the data's
# units for all three, so the means compare directly (``KernelDensity.score`` would be a sum, hence the
# explicit mean).
for name, model in models.items():
    mean_log_likelihood = model.score_samples(X_test).mean()
    print(
        f"{name:>16}: held-out mean log-likelihood {mean_log_likelihood:.3f}"
    )

print(f"OTFlowDensity on its training rows: {flow.score(X_train):.3f}")

# %%
# The flow scores lowest here, and about as low on its own training rows: it is short of training,
# not overfitting. With two features, the default budget of 2,000 optimizer steps leaves it behind
# the tuned mixture, whose many components cover a plane well and fit in a second; more time
# (``max_time``) narrows the gap (:doc:`/benchmarks`). For such data, prefer the mixture. What the flow
# gives that the other two do not is below: a smooth map from the data to a Gaussian latent.
#
# Densities and samples
# ---------------------
# Top row: each model's density on a grid, with the held-out points. Bottom row: as many new points
# drawn from each model as there are held-out points.
xs, ys = np.linspace(-1.6, 2.6, 160), np.linspace(-1.1, 1.6, 110)
grid = np.stack(np.meshgrid(xs, ys), axis=-1).reshape(-1, 2)

fig, axes = plt.subplots(2, 3, figsize=(12, 6), sharex=True, sharey=True)
for (name, model), top, bottom in zip(models.items(), axes[0], axes[1]):
    density = np.exp(model.score_samples(grid)).reshape(len(ys), len(xs))
    top.contourf(xs, ys, density, levels=20, cmap="Blues")
    top.scatter(*X_test.T, s=2, c="k", alpha=0.4)
    top.set_title(name)
    if (
        name == "GaussianMixture"
    ):  # seeded by its own random_state; returns the components too
        samples, _ = model.sample(len(X_test))
    else:
        samples = model.sample(len(X_test), random_state=0)
    bottom.scatter(*samples.T, s=2, c="C3")
    bottom.set_title(f"{name}: samples")
for ax in axes.flat:
    ax.set_aspect("equal")
fig.tight_layout()

# %%
# The transport paths
# -------------------
# OTFlowDensity moves each point along :math:`\dot x = -\nabla_x \Phi(x, t)` from :math:`t = 0` (the
# data, standardized) to :math:`t = 1` (the latent, meant to be standard normal). The potential
# :math:`\Phi` is the trained torch module ``flow.net_.module_.potential``; integrating its velocity with
# :func:`~sklearn_otflow.odeint_rk4` one step at a time keeps the intermediate positions. With the
# evaluation's step count, the last position is exactly what ``transform`` returns.
potential = copy.deepcopy(flow.net_.module_.potential).double()
n_steps = flow.n_steps_eval_  # the evaluation's step count


def velocity(t, state):
    (x,) = state
    grad, _ = potential.grad_and_trace(
        x, t
    )  # the gradient in (x, t); its last column is the time part
    return (-grad[:, :-1],)


rng = np.random.RandomState(0)
shown = rng.choice(len(X_test), size=300, replace=False)
x = torch.as_tensor((X_test[shown] - flow.mean_) / flow.scale_)
path = [x]
with torch.no_grad():
    for k in range(n_steps):
        (x,) = odeint_rk4(
            velocity, (x,), k / n_steps, (k + 1) / n_steps, n_steps=1
        )
        path.append(x)
path = torch.stack(path).numpy()  # (n_steps + 1, n_points, 2)
distance = np.abs(path[-1] - flow.transform(X_test[shown])).max()
print(f"largest distance to transform(): {distance:.1e}")

# %%
# Each grey line is one point's path, from a dot (the data point) to a cross (its latent image); the
# colour is the moon the point came from. The dotted circles have radius 1, 2 and 3, in the latent's
# units: a flow that fits the data perfectly spreads the crosses like draws from the standard normal,
# and the held-out score above measures how far this one is from that. The transport cost in the loss
# pushes the paths towards short, straight lines, which is what optimal transport paths are.
fig, ax = plt.subplots(figsize=(6.5, 6))
ax.plot(path[:, :, 0], path[:, :, 1], color="0.6", linewidth=0.5, zorder=1)
colors = np.array(["C0", "C1"])[y_test[shown]]
ax.scatter(
    *path[0].T, s=8, c=colors, marker="o", label="data (t = 0)", zorder=2
)
ax.scatter(
    *path[-1].T, s=14, c=colors, marker="x", label="latent (t = 1)", zorder=2
)
for radius in (1, 2, 3):
    ax.add_patch(
        plt.Circle(
            (0, 0), radius, fill=False, linestyle=":", color="k", linewidth=0.8
        )
    )
ax.set(
    xlim=(-3.5, 3.5),
    ylim=(-3.5, 3.5),
    aspect="equal",
    title="OT-Flow transport paths",
)
ax.set_xlabel("standardized $x_1$  →  latent $z_1$")
ax.set_ylabel("standardized $x_2$  →  latent $z_2$")
ax.legend(loc="upper right")
plt.show()
