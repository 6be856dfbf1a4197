"""Run files that cannot lie or run code: one JSON format, never unpickled; each file carries its
configuration hash, the study version and a checksum of its content; a file failing any check is
moved aside with a warning and its configuration computed again (issue 19, items 1 and 5)."""
from __future__ import annotations

import ast
import json
import pickle
import time
import warnings
from pathlib import Path

import pytest

from sepmeasure.study import CacheWarning, Study, config_hash

ROOT = Path(__file__).resolve().parents[1]


def counted(config: dict) -> list[dict]:
    """One marker file per call, so a test can count computations."""
    markers = Path(config["markers"])
    markers.mkdir(parents=True, exist_ok=True)
    (markers / f"{config['x']}-{config['seed']}-{time.time_ns()}").touch()
    return [{"value": config["x"] * 10 + config["seed"]}]


def count_study(markers: Path, xs=(1, 2)) -> Study:
    grid = {"x": list(xs), "markers": str(markers)}
    return Study(name="count", run_one=counted, quick=grid, full=grid, seeds={"quick": 1, "full": 1})


def n_calls(markers: Path) -> int:
    return len(list(markers.iterdir())) if markers.exists() else 0


class _MakesMarker:
    """Unpickling this creates the file ``path`` (what a planted pickle could do, harmlessly)."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _plant_pickle(target: Path, marker: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(pickle.dumps(_MakesMarker(marker)))


# --------------------------------------------------------------------------------------------
# issue 19, item 1: a planted pickle is never unpickled


def test_a_planted_pickle_run_file_is_never_unpickled(tmp_path):
    markers, out, evil = tmp_path / "m", tmp_path / "out", tmp_path / "ran.txt"
    study = count_study(markers)
    study.run(out=out, progress=False)
    runs = out / "count" / "runs"
    config = {"x": 3, "markers": str(markers), "seed": 0}
    # a pickle for a configuration that has no JSON file yet, and one beside an existing JSON file
    _plant_pickle(runs / f"{config_hash('count', config)}.pkl", evil)
    existing = sorted(runs.glob("*.json"))[0]
    _plant_pickle(existing.with_suffix(".pkl"), evil)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = count_study(markers, xs=(1, 2, 3)).run(out=out, progress=False)
    assert not evil.exists(), "a planted pickle was unpickled"
    messages = [str(w.message) for w in caught if issubclass(w.category, CacheWarning)]
    assert len(messages) == 2 and all("never loaded" in m for m in messages), messages
    assert result.n_computed == 1 and result.n_cached == 2
    assert sorted(result.tables["results"]["value"]) == [10, 20, 30]
    assert not list(runs.glob("*.pkl"))  # moved aside, not left to be found again


def test_pickle_is_not_a_cache_format():
    with pytest.raises(ValueError, match="cache_format"):
        Study(name="s", run_one=counted, quick={"x": 1}, full={"x": 1}, cache_format="pickle")


def _calls(tree: ast.AST, names: set[str]):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name):
                dotted = f"{func.value.id}.{func.attr}"
                if dotted in names:
                    yield dotted, node


def _safe_keyword(call: ast.Call, name: str, safe: bool, default: object) -> bool:
    """The call passes ``name=safe`` literally, or leaves it out where the library's default is ``safe``."""
    keywords = {k.arg: k.value for k in call.keywords}
    if None in keywords:  # **kwargs: cannot tell
        return False
    if name not in keywords:
        return default is safe
    value = keywords[name]
    return isinstance(value, ast.Constant) and value.value is safe


