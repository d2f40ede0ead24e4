"""The default fit's time and held-out score as the rows grow: the budget must not grow with them.

Fits ``OTFlowDensity(random_state=seed)`` on the 80 % training split of ``make_moons(n, noise=0.05,
random_state=0)`` and scores the same 2,000 held-out rows at every ``n`` (the test split of the
10,000-row set, as in the README demo), one process per size, one thread; prints a JSON line per fit.

    OMP_NUM_THREADS=1 python benchmarks/bench_sizes.py --rows 10000 100000 1000000
    OMP_NUM_THREADS=1 python benchmarks/bench_sizes.py --rows 100000 --seed 1
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time


def one(rows: int, seed: int) -> dict:
    """One fit at ``rows`` rows (80 % of them for training), in this process."""
    from sklearn.datasets import make_moons
    from sklearn.model_selection import train_test_split

    from sklearn_otflow import OTFlowDensity

    X_train, _ = train_test_split(
        make_moons(rows, noise=0.05, random_state=0)[0], test_size=0.2, random_state=0
    )
    _, X_test = train_test_split(
        make_moons(10_000, noise=0.05, random_state=0)[0], test_size=0.2, random_state=0
    )
    wall, cpu = time.perf_counter(), time.process_time()
    est = OTFlowDensity(random_state=seed).fit(X_train)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return dict(
        rows=len(X_train),
        seed=seed,
        wall=round(wall, 1),
        cpu=round(cpu, 1),
        test=round(est.score(X_test), 4),
        steps=est.n_iter_,
        stopped_by=est.stopped_by_,
    )


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", nargs="+", type=int, default=[10_000, 100_000, 1_000_000])
    parser.add_argument("--seed", type=int, default=0, help="random_state of the fits, default 0")
    parser.add_argument("--one", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one is not None:
        print(json.dumps(one(args.one, args.seed)), flush=True)
        return
    for rows in args.rows:  # a process per size: no size inherits another's memory or warm caches
        subprocess.run([sys.executable, __file__, "--one", str(rows), "--seed", str(args.seed)], check=True)


if __name__ == "__main__":
    main()
