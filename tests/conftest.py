"""Shared fixtures. Device-dependent tests take the ``device`` fixture.

Run them on a GPU with ``pytest --device cuda`` or ``SEPMEASURE_TEST_DEVICE=cuda pytest``.
"""
from __future__ import annotations

import os

import pytest
import torch


def pytest_addoption(parser):
    parser.addoption("--device", action="store", default=os.environ.get("SEPMEASURE_TEST_DEVICE", "cpu"),
                     help="device for device-dependent tests: cpu (default) or cuda")


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    dev = torch.device(request.config.getoption("--device"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device cuda given but no CUDA device is available")
    return dev


@pytest.fixture(scope="session", autouse=True)
def _one_torch_thread():
    """The suite's tensors are small: one thread avoids OpenMP hand-off costs, which grow large
    when the machine is busy. Code under test never depends on the thread count."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def record_solves(monkeypatch):
    """``record_solves(module)`` patches ``module.solve_reporting_status`` (the HiGHS calls of the
    exact separability measures) to append every program it solves to the list it returns."""
    def patch(module) -> list:
        solves: list = []
        real = module.solve_reporting_status
        monkeypatch.setattr(module, "solve_reporting_status",
                            lambda problem, options: solves.append(problem) or real(problem, options))
        return solves
    return patch
