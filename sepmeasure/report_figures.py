"""Figures of a study report: what to draw (:class:`FigureSpec`, stored in ``study.json``) and the
drawing (seaborn on the Agg backend, saved as an 8-bit palette PNG).

:mod:`sepmeasure.report` re-exports every public name here.
"""
from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

import pandas as pd

from .validation import check_choice, check_int, check_positive, describe

__all__ = ["FigureSpec", "FIGURE_KINDS", "MAX_FIGURE_INCHES", "render_figure", "palette_png", "select_figure_rows"]

FIGURE_KINDS: tuple[str, ...] = ("line", "scatter", "bar", "point", "box", "heatmap")


MAX_FIGURE_INCHES = 100.0
"""The tallest facet a figure may ask for (matplotlib allocates the canvas in pixels)."""


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
        height = check_positive(self.height, "height")
        if height > MAX_FIGURE_INCHES:
            raise ValueError(f"height: expected at most {MAX_FIGURE_INCHES} inches per facet, got {self.height!r}")
        if self.col_wrap is not None:
            check_int(self.col_wrap, "col_wrap", minimum=1)

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


def select_figure_rows(table: pd.DataFrame, where: Mapping[str, Any] | None) -> pd.DataFrame:
    """The rows of ``table`` a figure draws (the one where-filter, shared with the claims)."""
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
    data = select_figure_rows(table, spec.where)
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
        return palette_png(buf.getvalue())
    finally:
        plt.close("all")


def palette_png(png: bytes, colors: int = 256) -> bytes:
    """The same picture as an 8-bit palette PNG (about a third of the bytes for a plot).

    Plots hold few colours beyond their anti-aliased edges, so a median-cut palette of
    ``colors`` entries without dithering keeps every mark and label; committed reports
    stay small because each figure is stored as a file and embedded in the HTML page. An alpha
    channel is dropped (the report's figures are opaque).

    Examples
    --------
    >>> import io
    >>> from PIL import Image
    >>> buf = io.BytesIO(); Image.new("RGB", (4, 3), (200, 30, 40)).save(buf, format="PNG")
    >>> small = Image.open(io.BytesIO(palette_png(buf.getvalue())))
    >>> small.mode, small.size, small.convert("RGB").getpixel((0, 0))
    ('P', (4, 3), (200, 30, 40))
    """
    from PIL import Image

    if not isinstance(png, (bytes, bytearray)):
        raise TypeError(f"png: expected the bytes of a PNG file, got {describe(png)}")
    colors = check_int(colors, "colors", minimum=2, maximum=256)
    image = Image.open(io.BytesIO(png)).convert("RGB")
    out = io.BytesIO()
    image.quantize(colors=colors, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        out, format="PNG", optimize=True)
    return out.getvalue()


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
