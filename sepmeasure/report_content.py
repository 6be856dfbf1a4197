"""The content of a report page, as data: what :mod:`sepmeasure.report` renders into Markdown and HTML.

One content model, two templates. :func:`study_page` and :func:`index_page` turn what a study
wrote (``study.json`` and its tables) into the dataclasses below; :func:`render` fills the
jinja2 template of a format (``report_templates/report.md.j2`` or ``report.html.j2``, HTML with
autoescape) with them. Everything a page shows is in these dataclasses, already formatted as
text where the format is the same for both outputs (numbers, the effect with its interval), so
the two templates differ only in layout and cannot disagree on content.

Schema
------
:class:`StudyPage` (``report.md`` / ``report.html`` of one study)
    ``title``, ``paper``, ``description`` (str); ``summary`` (:class:`TableView` of claim,
    paper, statement, verdict; None when the study states no claims); ``claims`` (list of
    :class:`ClaimEntry`); ``figures`` (list of :class:`FigureEntry`); ``tables`` (list of
    :class:`TableEntry`); ``provenance`` (list of ``(label, text)``).
:class:`ClaimEntry` (one claim's overall row of ``tables/claims``)
    ``name``, ``paper``, ``statement``, ``measured``, ``verdict``, ``reason``, ``rule`` (str);
    ``control`` (what the effect is measured against, or why there is none), ``baseline`` (the
    control's value as text, "" when there is none), ``not_supported_if`` (the result that would
    have made the claim "not supported"), ``split`` (the per-group verdicts, e.g. "1 of 3 groups
    supported, 2 not supported"; "" for a claim without groups);
    ``result`` (the effect, its spread over seeds and interval, as text); ``details`` (dict of
    name to number, parsed once from the claims table's JSON ``details`` column); ``caveat``
    (str, shown only when the verdict is not ``supported``, else ""); ``groups``
    (:class:`TableView` of the per-group rows, or None).
:class:`FigureEntry`
    ``name``, ``heading``, ``caption`` (str); ``file`` (``figures/<name>.png`` relative to the
    study folder, or None when it could not be drawn); ``png_base64`` (str, for the
    self-contained HTML); ``error`` (why it could not be drawn, else "").
:class:`TableEntry`
    ``name`` (str); ``n_rows``, ``n_columns`` (int); ``files`` (file names under ``tables/``
    that hold it: CSV, parquet or both); ``preview`` (:class:`TableView` of the first rows
    without provenance columns, None for the claims table).
:class:`TableView`
    ``columns`` (list of str); ``rows`` (list of lists of cell text); ``badges`` (names of the
    columns whose cells are verdicts, drawn as badges in HTML).
:class:`IndexPage` (``index.md`` / ``index.html`` of an output folder)
    ``studies`` (list of :class:`IndexStudy`); ``reference`` (:class:`ReferenceNote` or None).
:class:`IndexStudy`
    ``title``, ``folder``, ``paper``, ``verdicts`` (counts as text), ``mode``, ``seeds``,
    ``timing`` (str); ``has_markdown``, ``has_html`` (bool: the study's pages exist);
    ``claims`` (:class:`TableView` of claim, statement, verdict and, with a reference, reference
    verdict and compared; None without claims).
:class:`ReferenceNote`
    ``link`` (the reference folder relative to the index), ``n_same``, ``n_claims`` (int).
"""
from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import pandas as pd

from .claims.verdicts import COMBINATION_RULE

__all__ = ["TableView", "ClaimEntry", "FigureEntry", "TableEntry", "StudyPage", "IndexStudy", "ReferenceNote",
           "IndexPage", "study_page", "index_study", "index_page", "render", "format_number", "compare_verdict",
           "overall_claims", "table_view", "VERDICT_CLASS"]

PREVIEW_ROWS = 12
VERDICT_CLASS = {"supported": "ok", "partly supported": "partly", "not supported": "no", "inconclusive": "unknown"}
PROVENANCE_COLUMNS = ("platform", "git_commit", "host", "finished_at", "config_hash", "device_name")


# --------------------------------------------------------------------------------------------
# the content model


@dataclass(frozen=True)
class TableView:
    """Cells of a table as text, ready to lay out."""

    columns: list[str]
    rows: list[list[str]]
    badges: tuple[str, ...] = ()


