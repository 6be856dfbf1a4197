"""Two structural results on the neural path kernel (Lakshminarayanan & Singh 2021, arXiv 2110.03403),
checked against computations written here, independently of the package's kernel code.

Rotational invariance (convolution with global average pooling). Write ``rot_r x`` for the
circular shift of a signal by ``r`` positions, ``(rot_r x)[t] = x[t - r]``. For a 1-D CNN whose
convolutions are circularly padded with stride 1, every layer is equivariant:
``G_l(rot_r x) = rot_r G_l(x)``. Two kernels follow:

* the package's NPK counts paths through the *units* of the unrolled network (one path per
  position); it is invariant under rotating **both** inputs: ``K(rot_k x, rot_k x') = K(x, x')``,
  and in general not under rotating one of them;
* the paper's NPK of a CNN counts paths through the *shared weights* (a path is a sequence of
  kernel taps and channels; its feature sums over the positions where it applies, divided by
  ``L`` for the global average pooling). It is the sum over rotations of the unit-path kernel,
  ``K_ws(x, x') = (1/L) Σ_r K(x, rot_r x')`` (the paper's "sum over rotations" form), hence
  invariant under rotating **either** input: ``K_ws(rot_k x, x') = K_ws(x, rot_k x') = K_ws(x, x')``.
  The package does not compute ``K_ws`` itself; here it is built by enumerating the weight paths
  (one-hot weights in a hand-written value network) and compared with the sum over rotations of
  the package's kernel.

Ensemble structure (skip connections). With its gates fixed, the value network of the package's
pre-activation ResNet is ``G_f ⊙ Π_j (I + B_j)`` applied to the stem's output, with
``B_j = C2_j D(G2_j) C1_j D(G1_j)`` the gated branch of block ``j``. Expanding the product gives
``Σ_{S ⊆ blocks} Π_{j ∈ S} B_j``: every path passes each block either through the skip or through
the branch, so the paths split into the disjoint path sets of the ``2^b`` sub-networks (the stem,
the branches of the blocks in ``S`` in order, the final gate, pooling and head), and

    NPK(x, x') = Σ_{S ⊆ {1..b}} NPK_S(x, x'),

where ``NPK_S`` is the kernel of sub-network ``S`` *with the gates of the full network*.
"""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from sepmeasure.kernels import network_gates, neural_path_kernel
from sepmeasure.models import CNN, ResNet


def _rot(x: torch.Tensor, r: int) -> torch.Tensor:
    """(rot_r x)[..., t] = x[..., t - r] (circular)."""
    return torch.roll(x, shifts=r, dims=-1)


def _conv(h: torch.Tensor, weight: torch.Tensor, padding_mode: str) -> torch.Tensor:
    """'Same' 1-D convolution (odd kernel, stride 1, no bias) with circular or zero padding, by hand."""
    p = weight.shape[-1] // 2
    h = F.pad(h, (p, p), mode="circular" if padding_mode == "circular" else "constant")
    return F.conv1d(h, weight)


# ----------------------------------------------------------------------------- rotational invariance
def _cnn(padding_mode: str) -> CNN:
    torch.manual_seed(1)
    return CNN(1, [2, 2], 2, dim=1, kernel_size=3, padding_mode=padding_mode).double()


def _weight_shared_features(model: CNN, x: torch.Tensor) -> torch.Tensor:
    """phi_x(p) for every weight path p = (c_0, tap_1, c_1, tap_2, c_2, k) of the CNN: the output of
    the value network (gates of x fixed, biases zero) whose weights are one-hot on the path.
    Returns (N, number of paths)."""
    gates = list(network_gates(model, x).values())
    convs = [block.conv for block in model.layers]
    mode = model.config["padding_mode"]
    ranges = [range(convs[0].in_channels)]
    for conv in convs:
        ranges += [range(conv.kernel_size[0]), range(conv.out_channels)]
    ranges.append(range(model.head.out_features))
    feats = []
    for path in itertools.product(*ranges):
        h = x[:, None, :] if x.ndim == 2 else x
        c_prev = path[0]
        for l, conv in enumerate(convs):
            tap, c = path[1 + 2 * l], path[2 + 2 * l]
            w = torch.zeros_like(conv.weight)
            w[c, c_prev, tap] = 1.0
            h = _conv(h, w, mode) * gates[l]
            c_prev = c
        pooled = h.mean(dim=-1)  # global average pooling
        feats.append(pooled[:, c_prev])  # head weight one-hot at (k, c_L): output k is this value
    return torch.stack(feats, dim=1)


@pytest.fixture(scope="module")
def signals():
    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 7, generator=g, dtype=torch.float64), torch.randn(3, 7, generator=g, dtype=torch.float64)


def test_unit_path_npk_is_invariant_under_rotating_both_inputs(signals):
    x1, x2 = signals
    model = _cnn("circular")
    k = neural_path_kernel(model, x1, x2)
    for r in range(1, 7):
        torch.testing.assert_close(neural_path_kernel(model, _rot(x1, r), _rot(x2, r)), k, rtol=1e-10, atol=1e-12)
    # the gates themselves are equivariant
    for g, g_rot in zip(network_gates(model, x1).values(), network_gates(model, _rot(x1, 2)).values()):
        assert torch.equal(_rot(g, 2), g_rot)


