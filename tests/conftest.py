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


@pytest.fixture(autouse=True)
def _fixed_seed():
    torch.manual_seed(0)
    yield
