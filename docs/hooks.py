"""mkdocs hook: the API reference pages, generated from ``sepmeasure.__all__`` at build time so
that every public name has its entry (a name added to ``__all__`` appears without editing docs)."""
from __future__ import annotations

from mkdocs.structure.files import File

# page -> (title, module prefixes whose names it lists)
GROUPS = {
    "data": ("Data", ("sepmeasure.data",)),
    "models": ("Models", ("sepmeasure.models",)),
    "training": ("Training and capture", ("sepmeasure.training", "sepmeasure.capture")),
    "separability": ("Separability", ("sepmeasure.separability",)),
    "kernels": ("Kernels", ("sepmeasure.kernels",)),
    "paths": ("Path lengths", ("sepmeasure.paths",)),
    "studies": ("Studies, claims and reports", ("sepmeasure.study", "sepmeasure.claims", "sepmeasure.report",
                                                "sepmeasure.report_figures")),
}
# names without a __module__ (constants) and where they belong
CONSTANTS = {"DATASETS": "data", "ACTIVATIONS": "models", "COMBINATION_RULE": "studies"}
SKIP = {"__version__"}


def api_groups() -> dict[str, list[str]]:
    """``{page: [public names]}`` for every name in ``sepmeasure.__all__`` but ``__version__``."""
    import sepmeasure

    pages: dict[str, list[str]] = {page: [] for page in GROUPS}
    for name in sepmeasure.__all__:
        if name in SKIP:
            continue
        if name in CONSTANTS:
            pages[CONSTANTS[name]].append(name)
            continue
        module = getattr(getattr(sepmeasure, name), "__module__", "") or ""
        page = next((p for p, (_, prefixes) in GROUPS.items()
                     if any(module == pre or module.startswith(pre + ".") for pre in prefixes)), None)
        if page is None:
            raise RuntimeError(f"sepmeasure.{name} (defined in {module!r}) belongs to no API page; add its module "
                               f"to GROUPS in docs/hooks.py")
        pages[page].append(name)
    return pages


def _page(page: str, names: list[str]) -> str:
    title = GROUPS[page][0]
    lines = [f"# {title}", "", "Every name below is importable as `sepmeasure.<name>`.", ""]
    for name in names:
        lines += [f"::: sepmeasure.{name}", ""]
    return "\n".join(lines)


def _index(pages: dict[str, list[str]]) -> str:
    lines = ["# API reference", "", "Every public name of `sepmeasure` (its `__all__`), by area.", ""]
    for page, names in pages.items():
        lines += [f"## [{GROUPS[page][0]}]({page}.md)", "",
                  ", ".join(f"[`{n}`]({page}.md#sepmeasure.{n})" for n in names), ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# reproducing the papers: from the committed reference run in reports/

REPORTS = "reports"


def _reproducing(root) -> tuple[str, list[tuple[str, bytes]]]:
    """The page listing each study's claims and verdicts, and the report pages it links."""
    import json
    from pathlib import Path

    import pandas as pd

    from sepmeasure.report import find_studies

    reports = Path(root) / REPORTS
    lines = ["# Reproducing the papers", "",
             "Each study in `studies/` tests claims of one paper over several seeds; these are the verdicts "
             "of the committed full-mode reference run in `reports/` (regenerate it with "
             "`sepmeasure study all --full --out reports`, then `sepmeasure report reports`). The study "
             "pages below are the committed `report.html` files (self-contained: figures embedded).", "",
             "[All studies: the reference index](reports/index.html)", ""]
    copies: list[tuple[str, bytes]] = []
    if (reports / "index.html").is_file():
        copies.append((f"{REPORTS}/index.html", (reports / "index.html").read_bytes()))
    for sdir in find_studies(reports):
        meta = json.loads((sdir / "study.json").read_text(encoding="utf-8"))
        title = meta.get("title") or meta["name"]
        page = sdir / "report.html"
        head = f"[{title}]({REPORTS}/{sdir.name}/report.html)" if page.is_file() else title
        if page.is_file():
            copies.append((f"{REPORTS}/{sdir.name}/report.html", page.read_bytes()))
        lines += [f"## {head}", "", f"**Paper:** {meta.get('paper', '')}  ",
                  f"**Mode:** {meta.get('mode', '')}, seeds {meta.get('seeds', [])}", ""]
        claims_csv = sdir / "tables" / "claims.csv"
        if claims_csv.is_file():
            claims = pd.read_csv(claims_csv)
            claims = claims[claims["group"] == "all"]
            lines += ["| claim | statement | control (its value) | effect [interval] | verdict |",
                      "|---|---|---|---|---|"]
            for _, row in claims.iterrows():
                lines.append(f"| `{row['claim']}` | {_cell(row['statement'])} | {_control_cell(row)} | "
                             f"{_effect_cell(row)} | **{row['verdict']}** |")
            lines.append("")
    return "\n".join(lines), copies


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _control_cell(row) -> str:
    import math

    control = row.get("control")
    if not isinstance(control, str) or not control:
        return ""
    baseline = row.get("baseline")
    value = f" ({baseline:.3g})" if isinstance(baseline, float) and math.isfinite(baseline) else ""
    return _cell(control) + value


def _effect_cell(row) -> str:
    from sepmeasure.report_content import format_number

    return f"{format_number(row['effect'])} [{format_number(row['lower'])}, {format_number(row['upper'])}]"


def on_files(files, config):
    pages = api_groups()
    files.append(File.generated(config, "api/index.md", content=_index(pages)))
    for page, names in pages.items():
        files.append(File.generated(config, f"api/{page}.md", content=_page(page, names)))
    from pathlib import Path

    text, copies = _reproducing(Path(config["config_file_path"]).parent)
    files.append(File.generated(config, "reproducing.md", content=text))
    for uri, data in copies:
        files.append(File.generated(config, uri, content=data))
    return files
