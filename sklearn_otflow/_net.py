r"""The skorch side of training: a module that flows a batch, OT-Flow's loss, and the net built from an
estimator's parameters.

skorch owns the loop (batches, validation split, callbacks, early stopping, progress); this module
supplies what is specific to OT-Flow, on skorch's named override points:

- :class:`FlowModule` pushes a batch along the flow: ``(z, ell, L, R)``; in training mode with the
  training step count and block precision, in evaluation mode (validation) exactly and with the
  evaluation step count, so that early stopping sees the likelihood that ``score`` will report. A
  batch's rows are the standardized values that flow, then (conditional density) their condition.
- :class:`OTFlowLoss` turns that into :math:`J = \operatorname{mean}[L + \alpha C + \alpha_{hjb} R]`.
  With sample weights (skorch's ``y``), training draws its minibatches in proportion to the weights
  (:class:`~sklearn_otflow._budget.BatchStream`), so that the plain mean is an unbiased estimate of the
  weighted objective; validation takes the weighted mean.
- :class:`OTFlowNet` records the three parts per batch (``train_nll``, ``valid_nll``, ...), which
  :class:`skorch.callbacks.PassthroughScoring` turns into per-round history columns (``get_loss``), and
  tells an interrupt (Ctrl-C) from a callback's stop (``fit_loop``).
- :func:`build_net` assembles the net that an :class:`~sklearn_otflow.OTFlowDensity`'s parameters
  describe; :func:`continue_net` adapts a fitted one for ``partial_fit``.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
from collections.abc import Callable, Iterator

import numpy as np
import torch
from sklearn.model_selection import ShuffleSplit
from skorch import NeuralNet
from skorch.callbacks import Callback, GradientNormClipping, PassthroughScoring
from skorch.dataset import ValidSplit
from torch import Tensor, nn
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

from . import _auto
from ._budget import BatchStream, Budget, StopTraining
from ._callbacks import EarlyStoppingInTheFall, FiniteGuard, Progress, StepRefinement, WeightAveraging
from ._dynamics import flow
from ._hardware import check_device
from ._loss import Objective, batch_objective, log_prob
from ._potential import Potential
from ._trace import reuse_scratch

__all__ = [
    "DTYPES",
    "FlowModule",
    "Interrupted",
    "OTFlowLoss",
    "OTFlowNet",
    "batch_loader",
    "build_net",
    "continue_net",
]

DTYPES = {"float32": torch.float32, "float64": torch.float64}


class FlowModule(nn.Module):
    """The potential, called on a batch: returns its end state ``(z, ell, L, R)`` along the flow.

    A batch has ``n_features`` columns that flow, then ``n_context`` of their condition.
    """

    def __init__(
        self,
        n_features: int,
        width: int,
        n_layers: int,
        rank: int,
        n_steps: int,
        n_steps_eval: int | None = None,
        dtype: torch.dtype = torch.float32,
        gemm_dtype: torch.dtype | None = None,
        seed: int | None = None,
        n_context: int = 0,
    ) -> None:
        super().__init__()
        # a generator of its own: fits in concurrent threads neither race on torch's global one nor move it
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        self.potential = Potential(n_features, width, n_layers, rank, n_context, generator).to(dtype)
        self.n_steps, self.n_steps_eval, self.gemm_dtype = n_steps, n_steps_eval or n_steps, gemm_dtype

    def split(self, batch: Tensor) -> tuple[Tensor, Tensor | None]:
        """A batch's rows as ``(x, context)``: the columns that flow, and their condition (or ``None``)."""
        d = self.potential.n_features
        return batch[:, :d], batch[:, d:] if self.potential.n_context else None

    def forward(self, batch: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        x, context = self.split(batch)
        if self.training:
            return flow(self.potential, x, self.n_steps, gemm_dtype=self.gemm_dtype, context=context)
        return flow(self.potential, x, self.n_steps_eval, context=context)

    def log_prob(self, batch: Tensor, n_steps: int) -> Tensor:
        """:func:`~sklearn_otflow._loss.log_prob` of a batch's rows with ``n_steps`` RK4 steps."""
        x, context = self.split(batch)
        return log_prob(self.potential, x, n_steps, context)


class OTFlowLoss(nn.Module):
    """OT-Flow's objective from a flowed batch: ``Objective(loss, transport, nll, hjb)``; ``weighted``:
    the batches come with sample weights, which validation's means use (:class:`OTFlowNet`)."""

    def __init__(self, alpha: float, alpha_hjb: float, weighted: bool = False) -> None:
        super().__init__()
        self.weighted = weighted
        self.set_weights(alpha, alpha_hjb)

    def set_weights(self, alpha: float, alpha_hjb: float) -> None:
        """The loss weights, changed in place (skorch's ``set_params`` would re-create the optimiser)."""
        self.alpha, self.alpha_hjb = alpha, alpha_hjb

    def forward(self, y_pred: tuple[Tensor, ...], weights: Tensor | None = None) -> Objective:
        return batch_objective(y_pred, self.alpha, self.alpha_hjb, weights)


class OTFlowNet(NeuralNet):
    """skorch's :class:`~skorch.NeuralNet` with OT-Flow's loss; records its parts in the history."""

    def fit_loop(self, X, y=None, epochs=None, **fit_params):
        """skorch's loop, with each training integration's memory reused by the next
        (:func:`~sklearn_otflow._trace.reuse_scratch`).

        skorch's ``partial_fit`` swallows every ``KeyboardInterrupt``, which its callbacks raise to end
        training; an interrupt (Ctrl-C) leaves the loop as :class:`Interrupted` instead, past it. An
        interrupt is a ``KeyboardInterrupt`` that the SIGINT handler raised (seen by
        :func:`_watching_sigint` in the main thread, wherever it lands, a callback included), or one that
        no callback raised.
        """
        with reuse_scratch(), _watching_sigint() as signalled:
            try:
                return super().fit_loop(X, y, epochs=epochs, **fit_params)
            except KeyboardInterrupt as exc:
                if not signalled() and (isinstance(exc, StopTraining) or _raised_by_callback(exc)):
                    raise  # a callback ending training
                raise Interrupted(exc) from exc

    rebalance_threads_ = None  # set while training: see sklearn_otflow._hardware.thread_share

    def on_epoch_begin(self, net, **kwargs):
        """skorch's new history row; then each round takes its share of the threads again."""
        super().on_epoch_begin(net, **kwargs)
        if self.rebalance_threads_ is not None:
            self.rebalance_threads_()

    def on_epoch_end(self, net, **kwargs):
        """Record ``iter``: the optimizer steps run by the end of this round, over the whole history."""
        before = self.history[-2].get("iter", 0) if len(self.history) > 1 else 0
        self.history.record("iter", before + self.history[-1].get("train_batch_count", 0))

    def get_loss(self, y_pred, y_true, X=None, training=False) -> Tensor:
        """The batch's objective; its parts go to the history. With sample weights (``y_true``),
        training's minibatches were drawn in proportion to them (plain means), validation's were not
        (weighted means, and the batch's total weight stands for its size: :meth:`on_batch_end`)."""
        weights = y_true if self.criterion_.weighted and not training else None
        out = self.criterion_(y_pred, weights)
        prefix = "train" if training else "valid"
        for name in ("nll", "transport", "hjb"):
            self.history.record_batch(f"{prefix}_{name}", getattr(out, name).item())
        return out.loss

    def on_batch_end(self, net, batch=None, training=False, **kwargs):
        """With sample weights, a validation batch's size in the history is its total weight, so that
        the round's means (:class:`~skorch.callbacks.PassthroughScoring`) are weighted means."""
        if self.criterion_.weighted and not training:
            self.history.record_batch("valid_batch_size", float(batch[1].sum()))


def batch_loader(
    dataset: Dataset, batch_size: int, shuffle: bool = False, generator: torch.Generator | None = None
) -> DataLoader:
    """skorch's ``iterator_train`` / ``iterator_valid``: minibatches fetched by one indexing each.

    The same batches, in the same order for the same ``generator``, as
    ``DataLoader(dataset, batch_size, shuffle=shuffle, generator=generator)``, which calls the dataset
    once per row and stacks the rows. skorch's datasets (and torch's ``Subset`` of them, from the
    validation split) accept a list of row indices.

    Examples
    --------
    >>> import torch
    >>> from skorch.dataset import Dataset
    >>> from sklearn_otflow._net import batch_loader
    >>> [tuple(X.shape) for X, _ in batch_loader(Dataset(torch.zeros(10, 2), None), batch_size=4)]
    [(4, 2), (4, 2), (2, 2)]
    """
    rows = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    batches = BatchSampler(rows, batch_size, drop_last=False)
    # the generator also goes to the loader, which draws a base seed from it before the permutation;
    # without one, a generator of the loader's own keeps it off torch's global one
    generator = torch.Generator() if generator is None else generator
    return DataLoader(dataset, batch_size=None, sampler=batches, generator=generator)


class Interrupted(Exception):
    """An interrupt (Ctrl-C) on its way out of skorch's loop; ``interrupt`` is the ``KeyboardInterrupt``."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__("training was interrupted")
        self.interrupt = interrupt


@contextlib.contextmanager
def _watching_sigint() -> Iterator[Callable[[], bool]]:
    """Yield a function that says whether SIGINT (Ctrl-C) arrived in the block.

    In the main thread, where Python delivers signals, the block's SIGINT handler records the signal
    and then calls the handler it replaced (Python's default raises ``KeyboardInterrupt``); the old
    handler is back when the block ends. Elsewhere, or where the handler is not Python's (``SIG_IGN``,
    ``SIG_DFL``, or set outside Python), nothing is installed and the function says ``False``.
    """
    previous = (
        signal.getsignal(signal.SIGINT) if threading.current_thread() is threading.main_thread() else None
    )
    if not callable(previous):
        yield lambda: False
        return
    seen = []

    def handler(signum, frame):
        seen.append(signum)
        previous(signum, frame)

    signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: bool(seen)
    finally:
        signal.signal(signal.SIGINT, previous)


def _raised_by_callback(exc: BaseException) -> bool:
    """Whether ``exc`` was raised in a skorch callback's method (a user's ``EarlyStopping`` stopping)."""
    tb = exc.__traceback__
    while tb is not None and tb.tb_next is not None:
        tb = tb.tb_next
    return tb is not None and isinstance(tb.tb_frame.f_locals.get("self"), Callback)


# Parameters that weight decay leaves alone: the potential's (Potential.undecayed), as skorch's
# optimizer__param_groups; "decayed" marks the groups for continue_net.
_UNDECAYED = [(f"potential.{name}", {"weight_decay": 0.0, "decayed": False}) for name in Potential.undecayed]


def build_net(
    est,
    seed: int,
    n_samples: int,
    streaming: bool = False,
    n_steps: int | None = None,
    split_seed: int | None = None,
    deadline: float | None = None,
    trial: bool = False,
    weighted: bool = False,
) -> OTFlowNet:
    """The skorch net that ``est``'s parameters describe, for ``n_samples`` rows of the shape that
    ``est._flow_dims()`` gives (``weighted``: with sample weights as skorch's ``y``).

    It trains with ``n_steps`` (default: the parameter) to start with, its minibatch order seeded by
    ``seed`` and its validation split by ``split_seed`` (default: ``seed``), for a budget of
    ``max_iter`` steps and until the ``deadline`` (a ``time.perf_counter()``); a ``trial`` (``n_init``)
    stops after ``1 / TRIAL_SHARE`` of it, silently. With ``streaming`` (``partial_fit``), one without
    budget, validation split, early stopping, learning-rate schedule, weight averaging or step
    refinement, a pass over the rows per call, since the stream's length is unknown (an average
    restarted at each call would hold every chunk back to its starting weights).
    """
    n_steps = n_steps or est.n_steps
    device, (d, q) = check_device(est.device), est._flow_dims()
    width = _auto.width(est.hidden_width, d + q)
    validate = est.early_stopping and not streaming
    scores = [
        PassthroughScoring(f"{prefix}_{name}", on_train=prefix == "train")
        for prefix in (("train", "valid") if validate else ("train",))
        for name in ("nll", "transport", "hjb")
    ]
    budget, callbacks = None, []
    if not streaming:  # first: it ends training before any callback begins a round that won't run
        budget = Budget(est.max_iter, deadline, stop_at=1 / _auto.TRIAL_SHARE if trial else 1.0)
        callbacks.append(("budget", budget))
    callbacks += [(score.name, score) for score in scores]
    if not streaming:
        if est.ema_decay > 0:  # before the callbacks that save weights at the end of a round
            callbacks.append(("weight_averaging", WeightAveraging(est.ema_decay)))
        # after the averaging: probes the weights that validation and the fitted model use
        tolerance, refinements = _auto.STEP_TOLERANCE, _auto.MAX_STEP_REFINEMENTS
        callbacks.append(
            ("step_refinement", StepRefinement(tolerance, refinements, est.n_steps_eval is None))
        )
    callbacks += [
        ("grad_clip", GradientNormClipping(_auto.clip_norm(est.alpha, est.alpha_hjb))),
        ("finite_guard", FiniteGuard()),
    ]
    if validate:
        stop = EarlyStoppingInTheFall(
            budget,
            monitor="valid_nll",
            patience=math.ceil(est.n_iter_no_change / _auto.VALIDATION_INTERVAL),
            threshold=0.0,
            load_best=True,
            sink=print if est.verbose >= 2 else _silent,
        )
        callbacks.append(("early_stopping", stop))
    if budget is not None and est.verbose and not trial:
        log_scale = float(np.log(est.scale_).sum())
        callbacks.append(("progress", Progress(budget, log_scale, type(est).__name__)))
    callbacks += user_callbacks(est.callbacks)
    split_seed = seed if split_seed is None else split_seed
    n_valid = min(math.ceil(est.validation_fraction * n_samples), _auto.MAX_VALID_ROWS)
    split = ValidSplit(ShuffleSplit(1, test_size=n_valid, random_state=split_seed)) if validate else None
    rounds = 1 if streaming else math.ceil(est.max_iter / _auto.VALIDATION_INTERVAL)
    return OTFlowNet(
        FlowModule,
        module__n_features=d,
        module__n_context=q,
        module__width=width,
        module__n_layers=_auto.n_layers(est.n_layers, d + q),
        module__rank=est.rank,
        module__n_steps=n_steps,
        module__n_steps_eval=_auto.eval_steps(est.n_steps_eval, n_steps),
        module__dtype=DTYPES[est.dtype],
        module__gemm_dtype=_auto.gemm_dtype(est.trace_precision, est.dtype, width, d, device),
        module__seed=seed,
        criterion=OTFlowLoss,
        criterion__alpha=float(est.alpha),
        criterion__alpha_hjb=float(est.alpha_hjb),
        criterion__weighted=weighted,
        optimizer=torch.optim.AdamW,
        optimizer__weight_decay=_auto.weight_decay(est.weight_decay, d + q),
        optimizer__param_groups=_UNDECAYED,
        lr=est.learning_rate,
        max_epochs=rounds,
        batch_size=_auto.batch_rows(
            est.batch_size, est.validation_fraction, n_samples, None if streaming else validate
        ),
        iterator_train=BatchStream,
        iterator_train__generator=torch.Generator().manual_seed(seed),
        iterator_train__round_len=None if streaming else _auto.VALIDATION_INTERVAL,
        iterator_train__budget=budget,
        iterator_train__weighted=weighted,
        # validation is evaluation: no gradients, so score's batches (fewer tensor operations)
        iterator_valid=batch_loader,
        iterator_valid__batch_size=_auto.eval_rows(width),
        train_split=split,
        callbacks=callbacks,
        predict_nonlinearity=None,
        verbose=int(est.verbose >= 2 and not trial),
        device=device,
    )


def continue_net(est, net: OTFlowNet, n_samples: int, weighted: bool = False) -> None:
    """Adapt ``net``, a copy of ``est``'s fitted net, for one more ``partial_fit`` pass over
    ``n_samples`` rows (``weighted``: with sample weights).

    A net from ``fit`` continues without its budget, validation split, early stopping, schedule and
    weight averaging, a pass over the rows per call. The user's ``callbacks`` are taken as they are
    now: the fitted net's objects where unchanged (not re-initialized, as skorch's ``partial_fit``
    leaves them), new ones initialized. The parameters that may change between calls (learning rate,
    weight decay, batch size, loss weights) are applied without re-creating the optimiser, whose
    moments carry over.
    """
    built_in = ("budget", "progress", "early_stopping", "weight_averaging", "step_refinement")
    off = {f"callbacks__{name}": None for name in built_in if name in dict(net.callbacks_)}
    if off or net.train_split is not None:
        net.set_params(train_split=None, **off).initialize_callbacks()
        # as set_params records them (skorch's set_params refuses iterator parameters once the net is
        # initialized): a pass over the rows per call, no budget
        net.iterator_train__round_len = net.iterator_train__budget = None
    used = {id(cb) for name, cb in est.net_.callbacks_ if name.startswith("user_")}
    user = user_callbacks(est.callbacks)
    for _, cb in user:
        if id(cb) not in used:
            cb.initialize()
    net.callbacks = [(n, cb) for n, cb in net.callbacks if not n.startswith("user_")] + user
    net.callbacks_ = [(n, cb) for n, cb in net.callbacks_ if not n.startswith("user_")] + user
    decay = _auto.weight_decay(est.weight_decay, sum(est._flow_dims()))
    net.set_params(
        lr=est.learning_rate,
        batch_size=_auto.batch_rows(est.batch_size, est.validation_fraction, n_samples, None),
    )
    for group in net.optimizer_.param_groups:
        if group.get("decayed", True):
            group["weight_decay"] = decay
    net.optimizer__weight_decay = decay  # as set_params records it, for a later re-build
    alpha, alpha_hjb = float(est.alpha), float(est.alpha_hjb)
    net.criterion__alpha, net.criterion__alpha_hjb = alpha, alpha_hjb  # the same, for a re-build
    net.criterion_.set_weights(alpha, alpha_hjb)
    net.criterion__weighted = net.criterion_.weighted = weighted  # each call's weights or none
    net.iterator_train__weighted = weighted
    dict(net.callbacks_)["grad_clip"].gradient_clip_value = _auto.clip_norm(est.alpha, est.alpha_hjb)


def user_callbacks(callbacks) -> list[tuple[str, Callback]]:
    """``callbacks``, named for skorch (``user_0``, ...), each checked to be a skorch callback."""
    for i, cb in enumerate(callbacks or []):
        if not isinstance(cb, Callback):
            raise ValueError(
                "callbacks must be a list of skorch.callbacks.Callback instances; got "
                f"{cb!r} ({type(cb).__name__}) at position {i}."
            )
    return [(f"user_{i}", cb) for i, cb in enumerate(callbacks or [])]


def _silent(*args, **kwargs) -> None:
    """A sink for skorch's early-stopping message (the history records it)."""
