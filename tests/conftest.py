"""Shared test options: ``--device`` runs the torch-level suite on another device (e.g. ``cuda``).

The suite runs torch on one thread: its models are tiny (a second thread only adds waiting), and on a
shared machine several threads per process oversubscribe the cores.
"""

import pytest
import torch

torch.set_num_threads(1)


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", help="torch device for the core tests (cpu or cuda)")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    name = request.config.getoption("--device")
    if name.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("CUDA requested but no GPU is available")
    return torch.device(name)
