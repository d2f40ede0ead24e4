r"""OTFlowConditionalDensity against conditional peers: held-out :math:`\log p(y \mid x)` and fit time.

For each dataset of ``benchmarks/_conditional_data.py`` and each seed, every method is fitted on the
training rows and scored on the test rows (2,000 for the synthetic datasets, 25 % of ``diabetes``). For
each (dataset, seed, method) the script reports

* the held-out mean conditional log-likelihood :math:`\overline{\log q(y_i \mid x_i)}` in ``y``'s own
  units (nats), with its standard error over the test rows (:math:`\mathrm{sd} / \sqrt n`);
* where the true density is known, the true mean :math:`\overline{\log p(y_i \mid x_i)}` on the same rows
  and the gap :math:`\overline{\log p - \log q}` (truth minus model, an estimate of the expected
  conditional KL divergence) with the standard error of the paired differences;
* the fit's wall and CPU seconds, hyperparameter search included, and what the search chose.

Methods (``--methods``):

``gmm``, ``mlp``, ``nsf``
    The peers of ``benchmarks/_conditional_peers.py``: a joint Gaussian mixture conditioned exactly on
    ``x`` (components and ``reg_covar`` chosen on a 20 % validation split, then refitted), a Gaussian
    MLP (mean and Cholesky factor; weight decay chosen on the split, early-stopped) and zuko's
    conditional NSF (early-stopped). Each peer's validation split is ``ShuffleSplit(1, test_size=0.2,
    random_state=seed)`` of the training rows.
``otflow``
    ``OTFlowConditionalDensity(random_state=seed)``: the package's defaults.
``otflow-alpha``
    ``GridSearchCV(OTFlowConditionalDensity(random_state=seed), {"alpha": [10, 30, 100, 300, 1000]},
    cv=ShuffleSplit(1, test_size=0.2, random_state=seed))``: ``alpha`` chosen by the estimator's own
    ``score`` (mean conditional log-likelihood) on the same validation rows as the peers', then refitted
    on all training rows.

The two ``otflow`` methods are skipped, with a note, where ``sklearn_otflow.OTFlowConditionalDensity``
cannot be imported. Torch and the BLAS/OpenMP pools run on one thread. ``--quick`` shrinks everything
(300 training and 200 test rows, tiny grids, 3 epochs or 20 steps) to smoke-test the pipeline in well
under a minute; its figures mean nothing.

Run from the repository root::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_conditional.py --out results.json
    python benchmarks/bench_conditional.py --quick
    python benchmarks/bench_conditional.py --datasets bimodal diabetes --seeds 0 1 2 --methods gmm otflow

``--out`` (``.json``: a header and the records) is rewritten after every fit, so an interrupted run keeps
what it measured; the markdown table is printed at the end (one row per run, and the means over seeds
when there are several).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from _conditional_data import DATASETS, CondData, load  # this directory is on sys.path when run as a script
from _conditional_peers import PEERS, ConditionedGMM, GaussianMLP, ZukoConditionalNSF
from bench_field import versions
from sklearn.model_selection import GridSearchCV, ShuffleSplit
from threadpoolctl import threadpool_limits

METHODS = ("gmm", "mlp", "nsf", "otflow", "otflow-alpha")
ALPHA_GRID, QUICK_ALPHA_GRID = (10.0, 30.0, 100.0, 300.0, 1000.0), (10.0, 100.0)
QUICK_TRAIN, QUICK_TEST = 300, 200


def import_otflow() -> tuple[type | None, str]:
    """``OTFlowConditionalDensity`` and ``""``, or ``None`` and why it cannot be imported."""
    try:
        from sklearn_otflow import OTFlowConditionalDensity
    except Exception as exc:  # not written yet, or the package is mid-edit: the peers still run
        return None, f"{type(exc).__name__}: {exc}"
    return OTFlowConditionalDensity, ""


@dataclass(frozen=True)
class Settings:
    """What every fit of a run shares (from the command line)."""

    quick: bool = False
    otflow_class: type | None = None


def build(method: str, seed: int, settings: Settings):
    """The unfitted estimator (or grid search) of ``method``."""
    quick = settings.quick
    if method == "gmm":
        grid = {"n_components_grid": (1, 2, 3), "reg_covar_grid": (1e-6,)} if quick else {}
        return ConditionedGMM(random_state=seed, **grid)
    if method in ("mlp", "nsf"):
        budget = {"max_epochs": 3, "weight_decay_grid": (0.0,)} if quick else {}
        return PEERS[method](random_state=seed, **budget)
    if settings.otflow_class is None:
        raise RuntimeError("OTFlowConditionalDensity is not importable")
    otflow = settings.otflow_class(random_state=seed)
    if quick and "max_iter" in otflow.get_params():
        otflow.set_params(max_iter=20)
    if method == "otflow":
        return otflow
    if method == "otflow-alpha":
        grid = {"alpha": list(QUICK_ALPHA_GRID if quick else ALPHA_GRID)}
        return GridSearchCV(otflow, grid, cv=ShuffleSplit(1, test_size=0.2, random_state=seed))
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def describe(estimator) -> str:
    """What the fit chose, or how it stopped, in a few words."""
    if isinstance(estimator, GridSearchCV):
        chosen = ", ".join(f"{k}={v:.4g}" for k, v in estimator.best_params_.items())
        inner = describe(estimator.best_estimator_)
        return f"{chosen} ({inner})" if inner else chosen
    if isinstance(estimator, ConditionedGMM):
        return f"{estimator.n_components_} components, reg_covar {estimator.reg_covar_:g}"
    if isinstance(estimator, GaussianMLP | ZukoConditionalNSF):
        chosen = ", ".join(f"{k} {v:g}" for k, v in estimator.best_params_.items())
        best = int(np.argmin(estimator.valid_curve_)) + 1
        return f"{chosen}; {estimator.n_iter_} epochs (best {best}), stopped by {estimator.stopped_by_}"
    parts = []
    if hasattr(estimator, "n_iter_"):
        parts.append(f"{estimator.n_iter_} steps")
    if hasattr(estimator, "stopped_by_"):
        parts.append(f"stopped by {estimator.stopped_by_}")
    return ", ".join(parts)


def standard_error(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def run_one(data: CondData, seed: int, method: str, settings: Settings) -> dict:
    """Fit ``method`` on the training rows of ``data``, score the test rows, time the fit."""
    estimator = build(method, seed, settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start, start_cpu = time.perf_counter(), time.process_time()
        estimator.fit(data.X_train, data.y_train)
        fit_seconds, fit_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    model = getattr(estimator, "best_estimator_", estimator)
    log_q = np.asarray(model.score_samples(data.X_test, data.y_test), dtype=np.float64)
    record = {
        "dataset": data.name,
        "seed": seed,
        "method": method,
        "n_train": len(data.X_train),
        "n_test": len(data.X_test),
        "p": data.X_train.shape[1],
        "k": data.y_train.shape[1],
        "mean_log_likelihood": float(np.mean(log_q)),
        "standard_error": standard_error(log_q),
        "train_mean_log_likelihood": float(np.mean(model.score_samples(data.X_train, data.y_train))),
        "true_mean_log_likelihood": None,
        "true_standard_error": None,
        "gap": None,
        "gap_standard_error": None,
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,
        "details": describe(estimator),
        "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught}),
    }
    if data.log_density is not None:
        log_p = data.log_density(data.X_test, data.y_test)
        record.update(
            true_mean_log_likelihood=float(np.mean(log_p)),
            true_standard_error=standard_error(log_p),
            gap=float(np.mean(log_p - log_q)),
            gap_standard_error=standard_error(log_p - log_q),
        )
    return record


# ------------------------------------------------------------------------------------------------ report


def _pm(value: float | None, error: float | None, spec: str = ".3f") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}} ± {error:{spec}}" if error is not None else f"{value:{spec}}"


def progress(r: dict) -> str:
    """One line per fit, printed as the run goes."""
    line = (
        f"{r['dataset']}, seed {r['seed']}, {r['method']}: "
        f"{_pm(r['mean_log_likelihood'], r['standard_error'])} nats "
        f"(truth {_pm(r['true_mean_log_likelihood'], None)}, gap {_pm(r['gap'], r['gap_standard_error'])}), "
        f"{r['train_mean_log_likelihood']:.3f} on training rows, fit {r['fit_seconds']:.1f} s "
        f"({r['fit_cpu_seconds']:.1f} s CPU); {r['details']}"
    )
    return line + (f"; warnings: {r['warnings']}" if r["warnings"] else "")


def _ordered(records: Sequence[dict]) -> list[dict]:
    datasets, methods = list(DATASETS), list(METHODS)
    return sorted(
        records, key=lambda r: (datasets.index(r["dataset"]), r["seed"], methods.index(r["method"]))
    )


def markdown_table(records: Sequence[dict]) -> str:
    """One row per (dataset, seed, method), a ``true density`` row first where the truth is known."""
    lines = [
        "| dataset | seed | method | held-out mean log p(y\\|x) (nats) | gap to truth (nats) "
        "| training rows' mean | fit s, wall / CPU | chosen / stopped |",
        "|---|---:|---|---:|---:|---:|---:|---|",
    ]
    shown: set[tuple[str, int]] = set()
    for r in _ordered(records):
        key = (r["dataset"], r["seed"])
        if key not in shown and r["true_mean_log_likelihood"] is not None:
            truth = _pm(r["true_mean_log_likelihood"], r["true_standard_error"])
            lines.append(f"| {r['dataset']} | {r['seed']} | true density | {truth} | 0 | | | |")
        shown.add(key)
        cells = [
            r["dataset"],
            str(r["seed"]),
            r["method"],
            _pm(r["mean_log_likelihood"], r["standard_error"]),
            _pm(r["gap"], r["gap_standard_error"]),
            f"{r['train_mean_log_likelihood']:.3f}",
            f"{r['fit_seconds']:.1f} / {r['fit_cpu_seconds']:.1f}",
            r["details"].replace("|", "/"),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _spread(rows: Sequence[dict], key: str) -> str:
    """The mean of ``key`` over ``rows`` ± their standard deviation (the mean alone for one row)."""
    values = [r[key] for r in rows if r[key] is not None]
    if not values:
        return "n/a"
    return _pm(float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else None)


def summary_table(records: Sequence[dict]) -> str:
    """Per (dataset, method), the means over seeds of the score, gap and fit seconds ± their sd."""
    lines = [
        "| dataset | method | seeds | mean log p(y\\|x) | gap to truth | fit s (wall) |",
        "|---|---|---:|---:|---:|---:|",
    ]
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in _ordered(records):
        groups.setdefault((r["dataset"], r["method"]), []).append(r)
    for (dataset, method), rows in sorted(
        groups.items(), key=lambda kv: (list(DATASETS).index(kv[0][0]), list(METHODS).index(kv[0][1]))
    ):
        lines.append(
            f"| {dataset} | {method} | {len(rows)} | {_spread(rows, 'mean_log_likelihood')} "
            f"| {_spread(rows, 'gap')} | {_spread(rows, 'fit_seconds')} |"
        )
    return "\n".join(lines)


def report(records: Sequence[dict]) -> str:
    text = markdown_table(records)
    if len({r["seed"] for r in records}) > 1:
        text += "\n\nMeans over seeds (± their standard deviation):\n\n" + summary_table(records)
    return text


def write(records: Sequence[dict], path: Path, header: str) -> None:
    """``.json``: the header and the records; any other suffix: the header and the markdown tables."""
    if path.suffix == ".json":
        path.write_text(json.dumps({"header": header, "records": list(records)}, indent=1) + "\n")
    else:
        path.write_text(header + "\n\n" + report(records) + "\n")


def header(argv: Sequence[str], otflow_note: str) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    lines = [
        f"- command: `python {shlex.join(argv)}`",
        f"- date: {now}",
        f"- machine: {platform.processor() or platform.machine()}, {os.cpu_count()} logical CPUs, "
        f"{platform.platform()}",
        f"- {versions()}",
        "- threads: 1 (torch and BLAS/OpenMP)",
        "- load average (1, 5, 15 min) at start: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()),
    ]
    if otflow_note:
        lines.append(f"- OTFlowConditionalDensity not importable, its rows skipped: {otflow_note}")
    return "\n".join(lines)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=list(DATASETS), default=list(DATASETS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="data, split and model seeds")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test budget; figures mean nothing")
    parser.add_argument("--out", type=Path, help="write results: .json, or markdown (any other suffix)")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> list[dict]:
    args = parse_args(argv)
    torch.set_num_threads(1)
    otflow_class, otflow_note = None, ""
    if any(m.startswith("otflow") for m in args.methods):
        otflow_class, otflow_note = import_otflow()
    methods = [m for m in args.methods if otflow_class is not None or not m.startswith("otflow")]
    settings = Settings(args.quick, otflow_class)
    head = header([sys.argv[0], *argv], otflow_note)
    print(head, flush=True)
    sizes = {"n_train": QUICK_TRAIN, "n_test": QUICK_TEST} if args.quick else {}
    records: list[dict] = []
    with threadpool_limits(1):
        for seed in args.seeds:
            for name in args.datasets:
                data = load(name, seed, **sizes)
                for method in methods:
                    try:
                        record = run_one(data, seed, method, settings)
                    except Exception as exc:  # one failure must not lose the other measurements
                        print(f"{name}, seed {seed}, {method}: FAILED: {exc!r}", flush=True)
                        continue
                    records.append(record)
                    print(progress(record), flush=True)
                    if args.out:
                        write(records, args.out, head)
    load_end = "- load average (1, 5, 15 min) at end: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    print("\n" + load_end + "\n\n" + report(records))
    if args.out and records:
        write(records, args.out, head + "\n" + load_end)
    return records


if __name__ == "__main__":
    main(sys.argv[1:])