def test_no_loader_in_the_package_or_the_studies_can_unpickle():
    """torch.load only with weights_only=True, np.load only with allow_pickle=False (given, or the
    installed library's default, checked here), and no pickle.load of a file anywhere."""
    import inspect

    import numpy as np
    import torch

    np_default = inspect.signature(np.load).parameters["allow_pickle"].default
    torch_default = inspect.signature(torch.load).parameters["weights_only"].default
    assert np_default is False
    found = []
    for path in [*(ROOT / "sepmeasure").rglob("*.py"), *(ROOT / "studies").glob("*.py")]:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for name, call in _calls(tree, {"torch.load", "np.load", "numpy.load", "pickle.load", "pickle.loads",
                                        "cloudpickle.load", "cloudpickle.loads", "pd.read_pickle",
                                        "pandas.read_pickle"}):
            where = f"{path.relative_to(ROOT)}:{call.lineno} {name}"
            found.append(where)
            if name == "torch.load":
                assert _safe_keyword(call, "weights_only", True, torch_default), f"{where} without weights_only=True"
            elif name in ("np.load", "numpy.load"):
                assert _safe_keyword(call, "allow_pickle", False, np_default), f"{where} with allow_pickle not False"
            elif name == "cloudpickle.loads":
                assert path.name == "worker.py", f"{where}: only a worker unpickles, the task this process sent"
            else:
                raise AssertionError(f"{where}: files must not be unpickled")
    assert any("np.load" in f for f in found), "the check found none of the package's np.load calls"


def test_the_loader_check_catches_an_unsafe_call():
    tree = ast.parse("np.load(p, allow_pickle=True)\ntorch.load(p, weights_only=False)\nnp.load(p, **kw)")
    calls = [c for _, c in _calls(tree, {"np.load", "torch.load"})]
    assert not _safe_keyword(calls[0], "allow_pickle", False, False)
    assert not _safe_keyword(calls[1], "weights_only", True, True)
    assert not _safe_keyword(calls[2], "allow_pickle", False, False)


# --------------------------------------------------------------------------------------------
# issue 19, item 5: edited run files are not trusted


def _edit_first(runs: Path, edit) -> Path:
    victim = sorted(runs.glob("*.json"))[0]
    record = json.loads(victim.read_text())
    edit(record)
    victim.write_text(json.dumps(record))
    return victim


@pytest.mark.parametrize("what, edit, warning", [
    ("value changed", lambda r: r["rows"][0].update(value=-999), "checksum"),
    ("rows emptied", lambda r: r.update(rows=[]), "checksum|rows"),
    ("rows not a list", lambda r: r.update(rows="x"), "rows"),
    ("a row not a dict", lambda r: r.update(rows=[3]), "rows"),
    ("hash of another configuration", lambda r: r.update(hash="0" * 20), "hash"),
    ("no checksum", lambda r: r.pop("checksum", None) or r["rows"][0].update(value=-999), "checksum"),
])
def test_an_edited_run_file_is_moved_aside_and_recomputed(tmp_path, what, edit, warning):
    markers, out = tmp_path / "m", tmp_path / "out"
    count_study(markers).run(out=out, progress=False)
    runs = out / "count" / "runs"
    victim = _edit_first(runs, edit)
    edited = victim.read_text()
    with pytest.warns(CacheWarning, match=warning):
        result = count_study(markers).run(out=out, progress=False)
    assert result.n_computed == 1 and n_calls(markers) == 3, what
    assert sorted(result.tables["results"]["value"]) == [10, 20], what
    assert json.loads(victim.read_text())["rows"] != json.loads(edited).get("rows") or what == "hash of another " \
        "configuration" or what == "no checksum"
    kept = [p.read_text() for p in runs.rglob("*") if p.is_file() and p.parent != runs]
    assert edited in kept, f"{what}: the rejected file was not kept aside"


@pytest.mark.parametrize("content", [b"", b"\x00\xff\xfe garbage", b"[1, 2, 3]", b'{"rows": [{"value": 1}]}',
                                     b"NaN", b'{"format_version": 2, "rows": ['])
def test_unreadable_or_schema_less_run_files_are_moved_aside(tmp_path, content):
    markers, out = tmp_path / "m", tmp_path / "out"
    count_study(markers).run(out=out, progress=False)
    victim = sorted((out / "count" / "runs").glob("*.json"))[0]
    victim.write_bytes(content)
    with pytest.warns(CacheWarning):
        result = count_study(markers).run(out=out, progress=False)
    assert result.n_computed == 1
    assert sorted(result.tables["results"]["value"]) == [10, 20]


def test_a_run_file_carries_hash_study_version_and_checksum(tmp_path):
    count_study(tmp_path / "m").run(out=tmp_path, progress=False)
    for path in (tmp_path / "count" / "runs").glob("*.json"):
        record = json.loads(path.read_text())
        assert record["hash"] == path.stem == config_hash("count", record["config"])
        assert record["study_version"] == "1"
        assert len(record["checksum"]) == 64
