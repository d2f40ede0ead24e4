r"""Held-out log-likelihood against wall time: OTFlowDensity's budgets against zuko's NSF and MAF.

For each dataset (``bench_field.py``'s generators and 80/20 split, ``random_state=seed``):

``otflow``
    ``OTFlowDensity(max_time=B, max_iter=10**6, random_state=seed)`` for each budget ``B`` of
    ``--budgets`` (a fit per budget: the learning rate anneals over ``B``), and the default fit
    (``OTFlowDensity(random_state=seed)``, no time limit) with its own time.
``nsf``, ``maf``
    zuko's flows (``benchmarks/_zuko_density.py``: 5 transformations, hidden layers (128, 128), Adam 1e-3,
    batches of 256, validation on 10 % of the training rows after each epoch) trained once for the
    largest budget, without early stopping (``--zuko-patience`` sets one, in epochs); the best validated
    weights at each smaller budget are kept as the run passes it (with a constant learning rate, what a
    run given that budget would return), and scored.

Each fit runs in a process of its own with one thread (``OMP_NUM_THREADS=1``); ``--jobs 2`` runs two
such processes at a time (on a 2-core machine each then has a core, and the timings are those of a
machine with a second job running). Time is wall-clock seconds from the start of ``fit``; for
``otflow`` the table also gives the time at which training ended (``max_time`` must hold it to
1.05 ``B``) and the whole fit, its final check of the integration error included.

    python benchmarks/bench_time_to_quality.py --out ttq.jsonl                  # everything (about an hour)
    python benchmarks/bench_time_to_quality.py --datasets moons --budgets 30 60 --out moons.jsonl
    python benchmarks/bench_time_to_quality.py --report ttq.jsonl --plot ttq.png  # table and figure

``--out`` gets one JSON line per fit as it finishes, so an interrupted run keeps what it measured;
``--report`` prints a markdown table (held-out mean log-likelihood, nats, higher is better) and draws the
figure: score against seconds, one line per method, one panel per dataset.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DATASETS = ("moons", "8gaussians", "checkerboard", "banana10", "digits")
BUDGETS = (30.0, 60.0, 120.0, 300.0)
ROWS = 10_000


def _split(name: str, seed: int):
    sys.path.insert(0, str(HERE))
    from _datasets import load
    from sklearn.model_selection import train_test_split

    X = load(name, ROWS, seed).X  # digits: all 1,797 images, PCA-15
    return train_test_split(X, test_size=0.2, random_state=seed)


def run_fit(spec: dict) -> list[dict]:
    """One fit, in this process: ``spec`` names the dataset, method, budgets and seed."""
    import torch
    from skorch.callbacks import Callback

    torch.set_num_threads(1)
    X_train, X_test = _split(spec["dataset"], spec["seed"])
    base = dict(dataset=spec["dataset"], method=spec["method"], seed=spec["seed"])
    if spec["method"] == "otflow":
        from sklearn_otflow import OTFlowDensity

        ended = []

        class TrainingEnd(Callback):
            def on_train_end(self, net, **kwargs):
                ended.append(time.perf_counter())

        budget = spec.get("budget")
        params = dict(random_state=spec["seed"], callbacks=[TrainingEnd()])
        if budget is not None:
            params.update(max_time=budget, max_iter=10**6)
        start = time.perf_counter()
        est = OTFlowDensity(**params).fit(X_train)
        fit_seconds = time.perf_counter() - start
        return [
            dict(
                base,
                budget=budget,
                seconds=fit_seconds,
                training_seconds=ended[-1] - start,
                score=est.score(X_test),
                steps=est.n_iter_,
                stopped_by=est.stopped_by_,
                n_steps=est.n_steps_,
            )
        ]
    sys.path.insert(0, str(HERE))
    from _zuko_density import ZukoDensity

    budgets = sorted(spec["budgets"])
    est = ZukoDensity(
        spec["method"],
        max_epochs=100_000,
        n_iter_no_change=spec.get("patience") or 100_000,
        max_seconds=budgets[-1],
        checkpoints=budgets,
        random_state=spec["seed"],
    )
    start = time.perf_counter()
    est.fit(X_train)
    seconds = time.perf_counter() - start
    rows = []
    for budget in budgets:
        est.use_checkpoint(budget)
        rows.append(dict(base, budget=budget, seconds=min(budget, seconds), score=est.score(X_test)))
    rows[-1]["stopped_by"] = est.stopped_by_
    return rows


def _in_subprocess(spec: dict) -> list[dict]:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    out = subprocess.run(
        [sys.executable, __file__, "--one", json.dumps(spec)],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode:
        raise RuntimeError(f"{spec} failed:\n{out.stderr[-3000:]}")
    return [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]


def specs(datasets, budgets, methods, seed, patience=None) -> list[dict]:
    """The fits to run, the longest first (so that two jobs finish together)."""
    todo = []
    for name in datasets:
        for method in methods:
            if method == "otflow":
                todo += [dict(dataset=name, method=method, seed=seed, budget=b) for b in budgets]
                todo.append(dict(dataset=name, method=method, seed=seed, budget=None))
            else:
                todo.append(
                    dict(dataset=name, method=method, seed=seed, budgets=list(budgets), patience=patience)
                )
    return sorted(todo, key=lambda s: -(s.get("budget") or max(budgets)))


def report(records: list[dict]) -> str:
    """A markdown table: a row per (dataset, budget), a column per method."""
    lines = [
        "| dataset | budget (s) | OTFlowDensity | training ended (s) | fit (s) | steps | NSF | MAF |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    by = {(r["dataset"], r["method"], r["budget"]): r for r in records}
    for name in dict.fromkeys(r["dataset"] for r in records):
        budgets = sorted({r["budget"] for r in records if r["dataset"] == name and r["budget"] is not None})
        for budget in [*budgets, None]:
            o = by.get((name, "otflow", budget))
            cells = [name, "default" if budget is None else f"{budget:g}"]
            if o:
                cells += [
                    f"{o['score']:.4f}",
                    f"{o['training_seconds']:.1f}",
                    f"{o['seconds']:.1f}",
                    str(o["steps"]),
                ]
            else:
                cells += [""] * 4
            for method in ("nsf", "maf"):
                r = by.get((name, method, budget))
                cells.append("" if r is None else f"{r['score']:.4f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot(records: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    names = list(dict.fromkeys(r["dataset"] for r in records))
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.2), squeeze=False)
    for ax, name in zip(axes[0], names):
        for method, label, color in [
            ("otflow", "OTFlowDensity", "C0"),
            ("nsf", "NSF", "C1"),
            ("maf", "MAF", "C2"),
        ]:
            rows = sorted(
                (r for r in records if r["dataset"] == name and r["method"] == method and r["budget"]),
                key=lambda r: r["budget"],
            )
            if rows:
                ax.plot(
                    [r["seconds"] for r in rows], [r["score"] for r in rows], "o-", color=color, label=label
                )
            default = [
                r for r in records if r["dataset"] == name and r["method"] == method and not r["budget"]
            ]
            if default:
                ax.plot(default[-1]["seconds"], default[-1]["score"], "*", ms=12, color=color)
        ax.set_xscale("log")
        ax.set_xticks([30, 60, 120, 300], labels=["30", "60", "120", "300"])
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_title(name)
        ax.set_xlabel("wall seconds (one thread)")
    axes[0][0].set_ylabel("held-out mean log-likelihood\n(star: the default fit)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS))
    parser.add_argument("--budgets", nargs="+", type=float, default=list(BUDGETS))
    parser.add_argument("--methods", nargs="+", default=["otflow", "nsf", "maf"])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--jobs", type=int, default=1)
    parser.add_argument("--zuko-patience", type=int, help="early stopping for NSF and MAF, in epochs")
    parser.add_argument("--out", help="JSON lines, appended as fits finish")
    parser.add_argument("--report", nargs="+", help="JSON-lines files to tabulate (no fits)")
    parser.add_argument("--plot", help="with --report: the figure's path")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        for row in run_fit(json.loads(args.one)):
            print(json.dumps(row))
        return
    if args.report:
        records = [json.loads(line) for path in args.report for line in Path(path).read_text().splitlines()]
        print(report(records))
        if args.plot:
            plot(records, args.plot)
        return
    todo = specs(args.datasets, args.budgets, args.methods, args.seed, args.zuko_patience)
    with ThreadPoolExecutor(args.jobs) as pool:
        for rows in pool.map(_in_subprocess, todo):
            for row in rows:
                print(json.dumps(row), flush=True)
                if args.out:
                    with open(args.out, "a") as f:
                        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
