r"""Time one OT-Flow training iteration and its peak memory, against the reference algorithm.

One training iteration is ``zero_grad`` + :func:`sklearn_otflow._loss.objective` (``alpha=100``,
``alpha_hjb=15``, RK4 with ``nt`` steps) + ``loss.backward()`` + one Adam step, in float32 on one thread,
with a fixed seed and ``x = torch.randn(batch, d)``, the scratch memory of one integration reused by the
next as in a fit (``_trace.reuse_scratch``). For each configuration

* ``d=2,  m=32,  nt=8, batch=512`` and
* ``d=43, m=256, nt=6, batch=512`` (one residual layer), and the defaults' two shapes:
* ``d=2,  m=32,  M=2, nt=8, batch=256`` (two features) and
* ``d=10, m=64,  nt=8, batch=256`` (above two features)

it measures these variants, each in its own subprocess (peak RSS is per process):

``exact float32``
    the package's analytic gradient and Hessian trace, ``gemm_dtype=None``;
``bf16 blocks``
    the same with ``gemm_dtype=torch.bfloat16`` (only where the CPU has AVX-512 BF16 or AMX);
``autograd trace``
    the same potential and RK4 objective, but with :math:`\nabla\Phi` and
    :math:`\operatorname{tr}\nabla_x^2\Phi` taken by autograd (``d`` extra ``autograd.grad`` calls per
    right-hand side evaluation); slow at ``d=43``, so it runs fewer iterations there;
``reference``
    ``../shared/tools/ref_otflow_step.py`` (relative to the repository root), a re-implementation of the
    original OT-Flow training step, with the same ``D M NT BATCH ITERS``;
``exact float64``
    ``exact float32`` with the potential and the data in float64;
``exact float32, all threads``
    ``exact float32`` with ``torch.set_num_threads(os.cpu_count())``;
``general path``
    ``exact float32`` with the trace's general path forced (``sklearn_otflow._trace.choose``): what each
    specialized path (one layer; several layers with small blocks) gains over it.

Each subprocess prints the median seconds per iteration (the first, warm-up iteration discarded) and the
peak RSS in MB (``resource.getrusage(...).ru_maxrss``); this script prints a markdown table of them with
the ratios to the reference and to the autograd-trace variant.

A second table gives the evaluation throughput of the same potential (seeded initialisation; fixed-step
RK4 costs the same whatever the weights): rows per second of

``score_samples``
    :func:`sklearn_otflow._loss.log_prob` with ``2 * nt`` RK4 steps (``OTFlowDensity``'s default
    ``n_steps_eval``) under ``torch.no_grad()``, in batches of ``max(256, 2**17 // m)`` rows as
    ``OTFlowDensity`` evaluates;
``sample``
    the inverse flow of standard normal latents, the same steps and batches,

in float32 and float64 (``OTFlowDensity`` evaluates in float64), on 1 thread and on all of them, each
in its own subprocess, over ``--eval-rows`` rows after one warm-up batch.

Run from the repository root::

    python benchmarks/bench_step.py                      # everything
    python benchmarks/bench_step.py --cases d2 --iters 10
    python benchmarks/bench_step.py --skip-slow-autograd # no autograd trace at d=43
    python benchmarks/bench_step.py --variants exact --skip-eval
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

ALPHA, ALPHA_HJB, LEARNING_RATE, SEED = 100.0, 15.0, 0.01, 0

EXACT, BF16, AUTOGRAD, REFERENCE = "exact float32", "bf16 blocks", "autograd trace", "reference"
EXACT64, EXACT_ALL_THREADS, GENERAL = "exact float64", "exact float32, all threads", "general path"
VARIANTS = (EXACT, BF16, AUTOGRAD, REFERENCE, EXACT64, EXACT_ALL_THREADS, GENERAL)
# command-line spelling of each variant (no spaces, so the worker's arguments stay simple)
VARIANT_KEYS = {
    "exact": EXACT,
    "bf16": BF16,
    "autograd": AUTOGRAD,
    "reference": REFERENCE,
    "exact64": EXACT64,
    "exact-threads": EXACT_ALL_THREADS,
    "general": GENERAL,
}
EVAL_DTYPES = {"float32": torch.float32, "float64": torch.float64}


@dataclass(frozen=True)
class Case:
    """One benchmark configuration."""

    name: str
    d: int
    m: int
    nt: int
    batch: int
    slow_autograd: bool  # the autograd-trace variant runs ``--slow-iters`` iterations
    eval_rows: int  # rows scored and sampled by the throughput measurements (default of --eval-rows)
    layers: int = 1  # residual layers M

    def label(self) -> str:
        layers = f", M={self.layers}" if self.layers > 1 else ""
        return f"d={self.d}, m={self.m}{layers}, nt={self.nt}, n={self.batch}"


CASES = (
    Case("d2", d=2, m=32, nt=8, batch=512, slow_autograd=False, eval_rows=65536),
    Case("d43", d=43, m=256, nt=6, batch=512, slow_autograd=True, eval_rows=4096),
    Case("d2-default", d=2, m=32, nt=8, batch=256, slow_autograd=False, eval_rows=65536, layers=2),
    Case("d10-default", d=10, m=64, nt=8, batch=256, slow_autograd=False, eval_rows=16384),
)


@dataclass(frozen=True)
class EvalResult:
    """One throughput measurement: rows per second of scoring and of sampling, and the peak RSS (MB)."""

    case: Case
    dtype: str
    threads: int
    score_rows_per_s: float | None = None
    sample_rows_per_s: float | None = None
    peak_mb: float | None = None
    note: str = ""


@dataclass(frozen=True)
class Result:
    """One measurement: median seconds per iteration, peak RSS (MB) and the first iteration's loss."""

    case: Case
    variant: str
    seconds: float | None = None
    peak_mb: float | None = None
    first_loss: float | None = None
    note: str = ""


