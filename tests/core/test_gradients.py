"""GradientRecorder against a brute-force autograd reference."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from resgrad.errors import UsageError
from resgrad.gradients import GradientRecorder
from resgrad.models import Block, build_model
from resgrad.norms import norm64
from resgrad.records import COLUMNS, QUANTITIES
from resgrad.schedules import every, log_spaced


def _hook_count(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks) for m in model.modules())


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
    return [g.double().norm().item() for g in grads]  # float64: no underflow at 1e-23


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
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_layers_come_in_forward_order_with_stem_first_and_classifier_last() -> None:
    model = build_model("residual", 14, width=2, norm="batch", shortcut="B")
    rec, _ = _recorded(model, torch.randn(2, 1, 28, 28), torch.tensor([0, 1]))
    assert rec.layers[0] == "stem" and rec.layers[-1] == "fc"
    assert "stage2.0.shortcut.0" in rec.layers  # projections are weighted layers
    assert not any("bn" in name for name in rec.layers)  # norm layers are left out by default
    assert (
        rec.layers.index("stage2.0.conv2")
        < rec.layers.index("stage2.0.shortcut.0")
        < rec.layers.index("stage2.1.conv1")
    )
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
    np.testing.assert_allclose(got, expected, rtol=1e-6)
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
    for record in rec._records:
        values = record.values
        assert (
            values.dim() == 1 and values.dtype == torch.float64 and values.grad_fn is None and not values.requires_grad
        )


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
    assert tuple(frame.quantity.unique()) == QUANTITIES
    assert len(frame) == 3 * (2 * 8 + 3 + 2 * 7)  # 8 weighted layers, 3 blocks, 7 activations (stem + 2 per block)


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
    assert len(frame) == 2 * (2 + 2 + 1)
    grads = frame[frame.quantity != "weight_norm"]
    assert (grads[grads.step == 0].norm == 0.0).all()
    assert (~np.isfinite(frame[frame.step == 1].norm)).any()


def test_unknown_module_name_is_refused() -> None:
    with pytest.raises(ValueError, match="no module named 'nope'"):
        GradientRecorder(build_model("plain", 8, width=2), modules=["nope"])


# ---------------------------------------------------------------- exact norms at every scale


def _smallest(dtype: torch.dtype) -> float:
    """The smallest positive subnormal of ``dtype``."""
    return torch.finfo(dtype).tiny * torch.finfo(dtype).eps


# Scales of the gradient elements per dtype: float16 reaches only 6e-8 ... 65504.
SCALES = {
    torch.float32: [1e-40, 1e-25, 1e25, 1e35],
    torch.bfloat16: [1e-40, 1e-25, 1e25, 1e35],
    torch.float16: [1e-7, 1e-3, 1e3, 1e4],
}
CASES = [(dtype, scale) for dtype, scales in SCALES.items() for scale in [*scales, "smallest", "largest"]]


def _grad(shape: tuple[int, ...], dtype: torch.dtype, scale: float | str, seed: int) -> torch.Tensor:
    """Random signs times ``scale`` (the smallest subnormal or the largest finite value of ``dtype`` by name)."""
    gen = torch.Generator().manual_seed(seed)
    if scale == "smallest":
        return (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(torch.float64).mul(_smallest(dtype)).to(dtype)
    if scale == "largest":
        return (
            (torch.randint(0, 2, shape, generator=gen) * 2 - 1).to(torch.float64).mul(torch.finfo(dtype).max).to(dtype)
        )
    return (torch.randn(shape, generator=gen, dtype=torch.float64) * scale).to(dtype)


def _record_given(dtype: torch.dtype, out_grad: torch.Tensor, weight_grad: torch.Tensor | None) -> dict[str, float]:
    """Record one step of a linear layer whose output gets ``out_grad`` and whose weight ends with ``weight_grad``."""
    model = nn.Sequential(nn.Linear(6, 5, bias=False)).to(dtype)
    x = torch.ones(4, 6, dtype=dtype, requires_grad=True)
    with GradientRecorder(model, modules=["0"]) as rec:
        rec.begin_step(0)
        out = model(x)
        (out * out_grad).sum().backward()  # ∂L/∂out is out_grad exactly
        model[0].weight.grad = weight_grad  # the weight gradient as it is (the one backward made may be inf)
        rec.end_step()
    frame = rec.to_frame()
    return dict(zip(frame.quantity, frame.norm))


@pytest.mark.parametrize(("dtype", "scale"), CASES, ids=[f"{str(d)[6:]}-{s}" for d, s in CASES])
def test_norms_match_float64_at_every_scale_and_dtype(dtype: torch.dtype, scale: float | str) -> None:
    out_grad, weight_grad = _grad((4, 5), dtype, scale, 0), _grad((5, 6), dtype, scale, 1)
    got = _record_given(dtype, out_grad, weight_grad)
    for quantity, grad in (("weight_grad", weight_grad), ("activation_grad", out_grad)):
        expected = grad.double().norm().item()
        assert 0 < expected < math.inf  # the reference itself: every element non-zero and finite
        assert got[quantity] == pytest.approx(expected, rel=1e-6, abs=0), quantity


@pytest.mark.parametrize("shape", [(100,), (4095,), (4096,), (3, 4097), (2, 1, 28, 28), (64, 8, 28, 28)])
@pytest.mark.parametrize("scale", [1e-40, 1e-30, 1e-12, 1.0, 1e15, 1e30, 1e37])
def test_norm64_matches_float64_for_every_size_and_scale(shape: tuple[int, ...], scale: float) -> None:
    """The norm behind activation_grad, on both its CPU paths (float32 rows, float64) and non-contiguous input."""
    g = _grad(shape, torch.float32, scale, 0)
    layouts = [g, g.transpose(0, -1)] + ([g.contiguous(memory_format=torch.channels_last)] if g.dim() == 4 else [])
    for t in layouts:
        assert norm64(t).dtype == torch.float64
        assert norm64(t).item() == pytest.approx(g.double().norm().item(), rel=1e-6, abs=0)


def test_norm64_of_a_long_same_sign_tensor_and_of_non_finite_values() -> None:
    same_sign = torch.rand(3_000_000, generator=torch.Generator().manual_seed(1)) + 1.0  # worst case for a sum
    assert norm64(same_sign).item() == pytest.approx(same_sign.double().norm().item(), rel=1e-7, abs=0)
    assert math.isnan(norm64(torch.full((5000,), math.nan)).item())
    assert norm64(torch.full((5000,), math.inf)).item() == math.inf


def test_norm_is_zero_only_when_every_element_is_zero() -> None:
    zeros = torch.zeros(4, 5), torch.zeros(5, 6)
    got = _record_given(torch.float32, *zeros)
    assert got["weight_grad"] == got["activation_grad"] == 0.0
    one_out, one_w = zeros[0].clone(), zeros[1].clone()
    one_out[2, 3] = one_w[4, 0] = _smallest(torch.float32)  # 1.4e-45: one non-zero element
    got = _record_given(torch.float32, one_out, one_w)
    assert got["weight_grad"] == got["activation_grad"] == pytest.approx(_smallest(torch.float32), rel=1e-6, abs=0)


@pytest.mark.parametrize("loss_scale", [1e-30, 1e-25, 1e25, 1e30])
def test_norms_of_a_real_net_match_float64_when_the_loss_is_scaled(loss_scale: float) -> None:
    """Backward through a real net at scales where float32 squares underflow (below 1e-19) or overflow (above 1e19)."""
    torch.manual_seed(0)
    model = build_model("residual", 8, width=2, activation="tanh")
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with GradientRecorder(model) as rec:
        rec.begin_step(0)
        (F.cross_entropy(model(x), y) * loss_scale).backward()
        rec.end_step()
    got = pd_order(rec.to_frame())
    named = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [named[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in rec.blocks]
    loss = F.cross_entropy(model(x), y) * loss_scale
    for h in handles:
        h.remove()
    grads = torch.autograd.grad(loss, [named[n].weight for n in rec.layers] + [outputs[n] for n in rec.blocks])
    expected = [g.double().norm().item() for g in grads]
    assert all(0 < e < math.inf for e in expected)
    np.testing.assert_allclose(got, expected, rtol=1e-6)


def test_plain_56_at_init_records_the_first_layers_tiny_gradients() -> None:
    """Default init, width 16, 16 random images: the first layers' gradients are about 1e-23, not 0."""
    torch.manual_seed(0)
    model = build_model("plain", 56, width=16)
    x, y = torch.randn(16, 1, 28, 28), torch.randint(0, 10, (16,))
    rec, got = _recorded(model, x, y)
    expected = _reference(model, x, y, rec.layers, rec.blocks)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
    assert rec.layers[0] == "stem" and 1e-26 < got[0] < 1e-20  # float32 sums of squares made this 0.0


