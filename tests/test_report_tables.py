"""Tables held as CSV, parquet or both: the report reads either the same way, links whichever
exists, and drop_csv_copies removes only large CSV copies that a parquet copy holds in full."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sepmeasure.report import _read_table, drop_csv_copies, table_files, write_study_report

pytest.importorskip("pyarrow")


def _study(root: Path, tables: dict[str, pd.DataFrame], formats=(".csv", ".parquet")) -> Path:
    sdir = root / "s1_t"
    (sdir / "tables").mkdir(parents=True)
    (sdir / "study.json").write_text(json.dumps({"name": "s1_t", "tables": list(tables), "figures": [
        {"name": "f", "table": "results", "kind": "line", "x": "epoch", "y": "value"}]}))
    for name, frame in tables.items():
        if ".csv" in formats:
            frame.to_csv(sdir / "tables" / f"{name}.csv", index=False)
        if ".parquet" in formats:
            # as the study writes it: object columns as JSON strings
            out = frame.copy()
            for c in out.columns:
                if out[c].dtype == object:
                    out[c] = out[c].map(lambda v: v if v is None or isinstance(v, str) else json.dumps(v))
            out.to_parquet(sdir / "tables" / f"{name}.parquet", index=False)
    return sdir


def _results(n: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"epoch": np.arange(n) % 5, "value": rng.normal(size=n), "label": pd.Series([None, 3] * (n // 2), dtype=object),
                         "model": ["mlp"] * n})


def test_a_parquet_table_reads_as_its_csv(tmp_path):
    sdir = _study(tmp_path, {"results": _results()})
    csv, pq = table_files(sdir / "tables", "results")
    assert (csv.suffix, pq.suffix) == (".csv", ".parquet")
    assert pd.read_parquet(pq)["label"].dtype != pd.read_csv(csv)["label"].dtype  # the raw reads differ
    pd.testing.assert_frame_equal(_read_table(pq), _read_table(csv))


def test_pages_from_parquet_only_equal_pages_from_csv_but_for_the_link(tmp_path):
    a = _study(tmp_path / "a", {"results": _results()}, formats=(".csv",))
    b = _study(tmp_path / "b", {"results": _results()}, formats=(".parquet",))
    pa, pb = write_study_report(a, index=False), write_study_report(b, index=False)
    assert pa["figures"][0].read_bytes() == pb["figures"][0].read_bytes()
    for kind in ("markdown", "html"):
        ta, tb = pa[kind].read_text(), pb[kind].read_text()
        assert "tables/results.csv" in ta and "tables/results.parquet" in tb and "tables/results.csv" not in tb
        assert ta.replace("results.csv", "results.parquet") == tb


def test_drop_csv_copies_keeps_claims_small_tables_and_tables_without_a_copy(tmp_path):
    big = _results(20_000)
    claims = pd.DataFrame({"claim": ["a-claim-name"] * 6000, "group": ["all"] * 6000, "verdict": ["supported"] * 6000})
    sdir = _study(tmp_path, {"results": big, "small": big.head(10), "claims": claims})
    big.to_csv(sdir / "tables" / "only_csv.csv", index=False)
    assert (sdir / "tables" / "claims.csv").stat().st_size > 100_000
    dropped = drop_csv_copies(tmp_path)
    assert dropped == [sdir / "tables" / "results.csv"]
    left = sorted(p.name for p in (sdir / "tables").iterdir())
    assert left == ["claims.csv", "claims.parquet", "only_csv.csv", "results.parquet", "small.csv", "small.parquet"]
    assert [p.suffix for p in table_files(sdir / "tables", "results")] == [".parquet"]
    assert drop_csv_copies(tmp_path) == []


def test_drop_csv_copies_keeps_a_csv_whose_parquet_copy_differs(tmp_path):
    big = _results(20_000)
    sdir = _study(tmp_path, {"results": big})
    big.head(100).to_parquet(sdir / "tables" / "results.parquet", index=False)
    with pytest.warns(UserWarning, match="parquet copy holds other rows"):
        assert drop_csv_copies(tmp_path) == []
    assert (sdir / "tables" / "results.csv").is_file()


def test_drop_csv_copies_checks_its_arguments(tmp_path):
    with pytest.raises(TypeError, match="out_dir: expected a directory path"):
        drop_csv_copies(1)
    with pytest.raises(TypeError, match="max_bytes: expected an int, got"):
        drop_csv_copies(tmp_path, max_bytes=1.5)
    with pytest.raises(ValueError, match="max_bytes: expected a non-negative"):
        drop_csv_copies(tmp_path, max_bytes=-1)


def test_committed_reference_keeps_large_tables_as_parquet_only():
    root = Path(__file__).resolve().parent.parent / "reports"
    if not (root / "index.html").is_file():
        pytest.skip("no committed reference run")
    for csv in root.glob("*/tables/*.csv"):
        if "quick" in csv.parts:
            continue
        assert csv.stem == "claims" or csv.stat().st_size <= 100_000, f"{csv} should be kept as parquet only"
    for page in root.glob("*/report.md"):
        for link in re.findall(r"\]\((tables/[^)]+)\)", page.read_text()):
            assert (page.parent / link).is_file(), f"{page} links missing {link}"
