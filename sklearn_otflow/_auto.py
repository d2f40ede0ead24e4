"""The defaults: what each ``"auto"`` resolves to, and the fixed settings of training and evaluation.

Each rule has one line of why here; the measured evidence for each (setting, gain, command, machine,
date) is a row of the benchmarks page's table "The defaults and why".
"""

from __future__ import annotations

import math

import torch

from ._hardware import fast_block_dtype

# Training is measured in optimizer steps: validation runs after every round of this many (fewer in the
# last round of a budget), so its cost does not grow with the number of rows.
VALIDATION_INTERVAL = 100

# At most this many rows are held out for validation: enough to rank weights by their held-out
# likelihood, at a bounded cost per round whatever the size of the data.
MAX_VALID_ROWS = 2000

# A trial of n_init runs the first 1 / TRIAL_SHARE of its fit's budget.
TRIAL_SHARE = 25

# Training step refinement (StepRefinement): the largest change of a training-row probe's mean NLL, in
# nats, from n_steps to twice as many before training goes on with 1.5 times the steps, and how many
# times per fit. Default fits stay far below it; a flow that exploits its steps crosses it.
STEP_TOLERANCE = 0.01
MAX_STEP_REFINEMENTS = 2

# Tolerance, in nats of mean log-likelihood, for the change between the evaluation step count and twice
# it: a flow trained with too few RK4 steps can learn to exploit their discretization error.
MAX_INTEGRATION_ERROR = 0.05

# With n_steps_eval=None, a fitted flow that this tolerance does not resolve at 2 * n_steps_ is
# evaluated with up to 2**MAX_EVAL_DOUBLINGS times as many steps.
MAX_EVAL_DOUBLINGS = 3

# weight_decay="auto" above two features, where fits are limited by overfitting rather than bias.
AUTO_WEIGHT_DECAY = 0.1

# Below this many entries per sample in the m x d Jacobian blocks, bfloat16 saves nothing (a step is
# bound by the number of small operations), so trace_precision="auto" keeps the exact products.
BF16_MIN_BLOCK = 4096


def width(hidden_width: int | str, n_features: int) -> int:
    """``hidden_width``; ``"auto"``: 32 for one or two features (a step is bound by the number of
    operations, so width costs steps), 64 above (capacity pays)."""
    return hidden_width if hidden_width != "auto" else (32 if n_features <= 2 else 64)


def n_layers(layers: int | str, n_features: int) -> int:
    """``n_layers``; ``"auto"``: 2 for one or two features (a better score for the time), 1 above (the
    one-layer trace path)."""
    return layers if layers != "auto" else (2 if n_features <= 2 else 1)


def weight_decay(decay: float | str, n_features: int) -> float:
    """``weight_decay``; ``"auto"``: 0 for one or two features (fits limited by bias), else
    ``AUTO_WEIGHT_DECAY`` (fits limited by overfitting)."""
    return float(decay) if decay != "auto" else (0.0 if n_features <= 2 else AUTO_WEIGHT_DECAY)


def batch_rows(
    batch_size: int | str, validation_fraction: float, n_samples: int, validate: bool | None
) -> int:
    """``batch_size``; ``"auto"``: ``min(256, max(32, n_train // 20))`` rows, ``n_train`` the rows left
    after the validation split (so a pass over small data is at least 20 steps), 256 for a stream of
    unknown length (``validate=None``)."""
    if batch_size != "auto":
        return batch_size
    if validate is None:
        return 256
    n_train = n_samples - math.ceil(validation_fraction * n_samples) if validate else n_samples
    return min(256, max(32, n_train // 20))


def gemm_dtype(
    trace_precision: str, dtype: str, width: int, n_features: int, device: torch.device
) -> torch.dtype | None:
    """The precision of training's trace block products: bfloat16 for ``"auto"`` in float32 where the
    hardware multiplies it natively and the blocks are large (``BF16_MIN_BLOCK``), else exact (None)."""
    if trace_precision == "auto" and dtype == "float32" and width * n_features >= BF16_MIN_BLOCK:
        return fast_block_dtype(device)
    return None


def eval_steps(n_steps_eval: int | None, n_steps: int) -> int:
    """RK4 steps of evaluation for training with ``n_steps``: ``n_steps_eval``; ``None``: twice as many
    (the evaluation resolves what the training steps integrate)."""
    return n_steps_eval or 2 * n_steps


def clip_norm(alpha: float, alpha_hjb: float) -> float:
    """Gradient-norm clipping threshold: only real spikes; typical norms grow with the loss weights,
    about 1-10 per unit weight."""
    return 20.0 * (1.0 + alpha + alpha_hjb)


def eval_rows(width: int) -> int:
    """Rows per evaluation batch: the (width, rows) activations stay cache-sized."""
    return max(256, 2**17 // width)
