"""The Python examples of README.md run as written, in order, and compute what the text says."""
from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(text: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```", text, flags=re.S | re.M)


def test_readme_examples_run_and_compute_what_they_say(tmp_path, monkeypatch, capsys):
    blocks = python_blocks(README.read_text())
    assert len(blocks) >= 5, "README.md should show the library's main uses"
    monkeypatch.chdir(tmp_path)  # nothing may be written next to the sources
    ns: dict = {"__name__": "readme"}
    for i, block in enumerate(blocks):
        exec(compile(block, f"README.md block {i + 1}", "exec"), ns)
    capsys.readouterr()
    assert list(tmp_path.iterdir()) == []

    import sepmeasure as sm

    # training and recording
    assert isinstance(ns["history"], pd.DataFrame) and set(ns["history"]["split"]) == {"train", "test"}
    assert ns["acts"].layer_names == ("layers.0.act", "layers.1.act", "layers.2.act")
    assert all(t.shape == (2000, 128) for t in ns["acts"].values())
    # separability: the pairs asked for, certified intervals around the values
    table = ns["table"]
    assert set(zip(table["class_a"], table["class_b"])) == {(0, 1), (3, 8)}
    assert bool((table["lower"] <= table["value"] + 1e-9).all() and (table["value"] <= table["upper"] + 1e-9).all())
    assert sorted(ns["probe"].table["epoch"].unique().tolist()) == [0, 1, 2]
    r, h = ns["r"], ns["h"]
    assert r.lower <= r.value <= r.upper and h.lower <= h.distance <= h.upper
    # kernels: shapes, symmetry, and the NPK of the gates recomputed through the public API
    assert ns["ntk"].shape == (64, 64) and ns["npk"].shape == (64, 64)
    torch.testing.assert_close(ns["npk"], ns["npk"].T)
    torch.testing.assert_close(ns["npk"], sm.neural_path_kernel(ns["dlgn"], ns["x"]))
    # folding keeps the function; the prior left some channels linear
    x = ns["test"].X
    with torch.no_grad():
        torch.testing.assert_close(ns["folded"](x), ns["masked"](x), rtol=0, atol=1e-4)
    assert ns["folded"].report.linear_units == int(sm.linear_fraction(ns["masked"])["linear_units"].sum())
    assert float(sm.nonlinear_fraction(ns["lin"])["nonlinear_fraction"].mean()) < 1.0
    # your own model: a plain-torch ResNet-18 through its traced graph
    assert ns["resnet_acts"].layer_names == ("relu", "layer1", "layer4")
    assert [tuple(t.shape) for t in ns["resnet_acts"].values()] == [(200, 4), (200, 4), (200, 32)]
    assert set(ns["resnet_sep"]["layer"]) == {"relu", "layer1", "layer4"}
    assert ns["resnet_ntk"].shape == (8, 8)
    assert float(sm.average_path_length(ns["resnet_lin"], normalized=True)) == 13.0
    with torch.no_grad():
        torch.testing.assert_close(ns["resnet_folded"](ns["images"]), ns["resnet_masked"](ns["images"]),
                                   rtol=0, atol=1e-5)
    assert [name for name, _ in ns["resnet_folded"].report.kept] == ["relu_1"]
