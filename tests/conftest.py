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


def _test_device(config) -> torch.device:
    value = config.getoption("--device")
    try:
        dev = torch.device(value)
    except RuntimeError as exc:
        raise pytest.UsageError(f"--device: expected a torch device such as 'cpu' or 'cuda', got {value!r}") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError(f"--device: {value!r} was asked for (option or SEPMEASURE_TEST_DEVICE) but "
                                f"torch.cuda.is_available() is False on this machine")
    return dev


def pytest_configure(config):
    # a device that is asked for and missing stops the run, rather than skipping its tests unseen
    _test_device(config)


@pytest.fixture(scope="session")
def device(request) -> torch.device:
    return _test_device(request.config)


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


@pytest.fixture(autouse=True)
def _fresh_ntk_plans():
    """Every test plans its kernels itself (a test that patches the planner must not meet a plan
    cached by an earlier one)."""
    from sepmeasure.kernels import ntk

    ntk._PLANS.clear()
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
