"""``python -m sepmeasure`` is the ``sepmeasure`` command: same output and exit status."""
from __future__ import annotations

import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from sepmeasure.cli import main

ROOT = Path(__file__).resolve().parent.parent


def test_python_dash_m_lists_the_studies():
    res = subprocess.run([sys.executable, "-m", "sepmeasure", "list"], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert "s1_synchronicity" in res.stdout and "claims" in res.stdout


@pytest.mark.parametrize("args, code", [
    (["list"], 0),
    (["study", "no_such_study"], 2),      # unknown study: bad input
    (["report", "does/not/exist"], 2),    # missing output folder: bad input
    (["frobnicate"], 2),                  # argparse: unknown command
])
def test_module_gives_the_exit_status_and_output_of_main(args, code, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    try:
        direct = main(args)
    except SystemExit as exc:  # argparse exits by itself on a usage error
        direct = exc.code
    assert direct == code
    expected = capsys.readouterr()
    monkeypatch.setattr(sys, "argv", ["sepmeasure", *args])
    with pytest.raises(SystemExit) as exit_:
        runpy.run_module("sepmeasure", run_name="__main__", alter_sys=True)
    assert exit_.value.code == code
    got = capsys.readouterr()
    assert (got.out, got.err) == (expected.out, expected.err)
