r"""Time a training iteration with one, two and three residual layers.

One training iteration is ``zero_grad`` + :func:`sklearn_otflow._loss.objective` + ``loss.backward()``
in float32 on one thread, as in ``OTFlowDensity``'s default fit of two-feature data: width 32, 256 rows,
8 RK4 steps, ``alpha=100``, ``alpha_hjb=1``, ``x = torch.randn(256, d)``, seeded weights with
:math:`w \sim \mathcal N(0, 0.3^2)` (at :math:`w = 0`, the initial point, the network is switched off).

For each number of layers and each path, in its own subprocess:

``chosen``
    the package as it is: one layer takes the one-layer trace path, several the general one;
``general``
    the general path forced (``sklearn_otflow._trace.choose``), at one layer too.

It prints the median milliseconds per iteration (the first ``--warmup`` discarded), the tensor
operations per RK4 stage (torch's profiler over one iteration, view operations such as ``t`` or
``unsqueeze`` left out), and the minor page faults per iteration (``getrusage``).

Run from the repository root::

    python benchmarks/bench_layers.py
    python benchmarks/bench_layers.py --layers 2 --d 10 --width 64
"""

from __future__ import annotations

import argparse
import datetime
import platform
import resource
import statistics
import subprocess
import sys
import time

import torch

# view and bookkeeping operations, which move no data: left out of the operation count
VIEWS = {
    "as_strided", "view", "t", "transpose", "unsqueeze", "squeeze", "select", "slice", "expand",
    "resolve_conj", "resolve_neg", "unbind", "split", "split_with_sizes", "alias", "detach", "empty",
    "empty_strided", "to", "lift_fresh", "_unsafe_view", "reshape", "narrow", "diagonal", "permute",
    "_reshape_alias", "numpy_T",
}  # fmt: skip


def run_worker(
    layers: int, path: str, d: int, width: int, batch: int, nt: int, iters: int, warmup: int
) -> str:
    """Time ``iters`` iterations here; ``"median_ms ops_per_stage faults_per_iteration"``."""
    from torch.profiler import profile

    from sklearn_otflow import Potential, _trace
    from sklearn_otflow._loss import objective

    torch.set_num_threads(1)
    if path == "general":
        _trace.choose = lambda *args: _trace.general
    torch.manual_seed(0)
    potential = Potential(d, width=width, n_layers=layers)
    with torch.no_grad():
        potential.w.normal_(0.0, 0.3)
    x = torch.randn(batch, d)

    def iteration() -> None:
        potential.zero_grad()
        objective(potential, x, 100.0, 1.0, nt).loss.backward()

    times = []
    reuse = _trace.reuse_scratch()  # as in a fit (OTFlowNet.fit_loop)
    reuse.__enter__()
    for i in range(warmup + iters):
        if i == warmup:
            faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        start = time.perf_counter()
        iteration()
        times.append(time.perf_counter() - start)
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / iters
    with profile() as prof:
        iteration()
    ops = sum(e.count for e in prof.key_averages() if e.key.startswith("aten::") and e.key[6:] not in VIEWS)
    return f"{1e3 * statistics.median(times[warmup:])} {ops / (4 * nt)} {faults}"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--paths", nargs="+", default=["chosen", "general"], choices=["chosen", "general"])
    parser.add_argument("--d", type=int, default=2)
    parser.add_argument("--width", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--nt", type=int, default=8)
    parser.add_argument("--iters", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--worker", nargs=2, metavar=("LAYERS", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    sizes = (args.d, args.width, args.batch, args.nt, args.iters, args.warmup)
    if args.worker:
        print(run_worker(int(args.worker[0]), args.worker[1], *sizes))
        return

    now = datetime.datetime.now(datetime.timezone.utc)
    print(
        f"# {now:%Y-%m-%d %H:%M} UTC, {platform.processor() or platform.machine()}, torch {torch.__version__}"
    )
    print(f"# one thread; d={args.d}, width {args.width}, {args.batch} rows, {args.nt} RK4 steps")
    print("| layers | path | ms / iteration | operations / stage | page faults / iteration |")
    print("|---:|---|---:|---:|---:|")
    for layers in args.layers:
        for path in args.paths:
            if layers > 1 and path == "general":
                continue  # several layers take the general path either way
            command = [sys.executable, __file__, "--worker", str(layers), path, "--d", str(args.d),
                       "--width", str(args.width), "--batch", str(args.batch), "--nt", str(args.nt),
                       "--iters", str(args.iters), "--warmup", str(args.warmup)]  # fmt: skip
            out = subprocess.run(command, capture_output=True, text=True, check=True).stdout.split()
            ms, ops, faults = (float(v) for v in out[-3:])
            print(f"| {layers} | {path} | {ms:.1f} | {ops:.0f} | {faults:.0f} |", flush=True)


if __name__ == "__main__":
    main()