# ---------------------------------------------------------------- what one recorded step means


class Siamese(nn.Module):
    """One encoder and one activation module run on both halves of the input."""

    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.Linear(784, 8)
        self.act = nn.Tanh()
        self.head = nn.Linear(16, 10)

    def forward(self, x):
        a = self.act(self.enc(x[:, 0].flatten(1)))
        b = self.act(self.enc(3.0 * x[:, 1].flatten(1)))
        return self.head(torch.cat([a, b], dim=1))


def test_a_module_run_twice_in_a_step_gets_the_norm_over_both_outputs() -> None:
    torch.manual_seed(0)
    model = Siamese()
    x, y = torch.randn(4, 2, 28, 28), torch.randint(0, 10, (4,))
    with GradientRecorder(model, modules=["enc"]) as rec:
        rec.begin_step(0)
        F.cross_entropy(model(x), y).backward()
        rec.end_step()
    frame = rec.to_frame().set_index(["quantity", "layer"])["norm"]
    # Reference: autograd w.r.t. both outputs of enc, and the inputs of both calls of act.
    outs: list[torch.Tensor] = []
    acts: list[torch.Tensor] = []
    h1 = model.enc.register_forward_hook(lambda m, i, o: outs.append(o))
    h2 = model.act.register_forward_pre_hook(lambda m, i: acts.append(i[0].detach().double()))
    loss = F.cross_entropy(model(x), y)
    h1.remove(), h2.remove()
    g1, g2, gw = torch.autograd.grad(loss, [*outs, model.enc.weight])
    n1, n2 = g1.double().norm().item(), g2.double().norm().item()
    assert abs(n1 - n2) > 0.1 * n1  # the two calls differ, so taking either one alone would be wrong
    assert frame["activation_grad", "enc"] == pytest.approx(math.hypot(n1, n2), rel=1e-6, abs=0)
    assert frame["weight_grad", "enc"] == pytest.approx(gw.double().norm().item(), rel=1e-6, abs=0)
    z = torch.cat([a.flatten() for a in acts])
    assert frame["act_deriv", "act"] == pytest.approx((1 - torch.tanh(z) ** 2).mean().item(), rel=1e-6, abs=0)


