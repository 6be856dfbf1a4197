"""The documentation site: the runnable guide runs, every public name has an API entry, the
docstring rewriting for the site is right, and (when mkdocs is installed: `make docs`) the
site builds with --strict, listing each warning when it does not."""
from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sepmeasure

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"sepmeasure_docs_{name}", DOCS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_study_and_claim_guide_runs_as_written(tmp_path, monkeypatch, capsys):
    code = "\n".join(re.findall(r"```python\n(.*?)```", (DOCS / "studies-and-claims.md").read_text(), re.S))
    assert code.count("sm.Study(") == 1 and "write_report" in code
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(code, str(DOCS / "studies-and-claims.md"), "exec"), namespace)
    result = namespace["result"]
    assert [c.claim for c in result.claims] == ["learns", "wider-helps"]
    assert all(c.verdict in ("supported", "partly supported", "not supported", "inconclusive") for c in result.claims)
    printed = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in printed] == ["learns", "wider-helps"]
    learns = result.claims[0]
    assert learns.control.startswith("chance accuracy on two balanced classes") and learns.baseline == 0.5
    assert namespace["registry"].claims == tuple(namespace["claims"])


def test_the_guide_quotes_the_combination_rule_as_the_code_states_it():
    text = (DOCS / "studies-and-claims.md").read_text()
    quoted = " ".join(line.lstrip("> ").strip() for line in text.splitlines() if line.startswith(">"))
    assert sepmeasure.COMBINATION_RULE in quoted


def test_every_public_name_has_an_api_entry():
    pytest.importorskip("mkdocs")
    groups = _load("hooks").api_groups()
    listed = [name for names in groups.values() for name in names]
    assert len(listed) == len(set(listed))
    assert set(listed) == set(sepmeasure.__all__) - {"__version__"}


def test_rst_math_and_roles_become_markdown():
    pytest.importorskip("griffe")
    rst = _load("griffe_rst").rst_to_markdown
    text = "Uses :math:`a_i - b_j` and :func:`~sepmeasure.md_lsm`, :class:`sepmeasure.MDLSM`.\n\n" \
           "    .. math::\n\n        x = \\frac{1}{n}\n        + y\n\n    after\n"
    out = rst(text)
    assert "$a_i - b_j$" in out and "`md_lsm`" in out and "`sepmeasure.MDLSM`" in out
    assert "    $$\n    x = \\frac{1}{n}\n    + y\n    $$" in out and "    after" in out
    assert ":math:" not in out and ".. math::" not in out
    assert rst("    .. math:: a = b\n") == "    $$\n    a = b\n    $$\n"


@pytest.mark.skipif(importlib.util.find_spec("mkdocs") is None or importlib.util.find_spec("mkdocstrings") is None,
                    reason="the docs extra is not installed (make docs installs it)")
def test_the_site_builds_strict(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True, timeout=300,
                         env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    warnings = [line for line in res.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert res.returncode == 0 and not warnings, "mkdocs build --strict failed:\n" + "\n".join(warnings or [res.stderr[-3000:]])
    site = tmp_path / "site"
    for page in ("getting-started", "own-model", "separability", "kernels", "linear-units", "studies-and-claims",
                 "cli", "benchmarks", "reproducing", "api"):
        assert (site / page / "index.html").is_file(), page
    assert 'class="arithmatex"' in (site / "api" / "separability" / "index.html").read_text()
    assert (site / "reports" / "index.html").is_file()