# --------------------------------------------------------------------------------------------------------
# worker side: one measurement in this process
# --------------------------------------------------------------------------------------------------------


def autograd_grad_and_trace(potential: torch.nn.Module, x: Tensor, t: float) -> tuple[Tensor, Tensor, Tensor]:
    r"""``(grad_x Phi, d Phi / dt, tr Hess_x Phi)`` of ``potential(x, t)`` by autograd, graph kept.

    The trace is :math:`\sum_i \partial (\nabla_x\Phi)_i / \partial x_i`, one ``autograd.grad`` call per
    coordinate, all with ``create_graph=True`` so that training can differentiate through them.
    """
    if not x.requires_grad:  # the data at t = 0: a leaf outside the graph
        x = x.detach().requires_grad_(True)
    tt = torch.full((x.shape[0], 1), t, dtype=x.dtype, requires_grad=True)
    phi = potential(x, tt)
    gx, gt = torch.autograd.grad(phi.sum(), (x, tt), create_graph=True)
    trace = x.new_zeros(x.shape[0])
    for i in range(x.shape[1]):
        (col,) = torch.autograd.grad(gx[:, i].sum(), x, create_graph=True)
        trace = trace + col[:, i]
    return gx, gt[:, 0], trace


def autograd_objective(potential: torch.nn.Module, x: Tensor, n_steps: int) -> Tensor:
    """OT-Flow's batch objective, as in ``sklearn_otflow._loss.objective``, with an autograd trace."""
    from sklearn_otflow._dynamics import odeint_rk4
    from sklearn_otflow._loss import negative_log_likelihood

    def f(t: float, y: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        gx, gt, trace = autograd_grad_and_trace(potential, y[0], t)
        dL = 0.5 * (gx * gx).sum(1)
        return -gx, -trace, dL, (gt - dL).abs()

    zero = x.new_zeros(x.shape[0])
    z, ell, L, R = odeint_rk4(f, (x, zero, zero, zero), 0.0, 1.0, n_steps)
    return L.mean() + ALPHA * negative_log_likelihood(z, ell).mean() + ALPHA_HJB * R.mean()


def make_loss_fn(variant: str, potential: torch.nn.Module, nt: int) -> Callable[[Tensor], Tensor]:
    """The batch loss of ``variant`` as a function of the data."""
    from sklearn_otflow._loss import objective

    if variant == AUTOGRAD:
        return lambda x: autograd_objective(potential, x, nt)
    gemm_dtype = torch.bfloat16 if variant == BF16 else None
    if variant == GENERAL:
        from sklearn_otflow import _trace

        _trace.choose = lambda *args: _trace.general
    return lambda x: objective(potential, x, ALPHA, ALPHA_HJB, nt, gemm_dtype=gemm_dtype).loss


def run_worker(variant: str, d: int, m: int, nt: int, batch: int, iters: int, layers: int) -> str:
    """Time ``iters`` + 1 training iterations here; ``"median_seconds peak_rss_mb first_loss"``."""
    from sklearn_otflow._potential import Potential

    try:
        from sklearn_otflow._trace import reuse_scratch
    except ImportError:  # a commit before the trace had a package of its own (for old-against-new runs)
        from sklearn_otflow._potential import reuse_scratch

    torch.set_num_threads(os.cpu_count() if variant == EXACT_ALL_THREADS else 1)
    # as in a fit: each integration's scratch memory serves the next (the context object must live on:
    # collected, its generator would close and end the reuse)
    scratch = reuse_scratch()
    scratch.__enter__()
    dtype = torch.float64 if variant == EXACT64 else torch.float32
    torch.manual_seed(SEED)
    potential = Potential(d, width=m, n_layers=layers).to(dtype)
    optimizer = torch.optim.Adam(potential.parameters(), lr=LEARNING_RATE)
    loss_fn = make_loss_fn(variant, potential, nt)
    x = torch.randn(batch, d).to(dtype)
    times, first_loss = [], float("nan")
    for i in range(iters + 1):
        start = time.perf_counter()
        optimizer.zero_grad()
        loss = loss_fn(x)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
        if i == 0:
            first_loss = loss.item()
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"{statistics.median(times[1:]):.4f} {peak_mb:.0f} {first_loss:.6g}"


def run_eval_worker(dtype: str, threads: int, d: int, m: int, nt: int, rows: int, layers: int) -> str:
    """Rows per second of scoring and of sampling here; ``"score_rows_per_s sample_rows_per_s peak_mb"``."""
    from sklearn_otflow._dynamics import flow
    from sklearn_otflow._loss import log_prob
    from sklearn_otflow._potential import Potential

    torch.set_num_threads(threads)
    torch.manual_seed(SEED)
    potential = Potential(d, width=m, n_layers=layers).to(EVAL_DTYPES[dtype])
    n_steps, batch = 2 * nt, max(256, 2**17 // m)  # OTFlowDensity's evaluation steps and batch rows
    x = torch.randn(rows, d, dtype=EVAL_DTYPES[dtype])

    def throughput(evaluate: Callable[[Tensor], Tensor]) -> float:
        evaluate(x[:batch])  # warm-up
        start = time.perf_counter()
        for chunk in x.split(batch):
            evaluate(chunk)
        return rows / (time.perf_counter() - start)

    with torch.no_grad():
        score = throughput(lambda chunk: log_prob(potential, chunk, n_steps))
        sample = throughput(lambda chunk: flow(potential, chunk, n_steps, inverse=True)[0])
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return f"{score:.1f} {sample:.1f} {peak_mb:.0f}"


# --------------------------------------------------------------------------------------------------------
# driver side: one subprocess per measurement, then the report
# --------------------------------------------------------------------------------------------------------


def repo_root() -> Path:
    return Path(__file__).resolve().parents[1]


def reference_script() -> Path:
    return repo_root().parent / "shared" / "tools" / "ref_otflow_step.py"


def bf16_supported() -> bool:
    """Whether this CPU has a fast bfloat16 GEMM path (AVX-512 BF16 or AMX tiles)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def child_env() -> dict[str, str]:
    """The environment for the subprocesses: the repository root first on ``PYTHONPATH``."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(repo_root()), env.get("PYTHONPATH")]))
    return env


def run_child(cmd: list[str], timeout: float) -> tuple[list[str], str]:
    """Run ``cmd`` in a fresh process: the fields of its last line of output, or ``[]`` and why not."""
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=child_env(), cwd=repo_root()
        )
    except subprocess.TimeoutExpired:
        return [], f"timed out after {timeout:.0f} s"
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["?"])[-1]
        return [], f"failed (exit {proc.returncode}): {last}"
    return proc.stdout.strip().splitlines()[-1].split(), ""