def test_gradient_accumulation_over_micro_batches_matches_the_whole_batch() -> None:
    torch.manual_seed(0)
    model = build_model("plain", 8, width=2, activation="sigmoid")
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    halves = [(x[:4], y[:4]), (x[4:], y[4:])]
    with GradientRecorder(model) as rec:
        rec.begin_step(0)
        for xb, yb in halves:
            (F.cross_entropy(model(xb), yb) / 2).backward()
        rec.end_step()
        weights = [dict(model.named_modules())[n].weight.grad.double().norm().item() for n in rec.layers]
    frame = rec.to_frame()
    got_w = frame[frame.quantity == "weight_grad"].sort_values("layer_index").norm.to_numpy()
    got_a = frame[frame.quantity == "activation_grad"].sort_values("layer_index").norm.to_numpy()
    np.testing.assert_allclose(got_w, weights, rtol=1e-6)  # the accumulated .grad
    per_half = [_reference_scaled(model, xb, yb, rec.blocks, 0.5) for xb, yb in halves]
    np.testing.assert_allclose(got_a, np.hypot(*per_half), rtol=1e-6)
    # ... which is the norm of the whole batch's gradient, as one backward of the mean loss over 8 gives it.
    whole = _reference_scaled(model, x, y, rec.blocks, 1.0)
    np.testing.assert_allclose(got_a, whole, rtol=1e-5)


def _reference_scaled(model: nn.Module, x, y, signal: list[str], scale: float) -> np.ndarray:
    named = dict(model.named_modules())
    outputs: dict[str, torch.Tensor] = {}
    handles = [named[n].register_forward_hook(lambda m, i, o, n=n: outputs.__setitem__(n, o)) for n in signal]
    loss = F.cross_entropy(model(x), y) * scale
    for h in handles:
        h.remove()
    return np.array([g.double().norm().item() for g in torch.autograd.grad(loss, [outputs[n] for n in signal])])


