"""Boundary checks, atomic writes and provenance."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from sepmeasure import provenance
from sepmeasure.provenance import environment_info, git_commit, library_versions, seed_everything
from sepmeasure.storage import atomic_path, atomic_write_text
from sepmeasure.validation import (check_choice, check_features, check_int, check_labels, check_positive,
                                   check_probability)


def test_check_features_accepts_arrays_and_converts_ints():
    x = check_features(np.arange(6).reshape(3, 2), "x")
    assert isinstance(x, torch.Tensor) and x.dtype == torch.get_default_dtype()
    assert torch.equal(x, torch.tensor([[0.0, 1], [2, 3], [4, 5]]))


@pytest.mark.parametrize(
    "value, kwargs, pattern",
    [
        (torch.zeros(3), {}, r"feats: expected a 2-dimensional tensor, got Tensor of shape \(3,\)"),
        (torch.zeros(0, 2), {}, r"feats: expected at least 1 row"),
        (torch.tensor([[1.0, float("nan")]]), {}, r"feats: expected finite values, got 1 NaN/inf"),
        (torch.tensor([[1.0, float("inf")]]), {}, r"feats: expected finite values"),
        ("abc", {}, r"feats: expected a torch.Tensor or numpy array, got str"),
        (torch.zeros(2, 2, 2), {"ndim": (2, 4)}, r"expected a 2 or 4-dimensional tensor"),
    ],
)
def test_check_features_errors(value, kwargs, pattern):
    with pytest.raises((ValueError, TypeError), match=pattern):
        check_features(value, "feats", **kwargs)


def test_check_labels():
    assert check_labels(np.array([0.0, 1.0, 2.0]), "y").dtype == torch.int64
    with pytest.raises(ValueError, match=r"y: expected 4 labels \(one per row of X\), got 3"):
        check_labels([0, 1, 0], "y", n=4, n_name="X")
    with pytest.raises(ValueError, match=r"y: expected at least 2 distinct classes, got 1"):
        check_labels([1, 1, 1], "y", min_classes=2)
    with pytest.raises(ValueError, match=r"y: expected a 1-dimensional"):
        check_labels(torch.zeros(2, 2), "y")
    with pytest.raises(TypeError, match=r"y: expected integer class labels"):
        check_labels(torch.tensor([True, False]), "y")


def test_scalar_checks():
    assert check_choice("a", "opt", ["a", "b"]) == "a"
    with pytest.raises(ValueError, match=r"opt: expected one of 'a', 'b', got 'c'"):
        check_choice("c", "opt", ["a", "b"])
    with pytest.raises(TypeError, match=r"n: expected an int, got bool"):
        check_int(True, "n")
    with pytest.raises(ValueError, match=r"n: expected an int >= 2, got 1"):
        check_int(1, "n", minimum=2)
    with pytest.raises(ValueError, match=r"t: expected a finite number > 0, got nan"):
        check_positive(float("nan"), "t")
    assert check_positive(0, "t", strict=False) == 0.0
    with pytest.raises(ValueError, match=r"p: expected a number in \[0, 1\]"):
        check_probability(1.5, "p")


def test_atomic_write_replaces_or_leaves_nothing(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    atomic_write_text(target, "first")
    assert target.read_text() == "first"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "first"
    assert sorted(os.listdir(target.parent)) == ["out.txt"]


def test_atomic_write_gives_ordinary_file_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        target = atomic_write_text(tmp_path / "perm.txt", "x")
    finally:
        os.umask(old)
    assert target.stat().st_mode & 0o777 == 0o644


def test_seed_everything_is_reproducible():
    g = seed_everything(11)
    a = (torch.rand(3), np.random.rand(3), torch.rand(2, generator=g))
    g = seed_everything(11)
    b = (torch.rand(3), np.random.rand(3), torch.rand(2, generator=g))
    for u, v in zip(a, b):
        assert np.array_equal(np.asarray(u), np.asarray(v))


def _head_from_files(repo: Path) -> str:
    """The commit HEAD points at, read from the files under .git (no git command involved)."""
    head = (repo / ".git" / "HEAD").read_text().strip()
    if not head.startswith("ref: "):
        return head
    ref = head[len("ref: "):]
    loose = repo / ".git" / ref
    if loose.is_file():
        return loose.read_text().strip()
    for line in (repo / ".git" / "packed-refs").read_text().splitlines():
        if line.endswith(" " + ref):
            return line.split()[0]
    raise AssertionError(f"{ref} not found under {repo / '.git'}")


def test_environment_info_records_versions_and_commit():
    info = environment_info()
    assert info["version_torch"] == library_versions()["torch"]
    assert info["version_sepmeasure"] != "absent"
    assert info["git_commit"] == git_commit()
    package_root = Path(provenance.__file__).resolve().parents[1]
    if (package_root / ".git").is_dir():   # the default path is the package's own checkout
        assert git_commit() == _head_from_files(package_root)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs the git command")
def test_git_commit_of_a_checkout_and_of_a_plain_folder(tmp_path, monkeypatch):
    # nothing above tmp_path counts as a checkout, whatever the machine's folders hold
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    plain = tmp_path / "plain"
    plain.mkdir()
    assert git_commit(plain) is None
    repo = tmp_path / "repo"
    repo.mkdir()
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@example.org",
           "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], check=True)
    (repo / "f.txt").write_text("x")
    subprocess.run([*git, "add", "f.txt"], check=True)
    subprocess.run([*git, "commit", "-q", "-m", "one"], check=True)
    expected = _head_from_files(repo)
    assert len(expected) == 40 and git_commit(repo) == expected
    (repo / "sub").mkdir()
    assert git_commit(repo / "sub") == expected
