"""Peak memory and throughput of ``OTFlowDensity.score_samples`` on many rows.

Fits the default model briefly on 2,000 rows of a 10-D standard normal (the fit's quality does not matter
here), then scores ``--rows`` rows (default 10^6) and prints the rows per second and the peak RSS above the
process's peak before scoring. Scoring streams through fixed-size batches, so the peak should not grow
with the number of rows.

    python benchmarks/bench_memory.py [--rows 1000000] [--threads N]
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import numpy as np
import torch

from sklearn_otflow import OTFlowDensity


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--features", type=int, default=10)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    baseline = peak_rss_mb()  # the interpreter with torch, scikit-learn and skorch imported
    rng = np.random.default_rng(0)
    est = OTFlowDensity(max_iter=20, random_state=0).fit(rng.normal(size=(2000, args.features)))
    X = rng.normal(size=(args.rows, args.features))
    before = peak_rss_mb()
    start = time.perf_counter()
    log_p = est.score_samples(X)
    seconds = time.perf_counter() - start
    assert np.isfinite(log_p).all()
    print(
        f"machine: {platform.processor() or platform.machine()}, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"rows: {args.rows}, d={args.features}, default model (width {est.net_.module_.potential.width}, "
        f"{est.n_steps_eval_} RK4 steps, float64)"
    )
    print(f"score_samples: {seconds:.1f} s, {args.rows / seconds:,.0f} rows/s")
    print(
        f"peak RSS: {peak_rss_mb():.0f} MB: {peak_rss_mb() - baseline:.0f} MB above the interpreter's "
        f"baseline after imports ({baseline:.0f} MB), {peak_rss_mb() - before:.0f} MB above the peak "
        f"before scoring ({before:.0f} MB; X itself is {X.nbytes / 2**20:.0f} MB, the output "
        f"{log_p.nbytes / 2**20:.0f} MB)"
    )


if __name__ == "__main__":
    main()
