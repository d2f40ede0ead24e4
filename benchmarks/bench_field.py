r"""OTFlowDensity against the field: held-out log-likelihood and speed on the same seeded splits.

Every method is fitted on the same 80 % of each dataset (``train_test_split(test_size=0.2,
random_state=seed)``) and scored on the other 20 %. For each (dataset, method) the script reports

* the held-out mean log-likelihood in the data's own units, with its standard error
  (:math:`\mathrm{sd}(\log q(x_i)) / \sqrt{n}`);
* where the true density :math:`p` is known (``benchmarks/_datasets.py``), the gap
  :math:`\overline{\log p(x_i) - \log q(x_i)}` (an estimate of :math:`\mathrm{KL}(p\,\|\,q)`) with the
  standard error of the paired differences, and a ``true density`` row: the same mean of :math:`\log p`;
* the mean log-likelihood of the training rows, for the model and the truth: a model far above its
  held-out score overfits, one that scores both alike and below the truth is biased;
* the fit's wall time and CPU time of the process (grid searches included; on one thread the CPU time is
  what the fit costs on a core of its own, the wall time also counts what other processes took), and the
  rows per second (wall) of ``score_samples`` on the test rows and of ``sample`` (as many rows as the
  test set).

Methods (``--methods``):

``kde``
    ``GridSearchCV(KernelDensity(), bandwidth)``, 5-fold, on the raw data; the bandwidth grid is 31
    log-spaced values from :math:`10^{-2.5}` to :math:`10^{0.5}` times the median feature standard
    deviation of the training rows.
``gmm``
    ``GridSearchCV(GaussianMixture(covariance_type="full"), n_components)``, 5-fold: 1..30 components on
    2-D data; 1-8, 10, 12, 15, 20, 25, 30 above.
``maf``, ``nsf``, ``cnf``
    zuko's flows (``benchmarks/_zuko_density.py``: standardized inputs, Adam 1e-3, batches of 256,
    early stopping on 10 % of the training rows with patience 20, at most 300 epochs and
    ``--zuko-seconds`` of CPU time for training, 300 by default). MAF and NSF: 5 transformations with
    hidden layers (128, 128); CNF: zuko's defaults (hidden layers (64, 64), exact divergence, atol 1e-6,
    rtol 1e-5).
``otflow``
    ``OTFlowDensity(random_state=seed)``: the package's defaults, whatever they are at the time of the run
    (they are printed in the header).
``otflow-alpha``
    ``GridSearchCV(OTFlowDensity(random_state=seed), {"alpha": default * [0.25, 1, 4]})`` with one
    ``ShuffleSplit`` holdout of 20 % of the training rows (``cv=ShuffleSplit(1, test_size=0.2)``), so three
    fits on 80 % of the training rows and one refit on all of them.

Every grid search ranks candidates by held-out mean log-likelihood. ``--quick`` shrinks everything
(600 rows per dataset, tiny grids, 2 epochs or 20 steps) to smoke-test the pipeline; its figures mean nothing.

Run from the repository root, one thread::

    OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 python benchmarks/bench_field.py --out results.json
    python benchmarks/bench_field.py --quick
    python benchmarks/bench_field.py --datasets moons gmm10 --methods kde gmm otflow --out moons.md
    python benchmarks/bench_field.py --from-json a.json b.json --out table.md   # merge saved runs

The loop runs method by method (all datasets for the first method, then the next), so that the fast
peers finish first; ``--out`` is rewritten after every fit, so an interrupted run keeps what it measured.
"""

from __future__ import annotations

import argparse
import ast
import csv
import datetime
import inspect
import json
import os
import platform
import shlex
import sys
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sklearn
import torch
from _datasets import GENERATORS, load  # this directory is on sys.path when run as a script
from bench_step import cpu_model
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import GridSearchCV, ShuffleSplit, train_test_split
from sklearn.neighbors import KernelDensity
from threadpoolctl import threadpool_limits

from sklearn_otflow import OTFlowDensity

METHODS = ("kde", "gmm", "maf", "nsf", "cnf", "otflow", "otflow-alpha")
DATASETS = tuple(GENERATORS)
ALPHA_FACTORS = (0.25, 1.0, 4.0)
N_SAMPLES, QUICK_SAMPLES = 10_000, 600