class Growing(nn.Module):
    """A layer and an activation that join the forward pass only when ``grown`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(784, 8)
        self.act = nn.ReLU()
        self.extra = nn.Linear(8, 8)
        self.extra_act = nn.Sigmoid()
        self.head = nn.Linear(8, 10)
        self.grown = False

    def forward(self, x):
        h = self.act(self.a(x.flatten(1)))
        if self.grown:
            h = self.extra_act(self.extra(h))
        return self.head(h)


def test_a_layer_first_used_later_is_recorded_from_then_on_and_unmeasured_steps_are_nan() -> None:
    torch.manual_seed(0)
    model = Growing()
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    expected = {}
    with GradientRecorder(model, modules=["extra"]) as rec:
        for step in range(5):
            model.grown = step in (2, 3)  # joins at step 2, sits out step 4
            rec.begin_step(step)
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            rec.end_step()
            if step == 2:
                expected = {n: dict(model.named_modules())[n].weight.grad.double().norm().item() for n in rec.layers}
    assert rec.layers == ["a", "head", "extra"]  # the late one takes the next free index
    assert rec.activations == ["act", "extra_act"]
    frame = rec.to_frame()
    w = frame[frame.quantity == "weight_grad"]
    assert list(w[w.step == 0].layer) == ["a", "head"] and list(w[w.step == 1].layer) == ["a", "head"]
    at2 = w[w.step == 2].set_index("layer")
    assert list(at2.layer_index) == [0, 1, 2]
    for name, norm in expected.items():
        assert at2.loc[name, "norm"] == pytest.approx(norm, rel=1e-6, abs=0)
    # Step 4: "extra" is known but did not run: no gradient, not measured -> NaN for every quantity.
    at4 = frame[frame.step == 4].set_index(["quantity", "layer"])["norm"]
    assert math.isnan(at4["weight_grad", "extra"]) and math.isnan(at4["act_deriv", "extra_act"])
    assert math.isnan(at4["activation_grad", "extra"])
    assert np.isfinite(at4["weight_grad", "a"]) and np.isfinite(at4["act_deriv", "act"])
    assert math.isnan(frame[(frame.step == 0) & (frame.quantity == "activation_grad")].norm.iloc[0])
    assert len(rec.to_frame(until_step=1)) == 2 * (2 * 2 + 1 + 2 * 1)  # before it joined: 2 layers, 1 block, 1 act


class TwoHeads(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.used = nn.Linear(784, 10)
        self.unused = nn.Linear(784, 10)

    def forward(self, x):
        return self.used(x.flatten(1)), self.unused(x.flatten(1))


def test_no_gradient_means_nan_for_both_weight_and_activation() -> None:
    model = TwoHeads()
    with GradientRecorder(model, modules=["used", "unused"]) as rec:
        rec.begin_step(0)
        out, _ = model(torch.randn(2, 1, 28, 28))
        F.cross_entropy(out, torch.tensor([1, 2])).backward()  # the loss ignores the second head
        rec.end_step()
    got = rec.to_frame().set_index(["quantity", "layer"])["norm"]
    assert model.unused.weight.grad is None
    assert math.isnan(got["weight_grad", "unused"]) and math.isnan(got["activation_grad", "unused"])
    assert got["weight_grad", "used"] > 0 and got["activation_grad", "used"] > 0


def test_begin_and_end_step_outside_the_with_block_are_refused() -> None:
    model = build_model("plain", 8, width=2)
    rec = GradientRecorder(model)
    for call in (lambda: rec.begin_step(0), rec.end_step):
        with pytest.raises(RuntimeError, match="inside `with GradientRecorder"):
            call()
    with rec:
        rec.begin_step(0)
        F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
        rec.end_step()
    with pytest.raises(RuntimeError, match="needs the recorder's hooks"):
        rec.begin_step(1)
    assert rec.to_frame().step.unique().tolist() == [0]


def test_modules_given_as_one_string_is_refused() -> None:
    with pytest.raises(UsageError, match=r"got the string 'stage1'; write modules=\['stage1'\]"):
        GradientRecorder(build_model("plain", 8, width=2), modules="stage1")


@pytest.mark.parametrize("schedule", [0, -3, 2.5, True, "10", [1, "a"], [0, 1.5], [-1], None, object()])
def test_a_bad_schedule_is_refused(schedule: object) -> None:
    with pytest.raises(UsageError, match="schedule|every k steps"):
        GradientRecorder(nn.Linear(2, 2), schedule=schedule)  # type: ignore[arg-type]


@pytest.mark.parametrize("schedule", [2, np.int64(2), [0, 2, 4], range(0, 6, 2), (lambda s: s % 2 == 0)])
def test_good_schedules_record_the_same_steps(schedule: object) -> None:
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with GradientRecorder(model, schedule=schedule, modules=[]) as rec:  # type: ignore[arg-type]
        for step in range(6):
            rec.begin_step(step)
            F.cross_entropy(model(torch.randn(2, 1, 28, 28)), torch.tensor([1, 2])).backward()
            rec.end_step()
    assert sorted(rec.to_frame().step.unique()) == [0, 2, 4]


# ---------------------------------------------------------------- act_deriv


def _hand_deriv(name: str, z: torch.Tensor) -> float:
    """Mean σ'(z) in float64 by the textbook formulas."""
    z = z.double()
    if name == "relu":
        return (z > 0).double().mean().item()
    if name == "tanh":
        return (1 - torch.tanh(z) ** 2).mean().item()
    s = torch.sigmoid(z)
    return (s * (1 - s)).mean().item()


