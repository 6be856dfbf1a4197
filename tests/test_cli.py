"""The `sepmeasure` command: discovery of study scripts by path, running one or all (a failing study
does not stop the others), reports, and clear errors on bad input."""
from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sepmeasure.cli import discover_studies, load_study, main

ROOT = Path(__file__).resolve().parents[1]

GOOD = """
from sepmeasure.claims import Threshold
from sepmeasure.report import FigureSpec
from sepmeasure.study import Study

def run_one(config):
    return [{{"layer": k, "value": config["w"] * k + config["seed"]}} for k in range(3)]

STUDY = Study(name="{name}", run_one=run_one, quick={{"w": [1, 2]}}, full={{"w": [1, 2, 3]}},
              seeds={{"quick": 2, "full": 3}}, title="{name} title", paper="Test et al. 2024",
              claims=[Threshold(name="positive", paper="Test et al. 2024", statement="values are positive",
                                value="value", op=">=", bound=-1.0)],
              figures=[FigureSpec(name="v", table="results", kind="line", x="layer", y="value")])

if __name__ == "__main__":
    import sepmeasure.cli
    sepmeasure.cli.run_study_script(STUDY)
"""

FAILING = """
from sepmeasure.study import Study

def run_one(config):
    raise RuntimeError("this study is broken")

STUDY = Study(name="s2_beta", run_one=run_one, quick={"w": [1]}, full={"w": [1]})
"""


@pytest.fixture()
def studies(tmp_path) -> Path:
    d = tmp_path / "studies"
    d.mkdir()
    (d / "s1_alpha.py").write_text(GOOD.format(name="s1_alpha"))
    (d / "s2_beta.py").write_text(FAILING)
    (d / "s3_gamma.py").write_text(GOOD.format(name="s3_gamma"))
    (d / "notes.py").write_text("raise SystemExit('not a study')")
    (d / "s4_broken.py.bak").write_text("")
    return d


def run(*argv: str) -> int:
    return main([str(a) for a in argv])


def test_discovery_is_by_file_name_and_ordered(studies):
    assert list(discover_studies(studies)) == ["s1_alpha", "s2_beta", "s3_gamma"]
    assert load_study(studies / "s1_alpha.py").name == "s1_alpha"


def test_list(studies, capsys):
    assert run("list", "--studies", studies) == 0
    out = capsys.readouterr().out
    assert "s1_alpha" in out and "s3_gamma" in out and "Test et al. 2024" in out
    assert "quick: 4 runs, full: 9 runs" in out
    assert "notes" not in out


def test_study_by_short_names_then_report(studies, tmp_path, capsys):
    out = tmp_path / "reports"
    assert run("study", "s1", "gamma", "--studies", studies, "--out", out, "--no-progress") == 0
    text = capsys.readouterr().out
    assert "s1_alpha: 4 configurations (4 computed, 0 cached)" in text
    assert "positive: supported" in text
    assert (out / "s3_gamma" / "tables" / "results.csv").is_file()
    assert not (out / "s2_beta").exists()
    assert run("study", "s1_alpha", "--studies", studies, "--out", out, "--no-progress", "--seeds", "3") == 0
    assert "6 configurations (2 computed, 4 cached)" in capsys.readouterr().out
    assert run("report", out) == 0
    assert (out / "index.html").is_file() and (out / "s1_alpha" / "report.html").is_file()
    assert len(pd.read_csv(out / "s1_alpha" / "tables" / "results.csv")) == 6 * 3


def test_all_runs_every_study_and_a_failure_does_not_stop_the_others(studies, tmp_path, capsys):
    out = tmp_path / "reports"
    code = run("study", "all", "--quick", "--studies", studies, "--out", out, "--no-progress", "--report")
    captured = capsys.readouterr()
    assert code == 1
    assert "study s2_beta failed" in captured.err and "this study is broken" in captured.err
    assert "2 of 3 studies finished" in captured.out and "failed: s2_beta" in captured.out
    for name in ("s1_alpha", "s3_gamma"):
        assert (out / name / "report.html").is_file()
    assert (out / "index.html").is_file()


def test_default_studies_folder_is_the_current_directory(studies, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(studies.parent)
    assert run("list") == 0
    assert "s1_alpha" in capsys.readouterr().out


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("argv, pattern", [
    (["study", "s9", "--studies", "{studies}"], r"unknown study 's9'; known studies: s1_alpha, s2_beta, s3_gamma"),
    (["study", "delta", "--studies", "{studies}"], r"unknown study 'delta'"),
    (["study", "s1", "--studies", "{studies}", "--out", "{file}"], r"--out: expected a directory, got a file"),
    (["study", "s1", "--studies", "{studies}", "--out", "{file}/sub"],
     r"--out: expected a directory, but .* is a file"),
    (["study", "s1", "--studies", "{studies}", "--scheduler", "tcp://127.0.0.1:{port}"],
     r"could not connect to a Dask scheduler .*dask scheduler.*--executor local"),
    (["study", "s1", "--studies", "{studies}", "--executor", "local", "--scheduler", "tcp://127.0.0.1:1"],
     r"--scheduler: only used with --executor dask"),
    (["study", "s1", "--studies", "{missing}"], r"--studies: expected a folder of study scripts"),
    (["report", "{missing}"], r"does not exist; run `sepmeasure study all --quick` first"),
    (["report", "{file}"], r"expected a directory, got a file"),
])
def test_bad_input_gives_a_clear_error_and_status_2(argv, pattern, studies, tmp_path, capsys):
    f = tmp_path / "a_file"
    f.write_text("x")
    values = {"studies": studies, "file": f, "missing": tmp_path / "missing", "port": _closed_port()}
    code = run(*[a.format(**values) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("error: ")
    assert re.search(pattern, err, re.S), err


@pytest.mark.parametrize("argv", [["study"], ["study", "s1", "--seeds", "0"], ["study", "s1", "--quick", "--full"],
                                  ["study", "s1", "--threads", "-1"],
                                  ["study", "s1", "--executor", "threads"], ["frobnicate"]])
def test_bad_arguments_are_refused_by_the_parser(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_a_script_that_is_not_a_study_is_a_failure_of_that_study(studies, tmp_path, capsys):
    (studies / "s5_nostudy.py").write_text("X = 1\n")
    assert run("study", "s5", "--studies", studies, "--out", tmp_path / "o", "--no-progress") == 1
    assert "expected a module-level STUDY" in capsys.readouterr().err


def test_the_package_never_imports_studies():
    for path in (ROOT / "sepmeasure").rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"^\s*(from|import)\s+studies\b", text, re.M), path


def test_a_study_script_runs_alone_and_writes_its_report(studies, tmp_path):
    out = tmp_path / "alone"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(studies / "s1_alpha.py"), "--quick", "--out", str(out),
                           "--no-progress"], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (out / "s1_alpha" / "report.html").is_file() and (out / "index.html").is_file()
    assert "positive: supported" in done.stdout
