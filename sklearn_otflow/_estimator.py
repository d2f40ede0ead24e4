"""OTFlowDensity, the OT-Flow continuous normalizing flow as a scikit-learn density estimator, and what
every OT-Flow estimator shares: its parameters, documented once (:data:`PARAMETERS`), and their checks
(:class:`OTFlowBase`)."""

from __future__ import annotations

import contextlib
import numbers
import textwrap

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    DensityMixin,
    _fit_context,
)
from sklearn.utils._param_validation import Interval, StrOptions

from . import _training
from ._evaluation import FittedFlowMixin
from ._net import DTYPES
from ._validation import check_input, given_standardization

__all__ = ["PARAMETERS", "OTFlowBase", "OTFlowDensity", "shared_parameters"]


class _Number(Interval):
    """scikit-learn's :class:`Interval` without booleans: ``True`` is an ``int`` to Python, but never a
    step count, width or loss weight."""

    def is_satisfied_by(self, val):
        return not isinstance(val, (bool, np.bool_)) and super().is_satisfied_by(val)


# The parameters that every OT-Flow estimator shares (its training), documented once.
PARAMETERS = r"""alpha : float, default=100.0
    Weight of the likelihood term against the transport cost (Li & Jing's :math:`\alpha`). Larger
    values fit the data more closely and make the flow less regular; as :math:`\alpha \to \infty`
    the fitted map approaches the optimal transport map to :math:`\mathcal N(0, I)`. Choose it by
    cross-validated log-likelihood (``GridSearchCV``), never by the training objective.
alpha_hjb : float, default=1.0
    Weight of the HJB residual penalty.
hidden_width : int or "auto", default="auto"
    Width :math:`m` of the residual network. ``"auto"`` is 32 for one or two features, where a step is
    bound by the number of operations and width costs steps, and 64 above, where capacity pays
    (evidence: :ref:`the defaults and why <benchmarks-defaults>`). Give a larger width for data with many
    features: the OT-Flow paper used 128 to 512.
n_layers : int or "auto", default="auto"
    Number of residual layers. ``"auto"`` is 2 for one or two features (a better score for the time)
    and 1 above, where one layer trains on a faster trace path (evidence: :ref:`the defaults and why
    <benchmarks-defaults>`).
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
    Maximum number of optimizer steps, each on one minibatch of ``batch_size`` rows. The count does
    not depend on the number of rows, so the fit's time does not grow with the data. The learning
    rate anneals over this budget.
max_time : float or None, default=None
    Wall-clock budget of ``fit`` in seconds (the final check of the integration error comes after
    it). The learning rate anneals over whichever of ``max_iter`` and ``max_time`` runs out first.
    ``None``: no limit.
n_init : int, default=1
    Number of initializations to try, as in :class:`~sklearn.mixture.GaussianMixture`. Each trains for
    the first 1/25 of its fit's budget, and the fit of the one with the lowest validation NLL then
    runs to the end: ``n_init / 25`` of a fit more than one fit. Worth it on multimodal data
    (evidence: :ref:`the defaults and why <benchmarks-defaults>`). Not used by ``partial_fit`` or a warm
    start.
batch_size : int or "auto", default="auto"
    Minibatch size. ``"auto"`` is ``min(256, max(32, n_train // 20))`` rows, ``n_train`` the rows
    left after the validation split (256 in ``partial_fit``), so that a pass over small data is at
    least 20 steps (evidence: :ref:`the defaults and why <benchmarks-defaults>`).
learning_rate : float, default=0.02
    Adam's learning rate: constant for the first 60 % of the budget (``max_iter`` or ``max_time``,
    whichever runs out first), then falling linearly to 0 at its end.
weight_decay : float or "auto", default="auto"
    Decoupled weight decay (:class:`torch.optim.AdamW`): each optimiser step first scales the residual
    network's weight matrices (:math:`K_0`, :math:`K_i` and :math:`w`) by :math:`1 - \eta\lambda`,
    :math:`\eta` the scheduled learning rate, then takes Adam's step; ``0`` is plain Adam. ``"auto"``
    is 0 for one or two features, where fits are limited by bias, and 0.1 above, where they overfit.
    The biases and the potential's quadratic and linear terms (:math:`A`, :math:`b`, :math:`c`: its
    Gaussian part) are not decayed (evidence: :ref:`the defaults and why <benchmarks-defaults>`).
ema_decay : float in [0, 1), default=0.995
    Decay :math:`\beta` of the exponential moving average of the weights, :math:`\bar\theta \leftarrow
    \beta\bar\theta + (1-\beta)\theta` after every optimiser step. Validation, early stopping and the
    fitted model use the average; training updates the raw weights. ``0`` turns averaging off. It
    matters where training stops while the learning rate is still high (early stopping, or the
    schedule's constant phase): the validation curve becomes smooth and early stopping picks a better
    round (evidence: :ref:`the defaults and why <benchmarks-defaults>`).
early_stopping : bool, default=True
    Hold out ``validation_fraction`` of the data (at most 2,000 rows), score it as ``score`` does
    after every 100 optimizer steps, keep the best weights, and stop when, during the learning
    rate's fall, it has not improved for ``n_iter_no_change`` steps and for half the fall.
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
    Start ``fit`` from the previous fit's weights and standardization, with the current parameters
    and a new budget. The architecture (``hidden_width``, ``n_layers``, ``rank``) must be unchanged.
random_state : int, RandomState instance or None, default=None
    Seeds weight initialisation, minibatch order and the validation split. An int gives
    bit-identical fits on the CPU at the same thread count; torch's global random state is neither
    read nor moved.
device : str, default="cpu"
    Torch device, e.g. ``"cuda"``.
verbose : int, default=0
    ``0`` is silent; ``1`` shows a progress bar (share of the budget, elapsed time, time left and
    the latest validation log-likelihood in the data's units) and a summary line at the end;
    ``2`` also prints skorch's table, a row per round of 100 steps.
"""