def mean_log_likelihood(estimator, X, y=None) -> float:
    """The one model-selection score of every grid search: held-out mean log-likelihood."""
    return float(np.mean(estimator.score_samples(X)))


@dataclass(frozen=True)
class Settings:
    """What every fit of a run shares (from the command line)."""

    seed: int = 0
    quick: bool = False
    zuko_seconds: float = 300.0
    otflow_params: dict = field(default_factory=dict)  # overrides of OTFlowDensity's defaults


def label(method: str, settings: Settings) -> str:
    """The method's name in the results, with the OTFlowDensity overrides if any."""
    overrides = ", ".join(f"{k}={v}" for k, v in settings.otflow_params.items())
    return f"{method} [{overrides}]" if overrides and method.startswith("otflow") else method


def build(method: str, X_train: np.ndarray, settings: Settings):
    """The unfitted estimator (or grid search) of ``method`` for these training rows."""
    d, seed, quick = X_train.shape[1], settings.seed, settings.quick
    folds = 2 if quick else 5
    if method == "kde":
        scale = float(np.median(X_train.std(0)))
        grid = scale * np.logspace(-2.5, 0.5, 5 if quick else 31)
        return GridSearchCV(KernelDensity(), {"bandwidth": grid}, scoring=mean_log_likelihood, cv=folds)
    if method == "gmm":
        components = list(range(1, 31)) if d == 2 else [*range(1, 9), 10, 12, 15, 20, 25, 30]
        gmm = GaussianMixture(covariance_type="full", random_state=seed)
        grid = {"n_components": [1, 2, 4] if quick else components}
        return GridSearchCV(gmm, grid, scoring=mean_log_likelihood, cv=folds)
    if method in ("maf", "nsf", "cnf"):
        from _zuko_density import ZukoDensity

        epochs = {"max_epochs": 2} if quick else {}
        return ZukoDensity(method, random_state=seed, max_seconds=settings.zuko_seconds, **epochs)
    otflow = OTFlowDensity(random_state=seed).set_params(**settings.otflow_params)
    if quick:
        otflow.set_params(max_iter=20)
    if method == "otflow":
        return otflow
    if method == "otflow-alpha":
        grid = {"alpha": [otflow.alpha * f for f in ALPHA_FACTORS]}
        cv = ShuffleSplit(n_splits=1, test_size=0.2, random_state=seed)
        return GridSearchCV(otflow, grid, scoring=mean_log_likelihood, cv=cv)
    raise ValueError(f"unknown method {method!r}; expected one of {METHODS}")


def describe(estimator) -> str:
    """What the fit chose or how it stopped, in a few words."""
    if isinstance(estimator, GridSearchCV):
        chosen = ", ".join(f"{k}={v:.4g}" for k, v in estimator.best_params_.items())
        inner = describe(estimator.best_estimator_)
        return f"{chosen} ({inner})" if inner else chosen
    if isinstance(estimator, OTFlowDensity):
        text = f"{estimator.n_iter_} steps, stopped by {estimator.stopped_by_}"
        if estimator.early_stopping:
            best = int(np.argmin(estimator.history_[:, "valid_nll"]))
            text += f", best at step {estimator.history_[best, 'iter']}"
        if estimator.n_steps_ != estimator.n_steps:
            text += f", training steps {estimator.n_steps} -> {estimator.n_steps_}"
        return text + f", integration error {estimator.integration_error_:.3g}"
    if hasattr(estimator, "stopped_by_"):
        return f"{estimator.n_iter_} epochs, stopped by {estimator.stopped_by_}"
    return ""


def draw(model, n: int, seed: int) -> np.ndarray:
    """``n`` samples; GaussianMixture seeds ``sample`` with its own ``random_state`` and adds labels."""
    if "random_state" in inspect.signature(model.sample).parameters:
        return model.sample(n, random_state=seed)
    return model.sample(n)[0]


def standard_error(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1) / np.sqrt(len(values)))


