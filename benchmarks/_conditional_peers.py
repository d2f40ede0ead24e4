r"""Conditional density estimators :math:`q(y \mid x)` to compare against, for the benchmark only.

Three peers with one scikit-learn-style interface: ``fit(X, y)`` (``X`` of shape ``(n, p)``, ``y`` of
shape ``(n,)`` or ``(n, k)``), ``score_samples(X, y)`` (the log-density :math:`\log q(y_i \mid x_i)` of
each row, in ``y``'s units, nats) and ``score(X, y)`` (their mean). Each standardizes ``X`` and ``y`` with
the training rows' means and standard deviations and corrects the log-density for ``y``'s scaling,
:math:`\log q(y \mid x) = \log \tilde q(\tilde y \mid \tilde x) - \sum_j \log \sigma_{y,j}`. Each chooses
its own hyperparameters on a validation split of the training rows (``validation_fraction`` = 20 %, drawn
by ``ShuffleSplit(1, test_size=0.2, random_state=random_state)``) and records ``fit_time_`` (wall seconds
of the whole ``fit``, search included), ``fit_cpu_time_`` (CPU seconds of the process) and
``validation_scores_`` (each candidate's validation mean log-likelihood, in ``y``'s units).

:class:`ConditionedGMM`
    A full-covariance ``GaussianMixture`` of the joint :math:`(x, y)`, conditioned exactly on :math:`x`:
    :math:`q(y \mid x) = \sum_k \pi_k(x)\,\mathcal N(y;\ \mu_{k,y} + S_{k,yx} S_{k,xx}^{-1}(x - \mu_{k,x}),\
    S_{k,yy} - S_{k,yx} S_{k,xx}^{-1} S_{k,xy})` with :math:`\pi_k(x) \propto \pi_k\,\mathcal N(x;
    \mu_{k,x}, S_{k,xx})`. The number of components and ``reg_covar`` are chosen by the validation
    conditional log-likelihood; the chosen mixture is then refitted on all training rows.
:class:`GaussianMLP`
    A multilayer perceptron mapping :math:`x` to the mean and the Cholesky factor of a Gaussian in
    :math:`y` (diagonal through a softplus, free below it), trained by negative log-likelihood.
:class:`ZukoConditionalNSF`
    ``zuko.flows.NSF(features=k, context=p)``: rational-quadratic spline autoregressive transformations
    whose parameters depend on :math:`x`, trained by maximum likelihood.

The two networks train with Adam on shuffled minibatches of the 80 % part, stop early on the
validation part (patience ``n_iter_no_change`` epochs; at most ``max_epochs`` epochs and ``max_seconds``
CPU seconds per candidate) and keep the best validated weights; the best candidate's early-stopped
network is the fitted model (no refit on all rows: its stopping point was chosen on the other 20 %).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence

import numpy as np
import torch
from scipy.linalg import cho_solve, cholesky, solve_triangular
from scipy.special import logsumexp
from sklearn.base import BaseEstimator
from sklearn.mixture import GaussianMixture
from sklearn.model_selection import ShuffleSplit

LOG_2PI = math.log(2 * math.pi)


class _ConditionalPeer(BaseEstimator):
    """Shared plumbing: array checks, standardization, validation split, scores in ``y``'s units."""

    validation_fraction: float
    random_state: int

    def _check(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        X = np.asarray(X, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        X = X.reshape(len(X), -1)
        y = y.reshape(len(y), -1)
        if len(X) != len(y):
            raise ValueError(f"X and y have different numbers of rows: {len(X)} and {len(y)}.")
        return X, y

    def _standardize_fit(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        """Check, learn the training rows' scales, and return the standardized arrays."""
        X, y = self._check(X, y)
        self.n_features_in_, self.n_outputs_ = X.shape[1], y.shape[1]
        self.x_mean_, self.x_scale_ = X.mean(0), _nonzero(X.std(0))
        self.y_mean_, self.y_scale_ = y.mean(0), _nonzero(y.std(0))
        return self._standardize(X, y)

    def _standardize(self, X, y) -> tuple[np.ndarray, np.ndarray]:
        X, y = self._check(X, y)
        return (X - self.x_mean_) / self.x_scale_, (y - self.y_mean_) / self.y_scale_

    def _split(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation row indices (fixed by ``random_state``)."""
        splitter = ShuffleSplit(1, test_size=self.validation_fraction, random_state=self.random_state)
        return next(splitter.split(np.zeros((n, 1))))

    def _log_jacobian(self) -> float:
        """:math:`\\sum_j \\log \\sigma_{y,j}`: what standardizing ``y`` adds to its log-density."""
        return float(np.log(self.y_scale_).sum())

    def _log_prob(self, Xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """``log q(ys | Xs)`` of standardized rows (standardized units)."""
        raise NotImplementedError

    def score_samples(self, X, y) -> np.ndarray:
        """Conditional log-density of each row.

        Parameters
        ----------
        X : array-like of shape (n, p)
            The conditions.
        y : array-like of shape (n,) or (n, k)
            The targets.

        Returns
        -------
        ndarray of shape (n,)
            :math:`\\log q(y_i \\mid x_i)` in ``y``'s units (nats).
        """
        Xs, ys = self._standardize(X, y)
        return self._log_prob(Xs, ys) - self._log_jacobian()

    def score(self, X, y) -> float:
        """Mean conditional log-likelihood of the rows (``score_samples``' mean)."""
        return float(np.mean(self.score_samples(X, y)))


def _nonzero(scale: np.ndarray) -> np.ndarray:
    """Standard deviations with the zeros (constant columns) replaced by 1."""
    return np.where(scale > 0, scale, 1.0)


# --------------------------------------------------------------------------------------------- ConditionedGMM


class _GaussianConditioner:
    """The components of a joint full-covariance mixture, conditioned on the first ``p`` coordinates."""

    def __init__(self, weights: np.ndarray, means: np.ndarray, covariances: np.ndarray, p: int) -> None:
        self.log_weights = np.log(weights)
        self.mean_x, self.mean_y = means[:, :p], means[:, p:]
        self.chol_x, self.gain, self.chol_y = [], [], []
        for cov in covariances:
            s_xx, s_xy, s_yy = cov[:p, :p], cov[:p, p:], cov[p:, p:]
            chol_x = cholesky(s_xx, lower=True)
            solved = cho_solve((chol_x, True), s_xy)  # S_xx^{-1} S_xy, (p, k)
            self.chol_x.append(chol_x)
            self.gain.append(solved.T)  # S_yx S_xx^{-1}, (k, p)
            self.chol_y.append(cholesky(s_yy - s_xy.T @ solved, lower=True))

    def log_prob(self, X: np.ndarray, y: np.ndarray) -> np.ndarray:
        """:math:`\\log q(y \\mid x)` of each row: a log-sum-exp over the components."""
        n, K = len(X), len(self.log_weights)
        log_w, log_c = np.empty((n, K)), np.empty((n, K))
        for j in range(K):
            dx = X - self.mean_x[j]
            log_w[:, j] = self.log_weights[j] + _gaussian_log_prob(dx, self.chol_x[j])
            dy = y - self.mean_y[j] - dx @ self.gain[j].T
            log_c[:, j] = _gaussian_log_prob(dy, self.chol_y[j])
        log_w -= logsumexp(log_w, axis=1, keepdims=True)
        return logsumexp(log_w + log_c, axis=1)


def _gaussian_log_prob(residual: np.ndarray, chol: np.ndarray) -> np.ndarray:
    """:math:`\\log \\mathcal N(r; 0, L L^\\top)` of each row ``r`` of ``residual``."""
    z = solve_triangular(chol, residual.T, lower=True)
    d = residual.shape[1]
    return -0.5 * d * LOG_2PI - np.log(np.diag(chol)).sum() - 0.5 * (z**2).sum(0)


class ConditionedGMM(_ConditionalPeer):
    """A joint Gaussian mixture of ``(x, y)``, conditioned exactly on ``x``.

    Parameters
    ----------
    n_components_grid : sequence of int, default=(1, 2, 3, 5, 8, 12, 20, 30)
        Candidate numbers of components (those above the number of validation-split training rows are
        skipped).
    reg_covar_grid : sequence of float, default=(1e-6, 1e-4, 1e-2)
        Candidate ``reg_covar`` values (added to the covariances' diagonals, standardized units).
    n_init : int, default=1
        ``GaussianMixture``'s restarts per fit.
    max_iter : int, default=200
        ``GaussianMixture``'s EM iterations per fit.
    validation_fraction : float, default=0.2
    random_state : int, default=0
        Seeds the validation split and the mixtures' initialization.

    Attributes
    ----------
    gmm_ : GaussianMixture
        The chosen mixture, refitted on all training rows (standardized).
    n_components_, reg_covar_ : int, float
        The chosen hyperparameters.
    validation_scores_ : dict
        ``{(n_components, reg_covar): validation mean log-likelihood}`` (``-inf`` where the fit failed).
    fit_time_, fit_cpu_time_ : float
        Wall and CPU seconds of ``fit``, the search included.
    """

    def __init__(
        self,
        n_components_grid: Sequence[int] = (1, 2, 3, 5, 8, 12, 20, 30),
        reg_covar_grid: Sequence[float] = (1e-6, 1e-4, 1e-2),
        *,
        n_init: int = 1,
        max_iter: int = 200,
        validation_fraction: float = 0.2,
        random_state: int = 0,
    ) -> None:
        self.n_components_grid = n_components_grid
        self.reg_covar_grid = reg_covar_grid
        self.n_init = n_init
        self.max_iter = max_iter
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def _mixture(self, n_components: int, reg_covar: float, Z: np.ndarray) -> _GaussianConditioner:
        gmm = GaussianMixture(
            n_components,
            covariance_type="full",
            reg_covar=reg_covar,
            n_init=self.n_init,
            max_iter=self.max_iter,
            random_state=self.random_state,
        ).fit(Z)
        self.gmm_ = gmm
        return _GaussianConditioner(gmm.weights_, gmm.means_, gmm.covariances_, self.n_features_in_)

    def fit(self, X, y) -> ConditionedGMM:
        """Choose the mixture on the validation split, then refit it on all rows.

        Parameters
        ----------
        X : array-like of shape (n, p)
        y : array-like of shape (n,) or (n, k)

        Returns
        -------
        self
        """
        start, start_cpu = time.perf_counter(), time.process_time()
        Xs, ys = self._standardize_fit(X, y)
        train, valid = self._split(len(Xs))
        Z_train = np.hstack([Xs[train], ys[train]])
        self.validation_scores_ = {}
        for n_components in self.n_components_grid:
            if n_components > len(train):
                continue
            for reg_covar in self.reg_covar_grid:
                try:
                    conditioner = self._mixture(n_components, reg_covar, Z_train)
                    score = float(np.mean(conditioner.log_prob(Xs[valid], ys[valid])))
                except (ValueError, np.linalg.LinAlgError):  # a degenerate component
                    score = -math.inf
                self.validation_scores_[(n_components, reg_covar)] = score - self._log_jacobian()
        best = max(self.validation_scores_, key=self.validation_scores_.get)
        self.n_components_, self.reg_covar_ = best
        self.conditioner_ = self._mixture(*best, np.hstack([Xs, ys]))
        self.fit_time_ = time.perf_counter() - start
        self.fit_cpu_time_ = time.process_time() - start_cpu
        return self

    def _log_prob(self, Xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        return self.conditioner_.log_prob(Xs, ys)


# ------------------------------------------------------------------------------------- the torch networks


class _GaussianNet(torch.nn.Module):
    """``x`` -> mean and lower Cholesky factor of a Gaussian in ``y``."""

    def __init__(self, p: int, k: int, hidden: Sequence[int], activation: str) -> None:
        super().__init__()
        act = {"tanh": torch.nn.Tanh, "relu": torch.nn.ReLU, "silu": torch.nn.SiLU}[activation]
        layers: list[torch.nn.Module] = []
        width = p
        for h in hidden:
            layers += [torch.nn.Linear(width, h), act()]
            width = h
        self.k = k
        self.rows, self.cols = torch.tril_indices(k, k, offset=-1)
        layers.append(torch.nn.Linear(width, 2 * k + len(self.rows)))
        self.body = torch.nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.body(x)
        k = self.k
        mean, diag = out[:, :k], torch.nn.functional.softplus(out[:, k : 2 * k]) + 1e-4
        lower = out.new_zeros(len(out), k, k)
        lower[:, self.rows, self.cols] = out[:, 2 * k :]  # strictly below the diagonal (none for k = 1)
        return mean, lower + torch.diag_embed(diag)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        mean, chol = self(x)
        z = torch.linalg.solve_triangular(chol, (y - mean).unsqueeze(-1), upper=False).squeeze(-1)
        log_det = torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
        return -0.5 * self.k * LOG_2PI - log_det - 0.5 * (z**2).sum(-1)


class _ConditionalFlow(torch.nn.Module):
    """A zuko conditional flow with the ``log_prob(x, y)`` of :class:`_GaussianNet`."""

    def __init__(self, p: int, k: int, transforms: int, hidden: Sequence[int], bins: int) -> None:
        super().__init__()
        import zuko

        self.flow = zuko.flows.NSF(k, p, transforms=transforms, hidden_features=tuple(hidden), bins=bins)

    def log_prob(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.flow(x).log_prob(y)


class _TorchPeer(_ConditionalPeer):
    """Minibatch maximum-likelihood training with early stopping, one run per candidate."""

    learning_rate: float
    batch_size: int
    max_epochs: int
    n_iter_no_change: int
    max_seconds: float
    weight_decay_grid: Sequence[float]

    def _candidates(self) -> list[dict]:
        """The hyperparameter settings to try (keyword arguments of :meth:`_build` and ``weight_decay``):
        one per entry of ``weight_decay_grid``."""
        return [{"weight_decay": wd} for wd in self.weight_decay_grid]

    def _build(self, p: int, k: int, **params) -> torch.nn.Module:
        raise NotImplementedError

    def fit(self, X, y) -> _TorchPeer:
        """Train each candidate on 80 % of the rows, keep the one best on the other 20 %.

        Parameters
        ----------
        X : array-like of shape (n, p)
        y : array-like of shape (n,) or (n, k)

        Returns
        -------
        self
        """
        start, start_cpu = time.perf_counter(), time.process_time()
        Xs, ys = self._standardize_fit(X, y)
        train, valid = self._split(len(Xs))
        data = [torch.as_tensor(a, dtype=torch.float32) for a in (Xs[train], ys[train], Xs[valid], ys[valid])]
        seeds = np.random.default_rng(self.random_state).integers(2**31 - 1, size=len(self._candidates()))
        self.validation_scores_, best = {}, -math.inf
        for seed, params in zip(seeds, self._candidates()):
            params = dict(params)
            weight_decay = params.pop("weight_decay", 0.0)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(seed))
                model = self._build(Xs.shape[1], ys.shape[1], **params)
                curve, stopped_by = self._train(model, weight_decay, *data)
            score = -min(curve) - self._log_jacobian()
            key = tuple(sorted({**params, "weight_decay": weight_decay}.items()))
            self.validation_scores_[key] = score
            if score > best:
                best, self.model_, self.best_params_ = score, model, dict(key)
                self.valid_curve_, self.stopped_by_ = curve, stopped_by
        self.n_iter_ = len(self.valid_curve_)
        self.fit_time_ = time.perf_counter() - start
        self.fit_cpu_time_ = time.process_time() - start_cpu
        return self

    def _train(
        self,
        model: torch.nn.Module,
        weight_decay: float,
        X_train: torch.Tensor,
        y_train: torch.Tensor,
        X_valid: torch.Tensor,
        y_valid: torch.Tensor,
    ) -> tuple[list[float], str]:
        """Adam until early stopping; loads the best validated weights into ``model``.

        Returns
        -------
        curve : list of float
            The validation negative log-likelihood (standardized units) after each epoch.
        stopped_by : str
        """
        optimizer = torch.optim.Adam(model.parameters(), lr=self.learning_rate, weight_decay=weight_decay)
        best, best_state, stale = math.inf, copy.deepcopy(model.state_dict()), 0
        curve, stopped_by, start = [], "max_epochs", time.process_time()
        for _ in range(self.max_epochs):
            model.train()
            for idx in torch.randperm(len(X_train)).split(self.batch_size):
                loss = -model.log_prob(X_train[idx], y_train[idx]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            nll = -float(np.mean(_evaluate(model, X_valid, y_valid)))
            curve.append(nll)
            if nll < best:
                best, best_state, stale = nll, copy.deepcopy(model.state_dict()), 0
            else:
                stale += 1
            if stale >= self.n_iter_no_change:
                stopped_by = "early stopping"
                break
            if time.process_time() - start > self.max_seconds:
                stopped_by = "max_seconds"
                break
        model.load_state_dict(best_state)
        return curve, stopped_by

    def _log_prob(self, Xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        X = torch.as_tensor(Xs, dtype=torch.float32)
        y = torch.as_tensor(ys, dtype=torch.float32)
        return _evaluate(self.model_, X, y)


def _evaluate(model: torch.nn.Module, X: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """``model.log_prob`` in batches of 4,096 rows, without gradients, as float64."""
    model.eval()
    with torch.no_grad():
        parts = [model.log_prob(xb, yb).double().numpy() for xb, yb in zip(X.split(4096), y.split(4096))]
    return np.concatenate(parts)


class GaussianMLP(_TorchPeer):
    """A network giving the mean and Cholesky factor of a Gaussian :math:`q(y \\mid x)`.

    Parameters
    ----------
    hidden_features : sequence of int, default=(64, 64)
        Hidden layers' widths.
    activation : {"tanh", "relu", "silu"}, default="tanh"
    weight_decay_grid : sequence of float, default=(0.0, 1e-4, 1e-3)
        Candidate L2 penalties (Adam's ``weight_decay``), chosen on the validation split.
    learning_rate : float, default=1e-3
    batch_size : int, default=128
    max_epochs : int, default=1000
    n_iter_no_change : int, default=30
        Early-stopping patience in epochs.
    max_seconds : float, default=15.0
        CPU seconds of training per candidate (checked after each epoch).
    validation_fraction : float, default=0.2
    random_state : int, default=0
        Seeds the validation split, the initializations and the minibatch order.

    Attributes
    ----------
    model_ : torch.nn.Module
        The best candidate's network, at its best validated epoch.
    best_params_ : dict
    validation_scores_ : dict
        ``{sorted (name, value) pairs: validation mean log-likelihood}`` in ``y``'s units.
    valid_curve_ : list of float
        The chosen candidate's validation NLL (standardized units) after each epoch.
    n_iter_ : int
        Its number of epochs.
    stopped_by_ : str
    fit_time_, fit_cpu_time_ : float
    """

    def __init__(
        self,
        hidden_features: Sequence[int] = (64, 64),
        activation: str = "tanh",
        weight_decay_grid: Sequence[float] = (0.0, 1e-4, 1e-3),
        *,
        learning_rate: float = 1e-3,
        batch_size: int = 128,
        max_epochs: int = 1000,
        n_iter_no_change: int = 30,
        max_seconds: float = 15.0,
        validation_fraction: float = 0.2,
        random_state: int = 0,
    ) -> None:
        self.hidden_features = hidden_features
        self.activation = activation
        self.weight_decay_grid = weight_decay_grid
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.n_iter_no_change = n_iter_no_change
        self.max_seconds = max_seconds
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def _build(self, p: int, k: int, **params) -> torch.nn.Module:
        return _GaussianNet(p, k, tuple(self.hidden_features), self.activation)


class ZukoConditionalNSF(_TorchPeer):
    """``zuko.flows.NSF`` with ``x`` as its context, trained by maximum likelihood.

    Parameters
    ----------
    transforms : int, default=3
        Autoregressive spline transformations (for ``k = 1`` each is a spline in ``y`` whose knots are
        a function of ``x``).
    hidden_features : sequence of int, default=(64, 64)
        Hidden layers of each transformation's network.
    bins : int, default=8
        Spline bins (zuko's default; the splines act on [-5, 5] of the standardized ``y``).
    weight_decay_grid : sequence of float, default=(0.0,)
        Candidate L2 penalties (one candidate by default: one training run).
    learning_rate : float, default=1e-3
    batch_size : int, default=128
    max_epochs : int, default=1000
    n_iter_no_change : int, default=30
    max_seconds : float, default=50.0
        CPU seconds of training per candidate (checked after each epoch).
    validation_fraction : float, default=0.2
    random_state : int, default=0

    Attributes
    ----------
    Those of :class:`GaussianMLP`.
    """

    def __init__(
        self,
        transforms: int = 3,
        hidden_features: Sequence[int] = (64, 64),
        bins: int = 8,
        weight_decay_grid: Sequence[float] = (0.0,),
        *,
        learning_rate: float = 1e-3,
        batch_size: int = 128,
        max_epochs: int = 1000,
        n_iter_no_change: int = 30,
        max_seconds: float = 50.0,
        validation_fraction: float = 0.2,
        random_state: int = 0,
    ) -> None:
        self.transforms = transforms
        self.hidden_features = hidden_features
        self.bins = bins
        self.weight_decay_grid = weight_decay_grid
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.n_iter_no_change = n_iter_no_change
        self.max_seconds = max_seconds
        self.validation_fraction = validation_fraction
        self.random_state = random_state

    def _build(self, p: int, k: int, **params) -> torch.nn.Module:
        return _ConditionalFlow(p, k, self.transforms, self.hidden_features, self.bins)


PEERS = {"gmm": ConditionedGMM, "mlp": GaussianMLP, "nsf": ZukoConditionalNSF}
