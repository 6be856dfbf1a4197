"""The study runner: grids, the per-configuration cache (resume after a real SIGKILL, incompatible
versions re-run), provenance in every row, and local / process-pool / Dask execution agreeing."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sepmeasure.claims import MonotoneTrend, Threshold
from sepmeasure.report import FigureSpec
from sepmeasure.study import (CACHE_FORMAT_VERSION, CacheWarning, SchedulerUnreachableError, Study, StudyError,
                              StudyRunError, config_hash, expand_grid, make_executor)

ROOT = Path(__file__).resolve().parents[1]


# --------------------------------------------------------------------------------------------
# tiny fake studies


def noisy_line(config: dict) -> list[dict]:
    """Deterministic given the seed: a per-layer value that rises with the layer."""
    rng = np.random.default_rng(1000 * config["seed"] + config["width"])
    return [{"layer": layer, "measure": "sep", "value": float(0.1 * layer + rng.normal(0, 0.01))}
            for layer in range(1, config["depth"] + 1)]


def counted(config: dict) -> list[dict]:
    """Leaves one marker file per call, so tests can count computations."""
    marker_dir = Path(config["markers"])
    marker_dir.mkdir(parents=True, exist_ok=True)
    (marker_dir / f"{config['x']}-{config['seed']}-{time.time_ns()}").touch()
    if config.get("fail") and config["x"] == config["fail"]:
        raise RuntimeError(f"boom at x={config['x']}")
    return [{"value": config["x"] * 10 + config["seed"]}]


def with_device(config: dict, device=None) -> list[dict]:
    return [{"seen_device": str(device)}]


def line_study(**kw) -> Study:
    kw.setdefault("quick", {"width": [4, 8], "depth": 3})
    kw.setdefault("full", {"width": [4, 8, 16], "depth": 4})
    kw.setdefault("summarize", lambda r: {"per_layer": r.groupby(["layer", "seed"], as_index=False)["value"].mean()})
    return Study(name="line", run_one=noisy_line, seeds={"quick": 3, "full": 4}, paper="Test 2024",
                 claims=[MonotoneTrend(name="rises", paper="Test 2024", statement="it rises", x="layer", y="value",
                                       within="width")],
                 figures=[FigureSpec(name="value", table="per_layer", kind="line", x="layer", y="value")], **kw)


def count_study(markers: Path, xs=(1, 2, 3), fail=None, version="1", fmt="json") -> Study:
    return Study(name="count", run_one=counted, quick={"x": list(xs), "markers": str(markers), "fail": fail},
                 full={"x": list(xs), "markers": str(markers), "fail": fail}, seeds={"quick": 2, "full": 2},
                 version=version, cache_format=fmt)


def n_calls(markers: Path) -> int:
    return len(list(markers.iterdir())) if markers.exists() else 0


def comparable(table: pd.DataFrame) -> pd.DataFrame:
    """A table without the columns that legitimately differ between runs (times, host)."""
    drop = [c for c in ("wall_time_s", "finished_at", "host") if c in table.columns]
    return table.drop(columns=drop).reset_index(drop=True)


# --------------------------------------------------------------------------------------------
# grids and keys


def test_expand_grid_and_configurations():
    assert expand_grid({"a": [1, 2], "b": "x"}) == [{"a": 1, "b": "x"}, {"a": 2, "b": "x"}]
    assert expand_grid([{"a": 1}, {"a": [2, 3], "c": [4, 5]}]) == [
        {"a": 1}, {"a": 2, "c": 4}, {"a": 2, "c": 5}, {"a": 3, "c": 4}, {"a": 3, "c": 5}]
    # tuples are constants, so sequences can be factors' values
    assert expand_grid({"classes": (0, 1), "widths": [(8,), (8, 8)]}) == [
        {"classes": (0, 1), "widths": (8,)}, {"classes": (0, 1), "widths": (8, 8)}]
    with pytest.raises(ValueError, match="at least one value"):
        expand_grid({"a": []})
    s = line_study()
    assert len(s.configurations("quick")) == 2 * 3
    assert len(s.configurations("full")) == 3 * 4
    assert [c["seed"] for c in s.configurations("quick", seeds=[7, 9])] == [7, 9, 7, 9]


def test_config_hash_is_sha256_of_sorted_json_and_order_free():
    expected = hashlib.sha256(b'{"config":{"a":1,"b":[1,2]},"study":"s"}').hexdigest()[:20]
    assert config_hash("s", {"b": [1, 2], "a": 1}) == expected
    assert config_hash("s", {"a": np.int64(1), "b": [1, 2]}) == expected
    assert config_hash("t", {"a": 1, "b": [1, 2]}) != expected


# --------------------------------------------------------------------------------------------
# a local run


def test_local_run_writes_tables_cache_and_provenance(tmp_path):
    result = line_study().run("quick", out=tmp_path, progress=False)
    study_dir = tmp_path / "line"
    assert result.out_dir == study_dir
    assert result.n_configurations == 6 and result.n_computed == 6 and result.n_cached == 0
    assert len(list((study_dir / "runs").glob("*.json"))) == 6
    results = result.tables["results"]
    assert len(results) == 6 * 3
    for col in ("seed", "width", "depth", "layer", "value", "config_hash", "wall_time_s", "device", "git_commit",
                "version_torch", "version_numpy", "host"):
        assert col in results.columns, col
    assert results["device"].eq("cpu").all()
    assert (results["wall_time_s"] >= 0).all()
    # rows are what run_one returns for that configuration, with its factors
    for _, config_rows in results.groupby("config_hash"):
        cfg = {"width": int(config_rows["width"].iloc[0]), "depth": 3, "seed": int(config_rows["seed"].iloc[0])}
        assert config_rows["value"].tolist() == pytest.approx([r["value"] for r in noisy_line(cfg)])
    on_disk = pd.read_csv(study_dir / "tables" / "results.csv")
    assert len(on_disk) == len(results)
    assert (study_dir / "tables" / "per_layer.csv").is_file()
    claims = pd.read_csv(study_dir / "tables" / "claims.csv")
    assert claims.loc[0, "verdict"] == "supported" == result.verdicts()["rises"]
    meta = json.loads((study_dir / "study.json").read_text())
    assert meta["n_configurations"] == 6 and meta["seeds"] == [0, 1, 2] and meta["mode"] == "quick"
    assert meta["claims"][0]["statement"] == "it rises"
    assert meta["figures"][0]["table"] == "per_layer"
    record = json.loads(next((study_dir / "runs").glob("*.json")).read_text())
    assert record["format_version"] == CACHE_FORMAT_VERSION
    assert {"config", "rows", "wall_time_s", "environment"} <= set(record)


def test_second_run_computes_nothing_and_full_mode_adds_only_new_configurations(tmp_path):
    markers = tmp_path / "markers"
    study = count_study(markers)
    first = study.run(out=tmp_path / "out", progress=False)
    assert n_calls(markers) == 6 == first.n_computed
    again = study.run(out=tmp_path / "out", progress=False)
    assert n_calls(markers) == 6 and again.n_computed == 0 and again.n_cached == 6
    assert comparable(again.tables["results"]).equals(comparable(first.tables["results"]))
    more = count_study(markers, xs=(1, 2, 3, 4)).run(out=tmp_path / "out", progress=False)
    assert more.n_computed == 2 and n_calls(markers) == 8


def test_progress_bar_counts_cached_configurations(tmp_path, capsys):
    markers = tmp_path / "m"
    count_study(markers, xs=(1,)).run(out=tmp_path, progress=False)
    count_study(markers, xs=(1, 2)).run(out=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "2/4" in err and "4/4" in err and "count" in err


def test_duplicate_configurations_run_once(tmp_path):
    markers = tmp_path / "m"
    s = Study(name="dup", run_one=counted, quick=[{"x": 1, "markers": str(markers)}] * 2,
              full={"x": 1, "markers": str(markers)}, seeds={"quick": 1, "full": 1})
    r = s.run(out=tmp_path, progress=False)
    assert n_calls(markers) == 1 and r.n_configurations == 1
    assert len(r.tables["results"]) == 2  # the grid asked for it twice; both rows come from one run


def frame_with_gaps(config: dict) -> pd.DataFrame:
    """A DataFrame whose first row has no seed (NaN after concatenation) and second row its own width."""
    return pd.concat([pd.DataFrame([{"what": "accuracy", "value": 1.0}]),
                      pd.DataFrame([{"what": "separability", "value": 2.0, "seed": config["seed"], "width": -1}])],
                     ignore_index=True)


def test_missing_factor_values_in_rows_are_filled_from_the_configuration(tmp_path):
    s = Study(name="gaps", run_one=frame_with_gaps, quick={"width": 3}, full={"width": 3},
              seeds={"quick": 2, "full": 2})
    t = s.run(out=tmp_path, progress=False).tables["results"]
    assert t["seed"].tolist() == [0, 0, 1, 1]
    assert t["width"].tolist() == [3, -1, 3, -1]


def report_threads(config: dict) -> list[dict]:
    import torch

    return [{"threads": torch.get_num_threads()}]


def test_threads_apply_while_a_configuration_runs_and_are_restored(tmp_path):
    import torch

    before = torch.get_num_threads()
    s = Study(name="threads", run_one=report_threads, quick={"a": 1}, full={"a": 1}, seeds={"quick": 1, "full": 1})
    wanted = 1 if before != 1 else 2
    r = s.run(out=tmp_path, progress=False, threads=wanted)
    assert r.tables["results"]["threads"].tolist() == [wanted]
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"):
        s.run(out=tmp_path, progress=False, threads=0)


def test_run_one_with_device_keyword_gets_the_device(tmp_path):
    s = Study(name="dev", run_one=with_device, quick={"a": 1}, full={"a": 1}, seeds={"quick": 1, "full": 1})
    r = s.run(out=tmp_path, progress=False, device="cpu")
    assert r.tables["results"]["seen_device"].tolist() == ["cpu"]


# --------------------------------------------------------------------------------------------
# incompatible or damaged cache files


def test_cache_of_an_incompatible_format_version_is_rerun_with_a_warning(tmp_path):
    markers = tmp_path / "m"
    count_study(markers).run(out=tmp_path, progress=False)
    victim = sorted((tmp_path / "count" / "runs").glob("*.json"))[0]
    record = json.loads(victim.read_text())
    record["format_version"] = CACHE_FORMAT_VERSION + 99
    record["rows"] = [{"value": -1}]
    victim.write_text(json.dumps(record))
    with pytest.warns(CacheWarning, match="cache format version"):
        r = count_study(markers).run(out=tmp_path, progress=False)
    assert r.n_computed == 1 and n_calls(markers) == 7
    assert (r.tables["results"]["value"] >= 0).all()
    assert json.loads(victim.read_text())["format_version"] == CACHE_FORMAT_VERSION


def test_unreadable_cache_and_study_version_change_are_rerun(tmp_path):
    markers = tmp_path / "m"
    count_study(markers).run(out=tmp_path, progress=False)
    victim = sorted((tmp_path / "count" / "runs").glob("*.json"))[0]
    victim.write_text('{"format_version": 1, "rows": [')  # half a file
    with pytest.warns(CacheWarning, match="unreadable"):
        assert count_study(markers).run(out=tmp_path, progress=False).n_computed == 1
    with pytest.warns(CacheWarning, match="study version"):
        assert count_study(markers, version="2").run(out=tmp_path, progress=False).n_computed == 6
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert count_study(markers, version="2").run(out=tmp_path, progress=False).n_computed == 0


# --------------------------------------------------------------------------------------------
# a real interruption


KILL_SCRIPT = """
import sys, time
from pathlib import Path
from sepmeasure.study import Study