@pytest.mark.parametrize("activation", ["relu", "tanh", "sigmoid"])
@pytest.mark.parametrize("input_scale", [1.0, 30.0])  # 30: many units saturate, where σ' is below 1e-7
def test_act_deriv_matches_a_hand_computation(activation: str, input_scale: float) -> None:
    torch.manual_seed(0)
    model = build_model("residual", 8, width=2, activation=activation)
    x, y = torch.randn(4, 1, 28, 28) * input_scale, torch.randint(0, 10, (4,))
    with GradientRecorder(model) as rec:
        rec.begin_step(0)
        F.cross_entropy(model(x), y).backward()
        rec.end_step()
    frame = rec.to_frame()
    got = frame[frame.quantity == "act_deriv"].sort_values("layer_index")
    assert (
        list(got.layer)
        == rec.activations
        == [
            "stem_act",
            "stage1.0.act1",
            "stage1.0.act2",
            "stage2.0.act1",
            "stage2.0.act2",
            "stage3.0.act1",
            "stage3.0.act2",
        ]
    )  # forward order; act2 runs after the residual add
    inputs: dict[str, torch.Tensor] = {}
    named = dict(model.named_modules())
    handles = [
        named[n].register_forward_pre_hook(lambda m, i, n=n: inputs.__setitem__(n, i[0].detach()))
        for n in rec.activations
    ]
    model(x)
    for h in handles:
        h.remove()
    expected = [_hand_deriv(activation, inputs[n]) for n in rec.activations]
    np.testing.assert_allclose(got.norm.to_numpy(), expected, rtol=1e-6)
    assert all(0 < e for e in expected)


def test_act_deriv_of_a_shared_inplace_relu_covers_both_calls() -> None:
    """torchvision's BasicBlock calls one ReLU(inplace=True) twice: the mean is over both calls' inputs."""
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    with GradientRecorder(_inplace_net(True), modules=["2"]) as rec:
        rec.begin_step(0)
        F.cross_entropy(rec.model(x), y).backward()
        rec.end_step()
    frame = rec.to_frame()
    got = frame[frame.quantity == "act_deriv"].set_index("layer")["norm"]
    assert list(got.index) == ["1", "2.relu", "3.relu"]
    reference = _inplace_net(False)
    for m in reference.modules():
        if isinstance(m, nn.ReLU):
            m.inplace = False
    calls: list[torch.Tensor] = []
    h = reference[2].relu.register_forward_pre_hook(lambda m, i: calls.append(i[0].detach().flatten()))
    reference(x)
    h.remove()
    assert len(calls) == 2
    assert got["2.relu"] == pytest.approx(_hand_deriv("relu", torch.cat(calls)), rel=1e-6, abs=0)


