r"""Training variants at the default budget: what buys held-out likelihood per second, seed by seed.

Each run fits ``OTFlowDensity(random_state=seed)`` on ``bench_field.py``'s 80 % split of a dataset with one
variant of the training applied, and prints one JSON line: the held-out mean log-likelihood, the fit's
wall and CPU seconds, and the validation log-likelihood (data units) after each round of 100 steps, with
the round's seconds (a time-to-quality curve). Variants:

``default``
    the package as it is.
``cosine``, ``linear``, ``wsd-0.2``
    the learning rate's schedule over the budget: a cosine, a linear fall from the start, or constant
    and then a linear fall over the last 20 % (the default falls over the last 40 %).
``step-down``
    the RK4 step count adapts in both directions after each round: 1.5 times (x 2 here) where the
    training rows' NLL at ``n`` and ``2n`` steps differs by more than 0.01 nats, half where ``n / 2``
    and ``n`` agree within 0.0025 (never below 4).
``batch-512``
    512-row minibatches for 1,400 steps (about the time of the default's 2,000 of 256 rows).
``one-layer``
    one residual layer for 3,200 steps (about the time of the default's 2,000 with two).
``lr-0.03``
    ``learning_rate=0.03``.
``start-identity``
    a better start: the quadratic part begins near 0 (``A`` scaled by 0.1), so that the first flow is
    close to the identity, the map that fits the standardized data's moments (the default starts
    from a random linear flow).
``start-network``
    the network switched on at the start: ``w`` drawn from N(0, 0.1²) instead of 0.

Run from the repository root, one thread per process, a seed per run; then tabulate and draw the
mean validation curve of each variant (the mean over its seeds, against the mean seconds)::

    OMP_NUM_THREADS=1 python benchmarks/bench_variants.py --variant cosine --seed 1 >> variants.jsonl
    python benchmarks/bench_variants.py --report variants.jsonl --plot variants.png
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.model_selection import train_test_split

import sklearn_otflow._budget as budget_module
import sklearn_otflow._net as net_module
from sklearn_otflow import OTFlowDensity
from sklearn_otflow._callbacks import StepRefinement
from sklearn_otflow._loss import log_prob

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _datasets import load  # noqa: E402

SCHEDULES = {
    "cosine": lambda p: 0.5 * (1 + math.cos(math.pi * min(p, 1.0))),
    "linear": lambda p: max(0.0, 1.0 - p),
    "wsd-0.2": lambda p: min(1.0, max(0.0, 1.0 - p) / 0.2),
}
PARAMS = {
    "batch-512": dict(batch_size=512, max_iter=1400),
    "one-layer": dict(n_layers=1, max_iter=3200),
    "lr-0.03": dict(learning_rate=0.03),
}


class StepsBothWays(StepRefinement):
    """Step refinement that also halves the steps where half as many resolve the flow."""

    def on_epoch_end(self, net, dataset_valid=None, **kwargs):
        module, rows = net.module_, self.probe_
        n = module.n_steps
        with torch.no_grad():

            def nll(steps):
                return -log_prob(module.potential, rows, steps).mean().item()

            coarse = nll(n)
            up = not abs(coarse - nll(2 * n)) <= self.tolerance
            down = not up and n // 2 >= 4 and abs(nll(n // 2) - coarse) <= 0.0025
        if up and self.refinements_ < 6:
            module.n_steps, self.refinements_ = 2 * n, self.refinements_ + 1
        elif down:
            module.n_steps = n // 2
        if self.eval_follows and module.n_steps_eval != 2 * module.n_steps:
            module.n_steps_eval = 2 * module.n_steps
            if dataset_valid is not None:
                self._revalidate(net, dataset_valid)
        net.history.record("n_steps", n)


def _patch_start(variant: str) -> None:
    """Change the potential's initialisation for the ``start-*`` variants."""
    from sklearn_otflow import _potential

    init = _potential.Potential.__init__

    def patched(self, *args, **kwargs):
        init(self, *args, **kwargs)
        with torch.no_grad():
            if variant == "start-identity":
                self.A.mul_(0.1)
            else:
                self.w.normal_(0.0, 0.1)

    _potential.Potential.__init__ = patched


def report(path: str, plot: str | None, dataset: str) -> None:
    """A markdown table of the runs on ``dataset`` in ``path``, a row per variant; ``plot``: the figure."""
    runs: dict[str, list[dict]] = {}
    for line in Path(path).read_text().splitlines():
        run = json.loads(line)
        if run["dataset"] == dataset:
            runs.setdefault(run["variant"], []).append(run)
    print("| variant | held-out, by seed | mean | CPU s (mean) | steps |")
    print("|---|---|---:|---:|---:|")
    for variant, rs in runs.items():
        rs.sort(key=lambda r: r["seed"])
        scores = ", ".join(f"{r['test']:.4f} ({r['seed']})" for r in rs)
        mean, cpu = np.mean([r["test"] for r in rs]), np.mean([r["cpu"] for r in rs])
        print(f"| {variant} | {scores} | {mean:.4f} | {cpu:.0f} | {rs[0]['steps']} |")
    if plot is None:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for variant, rs in runs.items():
        rounds = min(len(r["curve"]) for r in rs)
        # each run's round times scaled to its CPU seconds: two runs shared the machine at times
        walls = [np.cumsum([c[1] for c in r["curve"]]) for r in rs]
        seconds = np.mean([w[:rounds] * r["cpu"] / w[-1] for w, r in zip(walls, rs)], axis=0)
        valid = np.mean([[c[2] for c in r["curve"][:rounds]] for r in rs], axis=0)
        ax.plot(seconds, valid, lw=2.5 if variant == "default" else 1.2, label=f"{variant} ({len(rs)} seeds)")
    ax.set_ylim(-0.6, None)
    ax.set_xlabel("CPU seconds of the fit (mean over seeds, one thread)")
    ax.set_ylabel("validation log-likelihood (mean over seeds)")
    ax.set_title(f"{dataset}: training variants at the default budget")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(plot, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="default")
    parser.add_argument("--dataset", default="moons")
    parser.add_argument("--seed", type=int, default=0, help="random_state of the fit (the split is seed 0's)")
    parser.add_argument("--report", help="JSON lines of earlier runs to tabulate (no fit)")
    parser.add_argument("--plot", help="with --report: the figure's path")
    args = parser.parse_args()
    if args.report:
        report(args.report, args.plot, args.dataset)
        return
    if args.variant in SCHEDULES:
        budget_module.lr_factor = SCHEDULES[args.variant]
    if args.variant == "step-down":
        net_module.StepRefinement = StepsBothWays
    if args.variant.startswith("start-"):
        _patch_start(args.variant)
    params = PARAMS.get(args.variant, {})
    X_train, X_test = train_test_split(load(args.dataset, 10_000, 0).X, test_size=0.2, random_state=0)
    wall, cpu = time.perf_counter(), time.process_time()
    est = OTFlowDensity(random_state=args.seed, **params).fit(X_train)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    offset = float(np.log(est.scale_).sum())
    curve = [(r["iter"], round(r["dur"], 2), round(-r["valid_nll"] - offset, 4)) for r in est.history_]
    print(
        json.dumps(
            dict(
                variant=args.variant,
                dataset=args.dataset,
                seed=args.seed,
                test=est.score(X_test),
                wall=round(wall, 1),
                cpu=round(cpu, 1),
                steps=est.n_iter_,
                n_steps=est.n_steps_,
                curve=curve,
            )
        )
    )


if __name__ == "__main__":
    main()
