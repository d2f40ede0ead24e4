r"""zuko's flows (MAF, NSF, CNF) behind the scikit-learn density interface, for the benchmark only.

:class:`ZukoDensity` standardizes each feature, trains the flow by maximum likelihood with a plain loop
(Adam, shuffled minibatches, a held-out part of the training data for early stopping with the best
weights kept, a budget of epochs and of CPU seconds), and scores in the caller's units:
:math:`\log p(x) = \log q(\tilde x) - \sum_j \log \sigma_j` with :math:`\tilde x = (x - \mu) / \sigma`.
"""

from __future__ import annotations

import copy
import math
import time

import numpy as np
import torch
from sklearn.base import BaseEstimator, DensityMixin
from sklearn.utils import check_random_state

_FLOWS = ("maf", "nsf", "cnf")


def _build_flow(kind: str, features: int, transforms: int, hidden: tuple[int, ...]) -> torch.nn.Module:
    import zuko

    if kind == "maf":
        return zuko.flows.MAF(features, transforms=transforms, hidden_features=hidden)
    if kind == "nsf":
        return zuko.flows.NSF(features, transforms=transforms, hidden_features=hidden)
    if kind == "cnf":  # one free-form transformation; exact divergence, zuko's default tolerances
        return zuko.flows.CNF(features, hidden_features=hidden)
    raise ValueError(f"flow must be one of {_FLOWS}, got {kind!r}.")


class ZukoDensity(DensityMixin, BaseEstimator):
    """A zuko flow trained by maximum likelihood on standardized data.

    Parameters
    ----------
    flow : {"maf", "nsf", "cnf"}
        ``zuko.flows.MAF``, ``zuko.flows.NSF`` (affine / rational-quadratic spline autoregressive
        transformations) or ``zuko.flows.CNF`` (FFJORD-style continuous flow, exact divergence).
    transforms : int, default=5
        Number of autoregressive transformations (MAF, NSF; ignored by CNF).
    hidden_features : tuple of int, default=(128, 128)
        Hidden layers of each transformation's network.
    learning_rate : float, default=1e-3
        Adam's learning rate (constant).
    batch_size : int, default=256
    max_epochs : int, default=300
    n_iter_no_change : int, default=20
        Early-stopping patience, in epochs, on the held-out negative log-likelihood.
    validation_fraction : float, default=0.1
    max_seconds : float, default=300.0
        Training stops after the first epoch that ends past this much CPU time of the process
        (``time.process_time``: on one thread, a budget that other processes on the machine do not eat
        into); the best weights are kept.
    checkpoints : tuple of float, default=()
        Wall-clock seconds from the start of ``fit`` at which to keep a copy of the best validated
        weights so far (in ``checkpoints_``, ``{seconds: state_dict}``), taken at the end of the last
        epoch that ended by then: with a constant learning rate, what a fit given that many seconds
        would return. :meth:`use_checkpoint` loads one.
    random_state : int or None, default=None
    """

    def __init__(
        self,
        flow="maf",
        *,
        transforms=5,
        hidden_features=(128, 128),
        learning_rate=1e-3,
        batch_size=256,
        max_epochs=300,
        n_iter_no_change=20,
        validation_fraction=0.1,
        max_seconds=300.0,
        checkpoints=(),
        random_state=None,
    ):
        self.flow = flow
        self.transforms = transforms
        self.hidden_features = hidden_features
        self.learning_rate = learning_rate
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.n_iter_no_change = n_iter_no_change
        self.validation_fraction = validation_fraction
        self.max_seconds = max_seconds
        self.checkpoints = checkpoints
        self.random_state = random_state

    def fit(self, X, y=None):
        self._wall_start = time.perf_counter()
        X = np.asarray(X, dtype=np.float64)
        rng = check_random_state(self.random_state)
        self.mean_, self.scale_ = X.mean(0), X.std(0)
        Z = torch.as_tensor((X - self.mean_) / self.scale_, dtype=torch.float32)
        order = rng.permutation(len(Z))
        n_valid = max(1, int(round(self.validation_fraction * len(Z))))
        Z_valid, Z_train = Z[order[:n_valid]], Z[order[n_valid:]]
        seed = int(rng.randint(np.iinfo(np.int32).max))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.flow_ = _build_flow(self.flow, X.shape[1], self.transforms, tuple(self.hidden_features))
            self._train(Z_train, Z_valid)
        return self

    def _train(self, Z_train: torch.Tensor, Z_valid: torch.Tensor) -> None:
        optimizer = torch.optim.Adam(self.flow_.parameters(), lr=self.learning_rate)
        best, best_state, stale = math.inf, copy.deepcopy(self.flow_.state_dict()), 0
        self.valid_nll_, self.checkpoints_ = [], {}
        pending = sorted(self.checkpoints)
        start, self.stopped_by_ = time.process_time(), "max_epochs"
        for _ in range(self.max_epochs):
            self.flow_.train()
            for idx in torch.randperm(len(Z_train)).split(self.batch_size):
                loss = -self.flow_().log_prob(Z_train[idx]).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            nll = -self._log_prob(Z_valid).mean()
            self.valid_nll_.append(nll)
            wall = time.perf_counter() - self._wall_start
            while pending and pending[0] < wall:  # this epoch ended past the checkpoint: the state before
                self.checkpoints_[pending.pop(0)] = best_state
            if nll < best:
                best, best_state, stale = nll, copy.deepcopy(self.flow_.state_dict()), 0
            else:
                stale += 1
            if stale >= self.n_iter_no_change:
                self.stopped_by_ = "early stopping"
                break
            if time.process_time() - start > self.max_seconds:
                self.stopped_by_ = "max_seconds"
                break
        for seconds in pending:  # training ended before them
            self.checkpoints_[seconds] = best_state
        self.flow_.load_state_dict(best_state)
        self.n_iter_ = len(self.valid_nll_)

    def use_checkpoint(self, seconds: float) -> ZukoDensity:
        """Load the best weights validated by ``seconds`` (one of ``checkpoints``)."""
        self.flow_.load_state_dict(self.checkpoints_[seconds])
        return self

    def _log_prob(self, Z: torch.Tensor) -> np.ndarray:
        """Log-density of standardized rows, in batches, without gradients."""
        self.flow_.eval()
        with torch.no_grad():
            dist = self.flow_()
            return np.concatenate([dist.log_prob(z).double().numpy() for z in Z.split(4096)])

    def score_samples(self, X):
        """Log-density of each row in the caller's units (the standardization's Jacobian included)."""
        Z = torch.as_tensor((np.asarray(X, dtype=np.float64) - self.mean_) / self.scale_, dtype=torch.float32)
        return self._log_prob(Z) - np.log(self.scale_).sum()

    def score(self, X, y=None):
        return float(np.mean(self.score_samples(X)))

    def sample(self, n_samples=1, random_state=None):
        seed = int(check_random_state(random_state).randint(np.iinfo(np.int32).max))
        self.flow_.eval()
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            torch.manual_seed(seed)
            Z = self.flow_().sample((n_samples,)).double().numpy()
        return Z * self.scale_ + self.mean_