def test_an_evaluation_without_autograd_inside_a_recorded_step_changes_nothing() -> None:
    torch.manual_seed(0)
    model = build_model("plain", 8, width=2, activation="tanh")
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    frames = []
    for evaluate in (False, True):
        with GradientRecorder(model) as rec:
            rec.begin_step(0)
            loss = F.cross_entropy(model(x), y)
            if evaluate:
                with torch.no_grad():
                    model(torch.randn(4, 1, 28, 28) * 10)
            loss.backward()
            rec.end_step()
        model.zero_grad(set_to_none=True)
        frames.append(rec.to_frame())
    pd.testing.assert_frame_equal(frames[0], frames[1])


def test_activations_that_ran_only_without_autograd_are_nan_after_those_that_ran() -> None:
    """The last activations in forward order ran only under no_grad: NaN, and the others as measured."""

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.a, self.b, self.c, self.d = nn.ReLU(), nn.Tanh(), nn.Sigmoid(), nn.Tanh()

        def forward(self, x: torch.Tensor, all_four: bool = True) -> torch.Tensor:
            h = self.b(self.a(self.fc(x)))
            return self.d(self.c(h)) if all_four else h

    torch.manual_seed(0)
    net, x = Net(), torch.randn(3, 4)
    with GradientRecorder(net, modules=["fc"]) as rec:
        rec.begin_step(0)
        with torch.no_grad():
            net(x)  # all four get their layer_index here, in forward order
        net(x, all_four=False).sum().backward()
        rec.end_step()
    got = rec.to_frame().query("quantity == 'act_deriv'").set_index("layer")["norm"]
    z = net.fc(x).detach().double()
    assert got["a"] == pytest.approx((z > 0).double().mean().item(), rel=1e-12)
    assert got["b"] == pytest.approx(_hand_deriv("tanh", torch.relu(z)), rel=1e-6, abs=0)
    assert math.isnan(got["c"]) and math.isnan(got["d"])


# ---------------------------------------------------------------- act_deriv_sq, NaN and −0.0, weight_norm


SIMPLE_ACTIVATIONS = [nn.ReLU(), nn.ReLU(inplace=True), nn.Tanh(), nn.Sigmoid()]


def _record_activation(act: nn.Module, z: torch.Tensor) -> tuple[float, float]:
    """act_deriv and act_deriv_sq that one recorded call of ``act`` on ``z`` gives."""
    leaf = z.detach().clone().requires_grad_()
    with GradientRecorder(act, modules=[]) as rec:
        rec.begin_step(0)
        act(leaf * 1).sum().backward()  # `* 1`: an in-place activation may not write over a leaf
        rec.end_step()
    got = rec.to_frame().set_index("quantity")["norm"]
    return got["act_deriv"], got["act_deriv_sq"]