@dataclass(frozen=True)
class ClaimEntry:
    """One claim of a study: the statement, what was measured, the result and the verdict."""

    name: str
    paper: str
    statement: str
    measured: str
    result: str
    details: dict[str, Any]
    verdict: str
    reason: str
    rule: str
    caveat: str
    groups: TableView | None
    control: str = ""
    baseline: str = ""
    not_supported_if: str = ""
    split: str = ""

    @property
    def details_text(self) -> str:
        return ", ".join(f"{k} = {format_number(v)}" for k, v in self.details.items() if v is not None)


@dataclass(frozen=True)
class FigureEntry:
    """One figure of a study, drawn (``file``) or not (``error``)."""

    name: str
    heading: str
    caption: str
    file: str | None
    png_base64: str = ""
    error: str = ""


@dataclass(frozen=True)
class TableEntry:
    """One table of a study: its size, the files holding it and a preview."""

    name: str
    n_rows: int
    n_columns: int
    files: list[str]
    preview: TableView | None


@dataclass(frozen=True)
class StudyPage:
    """The report of one study."""

    title: str
    paper: str
    description: str
    summary: TableView | None
    claims: list[ClaimEntry]
    figures: list[FigureEntry]
    tables: list[TableEntry]
    provenance: list[tuple[str, str]]


@dataclass(frozen=True)
class IndexStudy:
    """One study as the index lists it."""

    title: str
    folder: str
    paper: str
    verdicts: str
    mode: str
    seeds: str
    timing: str
    has_markdown: bool
    has_html: bool
    claims: TableView | None


@dataclass(frozen=True)
class ReferenceNote:
    """How the verdicts of this run compare with a reference run's."""

    link: str
    n_same: int
    n_claims: int


@dataclass(frozen=True)
class IndexPage:
    """The index of an output folder: every study with its verdicts."""

    studies: list[IndexStudy] = field(default_factory=list)
    reference: ReferenceNote | None = None


# --------------------------------------------------------------------------------------------
# formatting


def format_number(v: Any, digits: int = 3) -> str:
    """A number as the reports print it: ``digits`` significant digits, scientific when tiny or huge.

    Examples
    --------
    >>> format_number(0.123456), format_number(1234.5), format_number(2e-5), format_number(float("nan"))
    ('0.123', '1.23e+03', '2.000e-05', 'n/a')
    """
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "n/a"
    if f != 0 and (abs(f) >= 1e5 or abs(f) < 1e-3):
        return f"{f:.{digits}e}"
    return f"{f:.{digits}g}" if abs(f) >= 1 else f"{f:.{digits}f}".rstrip("0").rstrip(".") or "0"


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return format_number(v)
    if v is None:
        return ""
    return str(v)


def table_view(frame: pd.DataFrame, max_rows: int | None = None, badges: tuple[str, ...] = ()) -> TableView:
    """The first ``max_rows`` rows of ``frame`` as cell text."""
    shown = frame if max_rows is None else frame.head(max_rows)
    return TableView(columns=[str(c) for c in shown.columns],
                     rows=[[_cell(v) for v in r] for r in shown.itertuples(index=False, name=None)], badges=badges)


def _effect_text(row: Mapping[str, Any]) -> str:
    n = int(row["n_seeds"]) if pd.notna(row.get("n_seeds")) else 0
    text = format_number(row["effect"])
    if pd.notna(row.get("spread")):
        text += f" ± {format_number(row['spread'], 2)} (sd over {n} seeds)"
    else:
        text += f" ({n} seed{'s' if n != 1 else ''})"
    if pd.notna(row.get("lower")) and pd.notna(row.get("upper")):
        level = f"{float(row['confidence']):.0%}" if pd.notna(row.get("confidence")) else ""
        text += f"; {level} interval [{format_number(row['lower'])}, {format_number(row['upper'])}]"
    return text


def _details(raw: Any) -> dict[str, Any]:
    """The claims table's ``details`` column (JSON text) as a dict; {} when empty or unreadable."""
    if isinstance(raw, Mapping):
        return dict(raw)
    if not isinstance(raw, str) or not raw:
        return {}
    try:
        parsed = json.loads(raw)
    except json.JSONDecodeError:
        return {}
    return parsed if isinstance(parsed, dict) else {}