def test_zero_padding_breaks_the_invariance(signals):
    """The control: with zero padding the edges are not equivariant, and the identity fails."""
    x1, x2 = signals
    model = _cnn("zeros")
    k = neural_path_kernel(model, x1, x2)
    gaps = [float((neural_path_kernel(model, _rot(x1, r), _rot(x2, r)) - k).abs().max()) for r in range(1, 7)]
    assert max(gaps) > 1e-3 * float(k.abs().max())


def test_unit_path_npk_is_not_invariant_under_rotating_one_input(signals):
    x1, x2 = signals
    model = _cnn("circular")
    k = neural_path_kernel(model, x1, x2)
    gaps = [float((neural_path_kernel(model, x1, _rot(x2, r)) - k).abs().max()) for r in range(1, 7)]
    assert min(gaps) > 1e-6 * float(k.abs().max())


def test_weight_shared_npk_is_the_sum_over_rotations_and_invariant_under_either_rotation(signals):
    x1, x2 = signals
    model = _cnn("circular")
    n_len = x1.shape[-1]
    phi1, phi2 = _weight_shared_features(model, x1), _weight_shared_features(model, x2)
    assert phi1.shape[1] == 1 * 3 * 2 * 3 * 2 * 2  # every weight path enumerated
    k_ws = phi1 @ phi2.T
    sum_over_rotations = sum(neural_path_kernel(model, x1, _rot(x2, r)) for r in range(n_len)) / n_len
    torch.testing.assert_close(k_ws, sum_over_rotations, rtol=1e-10, atol=1e-12)
    for r in range(1, n_len):
        torch.testing.assert_close(_weight_shared_features(model, _rot(x2, r)) @ phi1.T, k_ws.T,
                                   rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(_weight_shared_features(model, _rot(x1, r)) @ phi2.T, k_ws,
                                   rtol=1e-10, atol=1e-12)


def test_weight_shared_npk_without_circular_padding_is_not_the_sum_over_rotations(signals):
    x1, x2 = signals
    model = _cnn("zeros")
    n_len = x1.shape[-1]
    k_ws = _weight_shared_features(model, x1) @ _weight_shared_features(model, x2).T
    sum_over_rotations = sum(neural_path_kernel(model, x1, _rot(x2, r)) for r in range(n_len)) / n_len
    assert float((k_ws - sum_over_rotations).abs().max()) > 1e-3 * float(k_ws.abs().max())


# ----------------------------------------------------------------------------- ResNet: sum over sub-networks
def _subnetwork_npk(model: ResNet, subset: tuple[int, ...], x1: torch.Tensor, x2: torch.Tensor,
                    g1: dict[str, torch.Tensor], g2: dict[str, torch.Tensor]) -> torch.Tensor:
    """NPK of sub-network ``subset`` (stem, the branches of the blocks in ``subset``, final gate,
    pooling, head) with the full network's gates: weights one, biases zero, input x ⊙ x', gates
    G(x) ⊙ G(x'), outputs summed; written with hand-made convolutions."""
    mode = model.config["padding_mode"]
    n1, n2 = x1.shape[0], x2.shape[0]

    def pair(a, b):
        return (a[:, None] * b[None, :]).reshape(n1 * n2, *a.shape[1:])

    h = _conv(pair(x1[:, None], x2[:, None]), torch.ones_like(model.stem.weight), mode)
    for j in subset:
        block = model.blocks[j]
        h = _conv(h * pair(g1[f"blocks.{j}.act1"], g2[f"blocks.{j}.act1"]), torch.ones_like(block.conv1.weight), mode)
        h = _conv(h * pair(g1[f"blocks.{j}.act2"], g2[f"blocks.{j}.act2"]), torch.ones_like(block.conv2.weight), mode)
    h = h * pair(g1["act"], g2["act"])
    return (model.head.out_features * h.mean(dim=-1).sum(dim=-1)).reshape(n1, n2)


@pytest.mark.parametrize("n_blocks", [1, 2, 3])
@pytest.mark.parametrize("padding_mode", ["zeros", "circular"])
def test_resnet_npk_is_the_sum_over_its_sub_networks(n_blocks, padding_mode):
    torch.manual_seed(n_blocks)
    model = ResNet(1, width=2, n_blocks=n_blocks, out_features=2, kernel_size=3, padding_mode=padding_mode).double()
    g = torch.Generator().manual_seed(7)
    x1 = torch.randn(4, 9, generator=g, dtype=torch.float64)
    x2 = torch.randn(3, 9, generator=g, dtype=torch.float64)
    g1, g2 = network_gates(model, x1), network_gates(model, x2)
    assert set(g1) == {f"blocks.{j}.act{i}" for j in range(n_blocks) for i in (1, 2)} | {"act"}
    subsets = [s for r in range(n_blocks + 1) for s in itertools.combinations(range(n_blocks), r)]
    assert len(subsets) == 2 ** n_blocks
    terms = [_subnetwork_npk(model, s, x1, x2, g1, g2) for s in subsets]
    k = neural_path_kernel(model, x1, x2)
    torch.testing.assert_close(sum(terms), k, rtol=1e-10, atol=1e-10)
    # every sub-network contributes: leaving any one out breaks the identity
    for term in terms:
        assert float(term.abs().max()) > 1e-6 * float(k.abs().max())