def run_one(dataset, method: str, settings: Settings) -> dict:
    """Fit ``method`` on the 80 % split of ``dataset``, score the 20 %, time it all."""
    seed = settings.seed
    X_train, X_test = train_test_split(dataset.X, test_size=0.2, random_state=seed)
    estimator = build(method, X_train, settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start, start_cpu = time.perf_counter(), time.process_time()
        estimator.fit(X_train)
        fit_seconds, fit_cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    model = getattr(estimator, "best_estimator_", estimator)
    start = time.perf_counter()
    log_q = model.score_samples(X_test)
    score_seconds = time.perf_counter() - start
    start = time.perf_counter()
    samples = draw(model, len(X_test), seed)
    sample_seconds = time.perf_counter() - start
    # the same score on the rows it was fitted on: far above the held-out score is overfitting
    train_score = float(np.mean(model.score_samples(X_train)))
    record = {
        "dataset": dataset.name,
        "method": label(method, settings),
        "n_train": len(X_train),
        "n_test": len(X_test),
        "d": X_train.shape[1],
        "mean_log_likelihood": float(np.mean(log_q)),
        "standard_error": standard_error(log_q),
        "train_mean_log_likelihood": train_score,
        "true_mean_log_likelihood": None,
        "true_train_mean_log_likelihood": None,
        "true_standard_error": None,
        "gap": None,
        "gap_standard_error": None,
        "fit_seconds": fit_seconds,
        "fit_cpu_seconds": fit_cpu_seconds,
        "score_rows_per_second": len(X_test) / score_seconds,
        "sample_rows_per_second": len(X_test) / sample_seconds,
        "samples_finite": bool(np.isfinite(samples).all()),
        "details": describe(estimator),
        "warnings": sorted({f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught}),
    }
    if dataset.log_density is not None:
        log_p = dataset.log_density(X_test)
        record.update(
            true_mean_log_likelihood=float(np.mean(log_p)),
            true_train_mean_log_likelihood=float(np.mean(dataset.log_density(X_train))),
            true_standard_error=standard_error(log_p),
            gap=float(np.mean(log_p - log_q)),
            gap_standard_error=standard_error(log_p - log_q),
        )
    return record


# ------------------------------------------------------------------------------------------------ report


def _pm(value, error, spec=".3f") -> str:
    if value is None:
        return "n/a"
    return f"{value:{spec}} ± {error:{spec}}" if error is not None else f"{value:{spec}}"


def seconds(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.0f}"


def progress(r: dict) -> str:
    line = (
        f"{r['dataset']}, {r['method']}: {_pm(r['mean_log_likelihood'], r['standard_error'])} nats, "
        f"gap {_pm(r['gap'], r['gap_standard_error'])}, {_train(r)} on training rows, "
        f"fit {r['fit_seconds']:.1f} s "
        f"({r['fit_cpu_seconds']:.1f} s CPU), {r['details']}"
    )
    return line + (f"; warnings: {r['warnings']}" if r["warnings"] else "")


def _train(r: dict, key: str = "train_mean_log_likelihood") -> str:
    """The training rows' mean log-likelihood (runs saved before it was recorded: n/a)."""
    return _pm(r.get(key), None)


def markdown_table(records: Sequence[dict]) -> str:
    """One row per (dataset, method), datasets in the registry's order, a ``true density`` row first."""
    head = (
        "| dataset | method | held-out mean log-lik (nats) | gap to truth (nats) | training rows "
        "| fit s, wall / CPU | score rows/s | sample rows/s | chosen / stopped |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|---|"]
    order = {name: i for i, name in enumerate(METHODS)}
    for name in DATASETS:
        rows = [r for r in records if r["dataset"] == name]
        rows.sort(key=lambda r: order.get(r["method"].split(" ")[0], len(order)))
        if not rows:
            continue
        truth = next((r for r in rows if r["true_mean_log_likelihood"] is not None), None)
        if truth is not None:
            mean = _pm(truth["true_mean_log_likelihood"], truth["true_standard_error"])
            train = _train(truth, "true_train_mean_log_likelihood")
            lines.append(f"| {name} | true density | {mean} | 0 | {train} | | | | |")
        for r in rows:
            cells = [
                name,
                r["method"],
                _pm(r["mean_log_likelihood"], r["standard_error"]),
                _pm(r["gap"], r["gap_standard_error"]),
                _train(r),
                f"{seconds(r['fit_seconds'])} / {seconds(r['fit_cpu_seconds'])}",
                f"{r['score_rows_per_second']:,.0f}",
                f"{r['sample_rows_per_second']:,.0f}",
                r["details"] + ("" if r["samples_finite"] else "; non-finite samples"),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write(records: Sequence[dict], path: Path, header: str) -> None:
    """``.json``: header and records; ``.csv``: the records; anything else: markdown header and table."""
    if path.suffix == ".json":
        path.write_text(json.dumps({"header": header, "records": list(records)}, indent=1) + "\n")
    elif path.suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(records[0]))
            writer.writeheader()
            writer.writerows({**r, "warnings": " | ".join(r["warnings"])} for r in records)
    else:
        path.write_text(header + "\n\n" + markdown_table(records) + "\n")


def versions() -> str:
    try:
        import zuko

        zuko_version = zuko.__version__
    except ImportError:
        zuko_version = "not installed"
    return (
        f"Python {platform.python_version()}, torch {torch.__version__}, scikit-learn {sklearn.__version__}, "
        f"numpy {np.__version__}, zuko {zuko_version}"
    )


def header(argv: Sequence[str], threads: int) -> str:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    defaults = {k: v for k, v in OTFlowDensity().get_params().items() if k not in ("callbacks", "verbose")}
    return "\n".join(
        [
            f"- command: `python {shlex.join(argv)}`",
            f"- date: {now}",
            f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}",
            f"- {versions()}",
            f"- threads: {threads} (torch and BLAS/OpenMP)",
            "- load average (1, 5, 15 min) at start: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()),
            f"- OTFlowDensity defaults: {defaults}",
        ]
    )