def measure(case: Case, variant: str, iters: int, timeout: float) -> Result:
    """Run one measurement in a fresh subprocess and parse its one line of output."""
    sizes = [str(v) for v in (case.d, case.m, case.nt, case.batch, iters)]
    if variant == REFERENCE:
        cmd = [sys.executable, str(reference_script()), *sizes]
    else:
        key = next(k for k, v in VARIANT_KEYS.items() if v == variant)
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", key, *sizes, str(case.layers)]
    fields, note = run_child(cmd, timeout)
    if not fields:
        return Result(case, variant, note=note)
    first_loss = float(fields[2]) if len(fields) > 2 else None
    return Result(case, variant, float(fields[0]), float(fields[1]), first_loss)


def measure_eval(case: Case, dtype: str, threads: int, rows: int, timeout: float) -> EvalResult:
    """One throughput measurement in a fresh subprocess."""
    sizes = [str(v) for v in (threads, case.d, case.m, case.nt, rows)]
    cmd = [sys.executable, str(Path(__file__).resolve()), "--eval-worker", dtype, *sizes, str(case.layers)]
    fields, note = run_child(cmd, timeout)
    if not fields:
        return EvalResult(case, dtype, threads, note=note)
    score, sample, peak = map(float, fields)
    return EvalResult(case, dtype, threads, score, sample, peak)


