"""Scoring and training beside a competing CPU-bound process: does a busy machine cost only its fair share?

Measures, in this process with torch's default thread count, the wall time of

* ``score_samples`` on 2,000 rows of a fitted default model (make_moons, 8,000 training rows), and
* a short fit (``max_iter=600`` steps on the same rows),

first on a quiet machine, then with one competing CPU-bound process running beside it (a Python loop
started by this script, ``python -c "while True: pass"``), and prints the ratios. On a machine with ``c``
cores and one competitor, a fair share is ``c / (c - 1)`` times the quiet time where the call uses every
core, and 1 where it uses one of them; the package aims at most 2.5 times on 2 cores.

    python benchmarks/bench_contention.py            # the package as installed
    python benchmarks/bench_contention.py --repeat 5
    # an older version, whose budget was in epochs (21 epochs of 29 steps):
    PYTHONPATH=old-checkout python benchmarks/bench_contention.py --params '{"max_epochs": 21}'
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

import torch
from sklearn.datasets import make_moons

from sklearn_otflow import OTFlowDensity


def timed(fn, repeat: int) -> list[float]:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--params", default='{"max_iter": 600}', help="the short fit's budget (JSON)")
    args = parser.parse_args()
    print(
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads by default"
    )
    X, _ = make_moons(10_000, noise=0.05, random_state=0)
    X_train, X_score = X[:8000], X[8000:]
    params = json.loads(args.params)
    model = OTFlowDensity(random_state=0, **params).fit(X_train)
    model.score_samples(X_score)  # warm-up

    def score():
        model.score_samples(X_score)

    def fit():
        OTFlowDensity(random_state=0, **params).fit(X_train)

    results = {}
    for label, competing in (("quiet", False), ("one competing process", True)):
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if competing else None
        try:
            time.sleep(1.0 if competing else 0.0)
            results[label] = {"score": timed(score, args.repeat), "fit": timed(fit, 1)}
        finally:
            if busy is not None:
                busy.kill()
                busy.wait()
        for what, times in results[label].items():
            print(
                f"{label:>22}: {what:<5} median {statistics.median(times):7.2f} s  (runs: "
                + ", ".join(f"{t:.2f}" for t in times)
                + ")"
            )
    for what in ("score", "fit"):
        ratio = statistics.median(results["one competing process"][what]) / statistics.median(
            results["quiet"][what]
        )
        print(f"{what}: {ratio:.2f} times the quiet time with one competing process")


if __name__ == "__main__":
    main()
