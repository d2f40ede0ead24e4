"""OTFlowDensity: the OT-Flow continuous normalizing flow as a scikit-learn density estimator."""

from __future__ import annotations

import contextlib
import copy
import math
import numbers
import time
import warnings

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    DensityMixin,
    TransformerMixin,
    _fit_context,
)
from sklearn.model_selection import ShuffleSplit
from sklearn.utils import Bunch, check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch.callbacks import Callback, GradientNormClipping, PassthroughScoring
from skorch.dataset import ValidSplit

from ._budget import BatchStream, Budget, EarlyStoppingInTheFall, Progress
from ._dynamics import flow
from ._loss import negative_log_likelihood
from ._net import (
    FiniteGuard,
    FlowModule,
    Interrupted,
    OTFlowLoss,
    OTFlowNet,
    StepRefinement,
    TrainingDiverged,
    WeightAveraging,
    batch_loader,
)
from ._potential import Potential
from ._threads import thread_share
from ._validation import check_input, standardization

__all__ = ["OTFlowDensity"]

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class _Number(Interval):
    """scikit-learn's :class:`Interval` without booleans: ``True`` is an ``int`` to Python, but never a
    step count, width or loss weight."""

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


def _fast_block_dtype(device: torch.device) -> torch.dtype | None:
    """bfloat16 where the hardware multiplies it natively (AVX512-BF16/AMX CPUs, recent GPUs), else None."""
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else None
    cpu = getattr(torch, "cpu", None)
    has_bf16 = getattr(cpu, "_is_avx512_bf16_supported", lambda: False)
    has_amx = getattr(cpu, "_is_amx_tile_supported", lambda: False)
    return torch.bfloat16 if device.type == "cpu" and (has_bf16() or has_amx()) else None


# Below this many entries per sample in the m x d Jacobian blocks, bfloat16 saves nothing (the step is
# dominated by small operations), so "auto" keeps the exact products.
_BF16_MIN_BLOCK = 4096

# Tolerance, in nats of mean log-likelihood, for the change between the evaluation step count and twice
# it. A flow trained with too few RK4 steps can learn to exploit their discretization error (measured:
# make_moons with n_steps=4 scored -0.02 at 8 evaluation steps, -2.02 at 64, where the mass was 1).
_MAX_INTEGRATION_ERROR = 0.05

# With n_steps_eval=None, a fitted flow that this tolerance does not resolve at 2 * n_steps_ is evaluated
# with up to 2**3 times as many steps (see _resolve_eval_steps). Measured: make_moons with learning_rate
# 0.04 (a warm-up, seed 0) scored -0.226 with 16 steps and -1.492 with 64.
_MAX_EVAL_DOUBLINGS = 3

# Training step refinement (see StepRefinement): the largest change of a training-row probe's mean NLL,
# in nats, from n_steps to twice as many before training goes on with 1.5 times the steps, and how many
# times per fit. Default fits measured far below it (integration errors 1e-8 to 1e-5 nats at 16 steps);
# a make_moons fit that began exploiting its 8 steps crossed it after epoch 51 (docs: benchmarks).
_STEP_TOLERANCE = 0.01
_MAX_STEP_REFINEMENTS = 2

# weight_decay="auto" above two features, where the fits measured were limited by overfitting (see the
# class docstring and the benchmarks page).
_AUTO_WEIGHT_DECAY = 0.1

# Parameters that weight decay leaves alone, as skorch's optimizer__param_groups: the biases, and the
# quadratic and linear terms A, b, c of the potential, which carry its Gaussian part (decay would pull it
# toward the identity map, not toward a smoother network). Decay acts on the residual network's weights
# K_0, K_i and w only. Measured against decaying every parameter (0.1; seeds 0 and 1, digits also 2):
# banana10 +0.028 and +0.010 nats, gmm10 -0.013 and +0.010, digits +0.23, -0.05 and -0.06 (docs:
# benchmarks).
_UNDECAYED = [("potential.[Abc]", {"weight_decay": 0.0}), ("potential.*bias", {"weight_decay": 0.0})]
_DECAYED_GROUP = len(_UNDECAYED)  # skorch appends the remaining parameters' group after the listed ones

# Training is measured in optimizer steps: validation runs after every round of this many (fewer in
# the last round of a budget), so its cost does not grow with the number of rows.
_VALIDATION_INTERVAL = 100

# At most this many rows are held out for validation: enough to rank weights by their held-out
# likelihood, and a bounded cost per round whatever the size of the data.
_MAX_VALID_ROWS = 2000

# A trial of n_init runs the first 1 / _TRIAL_SHARE of its fit's budget.
_TRIAL_SHARE = 25


