"""The gallery's two moons: OTFlowDensity's default fit over seeds, with its training score beside.

``make_moons(2000, noise=0.08, random_state=0)`` split 75/25 as in ``examples/plot_density_2d.py``.
Prints, per seed, the held-out and training mean log-likelihood, the fit's steps, seconds and the
validation curve (every 200 steps, in the standardized units the fit validates in)::

    OMP_NUM_THREADS=1 python benchmarks/bench_gallery_moons.py --seeds 0 1 2
    OMP_NUM_THREADS=1 python benchmarks/bench_gallery_moons.py --seeds 0 --params batch_size=256
"""

from __future__ import annotations

import argparse
import ast

from sklearn.datasets import make_moons
from sklearn.model_selection import train_test_split

from sklearn_otflow import OTFlowDensity


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    parser.add_argument("--params", nargs="*", default=[], help="OTFlowDensity overrides, NAME=VALUE")
    args = parser.parse_args()
    params = {k: ast.literal_eval(v) for k, v in (item.split("=", 1) for item in args.params)}
    X, _ = make_moons(n_samples=2000, noise=0.08, random_state=0)
    X_train, X_test = train_test_split(X, test_size=0.25, random_state=0)
    for seed in args.seeds:
        flow = OTFlowDensity(random_state=seed, **params).fit(X_train)
        valid = [round(-float(v), 3) for v in flow.history_[:, "valid_nll"]][1::2]
        print(
            f"seed {seed}: held-out {flow.score(X_test):.3f}, training {flow.score(X_train):.3f}, "
            f"{flow.n_iter_} steps ({flow.stopped_by_}), {flow.fit_time_:.1f} s; validation {valid}",
            flush=True,
        )


if __name__ == "__main__":
    main()
