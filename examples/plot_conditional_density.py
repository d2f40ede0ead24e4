"""
=========================================================
Conditional densities: noise that grows, modes that split
=========================================================

:class:`~sklearn_otflow.OTFlowConditionalDensity` models :math:`p(y \\mid x)`: the whole distribution of
a target given its features, not only its mean. This example fits it to two one-dimensional problems
whose conditional density is known, draws that density and the fitted one as images over
:math:`(x, y)`, and scores both on new rows:

* heteroscedastic noise, :math:`y \\mid x \\sim \\mathcal N(\\sin 3x,\\ (0.05 + 0.3|x|)^2)`: a regression
  whose spread grows away from 0, which a model of the mean alone, or a Gaussian of constant variance,
  cannot describe;
* two branches, :math:`y = \\pm\\sqrt x + \\varepsilon`: the conditional mean, 0, is where no data lie,
  and only a density shows the two modes.
"""

# %%
# The data
# --------
import matplotlib.pyplot as plt
import numpy as np
from scipy.stats import norm

from sklearn_otflow import OTFlowConditionalDensity

rng = np.random.default_rng(0)


def heteroscedastic(n):
    x = rng.uniform(-1.5, 1.5, n)
    return x[:, None], np.sin(3 * x) + (0.05 + 0.3 * np.abs(x)) * rng.normal(
        size=n
    )


def heteroscedastic_log_density(x, y):
    return norm.logpdf(y, np.sin(3 * x), 0.05 + 0.3 * np.abs(x))


def branches(n):
    x = rng.uniform(0.1, 1.5, n)
    return x[:, None], rng.choice([-1.0, 1.0], n) * np.sqrt(
        x
    ) + 0.1 * rng.normal(size=n)


def branches_log_density(x, y):
    return np.logaddexp(
        norm.logpdf(y, np.sqrt(x), 0.1), norm.logpdf(y, -np.sqrt(x), 0.1)
    ) - np.log(2)


problems = {
    "heteroscedastic": (
        heteroscedastic,
        heteroscedastic_log_density,
        (-1.5, 1.5),
        (-2.0, 2.0),
    ),
    "two branches": (branches, branches_log_density, (0.1, 1.5), (-1.7, 1.7)),
}

# %%
# Fitting
# -------
# Each flow is fitted to 2,000 rows and scored on 2,000 new ones, against the true conditional
# density of those rows. The defaults fit for 2,000 optimizer steps, a minute or so each; to keep this
# page quick to build, each fit here takes 500 (``max_iter=500``), which costs a few hundredths of a
# nat. The benchmarks page gives full fits against other conditional models.
fitted = {}
for name, (draw, log_density, _, _) in problems.items():
    X, y = draw(2000)
    X_test, y_test = draw(2000)
    est = OTFlowConditionalDensity(max_iter=500, random_state=0).fit(X, y)
    truth = log_density(X_test[:, 0], y_test).mean()
    print(
        f"{name}: held-out mean log p(y | x) {est.score(X_test, y_test):.3f}, "
        f"truth {truth:.3f}; {est.n_iter_} steps in {est.fit_time_:.0f} s"
    )
    fitted[name] = (est, X, y)

# %%
# The conditional densities
# -------------------------
# Each column of an image is the density of :math:`y` at one :math:`x`: the truth on the left, the
# flow on the right, with a few of the training rows.
fig, axes = plt.subplots(
    2, 2, figsize=(9, 7), sharex="row", sharey="row", layout="constrained"
)
for row, (name, (_, log_density, x_range, y_range)) in zip(
    axes, problems.items()
):
    est, X, y = fitted[name]
    xs, ys = np.linspace(*x_range, 150), np.linspace(*y_range, 200)
    gx, gy = np.meshgrid(xs, ys)
    true = np.exp(log_density(gx, gy))
    flow = np.exp(est.score_samples(gx.reshape(-1, 1), gy.ravel())).reshape(
        gx.shape
    )
    top = np.quantile(
        true, 0.99
    )  # the narrowest columns would darken the rest
    for ax, density, title in zip(row, (true, flow), ("true", "OT-Flow")):
        ax.pcolormesh(xs, ys, density, vmin=0, vmax=top, shading="auto")
        ax.scatter(X[:300, 0], y[:300], s=2, c="white", alpha=0.5)
        ax.set(title=f"{name}: {title} p(y | x)", xlabel="x", ylim=y_range)
    row[0].set_ylabel("y")
plt.show()

# %%
# Means and draws
# ---------------
# ``predict`` is the conditional mean, ``sample`` draws :math:`y` given each row of ``X``. For the two
# branches the mean lies between them, where the density is nearly zero: the draws show the modes.
est, _, _ = fitted["two branches"]
X_new = np.array([[0.25], [1.0]])
draws = est.sample(X_new, n_samples=2000, random_state=0)
for x, mean, d in zip(X_new[:, 0], est.predict(X_new), draws):
    share = np.mean(d > 0)
    print(
        f"x = {x}: predicted mean {mean:+.3f}; draws above 0: {share:.0%}, modes near ±{np.sqrt(x):.2f}"
    )

fig, ax = plt.subplots(figsize=(6, 3), layout="constrained")
for x, d in zip(X_new[:, 0], draws):
    ax.hist(
        d, bins=80, density=True, histtype="step", label=f"draws given x = {x}"
    )
ax.set_xlabel("y")
ax.legend()
plt.show()
