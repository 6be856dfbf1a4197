"""When the library's progress bars appear: asked for, shown to a person, long enough, not silenced."""
from __future__ import annotations

import io
import sys
import time

import pytest
import torch
from torch import nn

import sepmeasure._progress as progress_module
from sepmeasure._progress import progress_bar, silenced, wanted
from sepmeasure.capture import record


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Terminal:
    """What a person would see on stderr (pytest's capture of it)."""

    def __init__(self, capsys):
        self.capsys = capsys

    def getvalue(self) -> str:
        return self.capsys.readouterr().err


@pytest.fixture
def terminal(monkeypatch, capsys):
    """stderr counts as a terminal; bars appear after 10 ms instead of a second."""
    monkeypatch.setattr(progress_module, "_interactive", lambda: True)
    monkeypatch.setattr(progress_module, "DELAY_S", 0.01)
    return Terminal(capsys)


def test_a_terminal_or_a_notebook_counts_as_a_person(monkeypatch):
    monkeypatch.delitem(sys.modules, "ipykernel", raising=False)
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert wanted(True) is False
    monkeypatch.setattr(sys, "stderr", FakeTerminal())
    assert wanted(True) is True
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    monkeypatch.setitem(sys.modules, "ipykernel", object())
    assert wanted(True) is True


def test_bar_after_the_delay_on_a_terminal(terminal):
    assert wanted(True) and not wanted(False)
    for _ in progress_bar(range(5), progress=True, desc="slow work"):
        time.sleep(0.05)   # past the delay and tqdm's 0.1 s between refreshes
    assert "slow work" in terminal.getvalue()


def test_quick_work_prints_nothing(terminal, monkeypatch):
    monkeypatch.setattr(progress_module, "DELAY_S", 60.0)
    for _ in progress_bar(range(3), progress=True, desc="quick work"):
        pass
    assert terminal.getvalue() == ""


def test_progress_false_and_silenced_print_nothing(terminal):
    for _ in progress_bar(range(5), progress=False, desc="not asked"):
        time.sleep(0.05)
    with silenced():
        assert not wanted(True)
        for _ in progress_bar(range(5), progress=True, desc="silenced"):
            time.sleep(0.05)
    assert wanted(True)  # silenced() restores the previous state
    assert terminal.getvalue() == ""


def test_record_shows_its_bar_only_when_asked(terminal):
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    slow = nn.Sequential(model, SlowDown())
    record(slow, torch.randn(40, 3), layers=[nn.ReLU], batch_size=10)
    assert "record" in terminal.getvalue()
    record(slow, torch.randn(40, 3), layers=[nn.ReLU], batch_size=10, progress=False)
    assert terminal.getvalue() == ""


def test_bad_progress_argument_is_named():
    with pytest.raises(TypeError, match="progress: expected True or False, got 'yes'"):
        record(nn.Linear(2, 2), torch.randn(4, 2), progress="yes")


class SlowDown(nn.Module):
    def forward(self, x):
        time.sleep(0.05)
        return x


def _slow_recording(config):
    slow = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), SlowDown())
    acts = record(slow, torch.randn(40, 3), layers=[nn.ReLU], batch_size=10)  # progress=True by default
    return [{"x": config["x"], "mean": float(acts["1"].mean())}]


def test_the_study_runner_silences_the_bars_inside_configurations(terminal, tmp_path):
    from sepmeasure.study import Study

    study = Study(name="quiet", run_one=_slow_recording, quick={"x": [1]}, full={"x": [1]}, seeds={"quick": 1, "full": 1})
    study.run("quick", out=tmp_path, progress=False)
    assert terminal.getvalue() == ""
