r"""Sample weights against repeated rows: held-out scores of the defaults, seed by seed.

Data: a two-feature standard normal, and the weight 4 on the rows whose first feature is positive, so
that the weighted density puts 4/5 of its mass on that half (the unweighted density is 0.19 nats from
it). Three fits per seed, each ``OTFlowDensity(random_state=seed)`` with the defaults:

* ``weighted``: ``fit(X, sample_weight=w)``;
* ``repeated``: ``fit`` on the rows repeated as many times as their weights (4,000 rows become 10,000);
* ``plain``: ``fit(X)``, which ignores the weights.

Each is scored on 20,000 draws of the weighted density (held out), next to the true density's mean
log-likelihood on them. ``weighted`` and ``repeated`` should agree within the seeds' spread, and both
beat ``plain`` by about 0.19 nats.

Run from the repository root (one thread)::

    OMP_NUM_THREADS=1 python benchmarks/bench_weights.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import datetime
import time

import numpy as np
import torch
from scipy.stats import norm

from sklearn_otflow import OTFlowDensity


def draws(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` rows of N(0, I_2) and their weights (4 where the first feature is positive, else 1)."""
    X = np.random.default_rng(seed).normal(size=(n, 2))
    return X, np.where(X[:, 0] > 0, 4.0, 1.0)


def weighted_draws(n: int, seed: int) -> np.ndarray:
    """Draws of the weighted density, by rejection from N(0, I_2)."""
    X, w = draws(5 * n, seed)
    return X[np.random.default_rng(seed + 1).random(len(X)) < w / 4.0][:n]


def true_log_density(X: np.ndarray) -> np.ndarray:
    """log of 2/5 N(x; 0, I) on the negative half, 8/5 N(x; 0, I) on the positive half."""
    return norm.logpdf(X).sum(1) + np.log(np.where(X[:, 0] > 0, 1.6, 0.4))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--rows", type=int, default=4000)
    args = parser.parse_args()
    torch.set_num_threads(1)
    print(f"date {datetime.date.today()}, torch threads 1, {args.rows} rows, defaults")
    test = weighted_draws(20000, seed=10_000)
    print(f"truth: {true_log_density(test).mean():.4f} held out")
    print("| seed | weighted | repeated | plain | fit s (weighted / repeated / plain) |")
    print("|---:|---:|---:|---:|---:|")
    for seed in args.seeds:
        X, w = draws(args.rows, seed)
        # weighted, repeated, plain
        data = [(X, w), (np.repeat(X, w.astype(int), 0), None), (X, None)]
        scores, times = [], []
        for rows, weights in data:
            start = time.perf_counter()
            est = OTFlowDensity(random_state=seed).fit(rows, sample_weight=weights)
            times.append(time.perf_counter() - start)
            scores.append(est.score(test))
        row = " | ".join(f"{s:.4f}" for s in scores)
        print(f"| {seed} | {row} | {' / '.join(f'{t:.0f}' for t in times)} |", flush=True)


if __name__ == "__main__":
    main()
