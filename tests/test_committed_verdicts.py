"""The committed reports can be re-derived: each study script, at the version that wrote its report,
re-evaluates its claims on the committed tables and gets the committed claims table back (verdicts,
effects, intervals, controls, baselines); every claim row names its control."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from sepmeasure.cli import load_study
from sepmeasure.claims import claims_frame
from sepmeasure.report import _read_table, table_files

ROOT = Path(__file__).resolve().parent.parent
REPORTS = ROOT / "reports"
STUDY_DIRS = sorted(p.parent for p in REPORTS.glob("*/study.json"))


def _tables(study_dir: Path, meta: dict) -> dict[str, pd.DataFrame]:
    out = {}
    for name in meta["tables"]:
        found = table_files(study_dir / "tables", name)
        if found:
            out[name] = _read_table(found[0])
    return out


def _same(a, b) -> bool:
    if isinstance(a, float) or isinstance(b, float):
        try:
            fa, fb = float(a), float(b)
        except (TypeError, ValueError):
            return False
        return (math.isnan(fa) and math.isnan(fb)) or math.isclose(fa, fb, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


@pytest.mark.skipif(not STUDY_DIRS, reason="no committed reports")
@pytest.mark.parametrize("study_dir", STUDY_DIRS, ids=lambda p: p.name)
def test_committed_verdicts_follow_from_the_committed_tables_by_the_written_rules(study_dir):
    meta = json.loads((study_dir / "study.json").read_text())
    script = ROOT / "studies" / f"{meta['name']}.py"
    assert script.is_file(), f"{study_dir}: no study script {script.name} wrote it"
    study = load_study(script)
    assert str(meta["study_version"]) == str(study.version), (
        f"{study_dir} was written by {meta['name']} version {meta['study_version']}, the script is at version "
        f"{study.version}: regenerate the committed reports")
    tables = _tables(study_dir, meta)
    committed = tables.pop("claims")
    recomputed = claims_frame(study._judge(tables))
    assert list(recomputed["claim"]) == list(committed["claim"])
    assert list(recomputed["group"].astype(str)) == list(committed["group"].astype(str))
    for column in ("verdict", "effect", "lower", "upper", "n_seeds", "baseline", "control", "split"):
        for i, (a, b) in enumerate(zip(recomputed[column], committed[column])):
            a = None if isinstance(a, float) and math.isnan(a) and column in ("control", "split") else a
            b = None if isinstance(b, float) and math.isnan(b) and column in ("control", "split") else b
            if a in ("", None) and b in ("", None):
                continue
            assert _same(a, b), (f"{study_dir.name}: claim {committed['claim'].iloc[i]} "
                                 f"({committed['group'].iloc[i]}), {column}: recomputed {a!r}, committed {b!r}")


@pytest.mark.skipif(not STUDY_DIRS, reason="no committed reports")
@pytest.mark.parametrize("study_dir", STUDY_DIRS, ids=lambda p: p.name)
def test_every_committed_claim_names_its_control_and_how_it_could_have_failed(study_dir):
    meta = json.loads((study_dir / "study.json").read_text())
    claims = _tables(study_dir, meta)["claims"]
    overall = claims[claims["group"] == "all"]
    for _, row in overall.iterrows():
        control = row.get("control")
        assert isinstance(control, str) and control and control != "none given", (
            f"{study_dir.name}: claim {row['claim']} names no control")
        has_baseline = not (isinstance(row["baseline"], float) and math.isnan(row["baseline"]))
        assert has_baseline or control.startswith("no control"), (
            f"{study_dir.name}: claim {row['claim']} has a control ({control!r}) but no baseline value")
        nsi = row.get("not_supported_if")
        assert isinstance(nsi, str) and nsi, f"{study_dir.name}: claim {row['claim']} says not how it could fail"


def test_committed_reference_stays_small():
    """Every clone carries reports/: its tracked files stay within 12 MB (figures are palette
    PNGs, large tables parquet only)."""
    import subprocess

    try:
        listed = subprocess.run(["git", "ls-files", "-z", "reports"], cwd=ROOT, capture_output=True,
                                check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    files = [ROOT / name.decode() for name in listed if name]
    if not files:
        pytest.skip("no tracked reports")
    total = sum(f.stat().st_size for f in files if f.exists())
    assert total <= 12 * 2**20, f"tracked reports/ holds {total / 2**20:.1f} MiB (limit 12 MiB)"