def _autograd_prime(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """σ′ elementwise in float64 by autograd, at the float64 values of ``z``."""
    z64 = z.detach().double().requires_grad_()
    (g,) = torch.autograd.grad(act(z64 * 1).sum(), z64)
    return g


def _exact_prime(act: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """σ′ in float64 by formulas that keep its precision where it is tiny (autograd's 1 − tanh² cancels at |z| > 19)."""
    z64 = z.detach().double()
    if isinstance(act, nn.Tanh):
        return torch.cosh(z64).pow(-2)
    if isinstance(act, nn.Sigmoid):
        e = torch.exp(-z64.abs())
        return e / (1 + e) ** 2
    return _autograd_prime(act, z)


def test_the_exact_references_agree_with_autograd_where_autograd_keeps_its_precision() -> None:
    z = torch.randn(10_000, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3
    for act in SIMPLE_ACTIVATIONS:
        torch.testing.assert_close(_exact_prime(act, z), _autograd_prime(act, z), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("act", SIMPLE_ACTIVATIONS, ids=repr)
@pytest.mark.parametrize(
    ("center", "spread"),
    [(0.0, 1.0), (0.0, 30.0), (60.0, 5.0), (-60.0, 5.0), (0.0, 1e-40), (0.0, 1e30), (400.0, 10.0)],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_act_deriv_and_its_square_match_autograd_in_float64(
    act: nn.Module, center: float, spread: float, dtype: torch.dtype
) -> None:
    """Also where every σ′ lies far below float32's range (tanh at |z| ~ 60: σ′ ~ 1e-52, σ′² ~ 1e-104)."""
    gen = torch.Generator().manual_seed(0)
    z = (center + spread * torch.randn(3, 5000, generator=gen, dtype=torch.float64)).to(dtype)
    prime = _exact_prime(act, z)
    deriv, deriv_sq = _record_activation(act, z)
    expected = prime.mean().item(), prime.square().mean().item()
    assert deriv == pytest.approx(expected[0], rel=1e-6, abs=0)
    assert deriv_sq == pytest.approx(expected[1], rel=1e-6, abs=0)


@pytest.mark.parametrize("act", SIMPLE_ACTIVATIONS, ids=repr)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
def test_act_deriv_of_a_nan_input_is_nan_and_minus_zero_is_not_positive(act: nn.Module, dtype: torch.dtype) -> None:
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(4, 3000, generator=gen).to(dtype)
    z[0, :1000] = -0.0  # σ′(−0.0) as autograd has it: 0 for ReLU, like σ′(+0.0)
    deriv, deriv_sq = _record_activation(act, z)
    prime = _exact_prime(act, z)
    assert deriv == pytest.approx(prime.mean().item(), rel=1e-6, abs=0)
    assert deriv_sq == pytest.approx(prime.square().mean().item(), rel=1e-6, abs=0)
    for nan in (math.nan, -math.nan):  # both signs: the NaN an overflow makes on x86 has its sign bit set
        z[2, 7] = nan
        assert all(math.isnan(v) for v in _record_activation(act, z)), nan


def test_a_nan_input_makes_only_that_steps_act_deriv_nan() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(3, 4)
    with GradientRecorder(model, modules=[]) as rec:
        for step, xb in enumerate([x, torch.full_like(x, math.nan), x]):
            rec.begin_step(step)
            model(xb).sum().backward()
            rec.end_step()
    got = rec.to_frame().query("quantity == 'act_deriv'").set_index("step")["norm"]
    assert math.isnan(got[1]) and got[0] == got[2] == (model[0](x) > 0).double().mean().item()


@pytest.mark.parametrize(("dtype", "scale"), CASES, ids=[f"{str(d)[6:]}-{s}" for d, s in CASES])
def test_weight_norm_is_the_float64_norm_of_the_weight_at_every_scale(dtype: torch.dtype, scale: float | str) -> None:
    weight = _grad((5, 6), dtype, scale, 2)
    model = nn.Sequential(nn.Linear(6, 5, bias=False)).to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(weight)
    with GradientRecorder(model, modules=[]) as rec:
        rec.begin_step(0)
        model(torch.ones(4, 6, dtype=dtype)).sum().backward()
        rec.end_step()
    got = rec.to_frame().set_index("quantity")["norm"]["weight_norm"]
    expected = weight.double().norm().item()
    assert 0 < expected < math.inf
    assert got == pytest.approx(expected, rel=1e-6, abs=0)


def test_weight_norm_follows_the_weights_the_step_used_layer_by_layer() -> None:
    """Every weighted layer, the same layer_index as weight_grad, the weights before the update; also with no .grad."""
    torch.manual_seed(0)
    model = build_model("residual", 8, width=2, norm="batch", shortcut="B")
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    x, y = torch.randn(4, 1, 28, 28), torch.randint(0, 10, (4,))
    expected = {}
    with GradientRecorder(model) as rec:
        for step in range(3):
            rec.begin_step(step)
            opt.zero_grad(set_to_none=True)
            loss = F.cross_entropy(model(x), y)
            if step != 1:
                loss.backward()  # step 1: no gradient at all (every weight_grad NaN), the weights still measured
            expected[step] = [dict(model.named_modules())[n].weight.double().norm().item() for n in rec.layers]
            rec.end_step()
            opt.step()
    frame = rec.to_frame()
    for step, norms in expected.items():
        at = frame[frame.step == step]
        w, g = at[at.quantity == "weight_norm"], at[at.quantity == "weight_grad"]
        assert list(w.layer) == list(g.layer) == rec.layers and list(w.layer_index) == list(range(len(rec.layers)))
        np.testing.assert_allclose(w.norm.to_numpy(), norms, rtol=1e-12)
        assert g.norm.isna().all() == (step == 1)
    assert not np.allclose(expected[0], expected[2])  # the updates moved the weights
