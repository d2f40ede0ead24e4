"""Shared test options: ``--device`` runs the torch-level suite on another device (e.g. ``cuda``).

The suite runs torch on one thread: its models are tiny (a second thread only adds waiting), and on a
shared machine several threads per process oversubscribe the cores.
"""

import pytest
import torch
from sklearn.datasets import make_moons

import sklearn_otflow._auto as auto_module

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for the core tests (cpu or cuda)")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA requested but no GPU is available")
    return torch.device(name)


@pytest.fixture(scope="module")
def moons():
    return make_moons(600, noise=0.05, random_state=0)[0]


@pytest.fixture(scope="module")
def rounds_of_one_pass():
    """Validation after every 5 steps: one pass over the 540 training rows of ``moons`` in 128-row
    minibatches, so that a round of the tests that use it is an epoch, as their figures were set."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(auto_module, "VALIDATION_INTERVAL", 5)
        yield
