"""Every tool on every model of the zoo: accepted (and checked), or refused with a message naming why.

The detailed independent checks live in test_any_model_{capture,paths,npk,fold}.py; here each
accepted result gets a cheap independent check and each refusal its expected message.
"""
from __future__ import annotations

import pytest
import torch

import sepmeasure as sm

import zoo

HEADS = {"resnet18": "linear", "vgg": "classifier", "vit": "head", "bn_mlp": "head", "cnn1d": "head"}
REFUSED = {
    ("vgg", "paths"): r"unsupported layer 'features\.3' \(MaxPool2d\)",
    ("vit", "paths"): r"unsupported layer 'cat' \(cat\)",
    ("vit", "units"): r"none outside the leaf modules 'enc' \(TransformerEncoder\)",
    ("vgg", "gates"): r"non-linearity MaxPool2d at 'features\.3' \(max pooling\)",
    ("vit", "gates"): r"non-linearity TransformerEncoder at 'enc'",
}


def build(name: str):
    make, shape = zoo.ZOO[name]
    model = make().double().eval()
    return model, torch.randn(6, *shape, dtype=torch.float64)


@pytest.mark.parametrize("name", list(zoo.ZOO))
def test_capture_and_ntk_accept_every_model(name):
    model, x = build(name)
    head = HEADS[name]
    acts = sm.record(model, x, layers=head, pool="mean", progress=False)
    torch.testing.assert_close(acts[head], model(x))          # the head's output is the model's output
    k = sm.empirical_ntk(model, x[:3], output="trace")
    assert k.shape == (3, 3)
    torch.testing.assert_close(k, k.T)
    assert bool((torch.linalg.eigvalsh(k) > -1e-8 * float(k.abs().max())).all())  # a Gram matrix


@pytest.mark.parametrize("name", list(zoo.ZOO))
@pytest.mark.parametrize("tool", ["paths", "units", "gates"])
def test_paper_tools_accept_or_name_what_breaks_them(name, tool):
    model, x = build(name)
    if (name, tool) in REFUSED:
        error = TypeError if tool == "paths" else ValueError
        with pytest.raises(error, match=REFUSED[(name, tool)]):
            if tool == "paths":
                sm.average_path_length(model)
            elif tool == "units":
                sm.make_linearizable(model)
            else:
                sm.network_gates(model, x)
        return
    if tool == "paths":
        apl = sm.average_path_length(model, normalized=True)
        assert float(apl) == {"resnet18": 13.0, "bn_mlp": 2.0, "cnn1d": 2.0}[name]
    elif tool == "units":
        for converted in (sm.make_linearizable(model), sm.apply_masks(model)):
            torch.testing.assert_close(converted(x), model(x), rtol=0, atol=1e-12)
    else:
        gates = sm.network_gates(model, x)
        k = sm.neural_path_kernel(model, x)
        torch.testing.assert_close(k, k.T)
        # the diagonal: every path through x's own active gates, K * |x|^2 * prod |G_l|^2 for chains
        if name == "bn_mlp":
            prod = torch.ones(6, dtype=x.dtype)
            for g in gates.values():
                prod = prod * g.sum(1)
            torch.testing.assert_close(torch.diagonal(k), 3 * (x * x).sum(1) * prod)