class OTFlowDensity(ClassNamePrefixFeaturesOutMixin, TransformerMixin, DensityMixin, BaseEstimator):
    r"""Density estimation with OT-Flow, a continuous normalizing flow regularized by optimal transport.

    The flow moves data :math:`x` along :math:`\dot x = -\nabla_x\Phi(x, t)` from :math:`t = 0` to a
    latent :math:`z = x(1)` meant to be standard normal. :math:`\Phi` is a small residual network plus a
    low-rank quadratic; its gradient and the exact trace of its Hessian are computed analytically, so the
    log-likelihood :math:`\log p(x) = \log\mathcal N(z; 0, I) + \ell(1)` is exact up to the RK4
    integration. Training minimises the mean of :math:`L + \alpha C + \alpha_{hjb} R`: the transport
    cost, the negative log-likelihood and the Hamilton-Jacobi-Bellman residual.

    Parameters
    ----------
    alpha : float, default=100.0
        Weight of the likelihood term against the transport cost (Li & Jing's :math:`\alpha`). Larger
        values fit the data more closely and make the flow less regular; as :math:`\alpha \to \infty`
        the fitted map approaches the optimal transport map to :math:`\mathcal N(0, I)`. Choose it by
        cross-validated log-likelihood (``GridSearchCV``), never by the training objective.
    alpha_hjb : float, default=1.0
        Weight of the HJB residual penalty.
    hidden_width : int or "auto", default="auto"
        Width :math:`m` of the residual network. ``"auto"`` is 32 for one or two features and 64 above.
        At two features a step is bound by the number of tensor operations, so a wider network costs
        time that the fit needs for steps; above, the extra capacity pays (see the benchmarks page). The
        OT-Flow paper used 128 to 512 on 6 to 63 features: give a larger width for data with many
        features.
    n_layers : int or "auto", default="auto"
        Number of residual layers. ``"auto"`` is 2 for one or two features and 1 above. On the three
        two-feature benchmark sets (make_moons, 8 Gaussians and the checkerboard, three seeds each) a
        second layer scored 0.058 nats higher on average (-0.007 to +0.234, lower once), for 1.6
        times the time per fit. Above two features one layer trains on the fastest path (its
        trace's blocks are products of one matrix built from the weights once per integration); a
        second layer was not measured there. See the benchmarks page.
    rank : int, default=10
        Rank of the quadratic part (capped at ``n_features + 1``).
    n_steps : int, default=8
        RK4 steps used in training, to start with. After each round of ``fit``, up to 128 training
        rows are integrated with this count and twice it; where their mean log-likelihood differs by
        more than 0.01 nats, the flow has begun to exploit the steps' integration error (its training
        loss falls while its true likelihood does not), and training goes on with 1.5 times the steps,
        at most twice per fit (8, 12, 18 steps). ``n_steps_`` is the count training ended with.
    n_steps_eval : int or None, default=None
        RK4 steps used by validation, ``score_samples``, ``transform``, ``sample`` and the other
        evaluations. ``None`` means ``2 * n_steps_``, doubled after training (up to 8 times as many) for
        a fitted flow that this count does not resolve: one whose training rows' mean log-likelihood
        moves by more than 0.05 nats with twice the steps, with a warning (``n_steps_eval_``).
    max_iter : int, default=2000
        Maximum number of optimizer steps (iterations), each on one minibatch of ``batch_size`` rows.
        Unlike the epochs of :class:`~sklearn.neural_network.MLPClassifier`, the count does not
        depend on the number of rows, so the fit's time does not grow with the data: larger data give
        fresher minibatches, not longer fits. The learning rate anneals over this budget.
    max_time : float or None, default=None
        Wall-clock budget of ``fit`` in seconds. Training ends by then (with the best validated
        weights, as at the end of ``max_iter``), and the learning rate anneals over whichever of
        ``max_iter`` and ``max_time`` runs out first; the final check of the integration error comes
        after it. ``None``: no limit.
    n_init : int, default=1
        Number of initializations to try, as in :class:`~sklearn.mixture.GaussianMixture`. Each trains
        for the first 1/25 of its fit's budget (``ceil(max_iter / 25)`` steps, or 1/25 of
        ``max_time``; the same schedule, minibatches and validation rows), and the whole fit of the
        one whose trial ends with the lowest validation NLL (training NLL without ``early_stopping``)
        runs, its trial included: ``n_init / 25`` of a fit more than one fit (with ``max_time``,
        within it). On multimodal data the initialization decides much of the score, and the early
        validation NLL ranks the final scores well (see the benchmarks page). Not used by
        ``partial_fit`` or a warm start, which continue fitted weights.
    batch_size : int or "auto", default="auto"
        Minibatch size. ``"auto"`` is ``min(256, max(32, n_train // 20))`` rows, ``n_train`` the rows
        left after the validation split (256 in ``partial_fit``): 256 rows from 5,120 training rows up,
        so that a pass over small data is at least 20 steps. At a few features a step costs about the
        same for 64 or 256 rows; larger batches than 256 did not buy a better score in the same time
        (see the benchmarks page).
    learning_rate : float, default=0.02
        Adam's learning rate: constant for the first 60 % of the budget (``max_iter`` or ``max_time``,
        whichever runs out first), then falling linearly to 0 at its end.
    weight_decay : float or "auto", default="auto"
        Decoupled weight decay (:class:`torch.optim.AdamW`): each optimiser step first scales the
        residual network's weight matrices (:math:`K_0`, :math:`K_i` and :math:`w`) by
        :math:`1 - \eta\lambda`, :math:`\eta` the scheduled learning rate, then takes Adam's step;
        ``0`` is plain Adam. ``"auto"`` is 0 for one or two features and 0.1 above. Above two
        features the undecayed benchmark fits overfit: their held-out rows scored 0.17 to 0.18 nats
        below their training rows on two 10-D Gaussian mixtures (under the true density, 0.02 above),
        and 3.1 nats below on the 15-dimensional digits. With 0.1 the held-out score rose on digits
        from -45.22 to -44.64 and on one mixture from -13.56 to -13.49 (-13.61 on the other either
        way). At two features the fits were limited by bias instead (make_moons: training and held-out
        rows alike, 0.03 nats below the true density), and decay hurt: with 0.2 make_moons stayed near
        its linear start (-1.07 against -0.32). The biases and the potential's quadratic and linear
        terms (:math:`A`, :math:`b`, :math:`c`: its Gaussian part) are not decayed. Decaying them too
        scored 0.010 to 0.028 nats lower on three of four 10-D fits and 0.013 higher on the fourth.
    ema_decay : float in [0, 1), default=0.995
        Decay :math:`\beta` of the exponential moving average of the weights,
        :math:`\bar\theta \leftarrow \beta\bar\theta + (1-\beta)\theta` after every optimiser step.
        Validation, early stopping and the fitted model use the average; training updates the raw
        weights. ``0`` turns averaging off. It matters where training stops while the learning rate
        is still high (early stopping, or the schedule's constant phase): the validation curve becomes
        smooth and early stopping picks a better round (see the benchmarks page).
    early_stopping : bool, default=True
        Hold out ``validation_fraction`` of the data (at most 2,000 rows), score it after every 100
        optimizer steps, keep the best weights, and stop when, during the learning rate's fall, its
        negative log-likelihood has not improved for ``n_iter_no_change`` steps and for half the fall
        (a stall while the rate is constant stops nothing: the fall is what resolves it). The held-out
        likelihood is computed as ``score`` computes it (``n_steps_eval`` or twice the training steps,
        exact trace), so a flow that learns to exploit the training steps' discretization error is not
        mistaken for a better one (unless it exploits these steps too: see ``n_steps_eval``).
    validation_fraction : float, default=0.1
        Fraction of the training data held out for early stopping, at most 2,000 rows.
    n_iter_no_change : int, default=500
        Patience of early stopping, in optimizer steps of the learning rate's fall (rounded up to the
        validation interval of 100 steps), and at least half the fall (see ``early_stopping``).
    standardize : bool, default=True
        Standardize each feature before the flow. Scores and samples are always in the caller's units.
    dtype : {"float32", "float64"}, default="float32"
        Precision of training. Evaluation always runs in float64.
    trace_precision : {"auto", "exact"}, default="auto"
        ``"auto"`` runs the Hessian-trace block products of *training* in bfloat16 where the hardware
        supports it natively and the blocks are large (float32 training only); ``"exact"`` never does.
        The trace stays exact in evaluation either way.
    callbacks : list of skorch callbacks or None, default=None
        Extra skorch callbacks, run after the built-in ones.
    warm_start : bool, default=False
        Start ``fit`` from the previous fit's weights and standardization, with the current
        parameters: a new optimiser, learning-rate schedule, weight average and early stopping, for a
        new budget of ``max_iter`` steps (and ``max_time``). The architecture (``hidden_width``,
        ``n_layers``, ``rank``) must be unchanged.
    random_state : int, RandomState instance or None, default=None
        Seeds weight initialisation, minibatch order and the validation split, each drawn from a
        generator of the fit's own. An int gives bit-identical fits on the CPU at the same thread
        count, also in concurrent threads (see the user guide's Reliability section); the global torch
        random state is neither read nor moved.
    device : str, default="cpu"
        Torch device, e.g. ``"cuda"``.
    verbose : int, default=0
        ``0`` is silent; ``1`` shows a progress bar (share of the budget, elapsed time, time left and
        the latest validation log-likelihood in the data's units) and a summary line at the end;
        ``2`` also prints skorch's table, a row per round of 100 steps.

    Attributes
    ----------
    n_features_in_ : int
        Number of features seen during fit.
    feature_names_in_ : ndarray of shape (`n_features_in_`,)
        Names of the features seen during fit, when ``X`` has string column names.
    mean_ : ndarray of shape (`n_features_in_`,)
        Per-feature mean removed before the flow (zeros when ``standardize=False``).
    scale_ : ndarray of shape (`n_features_in_`,)
        Per-feature scale divided out before the flow (ones when ``standardize=False``).
    net_ : skorch.NeuralNet
        The trained skorch net; ``net_.module_.potential`` is the potential :math:`\Phi`.
    history_ : skorch.History
        A row per round of training (100 optimizer steps in ``fit``, one pass over the chunk in
        ``partial_fit``): ``iter`` (the steps run by the end of the round), ``train_loss``,
        ``train_nll``, ``train_transport``, ``train_hjb``, the training ``n_steps`` (``fit`` only),
        ``dur`` (seconds) and, with early stopping, the losses with the ``valid_`` prefix.
    n_iter_ : int
        Number of optimizer steps run by the last ``fit`` (also with ``warm_start``), plus those of the
        ``partial_fit`` calls since.
    stopped_by_ : str
        Why the last training call ended: ``"max_iter"``, ``"max_time"``, ``"early stopping"`` or
        ``"divergence"`` (``fit``), ``"pass"`` (``partial_fit``: one pass over its chunk).
    fit_time_ : float
        Seconds of the last ``fit`` (training and the final check of the integration error).
    n_steps_ : int
        RK4 steps that training ended with: ``n_steps``, or more where the flow began to exploit their
        integration error (see ``n_steps``; the history's ``n_steps`` column gives each round's).
    n_steps_eval_ : int
        RK4 steps that the evaluations use: ``n_steps_eval`` if given, else ``2 * n_steps_``, or more
        where that does not resolve the fitted flow (see ``n_steps_eval``).
    integration_error_ : float
        Change of the mean log-likelihood of (up to 512 of) the training samples, in nats, from
        ``n_steps_eval_`` steps to twice as many; above 0.05 a warning says that scores are unreliable.

    See Also
    --------
    sklearn.neighbors.KernelDensity : Kernel density estimation.
    sklearn.mixture.GaussianMixture : Gaussian mixture density.

    References
    ----------
    D. Onken, S. Wu Fung, X. Li, L. Ruthotto. OT-Flow: Fast and Accurate Continuous Normalizing Flows via
    Optimal Transport. AAAI 2021.

    Examples
    --------
    >>> from sklearn.datasets import make_moons
    >>> from sklearn_otflow import OTFlowDensity
    >>> X, _ = make_moons(200, noise=0.05, random_state=0)
    >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
    >>> est.score_samples(X[:5]).shape
    (5,)
    >>> est.sample(3, random_state=0).shape
    (3, 2)
    >>> est.transform(X[:4]).shape
    (4, 2)
    """

    _parameter_constraints: dict = {
        "alpha": [_Number(numbers.Real, 0, None, closed="neither")],
        "alpha_hjb": [_Number(numbers.Real, 0, None, closed="left")],
        "hidden_width": [_Number(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "n_layers": [_Number(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "rank": [_Number(numbers.Integral, 1, None, closed="left")],
        "n_steps": [_Number(numbers.Integral, 1, None, closed="left")],
        "n_steps_eval": [_Number(numbers.Integral, 1, None, closed="left"), None],
        "max_iter": [_Number(numbers.Integral, 1, None, closed="left")],
        "max_time": [_Number(numbers.Real, 0, None, closed="neither"), None],
        "n_init": [_Number(numbers.Integral, 1, None, closed="left")],
        "batch_size": [_Number(numbers.Integral, 1, None, closed="left"), StrOptions({"auto"})],
        "learning_rate": [_Number(numbers.Real, 0, None, closed="neither")],
        "weight_decay": [_Number(numbers.Real, 0, None, closed="left"), StrOptions({"auto"})],
        "ema_decay": [_Number(numbers.Real, 0, 1, closed="left")],
        "early_stopping": ["boolean"],
        "validation_fraction": [_Number(numbers.Real, 0, 1, closed="neither")],
        "n_iter_no_change": [_Number(numbers.Integral, 1, None, closed="left")],
        "standardize": ["boolean"],
        "dtype": [StrOptions(set(_DTYPES))],
        "trace_precision": [StrOptions({"auto", "exact"})],
        "callbacks": [list, None],  # of skorch callbacks: checked in _build_net
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "device": [str, torch.device],  # 'cpu' or CUDA: checked in _build_net
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        *,
        alpha=100.0,
        alpha_hjb=1.0,
        hidden_width="auto",
        n_layers="auto",
        rank=10,
        n_steps=8,
        n_steps_eval=None,
        max_iter=2000,
        max_time=None,
        n_init=1,
        batch_size="auto",
        learning_rate=0.02,
        weight_decay="auto",
        ema_decay=0.995,
        early_stopping=True,
        validation_fraction=0.1,
        n_iter_no_change=500,
        standardize=True,
        dtype="float32",
        trace_precision="auto",
        callbacks=None,
        warm_start=False,
        random_state=None,
        device="cpu",
        verbose=0,
    ):
        self.alpha = alpha
        self.alpha_hjb = alpha_hjb
        self.hidden_width = hidden_width
        self.n_layers = n_layers
        self.rank = rank
        self.n_steps = n_steps
        self.n_steps_eval = n_steps_eval
        self.max_iter = max_iter
        self.max_time = max_time
        self.n_init = n_init
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.weight_decay = weight_decay
        self.ema_decay = ema_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.n_iter_no_change = n_iter_no_change
        self.standardize = standardize
        self.dtype = dtype
        self.trace_precision = trace_precision
        self.callbacks = callbacks
        self.warm_start = warm_start
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Fit the flow to ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data; at least 2 samples, finite values.
        y : None
            Ignored; present for API consistency.

        Returns
        -------
        self : OTFlowDensity
            The fitted estimator.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> est.n_features_in_, est.mean_.shape, est.scale_.shape
        (2, (2,), (2,))
        """
        with _kept_on_failure(self):
            return self._fit(X)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, *, mean=None, scale=None):
        """One pass of training over ``X``, for data that arrive in chunks.

        The first call on an unfitted estimator builds the model, sets ``n_features_in_`` and fixes the
        standardization: ``mean`` and ``scale`` if given (e.g. from a
        :class:`~sklearn.preprocessing.StandardScaler` run over the whole stream), else this chunk's
        own. Later calls continue with both fixed; a model fitted by :meth:`fit` can be continued the
        same way. Each call is one pass over ``X`` in mini-batches of ``batch_size`` at the constant
        ``learning_rate``, with no validation split, early stopping, learning-rate schedule or weight
        averaging: the caller decides when the stream ends (``max_iter``, ``max_time``,
        ``early_stopping`` and ``ema_decay`` are not used). ``weight_decay`` applies as in
        :meth:`fit`. ``learning_rate``, ``weight_decay``, ``batch_size``, ``alpha`` and ``alpha_hjb``
        are read at every call, so a stream can lower its learning rate as it goes; the optimiser's
        state carries over.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A chunk of training data, finite values; at least 2 samples in the first call (which may
            fix the standardization), 1 in later calls.
        y : None
            Ignored; present for API consistency.
        mean : array-like of shape (n_features,), default=None
            Standardization offset, first call only. Requires ``scale``.
        scale : array-like of shape (n_features,), default=None
            Standardization scale (positive), first call only. Requires ``mean``.

        Returns
        -------
        self : OTFlowDensity
            The estimator, trained one more pass.

        Examples
        --------
        >>> import numpy as np
        >>> from sklearn_otflow import OTFlowDensity
        >>> chunks = np.random.default_rng(0).normal(size=(3, 100, 2))
        >>> est = OTFlowDensity(hidden_width=8, random_state=0)
        >>> for chunk in chunks:
        ...     est = est.partial_fit(chunk)
        >>> est.n_iter_, est.score_samples(chunks[0][:5]).shape
        (3, (5,))
        """
        with _kept_on_failure(self):
            return self._partial_fit(X, mean, scale)

    def score_samples(self, X):
        """Log-density of each sample, in the caller's units.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        log_density : ndarray of shape (n_samples,)
            :math:`\\log p(x)`, float64, the standardization's Jacobian included.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> est.score_samples(X[:5]).shape
        (5,)
        """
        return self._flow(X, keep=_log_prob_only)[0] - np.log(self.scale_).sum()

    def score(self, X, y=None):
        """Mean log-likelihood of ``X`` (scikit-learn's convention for GaussianMixture), higher is better.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
        y : None
            Ignored.

        Returns
        -------
        log_likelihood : float
            Mean of :meth:`score_samples` over ``X``.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> type(est.score(X)).__name__
        'float'
        """
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None):
        """Draw samples: latent :math:`z \\sim \\mathcal N(0, I)` flowed back from :math:`t = 1` to 0.

        Parameters
        ----------
        n_samples : int, default=1
            Number of samples.
        random_state : int, RandomState instance or None, default=None
            Seeds the latent draws.

        Returns
        -------
        X : ndarray of shape (n_samples, n_features)
            Samples in the caller's units.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> est.sample(3, random_state=0).shape
        (3, 2)
        """
        check_is_fitted(self)
        if not isinstance(n_samples, numbers.Integral) or isinstance(n_samples, bool) or n_samples < 1:
            raise ValueError(f"n_samples must be a positive integer, got {n_samples!r}.")
        z = check_random_state(random_state).standard_normal((n_samples, self.n_features_in_))
        return self._run(z, inverse=True, keep=_latent_only)[0]

    def transform(self, X):
        """Map ``X`` to the latent space: :math:`z = x(1)`, meant to be standard normal.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        Z : ndarray of shape (n_samples, n_features)

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> est.transform(X[:4]).shape
        (4, 2)
        """
        return self._flow(X, keep=_latent_only)[0]

    def inverse_transform(self, X):
        """Map latent points back to the data space (the inverse flow), in the caller's units.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Latent points.

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> Z = est.transform(X[:4])
        >>> est.inverse_transform(Z).shape
        (4, 2)
        """
        check_is_fitted(self)
        Z = check_input(self, X, reset=False, check_names=False)  # latent columns: their own names
        return self._run(Z, inverse=True, keep=_latent_only)[0]

    def flow_diagnostics(self, X):
        """Per-sample quantities along the flow, in the model's standardized coordinates.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        diagnostics : Bunch
            ``latent`` (n_samples, n_features): :math:`z = x(1)`; ``log_det`` (n_samples,):
            :math:`\\ell(1) = \\log|\\det \\partial z / \\partial \\tilde x|` with :math:`\\tilde x` the
            standardized input; ``transport_cost`` (n_samples,): :math:`L = \\int_0^1 \\tfrac12|v|^2 dt`;
            ``hjb_residual`` (n_samples,): :math:`R`.

        Examples
        --------
        >>> from sklearn.datasets import make_moons
        >>> from sklearn_otflow import OTFlowDensity
        >>> X, _ = make_moons(200, noise=0.05, random_state=0)
        >>> est = OTFlowDensity(hidden_width=8, max_iter=20, random_state=0).fit(X)
        >>> diagnostics = est.flow_diagnostics(X[:4])
        >>> diagnostics.latent.shape, diagnostics.log_det.shape, diagnostics.transport_cost.shape
        ((4, 2), (4,), (4,))
        """
        z, ell, L, R = self._flow(X)
        return Bunch(latent=z, log_det=ell, transport_cost=L, hjb_residual=R)

    # ------------------------------------------------------------------ private

    def _fit(self, X):
        started = time.perf_counter()
        warm = self.warm_start and hasattr(self, "net_")
        X = check_input(self, X, reset=not warm, min_samples=2)
        if not warm:
            self.mean_, self.scale_ = standardization(X, self.standardize)
        seeds = self._seeds(1 if warm else self.n_init)
        # warm: a new net with the current parameters, starting from the fitted weights (the fitted
        # net itself is left as it is, see _kept_on_failure) and at least the steps they ended with
        start = self.net_.module_.potential if warm else None
        steps = max(self.n_steps, getattr(self, "n_steps_", 0)) if warm else self.n_steps
        deadline = None if self.max_time is None else started + self.max_time
        seed = self._pick_initialization(X, seeds, deadline) if len(seeds) > 1 else seeds[0]
        net = self._build_net(seed, len(X), n_steps=steps, split_seed=seeds[0], deadline=deadline)
        self._train(net, X, initialize=True, start=start)
        self.fit_time_ = time.perf_counter() - started
        if self.verbose:
            print(self._summary(), flush=True)
        return self

    def _pick_initialization(self, X: np.ndarray, seeds: list[int], deadline: float | None = None) -> int:
        """The seed, of ``seeds``, whose trial (the first 1/25 of its fit) ends with the lowest NLL.

        Each trial is the beginning of the fit that its seed would give (the same schedule, batches and
        validation rows, ``seeds[0]`` seeding the split for all), so the fit that follows repeats the
        winner's trial and goes on. The NLL compared is the trial's last ``valid_nll`` (``train_nll``
        without early stopping); a trial whose loss diverged loses.
        """
        scores = []
        for i, seed in enumerate(seeds):
            net = self._build_net(seed, len(X), split_seed=seeds[0], deadline=deadline, trial=True)
            try:
                self._run_net(net, X, initialize=True)
                key = "valid_nll" if "valid_nll" in net.history[-1] else "train_nll"
                score = float(net.history[-1, key])
            except TrainingDiverged:
                score = math.inf
            scores.append(score if math.isfinite(score) else math.inf)
            if self.verbose:
                steps = _steps_run(net.history or [])
                print(f"initialization {i + 1}/{len(seeds)}: NLL {score:.4f} after {steps} steps")
        return seeds[int(np.argmin(scores))]

    def _summary(self) -> str:
        """The line that ``verbose`` prints after a fit."""
        line = (
            f"{type(self).__name__}: {self.n_iter_} steps in {self.fit_time_:.1f} s, stopped by "
            f"{self.stopped_by_}"
        )
        if "valid_nll" in self.history_[-1]:
            nll = self.history_[:, "valid_nll"]
            best = int(np.argmin(nll))
            log_lik = -nll[best] - np.log(self.scale_).sum()
            line += (
                f"; best validation log-likelihood {log_lik:.4f} per sample at step "
                f"{self.history_[best, 'iter']}"
            )
        return line + f"; RK4 steps {self.n_steps_} in training, {self.n_steps_eval_} in evaluation."

    def _partial_fit(self, X, mean, scale):
        first = not hasattr(self, "net_")
        X = check_input(self, X, reset=first, min_samples=2 if first else 1)
        if not first and (mean is not None or scale is not None):
            raise ValueError(
                "mean and scale can only be given in the first call to partial_fit; the standardization "
                f"is fixed after it (mean_={self.mean_!r}, scale_={self.scale_!r})."
            )
        if first:
            self.mean_, self.scale_ = _given_standardization(X, mean, scale, self.standardize)
            net = self._build_net(self._seed(), len(X), streaming=True)
        else:
            net = copy.deepcopy(self.net_)  # see _kept_on_failure
            # a model from fit() continues without its budget, validation split, early stopping,
            # schedule and weight averaging, at the initial learning rate, a pass over X per call
            names = dict(net.callbacks_)
            built_in = ("budget", "progress", "early_stopping", "weight_averaging", "step_refinement")
            off = {f"callbacks__{name}": None for name in built_in if name in names}
            if off or net.train_split is not None:
                net.set_params(train_split=None, **off).initialize_callbacks()
                # as set_params records them (skorch's set_params refuses iterator parameters once
                # the net is initialized): a pass over X per call, no budget
                net.iterator_train__round_len = net.iterator_train__budget = None
            self._continue_with_user_callbacks(net)
            self._continue_with_current_parameters(net, len(X))
        return self._train(net, X, initialize=first, epochs=1)

    def _continue_with_user_callbacks(self, net: OTFlowNet) -> None:
        """Give a continued ``net`` (a copy of ``net_``) the user's ``callbacks`` as they are now: the same
        objects as the fitted net's where unchanged (not re-initialized, as skorch's ``partial_fit``
        leaves them), new ones (``set_params(callbacks=...)`` since) initialized."""
        used = {id(cb) for name, cb in self.net_.callbacks_ if name.startswith("user_")}
        user = self._user_callbacks()
        for _, cb in user:
            if id(cb) not in used:
                cb.initialize()
        net.callbacks = [(n, cb) for n, cb in net.callbacks if not n.startswith("user_")] + user
        net.callbacks_ = [(n, cb) for n, cb in net.callbacks_ if not n.startswith("user_")] + user

    def _user_callbacks(self) -> list[tuple[str, Callback]]:
        """``callbacks``, named for skorch (``user_0``, ...), each checked to be a skorch callback."""
        for i, cb in enumerate(self.callbacks or []):
            if not isinstance(cb, Callback):
                raise ValueError(
                    "callbacks must be a list of skorch.callbacks.Callback instances; got "
                    f"{cb!r} ({type(cb).__name__}) at position {i}."
                )
        return [(f"user_{i}", cb) for i, cb in enumerate(self.callbacks or [])]

    def _continue_with_current_parameters(self, net: OTFlowNet, n_samples: int) -> None:
        """Apply the parameters that may change between ``partial_fit`` calls to a continued ``net``.

        The learning rate, weight decay, batch size and loss weights, without re-creating the optimiser
        (Adam's moments carry over from call to call): skorch's ``set_params`` updates ``lr`` and
        ``optimizer__*`` in place, but would re-create the optimiser for a criterion parameter, so the
        loss weights are set on the criterion directly.
        """
        decay = self._weight_decay()
        net.set_params(  # optimizer__weight_decay would set every group's, the undecayed ones' too
            lr=self.learning_rate,
            batch_size=self._batch_rows(n_samples, None),
            **{f"optimizer__param_groups__{_DECAYED_GROUP}__weight_decay": decay},
        )
        net.optimizer__weight_decay = decay  # the remaining group's, for a later re-build
        for name in ("alpha", "alpha_hjb"):
            value = float(getattr(self, name))
            setattr(net, f"criterion__{name}", value)  # as set_params records it, for a later re-build
            setattr(net.criterion_, name, value)
        dict(net.callbacks_)["grad_clip"].gradient_clip_value = self._clip_norm()

    def _clip_norm(self) -> float:
        """Gradient-norm clipping threshold: only real spikes; typical norms grow with the loss weights,
        about 1-10 per unit weight."""
        return 20.0 * (1.0 + self.alpha + self.alpha_hjb)

    def _width(self) -> int:
        """``hidden_width``, with ``"auto"`` resolved for ``n_features_in_`` (see the class docstring)."""
        if self.hidden_width != "auto":
            return self.hidden_width
        return 32 if self.n_features_in_ <= 2 else 64

    def _n_layers(self) -> int:
        """``n_layers``, with ``"auto"`` resolved for ``n_features_in_`` (see the class docstring)."""
        if self.n_layers != "auto":
            return self.n_layers
        return 2 if self.n_features_in_ <= 2 else 1

    def _weight_decay(self) -> float:
        """``weight_decay``, with ``"auto"`` resolved for ``n_features_in_`` (see the class docstring)."""
        if self.weight_decay != "auto":
            return float(self.weight_decay)
        return 0.0 if self.n_features_in_ <= 2 else _AUTO_WEIGHT_DECAY

    def _seed(self) -> int:
        return self._seeds(1)[0]

    def _seeds(self, n: int) -> list[int]:
        """``n`` torch seeds drawn from ``random_state`` (the first is the same for every ``n``)."""
        rng = check_random_state(self.random_state)
        return [int(rng.randint(np.iinfo(np.int32).max)) for _ in range(n)]

    def _train(
        self,
        net: OTFlowNet,
        X: np.ndarray,
        initialize: bool,
        start: Potential | None = None,
        **fit_params,
    ):
        """Train ``net`` on rows ``X`` (caller's units) with skorch, then record the fitted attributes.

        ``initialize`` builds the net's module, optimiser and callbacks first; ``start``, a potential of
        the same architecture whose weights to begin from instead of the random initialisation.
        """
        diverged = None
        try:
            self._run_net(net, X, initialize, start, **fit_params)
            self.stopped_by_ = _stop_reason(net)
        except TrainingDiverged as exc:
            self._recover(net, dict(net.callbacks_)["finite_guard"], exc)
            self.stopped_by_, diverged = "divergence", exc
        self.net_ = net
        self.history_ = net.history
        self.n_iter_ = _steps_run(net.history)
        self.n_steps_ = net.module_.n_steps
        validated = self._eval_steps(self.n_steps_)  # the count validation ended with
        self._resolve_eval_steps(X[:512])
        if diverged is not None:
            if not self.integration_error_ <= _MAX_INTEGRATION_ERROR:  # the restored weights are no model
                raise ValueError(
                    f"Training diverged: {diverged}; the weights of the last round with a finite loss "
                    f"give a flow that RK4 does not resolve (the training rows' mean log-likelihood moves "
                    f"by {self.integration_error_:.3g} nats with twice its {self.n_steps_eval_} steps). "
                    "Try a smaller learning_rate, standardize=True, or dtype='float64'."
                ) from diverged
            warnings.warn(
                f"Training stopped: {diverged}. The weights of the last round with a finite loss were "
                "restored.",
                RuntimeWarning,
                stacklevel=5,
            )
        if not self.integration_error_ <= _MAX_INTEGRATION_ERROR:  # also NaN
            warnings.warn(
                f"RK4 with {self.n_steps_eval_} steps does not resolve the fitted flow: "
                f"the training data's mean log-likelihood moves by {self.integration_error_:.3g} nats "
                "with twice the steps, so scores are unreliable. Increase n_steps or n_steps_eval.",
                RuntimeWarning,
                stacklevel=5,
            )
        elif self.n_steps_eval_ > validated:
            warnings.warn(
                f"RK4 with {validated} steps does not resolve the fitted flow, so scores, "
                f"samples and transforms use {self.n_steps_eval_} (n_steps_eval_). Early stopping "
                f"validated with {validated} and may have kept a flow that exploits their "
                "integration error: try a smaller learning_rate or a larger n_steps.",
                RuntimeWarning,
                stacklevel=5,
            )
        return self

    def _run_net(
        self,
        net: OTFlowNet,
        X: np.ndarray,
        initialize: bool,
        start: Potential | None = None,
        **fit_params,
    ) -> None:
        """skorch's training of ``net`` on rows ``X`` (caller's units); see ``_train``."""
        Xt = torch.as_tensor((X - self.mean_) / self.scale_, dtype=_DTYPES[self.dtype])
        work = self._width() * net.batch_size * (self.n_features_in_ + 1)  # entries of an activation
        with thread_share(work) as rebalance:
            if initialize:
                net.initialize()
                if start is not None:
                    _load_weights(net.module_.potential, start)
            net.rebalance_threads_ = rebalance
            try:
                net.partial_fit(Xt, **fit_params)
            except Interrupted as exc:  # Ctrl-C: on to the caller, the estimator as it was before
                raise exc.interrupt from None
            finally:
                net.rebalance_threads_ = None

    def _resolve_eval_steps(self, X: np.ndarray) -> None:
        """Set ``n_steps_eval_`` and ``integration_error_`` from rows ``X`` (see the class docstring).

        From the evaluation step count, double while that moves the rows' mean log-likelihood by more
        than ``_MAX_INTEGRATION_ERROR`` (``n_steps_eval=None`` only, up to ``_MAX_EVAL_DOUBLINGS``
        times); ``integration_error_`` is the last change measured.
        """
        steps = self._eval_steps(self.n_steps_)
        limit = _MAX_EVAL_DOUBLINGS if self.n_steps_eval is None else 0
        log_p = self._model_log_prob(X, steps, finite=False)
        if not np.isfinite(log_p).all():  # the weights training ended with (or restored) are no model
            raise ValueError(
                f"Training diverged: the fitted flow gives {np.sum(~np.isfinite(log_p))} of {len(X)} "
                "training rows a log-likelihood that is not finite. Try a smaller learning_rate, "
                "standardize=True, or dtype='float64'."
            )
        log_p = log_p.mean()
        for doubling in range(limit + 1):
            finer = self._model_log_prob(X, 2 * steps, finite=False).mean()
            error = abs(log_p - finer)
            if error <= _MAX_INTEGRATION_ERROR or doubling == limit or not np.isfinite(finer):
                break
            steps, log_p = 2 * steps, finer
        self.n_steps_eval_, self.integration_error_ = steps, float(error)

    def _eval_steps(self, n_steps: int) -> int:
        """The evaluation step count for training with ``n_steps``: ``n_steps_eval``, or twice it."""
        return self.n_steps_eval or 2 * n_steps

    def _model_log_prob(self, X: np.ndarray, n_steps: int | None = None, finite: bool = True) -> np.ndarray:
        """Log-density of rows ``X`` (caller's units) in the model's standardized coordinates."""
        (log_p,) = self._run(X, n_steps=n_steps, keep=_log_prob_only, finite=finite)
        return log_p

    @property
    def _n_features_out(self):
        return self.n_features_in_

    def _batch_rows(self, n_samples: int, validate: bool | None) -> int:
        """``batch_size``, with ``"auto"`` resolved for ``n_samples`` rows (see the class docstring)."""
        if self.batch_size != "auto":
            return self.batch_size
        if validate is None:  # a stream of unknown length
            return 256
        n_train = n_samples - math.ceil(self.validation_fraction * n_samples) if validate else n_samples
        return min(256, max(32, n_train // 20))

    def _build_net(
        self,
        seed: int,
        n_samples: int,
        streaming: bool = False,
        n_steps: int | None = None,
        split_seed: int | None = None,
        deadline: float | None = None,
        trial: bool = False,
    ) -> OTFlowNet:
        """skorch net for ``fit``, training with ``n_steps`` (default: the parameter) to start with, its
        minibatch order seeded by ``seed`` and its validation split by ``split_seed`` (default: ``seed``),
        for a budget of ``max_iter`` steps and until the ``deadline`` (a ``time.perf_counter()``); a
        ``trial`` (``n_init``) stops after 1/25 of it, silently. With ``streaming`` (``partial_fit``), one
        without budget, validation split, early stopping, learning-rate schedule, weight averaging or
        step refinement, a pass over the rows per call, since the stream's length is unknown (an
        average restarted at each call would hold every chunk back to its starting weights)."""
        n_steps = n_steps or self.n_steps
        device = _check_device(self.device)
        d = self.n_features_in_
        gemm_dtype = None
        if (
            self.trace_precision == "auto"
            and self.dtype == "float32"
            and self._width() * d >= _BF16_MIN_BLOCK
        ):
            gemm_dtype = _fast_block_dtype(device)
        validate = self.early_stopping and not streaming
        scores = [
            PassthroughScoring(f"{prefix}_{name}", on_train=prefix == "train")
            for prefix in (("train", "valid") if validate else ("train",))
            for name in ("nll", "transport", "hjb")
        ]
        budget, callbacks = None, []
        if not streaming:  # first: it ends training before any callback begins a round that won't run
            budget = Budget(self.max_iter, deadline, stop_at=1 / _TRIAL_SHARE if trial else 1.0)
            callbacks.append(("budget", budget))
        callbacks += [(score.name, score) for score in scores]
        if not streaming:
            if self.ema_decay > 0:  # before the callbacks that save weights at the end of a round
                callbacks.append(("weight_averaging", WeightAveraging(self.ema_decay)))
            # after the averaging: probes the weights that validation and the fitted model use
            refine = StepRefinement(_STEP_TOLERANCE, _MAX_STEP_REFINEMENTS, self.n_steps_eval is None)
            callbacks.append(("step_refinement", refine))
        callbacks += [
            ("grad_clip", GradientNormClipping(self._clip_norm())),
            ("finite_guard", FiniteGuard()),
        ]
        if validate:
            stop = EarlyStoppingInTheFall(
                budget,
                monitor="valid_nll",
                patience=math.ceil(self.n_iter_no_change / _VALIDATION_INTERVAL),
                threshold=0.0,
                load_best=True,
                sink=print if self.verbose >= 2 else _silent,
            )
            callbacks.append(("early_stopping", stop))
        if budget is not None and self.verbose and not trial:
            log_scale = float(np.log(self.scale_).sum())
            callbacks.append(("progress", Progress(budget, log_scale, type(self).__name__)))
        callbacks += self._user_callbacks()
        split_seed = seed if split_seed is None else split_seed
        n_valid = min(math.ceil(self.validation_fraction * n_samples), _MAX_VALID_ROWS)
        split = ValidSplit(ShuffleSplit(1, test_size=n_valid, random_state=split_seed)) if validate else None
        rounds = 1 if streaming else math.ceil(self.max_iter / _VALIDATION_INTERVAL)
        return OTFlowNet(
            FlowModule,
            module__n_features=d,
            module__width=self._width(),
            module__n_layers=self._n_layers(),
            module__rank=self.rank,
            module__n_steps=n_steps,
            module__n_steps_eval=self._eval_steps(n_steps),
            module__dtype=_DTYPES[self.dtype],
            module__gemm_dtype=gemm_dtype,
            module__seed=seed,
            criterion=OTFlowLoss,
            criterion__alpha=float(self.alpha),
            criterion__alpha_hjb=float(self.alpha_hjb),
            optimizer=torch.optim.AdamW,
            optimizer__weight_decay=self._weight_decay(),
            optimizer__param_groups=_UNDECAYED,
            lr=self.learning_rate,
            max_epochs=rounds,
            batch_size=self._batch_rows(n_samples, None if streaming else validate),
            iterator_train=BatchStream,
            iterator_train__generator=torch.Generator().manual_seed(seed),
            iterator_train__round_len=None if streaming else _VALIDATION_INTERVAL,
            iterator_train__budget=budget,
            # validation is evaluation: no gradients, so score's batches (fewer tensor operations)
            iterator_valid=batch_loader,
            iterator_valid__batch_size=_eval_rows(self._width()),
            train_split=split,
            callbacks=callbacks,
            predict_nonlinearity=None,
            verbose=int(self.verbose >= 2 and not trial),
            device=device,
        )

    def _recover(self, net, guard, exc) -> None:
        """After a non-finite loss: restore the last finite round's weights (``_train`` then checks that
        they give a model), or raise if there are none."""
        if guard.best_state is None:
            raise ValueError(
                f"Training diverged: {exc}, before any round finished with a finite loss. Try a smaller "
                "learning_rate, standardize=True, or dtype='float64'."
            ) from exc
        net.module_.load_state_dict(guard.best_state)

    def _flow(self, X, keep=None):
        check_is_fitted(self)
        X = check_input(self, X, reset=False)
        return self._run(X, keep=keep)

    def _run(
        self, X: np.ndarray, inverse: bool = False, n_steps: int | None = None, keep=None, finite: bool = True
    ) -> tuple[np.ndarray, ...]:
        """Flow rows in float64 through batches of bounded size; numpy outputs.

        Forward, ``X`` is data in the caller's units, standardized batch by batch; inverse, ``X`` is
        latent and the first output comes back in the caller's units. ``keep`` maps a batch's end state
        ``(z, ell, L, R)`` to the tensors to return (default: all four), so that only what the caller
        needs is kept for every row. Memory beyond ``X`` and the outputs is one batch's worth. With
        ``finite``, a row whose outputs are not finite (float64 overflows along its flow) raises.
        """
        # the net's device, not the parameter: skorch loads a CUDA-pickled net on the CPU where none exists
        device = torch.device(self.net_.device)
        potential = copy.deepcopy(self.net_.module_.potential).to(device=device, dtype=torch.float64)
        n_steps = n_steps or self.n_steps_eval_
        rows = _eval_rows(potential.width)
        mean, scale = (torch.as_tensor(a, device=device) for a in (self.mean_, self.scale_))
        outs = None  # allocated once the first batch gives the shapes; filled in place
        with torch.no_grad(), thread_share() as rebalance:
            for start in range(0, X.shape[0], rows):
                rebalance()
                # a copy: as_tensor would share a read-only X's memory, which torch warns about
                x = torch.tensor(X[start : start + rows], dtype=torch.float64, device=device)
                state = flow(potential, x if inverse else (x - mean) / scale, n_steps, inverse=inverse)
                if inverse:
                    state = (state[0] * scale + mean, *state[1:])
                parts = [t.cpu().numpy() for t in (keep(*state) if keep else state)]
                if outs is None:
                    outs = tuple(np.empty((X.shape[0], *part.shape[1:])) for part in parts)
                for out, part in zip(outs, parts):
                    out[start : start + rows] = part
        if finite:
            _check_finite(outs, "latent points" if inverse else "rows")
        return outs

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float64"]
        tags.non_deterministic = False
        return tags


@contextlib.contextmanager
def _kept_on_failure(estimator: OTFlowDensity):
    """A failed fit or partial_fit leaves the estimator, and a fitted model, as they were.

    Training continues on a copy of the fitted net (``_fit``, ``_partial_fit``), so restoring the
    attributes restores the model.
    """
    previous = dict(vars(estimator))
    try:
        yield
    except BaseException:
        vars(estimator).clear()
        vars(estimator).update(previous)
        raise


def _check_finite(outs: tuple[np.ndarray, ...], what: str) -> None:
    """Raise where a row's outputs are not finite: float64 overflows along the flow of rows so far from
    the training data (about 1e150 of its standard deviations) that no density is representable."""
    bad = np.zeros(len(outs[0]), dtype=bool)
    for out in outs:
        bad |= ~np.isfinite(out.reshape(len(out), -1)).all(axis=1)
    if bad.any():
        raise ValueError(
            f"The flow overflows float64 for {bad.sum()} of {len(bad)} {what} (the first is row "
            f"{np.flatnonzero(bad)[0]}): they lie too far from the training data for their results to "
            "be represented. Expected rows within about 1e150 standard deviations of the training data."
        )


def _check_device(device) -> torch.device:
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


def _steps_run(history) -> int:
    """Optimizer steps recorded in a skorch history, a round that ended early (divergence) included."""
    return sum(sum("train_loss" in batch for batch in row["batches"]) for row in history)


def _stop_reason(net: OTFlowNet) -> str:
    """Why ``net``'s training ended, as ``stopped_by_`` says (see the class docstring)."""
    callbacks = dict(net.callbacks_)
    stop = callbacks.get("early_stopping")
    if stop is not None and stop.misses_ >= stop.patience:
        return "early stopping"
    budget = callbacks.get("budget")
    if budget is None:  # partial_fit: one pass over its chunk
        return "pass"
    return budget.stopped_by_ or "max_iter"


def _load_weights(new: Potential, old: Potential) -> None:
    """Start ``new`` from ``old``'s weights (a warm start); their architectures must be the same."""
    sizes = [(p.width, p.n_layers, p.A.shape[0]) for p in (old, new)]
    if sizes[0] != sizes[1]:
        raise ValueError(
            "warm_start=True continues the fitted network, which has hidden_width={}, n_layers={} and "
            "rank={}; the parameters now give hidden_width={}, n_layers={} and rank={}. Set "
            "warm_start=False to fit a new network.".format(*sizes[0], *sizes[1])
        )
    new.load_state_dict(old.state_dict())


def _eval_rows(width: int) -> int:
    """Rows per evaluation batch: the (width, rows) activations stay cache-sized (measured fastest)."""
    return max(256, 2**17 // width)


def _given_standardization(X: np.ndarray, mean, scale, enabled: bool) -> tuple[np.ndarray, np.ndarray]:
    """``(mean, scale)`` given by the caller, checked; else ``X``'s own (see ``standardization``)."""
    if mean is None and scale is None:
        return standardization(X, enabled)
    d = X.shape[1]
    if mean is None or scale is None:
        raise ValueError(f"Expected both mean and scale or neither; got mean={mean!r}, scale={scale!r}.")
    mean, scale = (np.asarray(a, dtype=np.float64).reshape(-1) for a in (mean, scale))
    if mean.shape != (d,) or scale.shape != (d,):
        raise ValueError(
            f"Expected mean and scale of shape ({d},) for X with {d} features; "
            f"got shapes {mean.shape} and {scale.shape}."
        )
    if not (np.isfinite(mean).all() and np.isfinite(scale).all() and (scale > 0).all()):
        raise ValueError(f"Expected finite mean and finite positive scale; got mean={mean}, scale={scale}.")
    return mean, scale


def _latent_only(z, ell, L, R):
    """What ``transform``, ``inverse_transform`` and ``sample`` keep of each evaluated batch."""
    return (z,)


def _log_prob_only(z, ell, L, R):
    """What the log-density keeps of each evaluated batch: log p = -C, in the model's coordinates."""
    return (-negative_log_likelihood(z, ell),)


def _silent(*args, **kwargs) -> None:
    """A sink for skorch's early-stopping message (the history records it)."""
