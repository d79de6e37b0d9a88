"""The model factory: shapes, twin parity, registry and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from resgrad.errors import UsageError
from resgrad.models import (
    Block,
    PlainBlock,
    ResidualBlock,
    available_archs,
    blocks,
    build_model,
    count_params,
    register_arch,
)

DEPTHS = [8, 14, 20, 32]


@pytest.mark.parametrize("depth", DEPTHS)
@pytest.mark.parametrize("arch", ["plain", "residual"])
@pytest.mark.parametrize("norm", ["none", "batch"])
def test_twin_archs_map_mnist_images_to_ten_logits(arch: str, depth: int, norm: str) -> None:
    model = build_model(arch, depth, width=4, norm=norm)
    assert model(torch.randn(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.parametrize("arch", ["seed-plain", "seed-residual"])
def test_seed_archs_map_mnist_images_to_ten_logits(arch: str) -> None:
    assert build_model(arch)(torch.randn(2, 1, 28, 28)).shape == (2, 10)


@pytest.mark.parametrize("depth", DEPTHS + [56])
def test_depth_counts_weighted_layers(depth: int) -> None:
    model = build_model("residual", depth, width=2)
    weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(weighted) == depth
    assert len(blocks(model)) == 3 * (depth - 2) // 6


def test_parameter_count_matches_a_hand_count() -> None:
    # depth 8, width 2, no norm: convs carry a bias. n = 1 block per stage.
    w = 2
    conv = lambda cin, cout: cin * cout * 9 + cout  # noqa: E731
    expected = (
        conv(1, w) + 2 * conv(w, w) + conv(w, 2 * w) + conv(2 * w, 2 * w) + conv(2 * w, 4 * w) + conv(4 * w, 4 * w)
    )
    expected += 4 * w * 10 + 10
    assert count_params(build_model("plain", 8, width=w)) == expected
    # Seed ResNet of the tutorial: 5x5 1->16, 2 x 3x3 16->16, 5x5 16->32, 2 x 3x3 32->32, linear 512->10.
    seed = (25 * 16 + 16) + 2 * (9 * 16 * 16 + 16) + (25 * 16 * 32 + 32) + 2 * (9 * 32 * 32 + 32) + (512 * 10 + 10)
    assert count_params(build_model("seed-residual")) == seed


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(depth=d, width=w, norm=n, shortcut=s)
        for d in DEPTHS
        for w in (2, 16)
        for n in ("none", "batch")
        for s in ("A", "B")
    ],
)
def test_twins_have_equal_parameter_counts(kwargs: dict) -> None:
    assert count_params(build_model("plain", **kwargs)) == count_params(build_model("residual", **kwargs))


@pytest.mark.parametrize("pair", [("plain", "residual"), ("seed-plain", "seed-residual")])
@pytest.mark.parametrize("init", ["default", "kaiming", "xavier"])
def test_twins_from_one_seed_have_equal_weights(pair: tuple[str, str], init: str) -> None:
    states = []
    for arch in pair:
        torch.manual_seed(7)
        states.append(build_model(arch, 14, width=4, norm="batch", init=init, shortcut="B").state_dict())
    assert states[0].keys() == states[1].keys()
    for key in states[0]:
        assert torch.equal(states[0][key], states[1][key]), key


def test_twins_differ_only_by_the_skip_connection() -> None:
    torch.manual_seed(0)
    plain = build_model("plain", 8, width=4)
    torch.manual_seed(0)
    residual = build_model("residual", 8, width=4)
    x = torch.randn(2, 1, 28, 28)
    block_p, block_r = plain.stage1[0], residual.stage1[0]
    h = torch.randn(2, 4, 28, 28)
    # residual block = act(branch(h) + h); plain block = act(branch(h))
    assert torch.allclose(block_r(h), torch.relu(block_p.branch(h) + h))
    assert torch.allclose(block_p(h), torch.relu(block_p.branch(h)))
    assert not torch.allclose(plain(x), residual(x))


def test_option_a_shortcut_subsamples_and_zero_pads() -> None:
    block = ResidualBlock(2, 4, stride=2, shortcut="A")
    x = torch.randn(1, 2, 6, 6)
    s = block.shortcut(x)
    assert s.shape == (1, 4, 3, 3)
    assert torch.equal(s[:, :2], x[:, :, ::2, ::2])
    assert torch.count_nonzero(s[:, 2:]) == 0
    assert sum(p.numel() for p in block.shortcut.parameters()) == 0


def test_option_b_shortcut_projects_with_a_1x1_conv() -> None:
    block = ResidualBlock(2, 4, stride=2, shortcut="B")
    convs = [m for m in block.shortcut.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 and convs[0].kernel_size == (1, 1) and convs[0].stride == (2, 2)


def test_no_inplace_operations_on_the_autograd_path() -> None:
    for arch in available_archs():
        model = build_model(arch, 8, width=2)
        assert not any(getattr(m, "inplace", False) for m in model.modules()), arch


def test_zero_init_residual_makes_residual_blocks_start_as_their_shortcut() -> None:
    model = build_model("residual", 8, width=4, norm="batch", zero_init_residual=True).eval()
    h = torch.randn(2, 4, 28, 28)
    block = model.stage1[0]
    assert torch.allclose(block(h), torch.relu(h))


@pytest.mark.parametrize("arch", ["plain", "residual"])
@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
def test_activation_choice_is_used_in_every_block(arch: str, activation: str) -> None:
    model = build_model(arch, 14, width=2, activation=activation)
    wanted = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}[activation]
    others = tuple({nn.ReLU, nn.Tanh, nn.Sigmoid} - {wanted})
    calls: dict[str, int] = {}
    for name, module in model.named_modules():
        assert not isinstance(module, others), name
        if isinstance(module, wanted):
            module.register_forward_hook(lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1))
    model(torch.randn(2, 1, 28, 28))
    names = [n for n, m in model.named_modules() if isinstance(m, Block)]
    assert len(names) == 6  # depth 14: two blocks per stage
    # The stem's activation and both of every block's, each run once in a forward pass.
    assert calls == {"stem_act": 1, **{f"{n}.{a}": 1 for n in names for a in ("act1", "act2")}}


BLOCK_SHAPES = [
    dict(in_ch=4, out_ch=4, stride=1),  # inside a stage: an identity shortcut
    dict(in_ch=4, out_ch=8, stride=2, shortcut="A"),  # the first block of a stage: subsample and zero-pad
    dict(in_ch=4, out_ch=8, stride=2, shortcut="B"),  # ... or a 1x1 projection with weights of its own
]


@pytest.mark.parametrize("shape", BLOCK_SHAPES)
@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("activation", ["relu", "tanh"])
def test_plain_and_residual_blocks_are_twins_that_differ_by_the_skip_alone(
    shape: dict, norm: str, activation: str
) -> None:
    twins = []
    for block in (PlainBlock, ResidualBlock):
        torch.manual_seed(3)
        twins.append(block(**shape, norm=norm, activation=activation).eval())
    plain, residual = twins
    # One seed, the same parameters and buffers: names, shapes and initial values.
    p_state, r_state = plain.state_dict(), residual.state_dict()
    assert list(p_state) == list(r_state) and len(p_state) > 0
    for key in p_state:
        assert p_state[key].shape == r_state[key].shape and torch.equal(p_state[key], r_state[key]), key
    # Forward, by hand from the modules: the plain block is act(bn2(conv2(act(bn1(conv1(h)))))); the
    # residual block adds the shortcut of h before the last activation, and that is all.
    act = {"relu": torch.relu, "tanh": torch.tanh}[activation]
    h = torch.randn(2, shape["in_ch"], 12, 12)
    branch = plain.bn2(plain.conv2(act(plain.bn1(plain.conv1(h)))))
    torch.testing.assert_close(plain(h), act(branch), rtol=0, atol=0)
    torch.testing.assert_close(residual(h), act(branch + residual.shortcut(h)), rtol=1e-6, atol=1e-6)
    assert not torch.allclose(plain(h), residual(h), atol=1e-3)  # the skip is not a no-op


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(arch="plain", depth=21), "nearest valid depths are 20 and 26"),
        (dict(arch="plain", depth=5), "smallest valid depth is 8"),
        (dict(arch="plain", depth=2), "smallest valid depth is 8"),
        (dict(arch="residual", width=0), "width must be a whole number >= 1, got 0"),
        (dict(arch="resnet"), "unknown arch 'resnet'"),
        (dict(arch="plain", norm="layer"), "unknown norm 'layer'"),
        (dict(arch="plain", activation="gelu"), "unknown activation 'gelu'"),
        (dict(arch="plain", init="orthogonal"), "unknown init 'orthogonal'"),
        (dict(arch="plain", shortcut="C"), "unknown shortcut 'C'"),
    ],
)
def test_bad_options_raise_one_clear_value_error(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        build_model(**kwargs)
    assert info.type is UsageError  # the CLI's error (one sentence, exit code 2), caught as ValueError by callers


def test_registry_refuses_a_duplicate_name() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_arch("plain")(lambda **kw: nn.Linear(1, 1))


def test_fixed_archs_declare_their_true_shape() -> None:
    from resgrad.models import FIXED_ARCHS

    for arch, (depth, width) in FIXED_ARCHS.items():
        model = build_model(arch)
        weighted = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        assert len(weighted) == depth and weighted[0].out_channels == width
