r"""How much keeping the best of several initializations (``n_init``) gains, dataset by dataset.

``OTFlowDensity(n_init=n)`` trains each of ``n`` initializations for the first 1/25 of its budget
and then runs the whole fit of the one with the lowest validation NLL after them. Because a trial is the
beginning of the fit its seed would give, the outcome of ``n_init=n`` for any ``n`` and ``k`` can be read
off complete fits of each candidate: this script runs them, one complete default fit per candidate seed
(``random_state=seed``, candidate ``i`` the ``i``-th seed that ``n_init`` draws, all with the validation
split of the first), and records every round's validation NLL and the held-out score. ``--report`` then
gives, for each trial length of ``k`` rounds (of 100 steps), the mean held-out score of the kept fit
over every subset of ``n``
candidates (the seeds ``n_init`` would draw are one such subset, in order: ``--report`` also prints it).

Run from the repository root, one thread per process::

    OMP_NUM_THREADS=1 python benchmarks/bench_n_init.py --datasets moons --candidates 6 --out n.jsonl
    python benchmarks/bench_n_init.py --report n_init.jsonl

The data and split are ``bench_field.py --seed seed``'s. Each finished fit is appended to ``--out`` as
one JSON line, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
from _datasets import GENERATORS, load  # this directory is on sys.path when run as a script
from sklearn.model_selection import train_test_split

from sklearn_otflow import OTFlowDensity, _training

TRIAL_EPOCHS = (5, 10, 15, 25)


def fit_candidate(name: str, seed: int, candidate: int, n_candidates: int) -> dict:
    """The complete default fit of candidate ``candidate`` on ``bench_field.py --seed seed``'s split."""
    X = load(name, 10_000, seed).X
    X_train, X_test = train_test_split(X, test_size=0.2, random_state=seed)
    est = OTFlowDensity(random_state=seed, n_init=n_candidates)
    # the fit of this candidate's seed
    _training._pick_initialization = lambda est, X, seeds, deadline=None: seeds[candidate]
    start = time.process_time()
    est.fit(X_train)
    seconds = time.process_time() - start
    return {
        "dataset": name,
        "seed": seed,
        "candidate": candidate,
        "valid_nll": [float(v) for v in est.history_[:, "valid_nll"]],
        "held_out": float(est.score(X_test)),
        "rounds": len(est.history_),
        "n_steps_": est.n_steps_,
        "cpu_seconds": seconds,
    }


def report(records: list[dict]) -> None:
    groups = defaultdict(dict)
    for r in records:
        groups[r["dataset"], r["seed"]][r["candidate"]] = r
    for (name, seed), fits in sorted(groups.items()):
        ids = sorted(fits)
        scores = {i: fits[i]["held_out"] for i in ids}
        print(f"\n{name}, seed {seed}: candidates {ids}")
        print("  held-out: " + ", ".join(f"{scores[i]:.4f}" for i in ids))
        print("  fit CPU s: " + ", ".join(f"{fits[i]['cpu_seconds']:.0f}" for i in ids))
        for k in TRIAL_EPOCHS:
            nll = {i: fits[i]["valid_nll"][min(k, len(fits[i]["valid_nll"])) - 1] for i in ids}
            line = [f"  k={k:>2}: valid NLL " + ", ".join(f"{nll[i]:.3f}" for i in ids)]
            for n in range(1, len(ids) + 1):
                kept = [scores[min(sub, key=nll.get)] for sub in itertools.combinations(ids, n)]
                first = scores[min(ids[:n], key=nll.get)]
                line.append(f"n={n}: {np.mean(kept):.4f} (first {n}: {first:.4f})")
            print(" | ".join(line))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", choices=tuple(GENERATORS), default=["moons"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--candidates", type=int, default=6)
    parser.add_argument("--only", type=int, nargs="+", help="run only these candidate indices")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--report", type=Path, nargs="+", help="summarize saved runs instead")
    args = parser.parse_args(argv)
    if args.report:
        report([json.loads(line) for path in args.report for line in path.read_text().splitlines()])
        return
    for name in args.datasets:
        for candidate in args.only or range(args.candidates):
            record = fit_candidate(name, args.seed, candidate, args.candidates)
            print(json.dumps({k: v for k, v in record.items() if k != "valid_nll"}), flush=True)
            if args.out:
                with args.out.open("a") as f:
                    f.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