def skip_reason(case: Case, variant: str, args: argparse.Namespace) -> str | None:
    """Why ``variant`` is not measured for ``case``, or ``None``."""
    if variant == BF16 and not bf16_supported():
        return "skipped: no AVX-512 BF16 or AMX on this CPU"
    if variant == AUTOGRAD and case.slow_autograd and args.skip_slow_autograd:
        return "skipped: --skip-slow-autograd"
    if variant == REFERENCE and case.layers > 1:
        return "skipped: the reference has one residual layer"
    if variant == REFERENCE and not reference_script().is_file():
        return f"skipped: {reference_script()} not found"
    return None


def ratio(num: float | None, den: float | None) -> str:
    return f"{num / den:.2f}" if num is not None and den is not None and den > 0 else "-"


def fmt(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def import_baseline_mb(module: str) -> float | None:
    """Peak RSS (MB) of a fresh interpreter that only imports ``module``; ``None`` if that fails."""
    code = f"import resource, {module}; print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env())
    return float(proc.stdout) if proc.returncode == 0 else None


def imported_module(variant: str) -> str:
    """The heaviest import of ``variant``'s process: the reference imports only torch."""
    return "torch" if variant == REFERENCE else "sklearn_otflow"


def net_mb(r: Result | None, baselines: dict[str, float | None]) -> float | None:
    """Peak RSS of ``r`` less that of its process's imports (``baselines``: MB by module name)."""
    base = None if r is None else baselines.get(imported_module(r.variant))
    return None if r is None or r.peak_mb is None or base is None else r.peak_mb - base


def table(results: Sequence[Result], baselines: dict[str, float | None]) -> str:
    """The markdown table: speed-ups are time(other) / time(row), memory ratios peak(row) / peak(ref).

    The last column compares the peak RSS net of each process's imports (see :func:`net_mb`).
    """
    head = (
        "| config | variant | median s/iter | peak RSS MB | speed-up vs reference | memory vs reference "
        "| speed-up vs autograd trace | memory vs reference, net of imports |"
    )
    lines = [head, "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        ref = next((o for o in results if o.case == r.case and o.variant == REFERENCE), None)
        ag = next((o for o in results if o.case == r.case and o.variant == AUTOGRAD), None)
        ref_s, ref_mb = (ref.seconds, ref.peak_mb) if ref else (None, None)
        ag_s = ag.seconds if ag else None
        seconds = fmt(r.seconds, ".3f") if r.seconds is not None else r.note
        cells = [r.case.label(), r.variant, seconds, fmt(r.peak_mb, ".0f"), ratio(ref_s, r.seconds)]
        cells += [ratio(r.peak_mb, ref_mb), ratio(ag_s, r.seconds)]
        cells += [ratio(net_mb(r, baselines), net_mb(ref, baselines))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def eval_table(results: Sequence[EvalResult]) -> str:
    """The throughput table; the speed-up is over the same case and dtype on 1 thread."""
    lines = [
        "| config | dtype | threads | score_samples rows/s | sample rows/s | speed-up over 1 thread "
        "(score, sample) | peak RSS MB |",
        "|---|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        one = next((o for o in results if (o.case, o.dtype, o.threads) == (r.case, r.dtype, 1)), None)
        speed_up = "-"
        if one is not None:
            speed_up = f"{ratio(r.score_rows_per_s, one.score_rows_per_s)}, "
            speed_up += ratio(r.sample_rows_per_s, one.sample_rows_per_s)
        score = fmt(r.score_rows_per_s, ",.0f") if r.score_rows_per_s is not None else r.note
        cells = [r.case.label(), r.dtype, str(r.threads), score, fmt(r.sample_rows_per_s, ",.0f")]
        cells += [speed_up, fmt(r.peak_mb, ".0f")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def header(argv: Sequence[str]) -> str:
    now = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    return "\n".join(
        [
            f"- command: `python {shlex.join(argv)}`",
            f"- machine: {cpu_model()}, {os.cpu_count()} logical CPUs, {platform.platform()}",
            f"- bfloat16 fast path (AVX-512 BF16 or AMX): {'yes' if bf16_supported() else 'no'}",
            f"- torch {torch.__version__}, Python {platform.python_version()}; training: 1 thread, float32 "
            "unless the variant says otherwise",
            f"- date: {now}",
            "- load average (1, 5, 15 min) at start: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()),
        ]
    )


def progress(r: Result, iters: int) -> str:
    shown = r.note or f"{r.seconds:.3f} s/iter, {r.peak_mb:.0f} MB, first loss {fmt(r.first_loss, '.6g')}"
    return f"{r.case.label()}, {r.variant}: {shown} ({iters} timed iterations)"


def eval_progress(r: EvalResult) -> str:
    shown = r.note or f"score {r.score_rows_per_s:,.0f} rows/s, sample {r.sample_rows_per_s:,.0f} rows/s"
    return f"{r.case.label()}, {r.dtype}, {r.threads} thread(s): {shown}"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=5, help="timed iterations (after 1 warm-up), default 5")
    parser.add_argument(
        "--slow-iters", type=int, default=2, help="timed iterations of the autograd trace at d=43, default 2"
    )
    names = [c.name for c in CASES]
    parser.add_argument("--cases", nargs="+", choices=names, default=names, help="default: all")
    parser.add_argument(
        "--variants", nargs="+", choices=list(VARIANT_KEYS), default=list(VARIANT_KEYS), help="default: all"
    )
    parser.add_argument("--skip-slow-autograd", action="store_true", help="no autograd trace at d=43")
    parser.add_argument("--timeout", type=float, default=3600.0, help="seconds per subprocess, default 3600")
    parser.add_argument("--skip-eval", action="store_true", help="no score_samples / sample throughput")
    parser.add_argument(
        "--eval-rows", type=int, help="rows scored and sampled (default: 65536 at d=2, 4096 at d=43)"
    )
    parser.add_argument("--worker", nargs=7, metavar="X", help=argparse.SUPPRESS)
    parser.add_argument("--eval-worker", nargs=7, metavar="X", help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: Sequence[str]) -> None:
    args = parse_args(argv)
    if args.worker:
        key, *sizes = args.worker
        print(run_worker(VARIANT_KEYS[key], *map(int, sizes)))
        return
    if args.eval_worker:
        dtype, *sizes = args.eval_worker
        print(run_eval_worker(dtype, *map(int, sizes)))
        return
    print(header([sys.argv[0], *argv]) + "\n", flush=True)
    results = []
    for case in (c for c in CASES if c.name in args.cases):
        for variant in (VARIANT_KEYS[k] for k in VARIANT_KEYS if k in args.variants):
            reason = skip_reason(case, variant, args)
            if reason is not None:
                print(f"{case.label()}, {variant}: {reason}", flush=True)
                results.append(Result(case, variant, note=reason))
                continue
            iters = args.slow_iters if variant == AUTOGRAD and case.slow_autograd else args.iters
            result = measure(case, variant, iters, args.timeout)
            results.append(result)
            print(progress(result, iters), flush=True)
    baselines = {name: import_baseline_mb(name) for name in ("sklearn_otflow", "torch")}
    print("\n" + table(results, baselines) + "\n")
    shown = ", ".join(f"`import {name}` {fmt(mb, '.0f')} MB" for name, mb in baselines.items())
    print(f"peak RSS of the imports alone (workers: sklearn_otflow; reference: torch): {shown}")
    print("load average (1, 5, 15 min) at end: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))
    losses = [f"{r.case.name} {r.variant}: {r.first_loss:.6g}" for r in results if r.first_loss is not None]
    if losses:
        print("first-iteration loss (same seed and initialisation):", "; ".join(losses))
    if args.skip_eval:
        return
    evals = []
    for case in (c for c in CASES if c.name in args.cases):
        for dtype in EVAL_DTYPES:
            for threads in sorted({1, os.cpu_count() or 1}):
                r = measure_eval(case, dtype, threads, args.eval_rows or case.eval_rows, args.timeout)
                evals.append(r)
                print(eval_progress(r), flush=True)
    print("\n" + eval_table(evals))
    print("load average (1, 5, 15 min) at end: {:.2f}, {:.2f}, {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main(sys.argv[1:])
