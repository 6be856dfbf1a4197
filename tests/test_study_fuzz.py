"""Fuzzing the readers of what a study wrote (issue 19, item 8): run files and study.json. Whatever
the bytes, a reader returns a checked record or raises its own named error, never anything else;
any change to a valid run file is caught."""
from __future__ import annotations

import json
import tempfile
import warnings
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sepmeasure.study import (Cache, CacheWarning, RunFileError, StudyFolderError, config_hash, read_run_file,
                              read_study_json, verify_study_folder)

CONFIG = {"x": 1, "seed": 0}
KEY = config_hash("fuzz", CONFIG)
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
                           lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
                           max_leaves=12)


def _valid_record(folder: Path) -> dict:
    cache = Cache(folder / "runs", study="fuzz", version="1")
    return cache.store(KEY, CONFIG, {"rows": [{"value": 1.5, "layer": "a"}], "wall_time_s": 0.25,
                                     "environment": {"device": "cpu"}, "finished_at": "2026-01-01T00:00:00+00:00"})


def _read(path: Path) -> dict:
    return read_run_file(path, study="fuzz", version="1", key=KEY, config=CONFIG)


@FUZZ
@given(st.binary(max_size=400))
def test_run_file_reader_on_any_bytes_raises_only_run_file_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / f"{KEY}.json"
        path.write_bytes(data)
        try:
            _read(path)
        except RunFileError:
            pass


@FUZZ
@given(st.sampled_from(["format_version", "study", "study_version", "hash", "config", "rows", "wall_time_s",
                        "environment", "finished_at", "checksum", "extra"]), json_values)
def test_any_change_to_a_valid_run_file_is_caught(field, value):
    with tempfile.TemporaryDirectory() as d:
        record = _valid_record(Path(d))
        path = Path(d) / "runs" / f"{KEY}.json"
        assert _read(path) == record
        if record.get(field, object()) == value:
            return
        path.write_text(json.dumps({**record, field: value}))
        try:
            _read(path)
        except RunFileError:
            return
        raise AssertionError(f"a run file with {field}={value!r} was accepted")


@FUZZ
@given(st.binary(max_size=300))
def test_cache_load_of_a_damaged_file_warns_and_recomputes_never_raises(data):
    with tempfile.TemporaryDirectory() as d:
        cache = Cache(Path(d) / "runs", study="fuzz", version="1")
        cache.path(KEY).write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", CacheWarning)
            assert cache.load(KEY, CONFIG) is None
        assert not cache.path(KEY).exists()  # moved aside


@FUZZ
@given(st.binary(max_size=400) | json_values.map(lambda v: json.dumps(v).encode()))
def test_study_json_reader_on_any_bytes_raises_only_study_folder_error(data):
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "study.json"
        path.write_bytes(data)
        try:
            meta = read_study_json(path)
        except StudyFolderError:
            return
        assert isinstance(meta["name"], str) and isinstance(meta["tables"], list)


@FUZZ
@given(st.fixed_dictionaries({"name": st.text(max_size=5), "tables": st.lists(st.sampled_from(["results", "claims"]),
                                                                              max_size=2)},
                             optional={"checksums": st.dictionaries(st.sampled_from(["results.csv", "claims.csv"]),
                                                                    st.text(max_size=64), max_size=2),
                                       "writing_run": st.text(max_size=8), "run_id": json_values,
                                       "figures": json_values, "seeds": json_values}),
       st.binary(max_size=200))
def test_verify_study_folder_on_any_study_json_and_table_raises_only_study_folder_error(meta, table):
    with tempfile.TemporaryDirectory() as d:
        folder = Path(d)
        (folder / "tables").mkdir()
        (folder / "tables" / "results.csv").write_bytes(table)
        (folder / "study.json").write_text(json.dumps(meta))
        try:
            verify_study_folder(folder)
        except StudyFolderError:
            pass
