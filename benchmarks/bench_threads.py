"""GridSearchCV over OTFlowDensity with ``n_jobs=1`` and ``n_jobs=2``: is parallel search ever slower?

Runs the same small search (make_moons, 2,000 rows, alpha in {10, 30, 100}, 3-fold, 300 steps) with
``n_jobs=1`` (one process, torch's default threads), ``n_jobs=2`` on joblib's default loky backend (two
worker processes, which joblib starts with ``OMP_NUM_THREADS`` set to their share of the cores), and
``n_jobs=2`` on the threading backend (two threads of one process, where each fit scopes torch's threads to
its share). Prints the wall time of each and checks that the three searches agree.

    python benchmarks/bench_threads.py
"""

from __future__ import annotations

import os
import platform
import time

import joblib
import numpy as np
import torch
from sklearn.datasets import make_moons
from sklearn.model_selection import GridSearchCV, KFold

from sklearn_otflow import OTFlowDensity


def search(n_jobs: int, backend: str) -> tuple[float, np.ndarray]:
    X, _ = make_moons(2000, noise=0.05, random_state=0)
    grid = GridSearchCV(
        OTFlowDensity(max_iter=300, random_state=0),
        {"alpha": [10.0, 30.0, 100.0]},
        cv=KFold(3, shuffle=True, random_state=0),
        n_jobs=n_jobs,
    )
    start = time.perf_counter()
    with joblib.parallel_backend(backend):
        grid.fit(X)
    return time.perf_counter() - start, grid.cv_results_["mean_test_score"]


def main() -> None:
    print(
        f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch "
        f"{torch.__version__} ({torch.get_num_threads()} threads), joblib {joblib.__version__}"
    )
    results = {}
    for n_jobs, backend in [(1, "loky"), (2, "loky"), (2, "threading")]:
        seconds, scores = search(n_jobs, backend)
        results[n_jobs, backend] = scores
        print(f"n_jobs={n_jobs} ({backend}): {seconds:.1f} s, mean test scores {np.round(scores, 4)}")
    reference = results[1, "loky"]
    for key, scores in results.items():
        print(f"{key}: max |score - n_jobs=1 score| = {np.abs(scores - reference).max():.2e}")


if __name__ == "__main__":
    main()
