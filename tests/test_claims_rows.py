"""The one where-filter of claims and report figures."""
from __future__ import annotations

import pandas as pd
import pytest

from sepmeasure.claims import Threshold, describe_rows, select_rows
from sepmeasure.report import FigureSpec, render_figure


@pytest.fixture
def table():
    return pd.DataFrame({"seed": [0, 0, 1, 1, 2, 2], "model": list("abcabc"), "acc": [0.1, 0.2, 0.3, 0.4, 0.5, 0.6]},
                        index=[10, 11, 12, 13, 14, 15])


def test_select_rows_by_value_values_and_mask(table):
    assert select_rows(table, None) is table and select_rows(table, {}) is table
    assert select_rows(table, {"model": "a"}).index.tolist() == [10, 13]
    assert select_rows(table, {"model": ["a", "c"], "seed": [0, 1]}).index.tolist() == [10, 12, 13]
    assert select_rows(table, {"model": {"b"}}).acc.tolist() == [0.2, 0.5]
    assert select_rows(table, lambda t: t.acc > 0.35).index.tolist() == [13, 14, 15]
    assert describe_rows({"model": ["c", "a"], "seed": 0}) == " where model in ['a', 'c'], seed = 0"


def test_select_rows_errors_name_who_filters(table):
    with pytest.raises(ValueError, match=r"where: claim 'x' filters on column 'nope', which the table lacks"):
        select_rows(table, {"nope": 1}, "claim 'x'")
    with pytest.raises(ValueError, match="where: expected a boolean mask of length 6 for claim 'x'"):
        select_rows(table, lambda t: [True], "claim 'x'")


def test_claims_and_figures_filter_the_same_rows_with_the_same_messages(table):
    c = Threshold(name="t", paper="P", statement="s", value="acc", op=">=", bound=0.0, where={"model": ["a", "b"]})
    r = c.evaluate(table)
    expected = table[table.model.isin(["a", "b"])].groupby("seed").acc.mean()
    assert [v for _, v in r.per_seed] == pytest.approx(expected.tolist())
    with pytest.raises(ValueError, match="where: a figure filters on column 'nope', which the table lacks"):
        render_figure(FigureSpec(name="f", table="t", kind="line", x="seed", y="acc", where={"nope": 1}), table)
    with pytest.raises(ValueError, match="where: claim 't' filters on column 'nope', which the table lacks"):
        Threshold(name="t", paper="P", statement="s", value="acc", op=">=", bound=0.0,
                  where={"nope": 1}).evaluate(table)
