"""Reports from the tidy tables of finished studies: seaborn figures, Markdown and self-contained HTML.

Everything here reads what :meth:`sepmeasure.study.Study.run` wrote under ``<out>/<study>/``
(``study.json`` and ``tables/<name>.csv`` or ``.parquet``) and nothing else, so a report can be rebuilt at any time
(``sepmeasure report``) without running a study again. Per study it writes

* ``figures/<name>.png``, one per :class:`FigureSpec` of the study (drawn with seaborn on the
  Agg backend),
* ``report.md`` (figures linked as files) and ``report.html`` (figures embedded as base64
  data URIs, CSS inline, no scripts and no external links), both rendered from one content
  model (:mod:`sepmeasure.report_content`, whose docstring is the schema) by two jinja2
  templates (``report_templates/report.md.j2`` and ``report.html.j2``, HTML autoescaped),

and for the whole output folder ``index.md`` / ``index.html``: every study with its claims and
verdicts, linking to the study reports. Each study report states its claims in the paper's
words (paper named), then per claim what was measured, the effect with its spread over seeds
and confidence interval, the verdict, the rule that decided it and why.
"""
from __future__ import annotations

import base64
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from .report_content import (FigureEntry, ReferenceNote, compare_verdict, index_page, index_study, overall_claims,
                             render, study_page)
from .report_figures import FIGURE_KINDS, MAX_FIGURE_INCHES, FigureSpec, palette_png, render_figure  # noqa: F401
from .storage import atomic_write_bytes, atomic_write_text
from .validation import describe

__all__ = ["FigureSpec", "FIGURE_KINDS", "palette_png", "render_figure", "write_study_report", "write_index",
           "write_report", "find_studies", "compare_verdict", "drop_csv_copies", "table_files"]

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
    sepmeasure.study.StudyFolderError
        (a ``ValueError``) ``study_dir`` does not hold one run: a table edited, damaged, missing
        or written by another run than its ``study.json`` (:func:`sepmeasure.study.verify_study_folder`).

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
    from .study import verify_study_folder

    study_dir = _as_path(study_dir, "study_dir")
    _read_meta(study_dir)
    meta = verify_study_folder(study_dir)  # one run: every listed table is the one its study.json recorded
    tables_dir = study_dir / "tables"
    tables: dict[str, pd.DataFrame] = {}
    files: dict[str, list[Path]] = {}
    for name in meta.get("tables", []):
        found = table_files(tables_dir, name)
        if found:
            tables[name] = _read_table(found[0])
            files[name] = found
    figures: list[FigureEntry] = []
    drawn: list[Path] = []
    for raw in meta.get("figures", []):
        spec = FigureSpec.from_dict(raw)
        target = study_dir / "figures" / f"{spec.name}.png"
        heading = spec.title or spec.name
        try:
            if spec.table not in tables:
                raise ValueError(f"figure '{spec.name}': no table named '{spec.table}' (tables: {sorted(tables)})")
            png = render_figure(spec, tables[spec.table])
            atomic_write_bytes(target, png)
        except Exception as exc:
            warnings.warn(f"{study_dir.name}: figure '{spec.name}' not drawn: {exc}", stacklevel=2)
            figures.append(FigureEntry(name=spec.name, heading=heading, caption=spec.caption, file=None,
                                       error=str(exc)))
            continue
        drawn.append(target)
        figures.append(FigureEntry(name=spec.name, heading=heading, caption=spec.caption,
                                   file=f"figures/{target.name}", png_base64=base64.b64encode(png).decode("ascii")))

    page = study_page(meta, tables, {name: [p.name for p in found] for name, found in files.items()}, figures)
    md_path = atomic_write_text(study_dir / "report.md", render(page, "markdown"))
    html_path = atomic_write_text(study_dir / "report.html", render(page, "html"))
    if index:
        write_index(study_dir.parent)
    return {"html": html_path, "markdown": md_path, "figures": drawn}


# --------------------------------------------------------------------------------------------
# the index


def _reference_verdicts(reference: Path) -> dict[str, dict[str, str]]:
    """``{study: {claim: overall verdict}}`` of the study results under ``reference``."""
    out: dict[str, dict[str, str]] = {}
    for sdir in find_studies(reference):
        found = _read_named_table(sdir / "tables", "claims")
        claims = overall_claims(found) if found is not None else pd.DataFrame()
        out[sdir.name] = ({str(c): str(v) for c, v in zip(claims["claim"], claims["verdict"])}
                          if not claims.empty else {})
    return out


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
        claims = overall_claims(found) if found is not None else pd.DataFrame()
        entries.append((sdir, meta, claims))

    note = None
    if ref is not None:
        n_same = sum(compare_verdict(str(v), ref.get(sdir.name, {}).get(str(c))) == "same"
                     for sdir, _, claims in entries if not claims.empty
                     for c, v in zip(claims["claim"], claims["verdict"]))
        note = ReferenceNote(link=Path(os.path.relpath(ref_dir.resolve(), root.resolve())).as_posix(),
                             n_same=n_same, n_claims=sum(len(claims) for _, _, claims in entries))
    page = index_page([index_study(sdir.name, meta, claims, has_markdown=(sdir / "report.md").is_file(),
                                   has_html=(sdir / "report.html").is_file(),
                                   reference=None if ref is None else ref.get(sdir.name, {}))
                       for sdir, meta, claims in entries], note)
    md_path = atomic_write_text(root / "index.md", render(page, "markdown"))
    html_path = atomic_write_text(root / "index.html", render(page, "html"))
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
