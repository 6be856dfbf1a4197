"""Output folders: one run at a time (issue 19, item 2), temporary files removed only when their
writer is dead, reports from one run only (item 3), and `sepmeasure report` on damaged output
(item 9): an ``error:`` line and exit status 2."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from sepmeasure.cli import load_study, main
from sepmeasure.study import Study, StudyError

ROOT = Path(__file__).resolve().parents[1]
STORAGE = str(ROOT / "sepmeasure" / "storage.py")

SLOW = """
import sys, time
from pathlib import Path
from sepmeasure.study import Study

def run_one(config):
    started = Path(sys.argv[1]) / "started"
    started.mkdir(parents=True, exist_ok=True)
    (started / str(config["x"])).touch()
    time.sleep({sleep})
    return [{{"x": config["x"], "value": 10 * config["x"] + config["seed"]}}]

STUDY = Study(name="slow", run_one=run_one, quick={{"x": [0, 1]}}, full={{"x": [0, 1]}},
              seeds={{"quick": 1, "full": 1}})

if __name__ == "__main__":
    print("computed", STUDY.run(out=sys.argv[1], progress=False).n_computed, flush=True)
"""

HOLD_TMP = """
import importlib.util, sys, time
spec = importlib.util.spec_from_file_location("storage", sys.argv[3])  # the module alone: starts fast
storage = importlib.util.module_from_spec(spec)
spec.loader.exec_module(storage)
with storage.atomic_path(sys.argv[1]) as tmp:
    tmp.write_text("in flight")
    print(tmp, flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _start_slow(tmp_path: Path, out: Path, sleep: float = 1.5) -> tuple[subprocess.Popen, Path]:
    script = tmp_path / "s1_slow.py"
    script.write_text(SLOW.format(sleep=sleep))
    proc = subprocess.Popen([sys.executable, str(script), str(out)], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while time.time() < deadline and not (out / "started").is_dir():
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read())
        time.sleep(0.02)
    return proc, script


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    return out


# --------------------------------------------------------------------------------------------
# issue 19, item 2: one run per output folder


def test_a_second_run_on_a_busy_folder_stops_with_a_clear_message_unless_it_waits(tmp_path, capsys):
    out = tmp_path / "out"
    proc, script = _start_slow(tmp_path, out, sleep=1.0)
    try:
        with pytest.raises(StudyError, match=rf"in use by another run \(pid {proc.pid} on "):
            load_study(script).run(out=out, progress=False)
        code = main(["study", "s1", "--studies", str(tmp_path), "--out", str(out), "--no-progress"])
        err = capsys.readouterr().err
        assert code == 1
        assert re.search(rf"error: study s1_slow failed: .*in use by another run \(pid {proc.pid} on .*--wait", err), err
        assert main(["study", "s1", "--studies", str(tmp_path), "--out", str(out), "--no-progress", "--wait"]) == 0
        assert "2 configurations (0 computed, 2 cached)" in capsys.readouterr().out
    finally:
        text = _finish(proc)
    assert "computed 2" in text
    assert len(list((out / "started").iterdir())) == 2


def test_a_second_run_with_wait_waits_and_then_finds_everything_cached(tmp_path):
    out = tmp_path / "out"
    proc, script = _start_slow(tmp_path, out, sleep=0.5)
    try:
        result = load_study(script).run(out=out, progress=False, wait=True)
    finally:
        _finish(proc)
    assert result.n_computed == 0 and result.n_cached == 2
    assert sorted(result.tables["results"]["value"]) == [0, 10]


def _dead_writers_temporary(target: Path) -> Path:
    """A temporary file left by a writer killed mid-write (a real process, killed with SIGKILL)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD_TMP, str(target), "60", STORAGE], env=_env(),
                            stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert tmp.is_file()
    return tmp


def test_temporary_files_are_removed_only_when_their_writer_is_dead(tmp_path):
    out = tmp_path / "out"
    study = Study(name="tiny", run_one=lambda c: [{"v": c["seed"]}], quick={"a": 1}, full={"a": 1},
                  seeds={"quick": 1, "full": 1})
    study.run(out=out, progress=False)
    stale_index = _dead_writers_temporary(out / "index.html")
    stale_table = _dead_writers_temporary(out / "tiny" / "tables" / "results.csv")
    live = subprocess.Popen([sys.executable, "-c", HOLD_TMP, str(out / "tiny" / "report.html"), "60", STORAGE],
                            env=_env(), stdout=subprocess.PIPE, text=True)
    try:
        live_tmp = Path(live.stdout.readline().strip())
        study.run(out=out, progress=False)
        assert not stale_index.exists(), "a dead writer's temporary file in the output root was left"
        assert not stale_table.exists()
        assert live_tmp.is_file(), "a live writer's temporary file was removed"
    finally:
        live.kill()
        live.wait(timeout=30)


# --------------------------------------------------------------------------------------------
# issue 19, item 3: a report never mixes two runs


def three_seeds(config: dict) -> list[dict]:
    return [{"value": float(config["x"] + config["seed"])}]


def _mixing_study() -> Study:
    from sepmeasure.claims import Threshold

    return Study(name="mix", run_one=three_seeds, quick={"x": [1, 2]}, full={"x": [1, 2]},
                 seeds={"quick": 3, "full": 3},
                 summarize=lambda r: {"mean": r.groupby("x", as_index=False)["value"].mean()},
                 claims=[Threshold(name="pos", paper="P", statement="positive", value="value", op=">=", bound=0)])


def test_a_run_killed_while_writing_tables_leaves_no_report_that_mixes_runs(tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    _mixing_study().run(out=out, progress=False)
    assert main(["report", str(out)]) == 0
    capsys.readouterr()

    real = pd.DataFrame.to_csv
    calls = []

    def dies_after_the_first_table(self, *args, **kwargs):
        if calls:
            raise SystemExit("killed while writing tables")
        calls.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(pd.DataFrame, "to_csv", dies_after_the_first_table)
    with pytest.raises(SystemExit):
        _mixing_study().run(out=out, progress=False, seeds=1)
    monkeypatch.setattr(pd.DataFrame, "to_csv", real)
    # results.csv now holds the seed-0 run, the other tables and study.json the three-seed run
    assert sorted(pd.read_csv(out / "mix" / "tables" / "results.csv")["seed"].unique()) == [0]
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mix" in err and "run" in err, err

    _mixing_study().run(out=out, progress=False, seeds=1)  # a finished run makes the folder whole again
    assert main(["report", str(out)]) == 0


def test_a_table_edited_after_the_run_is_refused_by_report(tmp_path, capsys):
    out = tmp_path / "out"
    _mixing_study().run(out=out, progress=False)
    table = out / "mix" / "tables" / "mean.csv"
    table.write_text(table.read_text().replace("2.0", "7.0"))
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "mean.csv" in err, err


def test_write_study_report_refuses_a_table_edited_after_the_run(tmp_path):
    from sepmeasure.report import write_study_report
    from sepmeasure.study import StudyFolderError

    out = tmp_path / "out"
    _mixing_study().run(out=out, progress=False)
    pages = write_study_report(out / "mix")
    assert pages["markdown"].is_file()
    table = out / "mix" / "tables" / "mean.csv"
    table.write_text(table.read_text().replace("2.0", "7.0"))
    before = pages["markdown"].read_text()
    with pytest.raises(StudyFolderError, match="mean.csv"):
        write_study_report(out / "mix")
    assert pages["markdown"].read_text() == before  # the refused run rewrote nothing


# --------------------------------------------------------------------------------------------
# issue 19, item 9: damaged output gives an error line, not a traceback


@pytest.mark.parametrize("damage", [
    lambda d: (d / "tables" / "claims.csv").write_bytes(b'claim,verdict\n"pos,supported\n1,2,3,4\n'),
    lambda d: (d / "tables" / "results.csv").write_bytes(b"\xff\xfe\x00\x81\x9f" * 50),
    lambda d: (d / "study.json").write_text('{"name": "mix", "tables": '),
    lambda d: (d / "study.json").write_text('["not", "a", "dict"]'),
    lambda d: (d / "study.json").write_text('{"name": "mix", "tables": "results"}'),
])
def test_report_on_a_damaged_study_folder_prints_an_error_and_exits_2(tmp_path, capsys, damage):
    out = tmp_path / "out"
    _mixing_study().run(out=out, progress=False)
    damage(out / "mix")
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert "mix" in err, err


def test_report_on_a_damaged_table_of_an_older_folder_without_checksums(tmp_path, capsys):
    out = tmp_path / "out"
    _mixing_study().run(out=out, progress=False)
    meta_path = out / "mix" / "study.json"
    meta = json.loads(meta_path.read_text())
    for key in ("run_id", "checksums"):
        meta.pop(key, None)
    meta_path.write_text(json.dumps(meta))
    assert main(["report", str(out)]) == 0  # an older folder without checksums still renders
    capsys.readouterr()
    (out / "mix" / "tables" / "claims.csv").write_bytes(b'claim,verdict\n"pos,supported\n1,2,3,4\n')
    assert main(["report", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "claims.csv" in err, err



def test_a_table_kept_as_parquet_only_still_verifies_and_an_edit_of_it_is_refused(tmp_path, capsys):
    pytest.importorskip("pyarrow")
    from sepmeasure.study import StudyFolderError, verify_study_folder

    out = tmp_path / "out"
    _mixing_study().run(out=out, progress=False)
    tables = out / "mix" / "tables"
    (tables / "results.csv").unlink()  # what the reference run's drop of large CSV copies does
    assert verify_study_folder(out / "mix")["name"] == "mix"
    frame = pd.read_parquet(tables / "results.parquet")
    frame.loc[0, "value"] = -1.0
    frame.to_parquet(tables / "results.parquet", index=False)
    with pytest.raises(StudyFolderError, match="results.parquet"):
        verify_study_folder(out / "mix")
