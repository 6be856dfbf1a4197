"""A quick run compared with a reference run: the index shows each reference verdict and whether
it is the same, and `make report` writes only where git ignores it."""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sepmeasure.claims import Threshold
from sepmeasure.cli import main
from sepmeasure.report import compare_verdict, write_index, write_report
from sepmeasure.study import Study

ROOT = Path(__file__).resolve().parent.parent
PAPER = "Demo 2024"

STUDY_SCRIPT = '''
from sepmeasure.claims import Threshold
from sepmeasure.study import Study

STUDY = Study(name="s1_tiny", run_one=lambda c: [{"value": c["x"] + 0.001 * c["seed"]}],
              quick={"x": [0.2]}, full={"x": [0.9]}, seeds={"quick": 2, "full": 2}, paper="Demo 2024",
              claims=[Threshold(name="high", paper="Demo 2024", statement="the value is high", value="value",
                                op=">=", bound=0.5)])
'''


def run_one(config: dict) -> list[dict]:
    return [{"value": config["x"] + 0.001 * config["seed"], "other": 1.0}]


def tiny_study(claims) -> Study:
    return Study(name="s1_tiny", run_one=run_one, quick={"x": [0.2]}, full={"x": [0.9]},
                 seeds={"quick": 2, "full": 2}, paper=PAPER, claims=claims)


def threshold(name: str, value: str) -> Threshold:
    return Threshold(name=name, paper=PAPER, statement=f"{value} is high", value=value, op=">=", bound=0.5)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    ref = tmp_path_factory.mktemp("reference")
    quick = tmp_path_factory.mktemp("quick")
    # "moves": high in the full run, low in the quick run; "stays": high in both; "new": only in the quick run
    tiny_study([threshold("moves", "value"), threshold("stays", "other")]).run("full", out=ref, progress=False)
    tiny_study([threshold("moves", "value"), threshold("stays", "other"), threshold("new", "other")]).run(
        "quick", out=quick, progress=False)
    write_report(quick, reference=ref)
    return quick, ref


def _verdicts(out: Path) -> dict[str, str]:
    claims = pd.read_csv(out / "s1_tiny" / "tables" / "claims.csv")
    return dict(zip(claims["claim"], claims["verdict"]))


def test_index_compares_each_verdict_with_the_reference(runs):
    quick, ref = runs
    ours, theirs = _verdicts(quick), _verdicts(ref)
    assert ours["moves"] != theirs["moves"] and ours["stays"] == theirs["stays"] and "new" not in theirs
    md = (quick / "index.md").read_text()
    assert "| claim | statement | verdict | reference verdict | compared |" in md
    assert f"| moves | value is high | {ours['moves']} | {theirs['moves']} | differs |" in md
    assert f"| stays | other is high | {ours['stays']} | {theirs['stays']} | same |" in md
    assert f"| new | other is high | {ours['new']} |  | no reference |" in md
    assert "1 of 3 verdicts are the same" in md
    page = (quick / "index.html").read_text()
    assert "<th>reference verdict</th><th>compared</th>" in page and page.count("<td>differs</td>") == 1
    assert "1 of 3 verdicts are the same" in page


def test_index_links_the_reference_index(runs, tmp_path):
    quick, ref = runs
    nested = ref / "quick"
    shutil.copytree(quick, nested)
    write_index(nested, reference=ref)
    assert '[`..`](../index.md)' in (nested / "index.md").read_text()
    assert '<a href="../index.html"><code>..</code></a>' in (nested / "index.html").read_text()
    # an index without a reference has no comparison columns
    write_index(ref)
    assert "reference verdict" not in (ref / "index.md").read_text()


def test_compare_verdict():
    assert compare_verdict("supported", "supported") == "same"
    assert compare_verdict("inconclusive", "supported") == "differs"
    assert compare_verdict("supported", None) == "no reference"


def test_a_reference_without_results_is_a_named_error(runs, tmp_path, capsys):
    quick, _ = runs
    with pytest.raises(FileNotFoundError, match="reference: expected study results"):
        write_report(quick, reference=tmp_path)
    with pytest.raises(TypeError, match="reference: expected a directory path"):
        write_index(quick, reference=3)
    assert main(["report", str(quick), "--reference", str(tmp_path)]) == 2
    assert "reference: expected study results" in capsys.readouterr().err


@pytest.mark.skipif(shutil.which("git") is None or shutil.which("make") is None, reason="needs git and make")
def test_make_report_recipe_leaves_a_clone_clean(tmp_path):
    """The commands of `make report`, run in a repository with a committed reference run,
    change nothing git tracks and write the quick run's index with the comparison."""
    repo = tmp_path / "repo"
    (repo / "studies").mkdir(parents=True)
    shutil.copy(ROOT / ".gitignore", repo / ".gitignore")
    (repo / "studies" / "s1_tiny.py").write_text(STUDY_SCRIPT)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(git[:3] + ["init", "-q"], check=True)
    assert main(["study", "all", "--full", "--out", str(repo / "reports"), "--studies", str(repo / "studies"),
                 "--report", "--no-progress"]) == 0
    subprocess.run(git + ["add", "-A"], check=True)
    subprocess.run(git + ["commit", "-q", "-m", "reference"], check=True)

    recipe = subprocess.run(["make", "-s", "-n", "-o", "install", "-o", ".venv/.installed", "report",
                             f"VENV={Path(sys.executable).parent.parent}"], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert len(recipe) == 2, recipe
    for line in recipe:
        res = subprocess.run(shlex.split(line) + ["--no-progress"] * ("study" in line), cwd=repo,
                             capture_output=True, text=True, timeout=300)
        assert res.returncode == 0, res.stderr
    status = subprocess.run(git + ["status", "--porcelain", "--ignored=no"], capture_output=True, text=True)
    assert status.stdout == ""
    index = (repo / "reports" / "quick" / "index.md").read_text()
    assert "| high | the value is high | not supported | supported | differs |" in index