# --------------------------------------------------------------------------------------------
# building pages from what a study wrote


def overall_claims(claims: pd.DataFrame) -> pd.DataFrame:
    """The rows of a claims table that hold each claim's overall verdict (``group == "all"``)."""
    if claims.empty or "group" not in claims.columns:
        return claims
    return claims[claims["group"] == "all"]


def _groups(claims: pd.DataFrame, name: str) -> TableView | None:
    sub = claims[(claims["claim"] == name) & (claims["group"] != "all")]
    if sub.empty:
        return None
    frame = pd.DataFrame({
        "group": sub["group"], "effect": sub["effect"].map(format_number),
        "sd over seeds": sub["spread"].map(format_number),
        "interval": [f"[{format_number(a)}, {format_number(b)}]" for a, b in zip(sub["lower"], sub["upper"])],
        "seeds": sub["n_seeds"], "verdict": sub["verdict"]})
    return table_view(frame)


def _claim(row: Mapping[str, Any], claims: pd.DataFrame) -> ClaimEntry:
    caveat = row.get("caveat")
    return ClaimEntry(
        name=str(row["claim"]), paper=str(row["paper"]), statement=str(row["statement"]),
        measured=str(row["measured"]), result=_effect_text(row), details=_details(row.get("details")),
        verdict=str(row["verdict"]), reason=str(row["reason"]), rule=str(row["rule"]),
        caveat=caveat if row["verdict"] != "supported" and isinstance(caveat, str) and caveat else "",
        groups=_groups(claims, row["claim"]), control=_text(row.get("control")),
        baseline=format_number(row["baseline"]) if _is_number(row.get("baseline")) else "",
        not_supported_if=_text(row.get("not_supported_if")), split=_text(row.get("split")))


def _text(v: Any) -> str:
    """A text cell of the claims table; "" for a missing one (NaN after a CSV round trip)."""
    return v if isinstance(v, str) else ""


def _is_number(v: Any) -> bool:
    try:
        return not math.isnan(float(v))
    except (TypeError, ValueError):
        return False


