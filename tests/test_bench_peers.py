"""The files benchmarks/ntk.py writes for its peers round-trip: the torch peer script rebuilds each
benchmark model from them with the same outputs, and says so when its library is missing."""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str, path: Path):
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


bench = _load("bench_ntk", ROOT / "benchmarks" / "ntk.py")
peer = _load("bench_peer_nngeometry", ROOT / "benchmarks" / "peers" / "nngeometry_ntk.py")


def _cases():
    torch.manual_seed(0)
    return {
        "cnn": (bench.cifar_cnn(widths=(4, 6, 6)).eval(), torch.randn(3, 3, 8, 8), "sequential", {}),
        "mlp": (torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(), torch.nn.Linear(7, 3)).eval(),
                torch.randn(3, 5), "sequential", {}),
        "resnet18": (bench.resnet18(2), torch.randn(3, 3, 8, 8), "resnet18", {"width": 2}),
        "vit": (bench.zoo.vit(image_size=8, patch=4, dim=8, depth=1, heads=2, mlp_dim=8).eval(),
                torch.randn(3, 3, 8, 8), "vit",
                {"image_size": 8, "patch": 4, "dim": 8, "depth": 1, "heads": 2, "mlp_dim": 8}),
    }


@pytest.mark.parametrize("name", ["cnn", "mlp", "resnet18", "vit"])
def test_case_files_rebuild_the_same_model(tmp_path, name):
    model, x, arch, kwargs = _cases()[name]
    kernel = torch.randn(3, 3, 2, 2, dtype=torch.float64)
    bench.write_case(tmp_path / name, model, x, kernel, arch, kwargs)
    rebuilt, x2, k2 = peer.load_case(tmp_path / f"{name}.npz")
    assert torch.equal(x2, x) and (k2 == kernel.numpy()).all()
    assert not rebuilt.training
    with torch.no_grad():
        assert torch.equal(rebuilt(x2), model(x))
    assert set(dict(rebuilt.named_parameters())) == set(dict(model.named_parameters()))


def test_missing_library_exits_with_its_status(tmp_path, monkeypatch):
    model, x, arch, kwargs = _cases()["mlp"]
    bench.write_case(tmp_path / "mlp", model, x, torch.zeros(3, 3, 3, 3), arch, kwargs)
    monkeypatch.setattr(peer, "versions", lambda: {"nngeometry": None, "torch": "2", "numpy": "1"})
    with pytest.raises(SystemExit) as exc:
        peer.main([str(tmp_path), "--out", str(tmp_path / "out.json")])
    assert exc.value.code == peer.MISSING


def test_empty_folder_is_an_error_naming_it(tmp_path):
    with pytest.raises(SystemExit, match="folder"):
        peer.main([str(tmp_path), "--out", str(tmp_path / "out.json")])