def shared_parameters(cls):
    """Put :data:`PARAMETERS` in ``cls``'s docstring, on the line that says ``%(parameters)s`` and
    indented as it is (Python 3.13 removes a docstring's indentation, earlier versions keep it)."""
    line = next(line for line in cls.__doc__.splitlines() if line.strip() == "%(parameters)s")
    indent = line[: len(line) - len(line.lstrip())]
    cls.__doc__ = cls.__doc__.replace(line, textwrap.indent(PARAMETERS, indent).rstrip("\n"))
    return cls


class OTFlowBase(BaseEstimator):
    """The parameters of an OT-Flow estimator (:data:`PARAMETERS`): their constraints and ``__init__``."""

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
        "dtype": [StrOptions(set(DTYPES))],
        "trace_precision": [StrOptions({"auto", "exact"})],
        "callbacks": [list, None],  # of skorch callbacks: checked in _net.build_net
        "warm_start": ["boolean"],
        "random_state": ["random_state"],
        "device": [str, torch.device],  # 'cpu' or CUDA: checked in _net.build_net
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


@shared_parameters
class OTFlowDensity(FittedFlowMixin, ClassNamePrefixFeaturesOutMixin, DensityMixin, OTFlowBase):
    r"""Density estimation with OT-Flow, a continuous normalizing flow regularized by optimal transport.

    The flow moves data :math:`x` along :math:`\dot x = -\nabla_x\Phi(x, t)` from :math:`t = 0` to a
    latent :math:`z = x(1)` meant to be standard normal. :math:`\Phi` is a small residual network plus a
    low-rank quadratic; its gradient and the exact trace of its Hessian are computed analytically, so the
    log-likelihood :math:`\log p(x) = \log\mathcal N(z; 0, I) + \ell(1)` is exact up to the RK4
    integration. Training minimises the mean of :math:`L + \alpha C + \alpha_{hjb} R`: the transport
    cost, the negative log-likelihood and the Hamilton-Jacobi-Bellman residual.

    Parameters
    ----------
    %(parameters)s

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
        A row per round of training (100 steps in ``fit``, a pass in ``partial_fit``): ``iter``,
        ``train_loss``, ``train_nll``, ``train_transport``, ``train_hjb``, ``n_steps``, ``dur`` and,
        with early stopping, the losses with the ``valid_`` prefix.
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

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None, sample_weight=None):
        """Fit the flow to ``X``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            Training data; at least 2 samples, finite values.
        y : None
            Ignored; present for API consistency.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the rows (importance or survey weights; ``None``: all equal). The
            fit is that of the rows repeated in proportion to their weights: the standardization uses
            weighted moments, training draws its minibatches in proportion to the weights, and
            validation and early stopping use weighted means. Rows of weight 0 are left out.

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
            return _training.fit(self, X, sample_weight=sample_weight)

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None, sample_weight=None, *, mean=None, scale=None):
        """One pass of training over ``X``, for data that arrive in chunks.

        The first call fixes the standardization (``mean`` and ``scale``, else this chunk's own); a
        model from :meth:`fit` continues too. Each call is one pass over ``X`` at the constant
        ``learning_rate``, without validation, early stopping, schedule or weight averaging: the caller
        decides when the stream ends. ``learning_rate``, ``weight_decay``, ``batch_size``, ``alpha``
        and ``alpha_hjb`` are read at every call; the optimiser's state carries over.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            A chunk of training data, finite values; at least 2 samples in the first call (which may
            fix the standardization), 1 in later calls.
        y : None
            Ignored; present for API consistency.
        sample_weight : array-like of shape (n_samples,), default=None
            Non-negative weights of the chunk's rows (see :meth:`fit`); a first call without a given
            standardization uses them for its moments.
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
            return _training.partial_fit(self, X, sample_weight=sample_weight, mean=mean, scale=scale)

    @property
    def _n_features_out(self):
        return self.n_features_in_

    # ------------------------------------------------------------------ what _training asks

    def _check_fit_data(self, X, y, reset: bool, min_samples: int):
        """The rows that flow and their condition (none: an unconditional density)."""
        return check_input(self, X, reset=reset, min_samples=min_samples), None

    def _standardize(self, X, context, weights, mean=None, scale=None) -> None:
        """Set ``mean_`` and ``scale_`` (``mean`` and ``scale`` if given, else ``X``'s)."""
        self.mean_, self.scale_ = given_standardization(X, mean, scale, self.standardize, weights)

    def _flow_dims(self) -> tuple[int, int]:
        """The number of coordinates that flow and of their condition."""
        return self.n_features_in_, 0

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.allow_nan = False
        tags.transformer_tags.preserves_dtype = ["float64"]
        tags.non_deterministic = False
        return tags


@contextlib.contextmanager
def _kept_on_failure(estimator: OTFlowDensity):
    """A failed fit or partial_fit leaves the estimator, and a fitted model, as they were.

    Training continues on a copy of the fitted net, so restoring the attributes restores the model.
    """
    previous = dict(vars(estimator))
    try:
        yield
    except BaseException:
        vars(estimator).clear()
        vars(estimator).update(previous)
        raise