markers = Path(sys.argv[1])

def run_one(config):
    markers.mkdir(parents=True, exist_ok=True)
    (markers / f"{{config['x']}}-{{time.time_ns()}}").touch()
    time.sleep({sleep})
    return [{{"x": config["x"], "double": 2 * config["x"]}}]

STUDY = Study(name="slow", run_one=run_one, quick={{"x": list(range({n}))}}, full={{"x": [0]}},
              seeds={{"quick": 1, "full": 1}})
result = STUDY.run(out=sys.argv[2], progress=False)
print("computed", result.n_computed)
"""


def test_killed_run_resumes_without_recomputing_or_leftovers(tmp_path):
    n = 8
    script = tmp_path / "slow_study.py"
    script.write_text(KILL_SCRIPT.format(sleep=0.4, n=n))
    markers, out = tmp_path / "markers", tmp_path / "out"
    runs = out / "slow" / "runs"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, str(script), str(markers), str(out)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and len(list(runs.glob("*.json"))) < 3:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    finished = {json.loads(p.read_text())["config"]["x"] for p in runs.glob("*.json")}
    assert 3 <= len(finished) < n, "the kill came too late to interrupt the run"
    calls_before = n_calls(markers)
    (runs / ".deadbeef.json.abc123.tmp").write_text('{"half": ')  # what a kill mid-write leaves

    done = subprocess.run([sys.executable, str(script), str(markers), str(out)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"computed {n - len(finished)}" in done.stdout
    calls = {}
    for m in markers.iterdir():
        x = int(m.name.split("-")[0])
        calls[x] = calls.get(x, 0) + 1
    for x in finished:
        assert calls[x] == 1, f"configuration x={x} was finished before the kill but ran again"
    assert sum(calls.values()) == calls_before + (n - len(finished))
    assert sorted(calls) == list(range(n))
    assert not list(out.rglob("*.tmp"))
    table = pd.read_csv(out / "slow" / "tables" / "results.csv")
    assert sorted(table["x"]) == list(range(n))
    assert table["config_hash"].is_unique


# --------------------------------------------------------------------------------------------
# failures


def test_failing_configuration_is_reported_and_the_rest_cached(tmp_path):
    markers = tmp_path / "m"
    with pytest.raises(StudyRunError, match=r"(?s)2 of 6 configurations failed.*boom at x=2") as info:
        count_study(markers, fail=2).run(out=tmp_path, progress=False)
    assert len(info.value.failures) == 2
    assert len(list((tmp_path / "count" / "runs").glob("*.json"))) == 4


def test_summarize_and_claim_errors_name_the_culprit(tmp_path):
    bad_summary = line_study(summarize=lambda r: {"t": r["nope"]})
    with pytest.raises(StudyError, match="summarize"):
        bad_summary.run(out=tmp_path, progress=False)
    bad_claim = Study(name="bc", run_one=noisy_line, quick={"width": 4, "depth": 2}, full={"width": 4, "depth": 2},
                      claims=[Threshold(name="t", paper="P", statement="s", value="missing", op=">=", bound=0)])
    with pytest.raises(StudyError, match="claim 't'.*missing"):
        bad_claim.run(out=tmp_path, progress=False)


def test_run_one_returning_bad_rows_fails_with_a_clear_message(tmp_path):
    s = Study(name="bad", run_one=lambda c: {"not": "a list"}, quick={"a": 1}, full={"a": 1},
              seeds={"quick": 1, "full": 1})
    with pytest.raises(StudyRunError, match="expected a list of dicts or a DataFrame"):
        s.run(out=tmp_path, progress=False)


# --------------------------------------------------------------------------------------------
# bad input


def test_output_directory_that_is_a_file(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(NotADirectoryError, match="out: expected a directory, got a file"):
        line_study().run(out=f, progress=False)
    with pytest.raises(NotADirectoryError, match="is a file"):
        line_study().run(out=f / "sub", progress=False)


@pytest.mark.parametrize("kwargs, match", [
    ({"name": "a/b"}, "name"),
    ({"run_one": 3}, "run_one"),
    ({"quick": {"seed": [0, 1]}}, "without 'seed'"),
    ({"quick": "width"}, "quick"),
    ({"seeds": {"quick": 0, "full": 1}}, "seeds"),
    ({"seeds": {"quick": 1}}, "seeds"),
    ({"claims": ["supported"]}, "claims"),
    ({"claims": [Threshold(name="a", paper="P", statement="s", value="v", op=">=", bound=0)] * 2}, "unique"),
    ({"figures": [{"kind": "line"}]}, "figures"),
    ({"cache_format": "csv"}, "cache_format"),
])
def test_bad_study_arguments(kwargs, match):
    base = dict(name="s", run_one=noisy_line, quick={"width": 4, "depth": 2}, full={"width": 4, "depth": 2})
    with pytest.raises((TypeError, ValueError), match=match):
        Study(**{**base, **kwargs})


def test_bad_run_arguments(tmp_path):
    s = line_study()
    with pytest.raises(ValueError, match="mode"):
        s.run("medium", out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="seeds"):
        s.run(seeds=0, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="executor"):
        s.run(executor="threads", out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="scheduler: only used with executor='dask'"):
        s.run(executor="local", scheduler="tcp://127.0.0.1:1", out=tmp_path, progress=False)
    with pytest.raises(TypeError, match="executor: expected one of"):
        s.run(executor=3, out=tmp_path, progress=False)
    with pytest.raises(ValueError, match="scheduler: pass it to make_executor"):
        s.run(executor=make_executor("local"), scheduler="tcp://127.0.0.1:1", out=tmp_path, progress=False)
    s.run(out=tmp_path, progress=False)  # everything cached now: bad executors are still refused
    with pytest.raises(ValueError, match="executor"):
        s.run(executor="threads", out=tmp_path, progress=False)


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_scheduler_fails_fast_with_a_hint(tmp_path):
    address = f"tcp://127.0.0.1:{_closed_port()}"
    start = time.perf_counter()
    with pytest.raises(SchedulerUnreachableError, match=r"could not connect.*dask scheduler.*--executor local"):
        line_study().run(executor="dask", scheduler=address, out=tmp_path, progress=False)
    assert time.perf_counter() - start < 10
    with pytest.raises(SchedulerUnreachableError, match="expected an address like tcp://host:8786"):
        make_executor("dask", scheduler="no-port-here")


# --------------------------------------------------------------------------------------------
# other executors give the same tables


def test_dask_local_cluster_gives_the_same_tables_as_local(tmp_path):
    distributed = pytest.importorskip("distributed")
    local = line_study().run(out=tmp_path / "local", progress=False)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=":0") as cluster:
        on_dask = line_study().run(out=tmp_path / "dask", executor="dask", scheduler=cluster.scheduler_address,
                                   progress=False)
    assert on_dask.n_computed == 6
    for name in ("results", "per_layer"):
        assert comparable(on_dask.tables[name]).equals(comparable(local.tables[name])), name
    pd.testing.assert_frame_equal(on_dask.tables["claims"], local.tables["claims"])
    for name in ("per_layer", "claims"):
        assert (tmp_path / "dask" / "line" / "tables" / f"{name}.csv").read_text() == \
            (tmp_path / "local" / "line" / "tables" / f"{name}.csv").read_text()


SCRIPT_STUDY = """
import numpy as np
from sepmeasure.study import Study

def run_one(config):
    rng = np.random.default_rng(config["seed"])
    return [{"layer": k, "value": float(k + rng.normal())} for k in range(3)]

STUDY = Study(name="scripted", run_one=run_one, quick={"w": [1, 2]}, full={"w": [1, 2]})
"""


def test_process_pool_runs_a_study_loaded_from_a_path_and_matches_local(tmp_path):
    from sepmeasure.cli import load_study

    script = tmp_path / "s9_scripted.py"
    script.write_text(SCRIPT_STUDY)
    study = load_study(script)  # its module is not importable by name in a spawned worker
    local = study.run(out=tmp_path / "local", progress=False)
    pooled = study.run(out=tmp_path / "pool", executor="processes", workers=2, progress=False)
    assert pooled.n_computed == 6
    assert comparable(pooled.tables["results"]).equals(comparable(local.tables["results"]))
