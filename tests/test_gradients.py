"""GradientRecorder against a brute-force autograd reference."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from resgrad.gradients import COLUMNS, GradientRecorder, every, log_spaced
from resgrad.models import Block, build_model


def _hook_count(model: nn.Module) -> int:
    return sum(
        len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules()
    )


def _reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, layers: list[str], signal: list[str]):
    """Norms from torch.autograd.grad on a fresh forward pass: no recorder, no tensor hooks."""
    named = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [named[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in signal]
    loss = F.cross_entropy(model(x), y)
    for h in handles:
        h.remove()
    weights = [named[n].weight for n in layers]
    grads = torch.autograd.grad(loss, weights + [outputs[n] for n in signal])
    return [torch.linalg.vector_norm(g).item() for g in grads]


def _recorded(model: nn.Module, x, y, **kw) -> tuple[GradientRecorder, np.ndarray]:
    with GradientRecorder(model, **kw) as rec:
        rec.begin_step(0)
        F.cross_entropy(model(x), y).backward()
        rec.end_step()
    frame = rec.to_frame()
    ordered = pd_order(frame)
    return rec, ordered


def pd_order(frame):
    w = frame[frame.quantity == "weight_grad"].sort_values("layer_index")
    a = frame[frame.quantity == "activation_grad"].sort_values("layer_index")
    return np.concatenate([w.norm.to_numpy(), a.norm.to_numpy()])


@pytest.mark.parametrize("arch", ["plain", "residual", "seed-residual"])
@pytest.mark.parametrize("norm", ["none", "batch"])
@pytest.mark.parametrize("shortcut", ["A", "B"])
def test_recorded_norms_equal_autograd_reference(arch: str, norm: str, shortcut: str) -> None:
    torch.manual_seed(0)
    model = build_model(arch, 14, width=4, norm=norm, shortcut=shortcut, activation="tanh")
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    rec, got = _recorded(model, x, y)
    expected = _reference(model, x, y, rec.layers, rec.blocks)
    assert len(got) == len(expected)
    np.testing.assert_allclose(got, expected, rtol=1e-5)


def test_layers_come_in_forward_order_with_stem_first_and_classifier_last() -> None:
    model = build_model("residual", 14, width=2, norm="batch", shortcut="B")
    rec, _ = _recorded(model, torch.randn(2, 1, 28, 28), torch.tensor([0, 1]))
    assert rec.layers[0] == "stem" and rec.layers[-1] == "fc"
    assert "stage2.0.shortcut.0" in rec.layers  # projections are weighted layers
    assert not any("bn" in name for name in rec.layers)  # norm layers are left out by default
    assert rec.layers.index("stage2.0.conv2") < rec.layers.index("stage2.0.shortcut.0") < rec.layers.index("stage2.1.conv1")
    assert rec.blocks == [n for n, m in model.named_modules() if isinstance(m, Block)]


class Reversed(nn.Module):
    """Registers its layers in the reverse of the order it calls them."""

    def __init__(self) -> None:
        super().__init__()
        self.last = nn.Linear(8, 10)
        self.first = nn.Linear(784, 8)

    def forward(self, x):
        return self.last(torch.relu(self.first(x.flatten(1))))


def test_layer_index_follows_the_forward_pass_not_registration() -> None:
    rec, _ = _recorded(Reversed(), torch.randn(2, 1, 28, 28), torch.tensor([0, 1]), modules=["first"])
    assert rec.layers == ["first", "last"]


def _inplace_net(inplace: bool) -> nn.Module:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(inplace=inplace),  # overwrites the conv's output, which the recorder watches
        BasicBlock(4, 4),  # torchvision's block: ReLU(inplace=True) and `out += identity`
        BasicBlock(4, 4),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 10),
    )


def test_recorder_works_on_a_model_with_inplace_activations() -> None:
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    rec, got = _recorded(_inplace_net(True), x, y, modules=["0", "2", "3"])
    # The same maths without in-place ops is the reference.
    reference_model = _inplace_net(False)
    for m in reference_model.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    expected = _reference(reference_model, x, y, rec.layers, ["0", "2", "3"])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert len(rec.layers) == 1 + 2 * 2 + 1


def test_hooks_are_removed_on_exit_and_on_exception() -> None:
    model = build_model("residual", 8, width=2)
    before = _hook_count(model)
    with GradientRecorder(model) as rec:
        assert _hook_count(model) > before and rec.num_hooks > 0
        rec.begin_step(0)
        F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
        rec.end_step()
    assert _hook_count(model) == before and rec.num_hooks == 0
    with pytest.raises(RuntimeError, match="boom"):
        with GradientRecorder(model) as rec:
            raise RuntimeError("boom")
    assert _hook_count(model) == before


def test_no_gradient_tensor_is_kept_alive() -> None:
    model = build_model("plain", 8, width=2)
    with GradientRecorder(model) as rec:
        rec.begin_step(0)
        F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
        rec.end_step()
    for _, _, values in rec._records:
        assert values.dim() == 1 and values.grad_fn is None and not values.requires_grad


def test_schedule_picks_the_recorded_steps() -> None:
    model = build_model("plain", 8, width=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    with GradientRecorder(model, schedule=every(3)) as rec:
        for step in range(8):
            rec.begin_step(step, epoch=step // 4)
            opt.zero_grad()
            F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
            rec.end_step()
            opt.step()
    frame = rec.to_frame()
    assert list(frame.columns) == COLUMNS
    assert sorted(frame.step.unique()) == [0, 3, 6]
    assert frame.groupby("step").epoch.first().to_dict() == {0: 0, 3: 0, 6: 1}
    assert set(frame.quantity) == {"weight_grad", "activation_grad"}
    assert len(frame) == 3 * (8 + 3)


def test_log_spaced_schedule_is_dense_early_and_sparse_late() -> None:
    sched = log_spaced(1000, num=20)
    steps = [s for s in range(1000) if sched(s)]
    assert steps[0] == 0 and steps[-1] == 999 and 10 <= len(steps) <= 21
    assert np.all(np.diff(np.log(np.array(steps[1:], dtype=float))) > 0)


def test_zero_nan_and_inf_norms_are_kept() -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 4), nn.Linear(4, 10))
    with GradientRecorder(model, modules=["1"]) as rec:
        # A gradient of exactly zero: the loss does not depend on the output.
        rec.begin_step(0)
        (model(torch.randn(2, 1, 28, 28)) * 0.0).sum().backward()
        rec.end_step()
        model.zero_grad()
        # Non-finite: an inf input makes NaN/inf gradients.
        rec.begin_step(1)
        x = torch.randn(2, 1, 28, 28)
        x[0, 0, 0, 0] = math.inf
        F.cross_entropy(model(x), torch.tensor([1, 2])).backward()
        rec.end_step()
    frame = rec.to_frame()
    assert len(frame) == 2 * 3
    assert (frame[frame.step == 0].norm == 0.0).all()
    assert (~np.isfinite(frame[frame.step == 1].norm)).any()


def test_unknown_module_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no module named 'nope'"):
        GradientRecorder(build_model("plain", 8, width=2), modules=["nope"])
