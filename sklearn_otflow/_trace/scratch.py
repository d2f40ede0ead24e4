"""Scratch memory for the stages of a training integration, and its reuse across a fit.

A training integration keeps, for every RK4 stage, the activations its backward pass needs. Allocated
one by one, stage by stage, kept activations and transient blocks interleave on the heap and leave
holes too small to reuse, and large allocations are mapped afresh (and faulted in page by page) at
every iteration. So each integration takes one allocation (:class:`TraceWork`) and, within
:func:`reuse_scratch` (a fit), hands it to the next integration of the same size. The benchmarks page,
"The defaults and why", gives the gain.
"""

from __future__ import annotations

import contextlib
import math
import threading
from collections.abc import Iterator

from torch import Tensor

# TraceWork allocations that training integrations have released, for the next ones to reuse; only
# while reuse_scratch() is active (a fit), and emptied when it ends.
_SPARE: list[Tensor] = []
_SPARE_LOCK = threading.Lock()
_REUSE = 0


@contextlib.contextmanager
def reuse_scratch() -> Iterator[None]:
    """Within this context, each training integration's one allocation (:class:`TraceWork`) goes back
    to a pool after its backward pass, and the next integration of the same size takes it from there
    instead of asking the C library for new memory. The pool is emptied when the outermost context
    ends."""
    global _REUSE
    with _SPARE_LOCK:
        _REUSE += 1
    try:
        yield
    finally:
        with _SPARE_LOCK:
            _REUSE -= 1
            if not _REUSE:
                _SPARE.clear()


def _aligned(numel: int) -> int:
    """``numel`` rounded up to a multiple of 16 entries (64 bytes in float32)."""
    return -(-numel // 16) * 16


def _take_scratch(numel: int, like: Tensor) -> Tensor:
    """A 1-D tensor of ``numel`` entries like ``like``: a released one of that size if any, else new."""
    with _SPARE_LOCK:
        for i, t in enumerate(_SPARE):
            if t.numel() == numel and t.dtype == like.dtype and t.device == like.device:
                return _SPARE.pop(i)
    return like.new_empty(numel)


class TraceWork:
    r"""Scratch that the ``n_stages`` stages of a training integration over ``n`` samples share.

    What each stage keeps for the backward pass (:meth:`next_stage`): its input :math:`s = (x, c, t)`
    and :math:`\nabla_s\Phi`, (s_rows, n) each, and ``n_acts`` (m, n) activations. With
    ``matrix_shape`` (the one-layer path), also the path's matrix ``W`` of that shape, ``sum``, which
    accumulates each stage's ``weight`` times the trace's gradient with respect to it (``used`` says
    whether any stage added to it), and a buffer of ``block_entries`` for one chunk of a stage's
    blocks (:meth:`blocks`).

    All are slices of one allocation, each piece 64 bytes in, as a fresh tensor would start: the
    vectorized reductions then round as they do on fresh tensors, so the fits are the same as without
    this allocation.
    """

    def __init__(
        self,
        s_rows: int,
        m: int,
        n: int,
        n_stages: int,
        like: Tensor,
        n_acts: int,
        matrix_shape: tuple[int, int] | None = None,
        block_entries: int = 0,
    ) -> None:
        self._shapes = [(s_rows, n), (s_rows, n)] + [(m, n)] * n_acts
        self._pieces = [_aligned(math.prod(shape)) for shape in self._shapes]
        per_stage = sum(self._pieces) if n_acts else 0
        matrix_entries = math.prod(matrix_shape) if matrix_shape else 0
        scratch = (matrix_entries, matrix_entries, block_entries)
        sizes = (*(_aligned(k) for k in scratch), n_stages * per_stage)
        self._buffer = _take_scratch(sum(sizes), like)
        W, S, blocks, kept = self._buffer.split(sizes)
        self.W = self.sum = None
        if matrix_shape:
            self.W = W[:matrix_entries].view(matrix_shape)
            self.sum = S[:matrix_entries].view(matrix_shape).zero_()
        self.weight, self.used = 1.0, False
        self._blocks = blocks
        self._kept = kept.view(n_stages, per_stage) if per_stage else None
        self._stage = 0
        self.current: tuple[Tensor, Tensor, list[Tensor]] | None = None

    def next_stage(self) -> tuple[Tensor, Tensor, list[Tensor]] | None:
        r"""Moves on to the next stage; ``current`` becomes, and this returns, where the stage keeps
        :math:`s` and :math:`\nabla_s\Phi` (s_rows, n) and its (m, n) activations (a list), or
        ``None`` once the stages are all used."""
        self.current = None
        if self._kept is not None and self._stage < self._kept.shape[0]:
            pieces = self._kept[self._stage].split(self._pieces)
            views = [p[: math.prod(shape)].view(shape) for p, shape in zip(pieces, self._shapes)]
            self.current = (views[0], views[1], views[2:])
            self._stage += 1
        return self.current

    def blocks(self, rows: int, n: int) -> Tensor:
        """A (rows, n) buffer for one chunk of a stage's blocks, the same memory every time."""
        return self._blocks[: rows * n].view(rows, n)

    def release(self) -> None:
        """The integration is done with this memory: within :func:`reuse_scratch`, the next one of
        the same size takes it (at most two are kept). Nothing may use this object afterwards."""
        buffer, self._buffer = self._buffer, None
        self.W = self.sum = self._blocks = self._kept = self.current = None
        with _SPARE_LOCK:
            if _REUSE and buffer is not None:
                _SPARE.append(buffer)
                del _SPARE[:-2]
