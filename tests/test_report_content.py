"""One content model, two templates: what the Markdown and HTML pages show comes from the same
dataclasses; HTML is escaped by jinja2, Markdown table cells by the md filter; the committed
reference pages are what the templates render from the committed tables."""
from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import pandas as pd
import pytest

from sepmeasure.report import _read_table, table_files
from sepmeasure.report_content import (ClaimEntry, FigureEntry, IndexPage, IndexStudy, ReferenceNote, StudyPage,
                                       TableEntry, TableView, render, study_page)

ROOT = Path(__file__).resolve().parent.parent / "reports"


def _page(statement: str) -> StudyPage:
    claim = ClaimEntry(name="c1", paper="P 2024", statement=statement, measured="m", result="0.5 (1 seed)",
                       details={"n": 3, "skip": None}, verdict="supported", reason="because", rule="a rule",
                       caveat="", groups=TableView(["group", "verdict"], [["a|b", "supported"]]))
    return StudyPage(title="T <1>", paper="P 2024", description="", summary=TableView(
        ["claim", "verdict"], [["c1", "supported"]], badges=("verdict",)), claims=[claim],
        figures=[FigureEntry(name="f", heading="F", caption="", file=None, error="no rows")],
        tables=[TableEntry(name="results", n_rows=1, n_columns=1, files=["results.parquet"],
                           preview=TableView(["x"], [["1"]]))], provenance=[("Mode", "quick")])


def test_html_is_escaped_and_markdown_cells_keep_their_pipes():
    page = _page('a <script>alert("x")</script> & b')
    out = render(page, "html")
    assert "<script>" not in out and "&lt;script&gt;" in out and "T &lt;1&gt;" in out
    assert '<span class="verdict ok">supported</span>' in out  # markup of the template itself is not escaped
    md = render(page, "markdown")
    assert '> a <script>alert("x")</script> & b' in md and "| a\\|b | supported |" in md
    for text in (md, html.unescape(out)):
        assert "n = 3" in text and "skip" not in text and "could not be drawn (no rows)" in text
        assert "tables/results.parquet" in text


def test_a_claim_shows_its_control_its_value_the_split_and_how_it_could_have_failed():
    claim = ClaimEntry(name="c1", paper="P", statement="s", measured="m", result="0.5", details={},
                       verdict="partly supported", reason="r", rule="a rule", caveat="", groups=None,
                       control="the untrained network <same shape>", baseline="0.123",
                       not_supported_if="the trained network is no more separable than the untrained one",
                       split="2 of 3 groups supported, 1 not supported")
    page = StudyPage(title="T", paper="P", description="", summary=TableView(["claim"], [["c1"]]),
                     claims=[claim], figures=[], tables=[], provenance=[])
    md, out = render(page, "markdown"), render(page, "html")
    assert "- **Control:** the untrained network <same shape> (its value: 0.123)" in md
    assert "**partly supported** — r (2 of 3 groups supported, 1 not supported)" in md
    assert "- **How it could have failed:** the trained network is no more separable" in md
    assert "<dt>Control</dt><dd>the untrained network &lt;same shape&gt; (its value: 0.123)</dd>" in out
    assert "<dt>How it could have failed</dt>" in out and "(2 of 3 groups supported, 1 not supported)" in out
    for text in (md, out):
        assert "groups combine by majority" in text  # the combination rule is written on every study page
    bare = StudyPage(title="T", paper="P", description="", summary=TableView(["claim"], [["c1"]]),
                     claims=[ClaimEntry(name="c1", paper="P", statement="s", measured="m", result="0.5",
                                        details={}, verdict="supported", reason="r", rule="a rule", caveat="",
                                        groups=None)], figures=[], tables=[], provenance=[])
    assert "Control" not in render(bare, "markdown") and "could have failed" not in render(bare, "html")


def test_study_page_reads_control_baseline_and_split_from_the_claims_table():
    row = {"claim": "c1", "group": "all", "kind": "Comparison", "paper": "P", "statement": "s", "measured": "m",
           "control": "shuffled labels", "baseline": 0.25, "effect": 0.5, "lower": 0.4, "upper": 0.6,
           "spread": 0.05, "confidence": 0.95, "n_seeds": 3, "verdict": "supported", "split": float("nan"),
           "reason": "r", "rule": "rule", "not_supported_if": "no gain over shuffled labels", "caveat": "",
           "per_seed": "[]", "details": "{}"}
    absent = {**row, "claim": "c2", "control": "no control: an exact identity", "baseline": float("nan"),
              "not_supported_if": float("nan")}
    meta = {"title": "T", "paper": "P", "description": "", "environment": {}}
    page = study_page(meta, {"claims": pd.DataFrame([row, absent])}, {"claims": ["claims.csv"]}, [])
    first, second = page.claims
    assert (first.control, first.baseline, first.not_supported_if, first.split) == (
        "shuffled labels", "0.25", "no gain over shuffled labels", "")
    assert (second.control, second.baseline, second.not_supported_if) == ("no control: an exact identity", "", "")


def test_index_with_a_reference_note():
    study = IndexStudy(title="S", folder="s1", paper="P", verdicts="1 supported", mode="quick", seeds="[0]",
                       timing="1 s", has_markdown=True, has_html=False,
                       claims=TableView(["claim", "verdict", "reference verdict", "compared"],
                                        [["c", "supported", "", "no reference"]],
                                        badges=("verdict", "reference verdict")))
    page = IndexPage([study], ReferenceNote(link="..", n_same=0, n_claims=1))
    md, out = render(page, "markdown"), render(page, "html")
    assert "## [S](s1/report.md)" in md and "0 of 1 verdicts are the same" in md
    assert "<h2>S</h2>" in out and "<td></td><td>no reference</td>" in out  # empty reference: no badge
    with pytest.raises(ValueError, match="fmt: expected 'markdown' or 'html'"):
        render(page, "pdf")
    with pytest.raises(TypeError, match="page: expected a StudyPage or IndexPage"):
        render({}, "html")


@pytest.mark.skipif(not (ROOT / "index.md").is_file(), reason="no committed reference run")
@pytest.mark.parametrize("study_dir", sorted(p.parent for p in ROOT.glob("*/study.json")), ids=lambda p: p.name)
def test_committed_pages_are_what_the_templates_render_from_the_committed_tables(study_dir):
    meta = json.loads((study_dir / "study.json").read_text())
    files = {name: table_files(study_dir / "tables", name) for name in meta["tables"]}
    tables = {name: _read_table(found[0]) for name, found in files.items() if found}
    figures = []
    for fig in meta["figures"]:
        png = study_dir / "figures" / f"{fig['name']}.png"
        figures.append(FigureEntry(name=fig["name"], heading=fig.get("title") or fig["name"],
                                   caption=fig.get("caption", ""), file=f"figures/{png.name}",
                                   png_base64=base64.b64encode(png.read_bytes()).decode("ascii")))
    page = study_page(meta, tables, {n: [p.name for p in f] for n, f in files.items() if f}, figures)
    assert render(page, "markdown") == (study_dir / "report.md").read_text()
    assert render(page, "html") == (study_dir / "report.html").read_text()