def parse_value(item: str) -> tuple[str, object]:
    """``"name=value"`` -> ``(name, value)``, the value read as a Python literal where it is one."""
    name, _, text = item.partition("=")
    try:
        return name, ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return name, text


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", nargs="+", choices=DATASETS, default=list(DATASETS))
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--quick", action="store_true", help="tiny smoke-test budget; figures mean nothing")
    parser.add_argument("--threads", type=int, default=1, help="torch and BLAS threads, default 1")
    parser.add_argument("--seed", type=int, default=0, help="data, split and model seed, default 0")
    parser.add_argument("--zuko-seconds", type=float, default=300.0, help="CPU s of training per zuko flow")
    parser.add_argument(
        "--otflow-params",
        nargs="+",
        default=[],
        metavar="NAME=VALUE",
        help="override OTFlowDensity's defaults in otflow and otflow-alpha, e.g. max_iter=4000 alpha=1000",
    )
    parser.add_argument("--out", type=Path, help="write results: .json, .csv, or markdown (any other suffix)")
    parser.add_argument("--from-json", nargs="+", type=Path, help="only merge saved .json runs into a table")
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    if args.from_json:
        runs = [json.loads(p.read_text()) for p in args.from_json]
        records = [r for run in runs for r in run["records"]]
        text = "\n\n".join(run["header"] for run in runs) + "\n\n" + markdown_table(records)
        print(text)
        if args.out:
            write(records, args.out, "\n\n".join(run["header"] for run in runs))
        return
    torch.set_num_threads(args.threads)
    overrides = dict(parse_value(item) for item in args.otflow_params)
    settings = Settings(args.seed, args.quick, args.zuko_seconds, overrides)
    head = header([sys.argv[0], *argv], args.threads)
    print(head, flush=True)
    n = QUICK_SAMPLES if args.quick else N_SAMPLES
    datasets = {}
    for name in args.datasets:
        data = load(name, n, args.seed)
        if args.quick and len(data.X) > n:  # digits: its own size, cut for the smoke test
            data = type(data)(data.name, data.X[:n], data.log_density)
        datasets[name] = data
    records = []
    with threadpool_limits(args.threads):
        for method in args.methods:
            for name, data in datasets.items():
                print(f"{name}, {method}: fitting ...", flush=True)
                try:
                    record = run_one(data, method, settings)
                except Exception as exc:  # one failure must not lose the other measurements
                    print(f"{name}, {method}: FAILED: {type(exc).__name__}: {exc}", flush=True)
                    continue
                records.append(record)
                print(progress(record), flush=True)
                if args.out:
                    write(records, args.out, head)
    load_end = "- load average (1, 5, 15 min) at end: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg())
    print("\n" + load_end + "\n\n" + markdown_table(records))
    if args.out and records:
        write(records, args.out, head + "\n" + load_end)


if __name__ == "__main__":
    main(sys.argv[1:])