def _provenance(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    env = meta.get("environment", {}) or {}
    versions = ", ".join(f"{k[len('version_'):]} {v}" for k, v in env.items() if k.startswith("version_"))
    nan = float("nan")
    return [
        ("Mode", str(meta.get("mode", ""))),
        ("Seeds", ", ".join(str(s) for s in meta.get("seeds", []))),
        ("Configurations", f"{meta.get('n_configurations', '?')} ({meta.get('n_computed', '?')} computed in "
                           f"the last run, {meta.get('n_cached', '?')} from the cache)"),
        ("Time", f"last run {format_number(meta.get('wall_time_s', nan))} s; compute over all "
                 f"configurations {format_number(meta.get('compute_time_s', nan))} s"),
        ("Executor", str(meta.get("executor", ""))),
        ("Device", str(env.get("device", ""))),
        ("Git commit", str(env.get("git_commit") or "none")),
        ("Libraries", versions),
        ("Finished", str(meta.get("finished_at", ""))),
    ]


def _preview(table: pd.DataFrame) -> pd.DataFrame:
    """The table without its provenance columns (kept in the files)."""
    drop = [c for c in table.columns if str(c).startswith("version_") or c in PROVENANCE_COLUMNS]
    return table.drop(columns=drop)


def study_page(meta: Mapping[str, Any], tables: Mapping[str, pd.DataFrame], files: Mapping[str, list[str]],
               figures: list[FigureEntry]) -> StudyPage:
    """The content of one study's report from its ``study.json``, tables and drawn figures.

    Parameters
    ----------
    meta : dict
        The study's ``study.json``.
    tables : dict of str to DataFrame
        Its tables by name (``claims`` among them when it states claims).
    files : dict of str to list of str
        For each table, the file names under ``tables/`` that hold it.
    figures : list of FigureEntry
        The figures, drawn or not.

    Returns
    -------
    StudyPage
    """
    claims = tables.get("claims", pd.DataFrame())
    overall = overall_claims(claims)
    summary = None
    if not overall.empty:
        summary = table_view(pd.DataFrame({"claim": overall["claim"], "paper": overall["paper"],
                                           "statement": overall["statement"], "verdict": overall["verdict"]}),
                             badges=("verdict",))
    entries = [_claim(row, claims) for row in overall.to_dict("records")]
    table_entries = [TableEntry(name=name, n_rows=len(t), n_columns=len(t.columns), files=list(files[name]),
                                preview=None if name == "claims" else table_view(_preview(t), PREVIEW_ROWS))
                     for name, t in tables.items()]
    return StudyPage(title=str(meta.get("title") or meta["name"]), paper=str(meta.get("paper") or ""),
                     description=str(meta.get("description") or ""), summary=summary, claims=entries,
                     figures=figures, tables=table_entries, provenance=_provenance(meta))


def index_study(folder: str, meta: Mapping[str, Any], claims: pd.DataFrame, *, has_markdown: bool, has_html: bool,
                reference: Mapping[str, str] | None = None) -> IndexStudy:
    """One study's entry in the index; ``reference`` maps claim names to the reference run's verdicts."""
    counts = claims["verdict"].value_counts().to_dict() if not claims.empty else {}
    view = None
    if not claims.empty:
        frame = pd.DataFrame({"claim": claims["claim"], "statement": claims["statement"],
                              "verdict": claims["verdict"]})
        badges: tuple[str, ...] = ("verdict",)
        if reference is not None:
            theirs = [reference.get(str(c)) for c in claims["claim"]]
            frame["reference verdict"] = [t if t is not None else "" for t in theirs]
            frame["compared"] = [compare_verdict(str(v), t) for v, t in zip(claims["verdict"], theirs)]
            badges = ("verdict", "reference verdict")
        view = table_view(frame, badges=badges)
    nan = float("nan")
    return IndexStudy(
        title=str(meta.get("title") or meta["name"]), folder=folder, paper=str(meta.get("paper", "")),
        verdicts=", ".join(f"{n} {v}" for v, n in counts.items()) or "no claims", mode=str(meta.get("mode", "")),
        seeds=str(meta.get("seeds", [])),
        timing=(f"{format_number(meta.get('compute_time_s', nan))} s of compute over "
                f"{meta.get('n_configurations', '?')} configurations"),
        has_markdown=has_markdown, has_html=has_html, claims=view)


def compare_verdict(verdict: str, reference: str | None) -> str:
    """How a verdict compares with the reference run's verdict of the same claim.

    Parameters
    ----------
    verdict : str
        The verdict of this run.
    reference : str or None
        The reference run's verdict of the same claim; None when the reference lacks it.

    Returns
    -------
    str
        ``"same"``, ``"differs"`` or ``"no reference"``.

    Examples
    --------
    >>> compare_verdict("supported", "supported"), compare_verdict("supported", "inconclusive")
    ('same', 'differs')
    >>> compare_verdict("supported", None)
    'no reference'
    """
    if reference is None:
        return "no reference"
    return "same" if verdict == reference else "differs"


def index_page(studies: list[IndexStudy], reference: ReferenceNote | None = None) -> IndexPage:
    """The content of an index."""
    return IndexPage(studies=list(studies), reference=reference)


# --------------------------------------------------------------------------------------------
# rendering


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


@lru_cache(maxsize=1)
def _environment():
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("sepmeasure", "report_templates"),
                             autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",),
                                                                 default_for_string=False),
                             trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["md"] = _md_escape
    env.globals["verdict_class"] = lambda v: VERDICT_CLASS.get(str(v), "unknown")
    env.globals["combination_rule"] = COMBINATION_RULE
    return env


def render(page: StudyPage | IndexPage, fmt: str) -> str:
    """Render ``page`` as ``"markdown"`` or ``"html"`` with the format's template.

    Examples
    --------
    >>> print(render(IndexPage(), "markdown").splitlines()[0])
    # Studies
    """
    if fmt not in ("markdown", "html"):
        raise ValueError(f"fmt: expected 'markdown' or 'html', got {fmt!r}")
    if not isinstance(page, (StudyPage, IndexPage)):
        raise TypeError(f"page: expected a StudyPage or IndexPage, got {type(page).__name__}")
    template = _environment().get_template("report.md.j2" if fmt == "markdown" else "report.html.j2")
    macro = template.module.study if isinstance(page, StudyPage) else template.module.index
    return str(macro(page))
