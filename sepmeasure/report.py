"""Reports from the tidy tables of finished studies: seaborn figures, Markdown and self-contained HTML.

Everything here reads what :meth:`sepmeasure.study.Study.run` wrote under ``<out>/<study>/``
(``study.json`` and ``tables/*.csv``) and nothing else, so a report can be rebuilt at any time
(``sepmeasure report``) without running a study again. Per study it writes

* ``figures/<name>.png``, one per :class:`FigureSpec` of the study (drawn with seaborn on the
  Agg backend),
* ``report.md`` (figures linked as files) and ``report.html`` (figures embedded as base64
  data URIs, CSS inline, no scripts and no external links),

and for the whole output folder ``index.md`` / ``index.html``: every study with its claims and
verdicts, linking to the study reports. Each study report states its claims in the paper's
words (paper named), then per claim what was measured, the effect with its spread over seeds
and confidence interval, the verdict, the rule that decided it and why.
"""
from __future__ import annotations

import base64
import html
import io
import json
import math
import os
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import pandas as pd

from .storage import atomic_write_bytes, atomic_write_text
from .validation import check_choice, describe

__all__ = ["FigureSpec", "FIGURE_KINDS", "render_figure", "write_study_report", "write_index", "write_report",
           "find_studies", "compare_verdict", "drop_csv_copies", "table_files"]

FIGURE_KINDS: tuple[str, ...] = ("line", "scatter", "bar", "point", "box", "heatmap")
_PREVIEW_ROWS = 12
_VERDICT_CLASS = {"supported": "ok", "partly supported": "partly", "not supported": "no",
                  "inconclusive": "unknown"}


