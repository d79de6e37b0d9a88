"""The model factory: plain/residual twins of any depth and the small seed ResNet.

The twins are built from the same modules in the same order, so from one seed they
have the same initial weights and parameter count. ``PlainBlock`` and
``ResidualBlock`` differ in one line of ``forward``: that line is the experiment.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from resgrad.errors import UsageError, check_choice

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "sigmoid": nn.Sigmoid}
NORMS = ("none", "batch")
INITS = ("default", "kaiming", "xavier")
SHORTCUTS = ("A", "B")


def valid_depth(depth: object) -> bool:
    return isinstance(depth, int) and not isinstance(depth, bool) and depth >= 8 and (depth - 2) % 6 == 0


def check_depth(depth: object) -> int:
    """Return n (blocks per stage) for a depth 6n+2, or raise naming the nearest valid depths."""
    if not isinstance(depth, int) or isinstance(depth, bool):
        raise UsageError(f"depth must be a whole number of the form 6n+2 (8, 14, 20, ...), got {depth!r}.")
    if valid_depth(depth):
        return (depth - 2) // 6
    below = 2 + 6 * ((depth - 2) // 6)
    hint = "the smallest valid depth is 8" if below < 8 else f"the nearest valid depths are {below} and {below + 6}"
    raise UsageError(f"depth {depth} is not of the form 6n+2 with n >= 1; {hint}.")


def check_width(width: object) -> None:
    if not isinstance(width, int) or isinstance(width, bool) or width < 1:
        raise UsageError(f"width must be a whole number >= 1, got {width!r}.")


# ---------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# Archs whose shape is fixed by their definition: name -> (weighted layers, first-layer width).
FIXED_ARCHS: dict[str, tuple[int, int]] = {}


def register_arch(
    name: str, fixed_shape: tuple[int, int] | None = None
) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Register a model builder under ``name``; a duplicate name is refused.

    ``fixed_shape`` (depth, width) marks an arch that ignores the depth and width options.
    """

    def decorator(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"arch {name!r} is already registered; pick another name.")
        _REGISTRY[name] = builder
        if fixed_shape is not None:
            FIXED_ARCHS[name] = fixed_shape
        return builder

    return decorator


def available_archs() -> tuple[str, ...]:
    """Names of every registered arch, in registration order."""
    return tuple(_REGISTRY)


# ---------------------------------------------------------------- helpers


def conv3x3(in_ch: int, out_ch: int, stride: int = 1, bias: bool = False) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=3, stride=stride, padding=1, bias=bias)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, kernel_size=1, stride=stride, bias=False)


def norm_layer(norm: str, channels: int) -> nn.Module:
    return nn.BatchNorm2d(channels) if norm == "batch" else nn.Identity()


