"""``pytest --device`` / ``SEPMEASURE_TEST_DEVICE``: a device that is asked for and missing stops the run."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run_pytest(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args,
                           "tests/test_memory.py"], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, **(env or {})})


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA, so --device cuda is valid here")
def test_missing_cuda_is_a_usage_error_not_skipped_tests():
    for args, env in ((("--device", "cuda"), None), ((), {"SEPMEASURE_TEST_DEVICE": "cuda"})):
        out = run_pytest(*args, env=env)
        assert out.returncode == pytest.ExitCode.USAGE_ERROR, out.stdout + out.stderr
        assert "torch.cuda.is_available() is False" in out.stderr


def test_unknown_device_is_a_usage_error():
    out = run_pytest("--device", "bogus")
    assert out.returncode == pytest.ExitCode.USAGE_ERROR
    assert "--device: expected a torch device" in out.stderr and "'bogus'" in out.stderr