@dataclass(frozen=True)
class FigureSpec:
    """A figure drawn from one study table.

    Parameters
    ----------
    name : str
        File name (``figures/<name>.png``) and anchor.
    table : str
        The table it is drawn from.
    kind : {"line", "scatter", "bar", "point", "box", "heatmap"}
        ``line``/``scatter``: :func:`seaborn.relplot` (a line shows the mean over seeds and a band
        of one standard deviation); ``bar``/``point``/``box``: :func:`seaborn.catplot` (error bars:
        one standard deviation); ``heatmap``: the mean of ``value`` on an ``x`` by ``y`` grid.
    x, y : str
        Columns on the axes.
    hue, style, col, row : str, optional
        Columns mapped to colour, line style and facets.
    value : str, optional
        Heatmap cell value (required for ``heatmap``).
    where : dict, optional
        Row filter ``{column: value or list of values}``.
    title, caption : str
        Shown above and below the figure in the report.
    col_wrap : int, optional
        Facets per row when only ``col`` is given.
    sharey : bool
        Shared y axis across facets.
    logx : bool
        Logarithmic x axis.
    height : float
        Height of one facet, inches.

    Examples
    --------
    >>> FigureSpec(name="acc", table="results", kind="line", x="epoch", y="accuracy", hue="model").kind
    'line'
    """

    name: str
    table: str
    kind: str
    x: str
    y: str
    hue: str | None = None
    style: str | None = None
    col: str | None = None
    row: str | None = None
    value: str | None = None
    where: Mapping[str, Any] | None = None
    title: str = ""
    caption: str = ""
    col_wrap: int | None = None
    sharey: bool = True
    logx: bool = False
    height: float = 3.0

    def __post_init__(self) -> None:
        for attr in ("name", "table", "x", "y"):
            v = getattr(self, attr)
            if not isinstance(v, str) or not v:
                raise TypeError(f"{attr}: expected a non-empty str, got {describe(v)}")
        if not all(ch.isalnum() or ch in "_-." for ch in self.name):
            raise ValueError(f"name: expected letters, digits, '_', '-' or '.', got {self.name!r}")
        check_choice(self.kind, "kind", FIGURE_KINDS)
        if self.kind == "heatmap" and not self.value:
            raise ValueError("value: expected the heatmap's cell column, got None")
        if self.where is not None and not isinstance(self.where, Mapping):
            raise TypeError(f"where: expected a dict of column -> value(s), got {describe(self.where)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (stored in ``study.json``)."""
        d = asdict(self)
        if d["where"] is not None:
            d["where"] = {k: (list(v) if isinstance(v, (list, tuple, set, frozenset)) else v)
                          for k, v in d["where"].items()}
        return d

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "FigureSpec":
        """Inverse of :meth:`to_dict` (unknown keys are ignored)."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def columns(self) -> list[str]:
        return [c for c in (self.x, self.y, self.hue, self.style, self.col, self.row, self.value) if c]


# --------------------------------------------------------------------------------------------
# figures


def _filter(table: pd.DataFrame, where: Mapping[str, Any] | None) -> pd.DataFrame:
    from .claims.rows import select_rows  # the one where-filter, shared with claims
    return select_rows(table, where, "a figure")


def render_figure(spec: FigureSpec, table: pd.DataFrame) -> bytes:
    """Draw ``spec`` from ``table``; return the PNG bytes.

    Parameters
    ----------
    spec : FigureSpec
        What to draw.
    table : pandas.DataFrame
        The table named by ``spec.table`` (filtered by ``spec.where`` here).

    Returns
    -------
    bytes
        A PNG image.

    Raises
    ------
    TypeError
        ``spec`` is not a :class:`FigureSpec` or ``table`` not a pandas DataFrame.
    ValueError
        When a column the figure needs is missing, ``where`` names a column the table lacks, or
        no row is left after ``where``.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"epoch": [0, 1, 2] * 2, "acc": [0.1, 0.5, 0.9, 0.2, 0.6, 0.8], "seed": [0]*3 + [1]*3})
    >>> render_figure(FigureSpec(name="a", table="t", kind="line", x="epoch", y="acc"), t)[:4]
    b'\\x89PNG'
    """
    if not isinstance(spec, FigureSpec):
        raise TypeError(f"spec: expected a FigureSpec, got {describe(spec)}")
    if not isinstance(table, pd.DataFrame):
        raise TypeError(f"table: expected a pandas DataFrame, got {describe(table)}")
    missing = [c for c in spec.columns() if c not in table.columns]
    if missing:
        raise ValueError(f"figure '{spec.name}': table '{spec.table}' lacks columns {missing} "
                         f"(columns: {list(table.columns)})")
    data = _filter(table, spec.where)
    if data.empty:
        raise ValueError(f"figure '{spec.name}': no rows left in table '{spec.table}' after where={spec.where}")

    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import seaborn as sns

    sns.set_theme(style="whitegrid", context="paper")
    try:
        fig = _draw(spec, data, sns, plt)
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
        return buf.getvalue()
    finally:
        plt.close("all")


def _draw(spec: FigureSpec, data: pd.DataFrame, sns, plt):
    facet = {"col": spec.col, "row": spec.row}
    if spec.col and not spec.row and spec.col_wrap:
        facet["col_wrap"] = spec.col_wrap
    if spec.kind in ("line", "scatter"):
        extra = {"errorbar": "sd"} if spec.kind == "line" else {}
        g = sns.relplot(data=data, kind=spec.kind, x=spec.x, y=spec.y, hue=spec.hue, style=spec.style,
                        height=spec.height, aspect=1.3, facet_kws={"sharey": spec.sharey}, **facet, **extra)
        if spec.logx:
            g.set(xscale="log")
    elif spec.kind in ("bar", "point", "box"):
        extra = {"errorbar": "sd"} if spec.kind in ("bar", "point") else {}
        g = sns.catplot(data=data, kind=spec.kind, x=spec.x, y=spec.y, hue=spec.hue, height=spec.height,
                        aspect=1.3, sharey=spec.sharey, **facet, **extra)
        if data[spec.x].astype(str).str.len().max() > 5:
            for ax in g.axes.flat:
                ax.tick_params(axis="x", labelrotation=30)
    else:
        g = sns.FacetGrid(data, height=spec.height, aspect=1.2, **facet)
        g.map_dataframe(_heatmap, x=spec.x, y=spec.y, value=spec.value, sns=sns)
    if spec.title:
        g.figure.suptitle(spec.title, y=1.02)
    return g.figure


def _heatmap(*, data: pd.DataFrame, x: str, y: str, value: str, sns, **_: Any) -> None:
    grid = data.pivot_table(index=y, columns=x, values=value, aggfunc="mean")
    import matplotlib.pyplot as plt

    sns.heatmap(grid, annot=grid.size <= 64, fmt=".2g", cmap="viridis", ax=plt.gca(), cbar=True)


# --------------------------------------------------------------------------------------------
# reading what a study wrote


def _as_path(value: Any, name: str) -> Path:
    """``Path(value)``, or a ``TypeError`` naming ``name`` for anything that is not a path."""
    if not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{name}: expected a directory path, got {describe(value)}")
    return Path(value)


def find_studies(out_dir: str | os.PathLike) -> list[Path]:
    """Study folders under ``out_dir`` (those with a ``study.json``), sorted by name.

    Parameters
    ----------
    out_dir : path
        The output folder of ``sepmeasure study``; a missing folder holds no studies.

    Returns
    -------
    list of Path
        The folders ``out_dir/<study>`` that hold a ``study.json``.

    Raises
    ------
    TypeError
        ``out_dir`` is not a path.
    """
    root = _as_path(out_dir, "out_dir")
    return sorted(p.parent for p in root.glob("*/study.json"))


def _read_meta(study_dir: Path) -> dict[str, Any]:
    path = study_dir / "study.json"
    if not path.is_file():
        raise FileNotFoundError(f"study_dir: expected a study folder with study.json (written by `sepmeasure "
                                f"study`), got {str(study_dir)!r}")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc}); re-run the study") from None


TABLE_FORMATS: tuple[str, ...] = (".csv", ".parquet")
CSV_MAX_BYTES = 100_000


def table_files(tables_dir: Path, name: str) -> list[Path]:
    """The files that hold table ``name`` in ``tables_dir`` (``<name>.csv``, ``<name>.parquet``), those that exist."""
    return [p for p in (tables_dir / f"{name}{ext}" for ext in TABLE_FORMATS) if p.is_file()]


def _read_table(path: Path) -> pd.DataFrame:
    """A table as its CSV text reads, whichever file holds it.

    A parquet file is read and passed through CSV text, so a report (and its figures) does not
    depend on which of the two copies of a table is at hand: the parquet copy stores object
    columns as JSON strings, where the CSV reader infers numbers.
    """
    if path.suffix == ".parquet":
        frame = pd.read_parquet(path)
        if not len(frame.columns):
            return pd.DataFrame()
        path = io.StringIO(frame.to_csv(index=False))
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _read_named_table(tables_dir: Path, name: str) -> pd.DataFrame | None:
    files = table_files(tables_dir, name)
    return _read_table(files[0]) if files else None


def drop_csv_copies(out_dir: str | os.PathLike, *, max_bytes: int = CSV_MAX_BYTES) -> list[Path]:
    """Delete the CSV copy of each large table that also has a parquet copy holding the same rows.

    The committed reference run keeps large tables as parquet only; the claims table and CSV
    files of at most ``max_bytes`` (summaries a reader opens) stay. A CSV is deleted only after
    its parquet copy has been read back and found equal to it (as :func:`write_study_report`
    reads tables), so nothing is lost; the report pages then link the parquet copy.

    Parameters
    ----------
    out_dir : path
        The output folder of ``sepmeasure study`` (every ``<study>/tables/`` under it).
    max_bytes : int, default 100 000
        CSV files up to this size are kept.

    Returns
    -------
    list of Path
        The CSV files deleted.

    Raises
    ------
    TypeError
        ``out_dir`` is not a path or ``max_bytes`` not an integer.
    ValueError
        ``max_bytes`` is negative.

    Examples
    --------
    >>> import tempfile, pathlib, pandas as pd
    >>> d = pathlib.Path(tempfile.mkdtemp()); t = d / "s1" / "tables"; t.mkdir(parents=True)
    >>> _ = (d / "s1" / "study.json").write_text("{}")
    >>> big = pd.DataFrame({"x": range(50_000)})
    >>> big.to_csv(t / "results.csv", index=False); big.to_parquet(t / "results.parquet", index=False)
    >>> [p.name for p in drop_csv_copies(d)], sorted(p.name for p in t.iterdir())
    (['results.csv'], ['results.parquet'])
    """
    root = _as_path(out_dir, "out_dir")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int):
        raise TypeError(f"max_bytes: expected an int, got {describe(max_bytes)}")
    if max_bytes < 0:
        raise ValueError(f"max_bytes: expected a non-negative number of bytes, got {max_bytes}")
    dropped = []
    for sdir in find_studies(root):
        for csv in sorted((sdir / "tables").glob("*.csv")):
            twin = csv.with_suffix(".parquet")
            if csv.stem == "claims" or csv.stat().st_size <= max_bytes or not twin.is_file():
                continue
            if _read_table(twin).equals(_read_table(csv)):
                csv.unlink()
                dropped.append(csv)
            else:
                warnings.warn(f"{csv}: kept, its parquet copy holds other rows", stacklevel=2)
    return dropped


# --------------------------------------------------------------------------------------------
# formatting


def _num(v: Any, digits: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    if math.isnan(f):
        return "n/a"
    if f != 0 and (abs(f) >= 1e5 or abs(f) < 1e-3):
        return f"{f:.{digits}e}"
    return f"{f:.{digits}g}" if abs(f) >= 1 else f"{f:.{digits}f}".rstrip("0").rstrip(".") or "0"


def _effect_text(row: Mapping[str, Any]) -> str:
    n = int(row["n_seeds"]) if pd.notna(row.get("n_seeds")) else 0
    text = _num(row["effect"])
    if pd.notna(row.get("spread")):
        text += f" ± {_num(row['spread'], 2)} (sd over {n} seeds)"
    else:
        text += f" ({n} seed{'s' if n != 1 else ''})"
    if pd.notna(row.get("lower")) and pd.notna(row.get("upper")):
        level = f"{float(row['confidence']):.0%}" if pd.notna(row.get("confidence")) else ""
        text += f"; {level} interval [{_num(row['lower'])}, {_num(row['upper'])}]"
    return text


def _details_text(raw: Any) -> str:
    if not isinstance(raw, str) or not raw:
        return ""
    try:
        d = json.loads(raw)
    except json.JSONDecodeError:
        return ""
    return ", ".join(f"{k} = {_num(v)}" for k, v in d.items() if v is not None)


def _md_escape(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _md_table(frame: pd.DataFrame, max_rows: int | None = None) -> str:
    if frame.empty and not len(frame.columns):
        return "_(empty table)_"
    shown = frame if max_rows is None else frame.head(max_rows)
    cols = [str(c) for c in shown.columns]
    lines = ["| " + " | ".join(_md_escape(c) for c in cols) + " |", "|" + "---|" * len(cols)]
    for _, r in shown.iterrows():
        lines.append("| " + " | ".join(_md_escape(_cell(v)) for v in r.tolist()) + " |")
    return "\n".join(lines)


def _cell(v: Any) -> str:
    if isinstance(v, float):
        return _num(v)
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    return str(v)


def _html_table(frame: pd.DataFrame, max_rows: int | None = None) -> str:
    if frame.empty and not len(frame.columns):
        return "<p><em>(empty table)</em></p>"
    shown = frame if max_rows is None else frame.head(max_rows)
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in shown.columns)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v))}</td>" for v in r.tolist()) + "</tr>"
                   for _, r in shown.iterrows())
    return f'<div class="scroll"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


_CSS = """
body{font-family:-apple-system,'Segoe UI',Helvetica,Arial,sans-serif;max-width:1100px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.7em;margin-bottom:.2em}h2{border-bottom:1px solid #ddd;padding-bottom:.2em;margin-top:2em}
blockquote{margin:.6em 0;padding:.4em 1em;border-left:4px solid #8aa;background:#f5f8f8;font-style:italic}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ccc;padding:.25em .5em;
text-align:left;vertical-align:top}th{background:#f0f0f0}.scroll{overflow-x:auto}
.verdict{display:inline-block;padding:.1em .6em;border-radius:.8em;font-weight:600;font-size:.9em;white-space:nowrap}
.ok{background:#d4f4dd;color:#135d2a}.partly{background:#fff1c2;color:#6b5200}.no{background:#fbd5d5;color:#7d1111}
.unknown{background:#e4e4e4;color:#333}.claim{border:1px solid #ddd;border-radius:6px;padding:.3em 1em 1em;margin:1em 0}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.3em 1em;margin:.5em 0}dt{font-weight:600}dd{margin:0}
figure{margin:1.2em 0}figure img{max-width:100%;height:auto;border:1px solid #eee}figcaption{font-size:.9em;color:#555}
.meta{color:#555;font-size:.9em}.caveat{color:#6b5200}
"""


def _page(title: str, body: str) -> str:
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


def _badge(verdict: str) -> str:
    return f'<span class="verdict {_VERDICT_CLASS.get(verdict, "unknown")}">{html.escape(verdict)}</span>'


# --------------------------------------------------------------------------------------------
# one study


def write_study_report(study_dir: str | os.PathLike, *, index: bool = True) -> dict[str, Path]:
    """Draw the figures of one study and write its ``report.md`` and ``report.html``.

    Parameters
    ----------
    study_dir : path
        ``<out>/<study name>``, as written by :meth:`sepmeasure.study.Study.run`.
    index : bool, default True
        Also (re)write the index of the parent folder, so the report's link back resolves.

    Returns
    -------
    dict
        ``{"html": path, "markdown": path, "figures": [paths]}``.

    Raises
    ------
    TypeError
        ``study_dir`` is not a path.
    FileNotFoundError
        ``study_dir`` holds no ``study.json``.
    ValueError
        The ``study.json`` of ``study_dir`` (or, with ``index``, of another study in its parent
        folder) is not valid JSON.

    Warns
    -----
    UserWarning
        A figure that cannot be drawn (a missing table or column, no rows left); the report
        says so in its place.

    Examples
    --------
    >>> import tempfile
    >>> from sepmeasure.study import Study
    >>> from sepmeasure.claims import Threshold
    >>> study = Study(name="demo", run_one=lambda c: [{"acc": 0.9 + 0.01 * c["seed"]}], quick={"m": "x"},
    ...               full={"m": "x"}, paper="Demo 2024",
    ...               claims=[Threshold(name="high", paper="Demo 2024", statement="accuracy is high",
    ...                                 value="acc", op=">=", bound=0.5)],
    ...               figures=[FigureSpec(name="acc", table="results", kind="bar", x="m", y="acc")])
    >>> out = study.run(out=tempfile.mkdtemp(), progress=False).out_dir
    >>> sorted(write_study_report(out))
    ['figures', 'html', 'markdown']
    """
    study_dir = _as_path(study_dir, "study_dir")
    meta = _read_meta(study_dir)
    tables_dir = study_dir / "tables"
    tables: dict[str, pd.DataFrame] = {}
    files: dict[str, list[Path]] = {}
    for name in meta.get("tables", []):
        found = table_files(tables_dir, name)
        if found:
            tables[name] = _read_table(found[0])
            files[name] = found
    claims = tables.get("claims", pd.DataFrame())

    figures: list[tuple[FigureSpec, Path | None, str]] = []
    for raw in meta.get("figures", []):
        spec = FigureSpec.from_dict(raw)
        target = study_dir / "figures" / f"{spec.name}.png"
        try:
            if spec.table not in tables:
                raise ValueError(f"figure '{spec.name}': no table named '{spec.table}' (tables: {sorted(tables)})")
            atomic_write_bytes(target, render_figure(spec, tables[spec.table]))
            figures.append((spec, target, ""))
        except Exception as exc:
            warnings.warn(f"{study_dir.name}: figure '{spec.name}' not drawn: {exc}", stacklevel=2)
            figures.append((spec, None, str(exc)))

    md = _study_markdown(meta, tables, files, claims, figures)
    page = _study_html(meta, tables, files, claims, figures)
    md_path = atomic_write_text(study_dir / "report.md", md)
    html_path = atomic_write_text(study_dir / "report.html", page)
    if index:
        write_index(study_dir.parent)
    return {"html": html_path, "markdown": md_path, "figures": [p for _, p, _ in figures if p is not None]}


def _overall(claims: pd.DataFrame) -> pd.DataFrame:
    if claims.empty or "group" not in claims.columns:
        return claims
    return claims[claims["group"] == "all"]


def _groups(claims: pd.DataFrame, name: str) -> pd.DataFrame:
    if claims.empty:
        return claims
    sub = claims[(claims["claim"] == name) & (claims["group"] != "all")]
    return pd.DataFrame({
        "group": sub["group"], "effect": sub["effect"].map(_num), "sd over seeds": sub["spread"].map(_num),
        "interval": [f"[{_num(a)}, {_num(b)}]" for a, b in zip(sub["lower"], sub["upper"])],
        "seeds": sub["n_seeds"], "verdict": sub["verdict"]})


def _provenance(meta: Mapping[str, Any]) -> list[tuple[str, str]]:
    env = meta.get("environment", {}) or {}
    versions = ", ".join(f"{k[len('version_'):]} {v}" for k, v in env.items() if k.startswith("version_"))
    return [
        ("Mode", str(meta.get("mode", ""))),
        ("Seeds", ", ".join(str(s) for s in meta.get("seeds", []))),
        ("Configurations", f"{meta.get('n_configurations', '?')} ({meta.get('n_computed', '?')} computed in "
                           f"the last run, {meta.get('n_cached', '?')} from the cache)"),
        ("Time", f"last run {_num(meta.get('wall_time_s', float('nan')))} s; compute over all "
                 f"configurations {_num(meta.get('compute_time_s', float('nan')))} s"),
        ("Executor", str(meta.get("executor", ""))),
        ("Device", str(env.get("device", ""))),
        ("Git commit", str(env.get("git_commit") or "none")),
        ("Libraries", versions),
        ("Finished", str(meta.get("finished_at", ""))),
    ]


def _study_markdown(meta, tables, files, claims, figures) -> str:
    title = meta.get("title") or meta["name"]
    out = [f"# {title}", "", "[All studies](../index.md)", ""]
    if meta.get("paper"):
        out += [f"**Paper:** {meta['paper']}", ""]
    if meta.get("description"):
        out += [meta["description"], ""]
    out += ["## Claims", ""]
    overall = _overall(claims)
    if overall.empty:
        out += ["_This study states no claims._", ""]
    else:
        summary = pd.DataFrame({"claim": overall["claim"], "paper": overall["paper"],
                                "statement": overall["statement"], "verdict": overall["verdict"]})
        out += [_md_table(summary), ""]
    for _, row in overall.iterrows():
        out += [f"### {row['claim']}", "", f"> {_md_escape(row['statement'])}", ">",
                f"> — {row['paper']}", "",
                f"- **Measured:** {row['measured']}",
                f"- **Result:** {_effect_text(row)}"]
        det = _details_text(row.get("details"))
        if det:
            out.append(f"- **Details:** {det}")
        out += [f"- **Verdict:** **{row['verdict']}** — {row['reason']}",
                f"- **Rule:** {row['rule']}"]
        if row["verdict"] != "supported" and isinstance(row.get("caveat"), str) and row["caveat"]:
            out.append(f"- **Why it may differ from the paper:** {row['caveat']}")
        groups = _groups(claims, row["claim"])
        if not groups.empty:
            out += ["", _md_table(groups)]
        out.append("")
    out += ["## Figures", ""]
    if not figures:
        out += ["_No figures._", ""]
    for spec, path, error in figures:
        heading = spec.title or spec.name
        if path is None:
            out += [f"**{heading}**: could not be drawn ({error}).", ""]
        else:
            out += [f"![{heading}](figures/{path.name})", ""]
            if spec.caption:
                out += [f"_{spec.caption}_", ""]
    out += ["## Tables", ""]
    for name, table in tables.items():
        out += [f"### {name}", "", f"{len(table)} rows × {len(table.columns)} columns — "
                + " · ".join(f"[tables/{p.name}](tables/{p.name})" for p in files[name]), ""]
        if name != "claims":
            out += [_md_table(_preview(table), _PREVIEW_ROWS), ""]
    out += ["## Provenance", ""] + [f"- **{k}:** {v}" for k, v in _provenance(meta)] + [""]
    return "\n".join(out)


def _preview(table: pd.DataFrame) -> pd.DataFrame:
    """The table without its provenance columns (kept in the CSV)."""
    drop = [c for c in table.columns if str(c).startswith("version_") or c in (
        "platform", "git_commit", "host", "finished_at", "config_hash", "device_name")]
    return table.drop(columns=drop)


def _study_html(meta, tables, files, claims, figures) -> str:
    title = meta.get("title") or meta["name"]
    parts = ['<nav><a href="../index.html">All studies</a></nav>', f"<h1>{html.escape(title)}</h1>"]
    if meta.get("paper"):
        parts.append(f'<p class="meta"><strong>Paper:</strong> {html.escape(meta["paper"])}</p>')
    if meta.get("description"):
        parts.append(f"<p>{html.escape(meta['description'])}</p>")
    parts.append("<h2>Claims</h2>")
    overall = _overall(claims)
    if overall.empty:
        parts.append("<p><em>This study states no claims.</em></p>")
    else:
        rows = "".join(
            f'<tr><td><a href="#claim-{i}">{html.escape(str(r["claim"]))}</a></td><td>{html.escape(str(r["paper"]))}'
            f'</td><td>{html.escape(str(r["statement"]))}</td><td>{_badge(str(r["verdict"]))}</td></tr>'
            for i, (_, r) in enumerate(overall.iterrows()))
        parts.append('<div class="scroll"><table><thead><tr><th>claim</th><th>paper</th><th>statement</th>'
                     f"<th>verdict</th></tr></thead><tbody>{rows}</tbody></table></div>")
    for i, (_, row) in enumerate(overall.iterrows()):
        items = [("Measured", html.escape(str(row["measured"]))), ("Result", html.escape(_effect_text(row)))]
        det = _details_text(row.get("details"))
        if det:
            items.append(("Details", html.escape(det)))
        items += [("Verdict", f"{_badge(str(row['verdict']))} {html.escape(str(row['reason']))}"),
                  ("Rule", html.escape(str(row["rule"])))]
        if row["verdict"] != "supported" and isinstance(row.get("caveat"), str) and row["caveat"]:
            items.append(("Why it may differ", f'<span class="caveat">{html.escape(row["caveat"])}</span>'))
        dl = "".join(f"<dt>{k}</dt><dd>{v}</dd>" for k, v in items)
        groups = _groups(claims, row["claim"])
        gtable = _html_table(groups) if not groups.empty else ""
        parts.append(f'<section class="claim" id="claim-{i}"><h3>{html.escape(str(row["claim"]))}</h3>'
                     f'<blockquote>{html.escape(str(row["statement"]))}<br>— {html.escape(str(row["paper"]))}'
                     f"</blockquote><dl>{dl}</dl>{gtable}</section>")
    parts.append("<h2>Figures</h2>")
    if not figures:
        parts.append("<p><em>No figures.</em></p>")
    for spec, path, error in figures:
        heading = html.escape(spec.title or spec.name)
        if path is None:
            parts.append(f"<p><strong>{heading}</strong>: could not be drawn ({html.escape(error)}).</p>")
            continue
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        cap = f"<figcaption>{html.escape(spec.caption)}</figcaption>" if spec.caption else ""
        parts.append(f'<figure id="fig-{html.escape(spec.name)}"><h3>{heading}</h3>'
                     f'<img src="data:image/png;base64,{data}" alt="{heading}">{cap}</figure>')
    parts.append("<h2>Tables</h2>")
    for name, table in tables.items():
        parts.append(f"<h3>{html.escape(name)}</h3><p>{len(table)} rows × {len(table.columns)} columns — "
                     + " · ".join(f'<a href="tables/{html.escape(p.name)}">tables/{html.escape(p.name)}</a>'
                                  for p in files[name]) + "</p>")
        if name != "claims":
            parts.append(_html_table(_preview(table), _PREVIEW_ROWS))
    prov = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _provenance(meta))
    parts.append(f"<h2>Provenance</h2><dl>{prov}</dl>")
    return _page(title, "\n".join(parts))


# --------------------------------------------------------------------------------------------
# the index


def _reference_verdicts(reference: Path) -> dict[str, dict[str, str]]:
    """``{study: {claim: overall verdict}}`` of the study results under ``reference``."""
    out: dict[str, dict[str, str]] = {}
    for sdir in find_studies(reference):
        found = _read_named_table(sdir / "tables", "claims")
        claims = _overall(found) if found is not None else pd.DataFrame()
        out[sdir.name] = ({str(c): str(v) for c, v in zip(claims["claim"], claims["verdict"])}
                          if not claims.empty else {})
    return out


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


def write_index(out_dir: str | os.PathLike, *, reference: str | os.PathLike | None = None) -> dict[str, Path]:
    """Write ``index.md`` and ``index.html`` listing every study under ``out_dir`` with its verdicts.

    Parameters
    ----------
    out_dir : path
        The output folder of ``sepmeasure study`` (created if missing; the index then lists no
        study).
    reference : path, optional
        The output folder of a reference run (for ``make report``'s quick run in
        ``reports/quick``: the committed full-mode run in ``reports``). The index then shows, for
        every claim, the reference verdict and whether this run's verdict is the same, and links
        to the reference index.

    Returns
    -------
    dict
        ``{"html": path, "markdown": path}``.

    Raises
    ------
    TypeError
        ``out_dir`` is not a path.
    ValueError
        The ``study.json`` of a study under ``out_dir`` is not valid JSON.
    FileNotFoundError
        ``reference`` is given but holds no study results.
    """
    root = _as_path(out_dir, "out_dir")
    ref_dir = None if reference is None else _as_path(reference, "reference")
    ref = None
    if ref_dir is not None:
        ref = _reference_verdicts(ref_dir)
        if not ref:
            raise FileNotFoundError(f"reference: expected study results (<study>/study.json) under "
                                    f"{str(ref_dir)!r}, found none")
    studies = find_studies(root)
    entries = []
    for sdir in studies:
        meta = _read_meta(sdir)
        found = _read_named_table(sdir / "tables", "claims")
        claims = _overall(found) if found is not None else pd.DataFrame()
        entries.append((sdir, meta, claims))

    md = ["# Studies", "", "Each study reproduces claims of a paper; verdicts are decided by the rule written "
          "in the study script.", ""]
    body = ["<h1>Studies</h1>", "<p>Each study reproduces claims of a paper; verdicts are decided by the rule "
            "written in the study script.</p>"]
    if ref is not None:
        link = Path(os.path.relpath(ref_dir.resolve(), root.resolve())).as_posix()
        n_same = sum(compare_verdict(str(v), ref.get(sdir.name, {}).get(str(c))) == "same"
                     for sdir, _, claims in entries if not claims.empty
                     for c, v in zip(claims["claim"], claims["verdict"]))
        n_all = sum(len(claims) for _, _, claims in entries)
        text = (f"Compared with the reference run in `{link}`: {n_same} of {n_all} verdicts are the same "
                f"(the column *compared* says which).")
        md += [text.replace(f"`{link}`", f"[`{link}`]({link}/index.md)"), ""]
        body.append("<p>" + html.escape(text).replace(
            html.escape(f"`{link}`"), f'<a href="{html.escape(link)}/index.html"><code>{html.escape(link)}</code></a>')
            .replace("*compared*", "<em>compared</em>") + "</p>")
    if not entries:
        md += ["_No study results yet: run `sepmeasure study all --quick`._"]
        body.append("<p><em>No study results yet: run <code>sepmeasure study all --quick</code>.</em></p>")
    for sdir, meta, claims in entries:
        title = meta.get("title") or meta["name"]
        has_html = (sdir / "report.html").is_file()
        has_md = (sdir / "report.md").is_file()
        counts = claims["verdict"].value_counts().to_dict() if not claims.empty else {}
        summary = ", ".join(f"{n} {v}" for v, n in counts.items()) or "no claims"
        link_md = f"[{title}]({sdir.name}/report.md)" if has_md else title
        md += [f"## {link_md}", "", f"**Paper:** {meta.get('paper', '')}  ", f"**Verdicts:** {summary}  ",
               f"**Mode:** {meta.get('mode', '')}, seeds {meta.get('seeds', [])}; "
               f"{_num(meta.get('compute_time_s', float('nan')))} s of compute over "
               f"{meta.get('n_configurations', '?')} configurations", ""]
        link = (f'<a href="{html.escape(sdir.name)}/report.html">{html.escape(title)}</a>' if has_html
                else html.escape(title))
        paper = html.escape(str(meta.get("paper", "")))
        timing = (f"{_num(meta.get('compute_time_s', float('nan')))} s of compute over "
                  f"{meta.get('n_configurations', '?')} configurations")
        body.append(f"<h2>{link}</h2><p class=\"meta\"><strong>Paper:</strong> {paper}"
                    f"<br><strong>Verdicts:</strong> {html.escape(summary)}"
                    f"<br><strong>Mode:</strong> {html.escape(str(meta.get('mode', '')))}, seeds "
                    f"{html.escape(str(meta.get('seeds', [])))}; {html.escape(timing)}</p>")
        if not claims.empty:
            table = pd.DataFrame({"claim": claims["claim"], "statement": claims["statement"],
                                  "verdict": claims["verdict"]})
            if ref is not None:
                theirs = [ref.get(sdir.name, {}).get(str(c)) for c in claims["claim"]]
                table["reference verdict"] = [t if t is not None else "" for t in theirs]
                table["compared"] = [compare_verdict(str(v), t) for v, t in zip(claims["verdict"], theirs)]
            md += [_md_table(table), ""]
            rows = "".join("<tr>" + "".join(
                f"<td>{_badge(str(v)) if k in ('verdict', 'reference verdict') and v else html.escape(str(v))}</td>"
                for k, v in r.items()) + "</tr>" for _, r in table.iterrows())
            head = "".join(f"<th>{html.escape(c)}</th>" for c in table.columns)
            body.append(f'<div class="scroll"><table><thead><tr>{head}'
                        f"</tr></thead><tbody>{rows}</tbody></table></div>")
    md_path = atomic_write_text(root / "index.md", "\n".join(md) + "\n")
    html_path = atomic_write_text(root / "index.html", _page("Studies", "\n".join(body)))
    return {"html": html_path, "markdown": md_path}


def write_report(out_dir: str | os.PathLike = "reports", *,
                 reference: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the report of every study under ``out_dir`` and the index.

    Parameters
    ----------
    out_dir : path
        The output folder of ``sepmeasure study`` (default ``reports``).
    reference : path, optional
        A reference run's output folder: the index compares each verdict with the reference
        verdict (see :func:`write_index`).

    Returns
    -------
    dict
        ``{"index": path of index.html, "index_md": path, "studies": {name: {"html": ..., ...}}}``.

    Raises
    ------
    TypeError
        ``out_dir`` is not a path (a string or ``os.PathLike``).
    FileNotFoundError
        When ``out_dir`` does not exist or holds no study results.
    NotADirectoryError
        When ``out_dir`` is a file.
    ValueError
        The ``study.json`` of a study under ``out_dir`` is not valid JSON.

    Warns
    -----
    UserWarning
        A figure that cannot be drawn (see :func:`write_study_report`).

    Examples
    --------
    >>> import tempfile
    >>> from sepmeasure.study import Study
    >>> out = tempfile.mkdtemp()
    >>> study = Study(name="squares", run_one=lambda config: [{"value": config["x"] ** 2}],
    ...               quick={"x": [1, 2]}, full={"x": [1, 2]}, seeds={"quick": 1, "full": 1})
    >>> _ = study.run("quick", out=out, progress=False)
    >>> paths = write_report(out)
    >>> paths["index"].name, sorted(paths["studies"])
    ('index.html', ['squares'])
    """
    root = _as_path(out_dir, "out_dir")
    if root.exists() and not root.is_dir():
        raise NotADirectoryError(f"out_dir: expected a directory, got a file at {str(root)!r}")
    if not root.is_dir():
        raise FileNotFoundError(f"out_dir: expected a directory with study results, got {str(root)!r} which does "
                                f"not exist; run `sepmeasure study all --quick` first")
    studies = find_studies(root)
    if not studies:
        raise FileNotFoundError(f"out_dir: expected study results (<study>/study.json) under {str(root)!r}, found "
                                f"none; run `sepmeasure study all --quick` first")
    if reference is not None and not find_studies(_as_path(reference, "reference")):
        raise FileNotFoundError(f"reference: expected study results (<study>/study.json) under "
                                f"{str(reference)!r}, found none")
    written = {sdir.name: write_study_report(sdir, index=False) for sdir in studies}
    index = write_index(root, reference=reference)
    return {"index": index["html"], "index_md": index["markdown"], "studies": written}