class PadShortcut(nn.Module):
    """Option A: identity, or stride-2 subsampling with zero-padded channels. No parameters."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.extra = out_ch - in_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        if self.extra > 0:
            # (B, C, H, W) -> (B, C + extra, H, W); pad spec runs from the last dim backwards.
            x = F.pad(x, (0, 0, 0, 0, 0, self.extra))
        return x


def make_shortcut(in_ch: int, out_ch: int, stride: int, norm: str, shortcut: str) -> nn.Module:
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    if shortcut == "A":
        return PadShortcut(in_ch, out_ch, stride)
    return nn.Sequential(conv1x1(in_ch, out_ch, stride), norm_layer(norm, out_ch))


# ---------------------------------------------------------------- blocks


class Block(nn.Module):
    """Two 3x3 convs; subclasses decide whether the input is added back.

    The shortcut module exists in both twins so that parameter counts and initial
    weights match; only ``ResidualBlock`` calls it.
    """

    resgrad_block = True  # GradientRecorder watches the output of such modules by default

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        stride: int = 1,
        norm: str = "none",
        activation: str = "relu",
        shortcut: str = "A",
        bias: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_ch, out_ch, stride, bias)
        self.bn1 = norm_layer(norm, out_ch)
        self.act1 = ACTIVATIONS[activation]()
        self.conv2 = conv3x3(out_ch, out_ch, 1, bias)
        self.bn2 = norm_layer(norm, out_ch)
        self.act2 = ACTIVATIONS[activation]()
        self.shortcut = make_shortcut(in_ch, out_ch, stride, norm, shortcut)

    def branch(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(self.bn1(self.conv1(x)))  # (B, out_ch, H/stride, W/stride)
        return self.bn2(self.conv2(out))


class PlainBlock(Block):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        return self.act2(out)


class ResidualBlock(Block):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branch(x)
        out = out + self.shortcut(x)  # the skip connection: the only difference from PlainBlock
        return self.act2(out)


# ---------------------------------------------------------------- nets


class DepthNet(nn.Module):
    """He et al. (2016) CIFAR-style net for 28x28x1 input: depth = 6n + 2 weighted layers."""

    def __init__(
        self,
        block: type[Block],
        depth: int,
        width: int = 16,
        norm: str = "none",
        activation: str = "relu",
        shortcut: str = "A",
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        n = check_depth(depth)
        bias = norm == "none"  # without a norm layer there is nothing else to carry a bias
        self.stem = conv3x3(1, width, bias=bias)
        self.stem_norm = norm_layer(norm, width)
        self.stem_act = ACTIVATIONS[activation]()
        stages = []
        in_ch = width
        for i, out_ch in enumerate((width, 2 * width, 4 * width)):
            blocks = []
            for j in range(n):
                stride = 2 if (i > 0 and j == 0) else 1
                blocks.append(block(in_ch, out_ch, stride, norm, activation, shortcut, bias))
                in_ch = out_ch
            stages.append(nn.Sequential(*blocks))
        self.stage1, self.stage2, self.stage3 = stages
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem_act(self.stem_norm(self.stem(x)))  # (B, w, 28, 28)
        x = self.stage1(x)  # (B, w, 28, 28)
        x = self.stage2(x)  # (B, 2w, 14, 14)
        x = self.stage3(x)  # (B, 4w, 7, 7)
        x = self.pool(x).flatten(1)  # (B, 4w)
        return self.fc(x)


class SeedNet(nn.Module):
    """The classic small MNIST ResNet of the well-known tutorial (``block=ResidualBlock``)."""

    def __init__(self, block: type[Block], num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, kernel_size=5)
        self.act1 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.block1 = block(16, 16, bias=True)
        self.conv2 = nn.Conv2d(16, 32, kernel_size=5)
        self.act2 = nn.ReLU()
        self.block2 = block(32, 32, bias=True)
        self.fc = nn.Linear(512, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.act1(self.conv1(x)))  # (B, 16, 12, 12)
        x = self.block1(x)
        x = self.pool(self.act2(self.conv2(x)))  # (B, 32, 4, 4)
        x = self.block2(x)
        return self.fc(x.flatten(1))  # (B, 512) -> (B, 10)


@register_arch("plain")
def _plain(**kw: object) -> nn.Module:
    return DepthNet(PlainBlock, **kw)  # type: ignore[arg-type]


@register_arch("residual")
def _residual(**kw: object) -> nn.Module:
    return DepthNet(ResidualBlock, **kw)  # type: ignore[arg-type]


@register_arch("seed-plain", fixed_shape=(7, 16))
def _seed_plain(**kw: object) -> nn.Module:
    return SeedNet(PlainBlock)


@register_arch("seed-residual", fixed_shape=(7, 16))
def _seed_residual(**kw: object) -> nn.Module:
    return SeedNet(ResidualBlock)


# ---------------------------------------------------------------- init and factory


def init_weights(model: nn.Module, init: str, zero_init_residual: bool) -> None:
    """Re-initialise conv and linear weights in module order (so twins stay equal)."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            if init == "kaiming":
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif init == "xavier":
                nn.init.xavier_normal_(m.weight)
            if init != "default" and m.bias is not None:
                nn.init.zeros_(m.bias)
    if zero_init_residual:
        # Each block then starts as its shortcut (residual) or as a constant (plain): Goyal et al. 2017.
        for m in model.modules():
            if isinstance(m, Block):
                last = m.bn2 if isinstance(m.bn2, nn.BatchNorm2d) else m.conv2
                nn.init.zeros_(last.weight)
                if last.bias is not None:
                    nn.init.zeros_(last.bias)


def build_model(
    arch: str,
    depth: int = 20,
    width: int = 16,
    norm: str = "none",
    activation: str = "relu",
    init: str = "default",
    shortcut: str = "A",
    zero_init_residual: bool = False,
) -> nn.Module:
    """Build a model by name.

    Args:
        arch: a registered name (``plain``, ``residual``, ``seed-plain``, ``seed-residual``).
        depth: weighted layers, 6n+2 (ignored by the seed archs).
        width: channels of the first stage; stages use w, 2w, 4w (ignored by the seed archs).
        norm: ``none`` or ``batch``.
        activation: ``relu``, ``tanh`` or ``sigmoid`` (ignored by the seed archs, which use ReLU).
        init: ``default`` (PyTorch's), ``kaiming`` or ``xavier``.
        shortcut: ``A`` (parameter-free) or ``B`` (1x1 projections where the shape changes).
        zero_init_residual: zero the last layer of each block's branch.

    Raises:
        ValueError: for an unknown option or a depth that is not 6n+2.
    """
    # TrainConfig declares these options with the same vocabularies; a direct call is checked here.
    check_choice("arch", arch, available_archs())
    for what, value, allowed in (
        ("norm", norm, NORMS),
        ("activation", activation, tuple(ACTIVATIONS)),
        ("init", init, INITS),
        ("shortcut", shortcut, SHORTCUTS),
    ):
        check_choice(what, value, allowed)
    if arch not in FIXED_ARCHS:
        check_depth(depth)
        check_width(width)
    if arch in FIXED_ARCHS:
        model = _REGISTRY[arch]()
    else:
        model = _REGISTRY[arch](depth=depth, width=width, norm=norm, activation=activation, shortcut=shortcut)
    init_weights(model, init, zero_init_residual)
    return model


def blocks(model: nn.Module) -> list[str]:
    """Qualified names of every ``Block`` in ``model``, in module order."""
    return [name for name, m in model.named_modules() if isinstance(m, Block)]


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
