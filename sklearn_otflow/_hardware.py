"""The machine: the device a fit runs on, its fast block precision, and the threads a call takes.

Threads: a call takes its share of torch's, of the work, and of the free CPUs.

torch's operations split across the intra-op threads (OpenMP), whose workers wait for one another at
the end of every operation. Where another process holds a CPU, a worker that has lost it makes every
operation wait for a time slice, which costs more than the thread gains. Each call (a fit, an
evaluation) therefore takes

- one thread where an operation's work is too small to split (per-operation overhead dominates);
- else its share of ``torch.get_num_threads()`` among the calls running in this process (joblib's
  threading backend, a thread pool), and at most the CPUs that no other runnable task is using (Linux's
  ``/proc/loadavg``; elsewhere all of them), checked again as the call goes on.

torch's thread count is per calling thread (OpenMP), and each call restores it when it ends.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator

import torch

__all__ = ["ONE_THREAD_WORK", "check_device", "fast_block_dtype", "free_cpus", "thread_share"]

# Work per tensor operation, in entries, at or below which a call runs on one thread: the operations
# of a training step at a few features (width x rows x (features + 1)) cost no less on two.
ONE_THREAD_WORK = 1 << 16

_calls = threading.local()  # per thread: is a fit or an evaluation already running here?
_active = [0]  # fits and evaluations running at this moment in this process
_active_lock = threading.Lock()


def _own_running() -> int:
    """This process's threads that the kernel has runnable now (at least the calling one)."""
    running = 0
    with contextlib.suppress(OSError):
        for task in os.listdir("/proc/self/task"):
            with contextlib.suppress(OSError), open(f"/proc/self/task/{task}/stat") as f:
                running += f.read().rpartition(")")[2].split()[0] == "R"
    return max(1, running)


def free_cpus() -> int:
    """CPUs this process may run on that no other process's runnable task occupies now (at least 1).

    Linux counts the runnable tasks of the whole machine in ``/proc/loadavg``; those of this process
    are not others'. Where that file is missing, every CPU the process may run on counts as free.

    >>> free_cpus() >= 1
    True
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1
    try:
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].partition("/")[0])
    except (OSError, ValueError, IndexError):
        return cpus
    others = max(0, runnable - _own_running())
    return max(1, min(cpus, (os.cpu_count() or cpus) - others))


@contextlib.contextmanager
def thread_share(work: int | None = None) -> Iterator[Callable[[], None]]:
    """Run torch with this call's share of the intra-op threads, restored afterwards.

    ``work`` is the entries of a typical tensor operation of the call (``None``: large); at or below
    :data:`ONE_THREAD_WORK` the call runs on one thread. Yields a function that sets the share again
    (as other calls start and end, and as other processes take or leave CPUs), for loops to call now and
    then. Nested calls (a fit's own evaluations) keep the outer share. Worker processes (joblib's loky,
    Dask) already start torch with their share: both set ``OMP_NUM_THREADS`` in them.

    >>> with thread_share(work=1000) as rebalance:
    ...     torch.get_num_threads()
    1
    """
    if getattr(_calls, "inside", False):
        yield lambda: None
        return
    total = torch.get_num_threads()
    small = work is not None and work <= ONE_THREAD_WORK

    def rebalance() -> None:
        share = 1 if small else max(1, min(total // max(1, _active[0]), free_cpus()))
        if share != torch.get_num_threads():
            torch.set_num_threads(share)

    with _active_lock:
        _active[0] += 1
    rebalance()
    _calls.inside = True
    try:
        yield rebalance
    finally:
        _calls.inside = False
        torch.set_num_threads(total)
        with _active_lock:
            _active[0] -= 1


def check_device(device) -> torch.device:
    """``device`` as a torch device where training can run: the CPU, or CUDA where torch finds it."""
    try:
        device = torch.device(device)
    except RuntimeError as exc:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>'; got {device!r} ({exc}).") from None
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:<index>'; got {str(device)!r}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested, but torch finds no CUDA device.")
    return device


def fast_block_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the hardware multiplies it natively (AVX512-BF16/AMX CPUs, recent GPUs), else None."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    cpu = getattr(torch, "cpu", None)
    has_bf16 = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)
    has_amx = getattr(cpu, "_is_amx_tile_supported", lambda: False)
    return torch.bfloat16 if device.type == "cpu" and (has_bf16() or has_amx()) else None
