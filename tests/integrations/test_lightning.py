"""GradientRecorderCallback in a real lightning.Trainer on the CPU: every logged norm against the gradient stepped with."""

from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from resgrad.data import load_split
from resgrad.errors import UsageError
from resgrad.models import build_model
from resgrad.records import scalar_tag
from resgrad.watched import default_signal_modules

L = pytest.importorskip("lightning", reason="needs Lightning: pip install 'resgrad[lightning]' (make setup)")
from lightning.pytorch.loggers import CSVLogger  # noqa: E402
from lightning.pytorch.plugins import MixedPrecision  # noqa: E402

from resgrad.integrations.lightning import GradientRecorderCallback  # noqa: E402

QUIET = dict(enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


class CapturingSGD(torch.optim.SGD):
    """SGD that notes, at each step it takes, the float64 norm of every gradient it steps with and the weights."""

    def __init__(self, module: Twin) -> None:
        self.named = list(module.model.named_parameters())
        super().__init__([p for _, p in self.named], lr=0.05, momentum=0.9)
        self.module = module

    def step(self, closure=None):  # type: ignore[override]
        loss = None
        if closure is not None:  # Lightning runs backward, the hooks and clipping inside this closure
            with torch.enable_grad():
                loss = closure()
        scaler = getattr(self.module.trainer.precision_plugin, "scaler", None)
        self.module.steps.append(
            {
                "step": self.module.trainer.global_step,
                "grads": {n: p.grad.double().norm().item() for n, p in self.named},
                "weights": {n: p.detach().clone() for n, p in self.named},
                "scale": 1.0 if scaler is None else scaler.get_scale(),
            }
        )
        super().step()
        return loss


class Twin(L.LightningModule):
    """A resgrad net (``self.model``) trained with cross-entropy; notes its micro-batches and the steps taken."""

    def __init__(self, depth: int = 8, width: int = 2, out_dir: str | None = None) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.model = build_model("residual", depth, width)
        self.out_dir = out_dir
        self.steps: list[dict] = []
        self.batches: list[tuple[int, torch.Tensor, torch.Tensor]] = []

    def training_step(self, batch, batch_idx):
        x, y = batch
        self.batches.append((self.trainer.global_step, x, y))
        return F.cross_entropy(self.model(x), y)

    def configure_optimizers(self):
        return CapturingSGD(self)

    def on_train_end(self) -> None:  # DDP: each rank writes what its optimizer stepped with
        if self.out_dir is not None:
            steps = [{"step": s["step"], "grads": s["grads"]} for s in self.steps]
            Path(self.out_dir, f"rank{self.global_rank}.json").write_text(json.dumps(steps))


def _loader(n: int = 48, batch: int = 8, seed: int = 0) -> torch.utils.data.DataLoader:
    gen = torch.Generator().manual_seed(seed)
    ds = torch.utils.data.TensorDataset(
        torch.randn(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,), generator=gen)
    )
    return torch.utils.data.DataLoader(ds, batch_size=batch)


def _fit(tmp_path: Path, module: Twin, loader, callback: GradientRecorderCallback, **trainer_kw) -> pd.DataFrame:
    logger = CSVLogger(tmp_path, name="csv", version=0)
    trainer = L.Trainer(accelerator="cpu", logger=logger, callbacks=[callback], **QUIET, **trainer_kw)
    trainer.fit(module, loader)
    return pd.read_csv(Path(logger.log_dir) / "metrics.csv")


def _reference_signal(module: Twin, step: dict, k: int, precision: str) -> dict[str, float]:
    """‖∂L/∂h‖ of every block over the step's micro-batches, by autograd.grad on a copy with the step's weights."""
    model = copy.deepcopy(module.model)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(step["weights"][n])
    blocks = default_signal_modules(model)
    named = dict(model.named_modules())
    signal = dict.fromkeys(blocks, 0.0)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    outs: dict[str, torch.Tensor] = {}
    for _, x, y in [b for b in module.batches if b[0] == step["step"]]:
        outs.clear()
        hooks = [named[b].register_forward_hook(lambda m, i, o, b=b: outs.__setitem__(b, o)) for b in blocks]
        ctx = torch.autocast("cpu", dtype=dtype) if dtype else contextlib.nullcontext()
        with ctx:
            loss = F.cross_entropy(model(x), y) / k * step["scale"]
        for h in hooks:
            h.remove()
        for b, g in zip(blocks, torch.autograd.grad(loss, [outs[b] for b in blocks])):
            signal[b] = math.hypot(signal[b], g.double().norm().item() / step["scale"])
    return signal


def _check_logged(csv: pd.DataFrame, module: Twin, callback: GradientRecorderCallback, k: int, precision: str) -> None:
    """Every logged param_grad, weight_grad, weight_norm and activation_grad against what the optimizer stepped with."""
    rec = callback.recorder
    frame = callback.to_frame()
    assert len(module.steps) >= 2 and set(csv["step"]) == set(frame["step"])
    name_of = {id(p): n for n, p in module.model.named_parameters()}
    named = dict(module.model.named_modules())
    for step in module.steps:
        row = csv[csv["step"] == step["step"]].iloc[0]
        for i, name in enumerate(rec.params):
            assert row[scalar_tag("param_grad", i, name)] == pytest.approx(step["grads"][name], rel=1e-12)
        for i, layer in enumerate(rec.layers):
            name = name_of[id(named[layer].weight)]
            assert row[scalar_tag("weight_grad", i, layer)] == pytest.approx(step["grads"][name], rel=1e-12)
            assert row[scalar_tag("weight_norm", i, layer)] == pytest.approx(
                step["weights"][name].double().norm().item(), rel=1e-12
            )
        for i, (block, norm) in enumerate(_reference_signal(module, step, k, precision).items()):
            assert row[scalar_tag("activation_grad", i, block)] == pytest.approx(norm, rel=1e-6)  # float32 partial sums
        logged = frame[frame["step"] == step["step"]]
        assert len(logged) == sum(1 for c in csv.columns if "/" in c)  # every quantity of the step, logged once
        assert np.allclose(logged["norm"], [row[scalar_tag(q, i, n)] for q, i, n in logged[["quantity", "layer_index", "layer"]].itertuples(index=False)], rtol=0, atol=0, equal_nan=True)  # fmt: skip


@pytest.mark.parametrize(("precision", "k"), [("32-true", 1), ("32-true", 2), ("bf16-mixed", 2)])
def test_every_logged_norm_is_the_float64_norm_of_the_gradient_stepped_with(
    tmp_path: Path, precision: str, k: int
) -> None:
    """One record per optimizer step, over its k micro-batches; bf16-mixed runs the forward in bfloat16."""
    module, callback = Twin(), GradientRecorderCallback(schedule=1, module="model")
    csv = _fit(tmp_path, module, _loader(), callback, max_steps=3, accumulate_grad_batches=k, precision=precision)
    assert [s["step"] for s in module.steps] == [0, 1, 2] and list(csv["step"]) == [0, 1, 2]
    assert len(module.batches) == 3 * k
    _check_logged(csv, module, callback, k, precision)
    assert "weight_grad/000_stem" in csv.columns  # resgrad's own names: relative to pl_module.model


def test_16_mixed_gradients_and_backward_signal_are_unscaled(tmp_path: Path) -> None:
    """float16 with a GradScaler (on the CPU only through the plugin): unscaled norms; skipped steps logged as found."""
    module, callback = Twin(), GradientRecorderCallback(schedule=1, module="model")
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**20)  # large enough to overflow float16 at first
    csv = _fit(tmp_path, module, _loader(128), callback, max_steps=8, accumulate_grad_batches=2,
               plugins=[MixedPrecision("16-mixed", device="cpu", scaler=scaler)])  # fmt: skip
    assert list(csv["step"]) == list(range(8)) and 2 <= len(module.steps) < 8
    assert all(s["scale"] >= 2.0**15 for s in module.steps)  # the unscaled numbers are not the scaled ones
    _check_logged(csv, module, callback, 2, "16-mixed")
    stepped = {s["step"] for s in module.steps}
    skipped = csv[~csv["step"].isin(stepped)]  # GradScaler found inf or NaN and did not step
    pg = [c for c in csv.columns if c.startswith("param_grad/")]
    assert len(skipped) and (~np.isfinite(skipped[pg].to_numpy(float))).any(axis=1).all()


def test_logged_norms_are_from_before_gradient_clipping(tmp_path: Path) -> None:
    """The optimizer steps with each gradient times min(1, clip / total); total from the logged param_grad."""
    module, callback = Twin(), GradientRecorderCallback(schedule=1, module="model")
    csv = _fit(tmp_path, module, _loader(), callback, max_steps=3, gradient_clip_val=0.01)
    rec = callback.recorder
    for step in module.steps:
        row = csv[csv["step"] == step["step"]].iloc[0]
        logged = np.array([row[scalar_tag("param_grad", i, n)] for i, n in enumerate(rec.params)])
        coef = min(1.0, 0.01 / (np.sqrt((logged**2).sum()) + 1e-6))
        assert coef < 0.5  # clipping did clip
        np.testing.assert_allclose(logged * coef, [step["grads"][n] for n in rec.params], rtol=1e-5)


def test_the_default_schedule_is_the_trainers_log_every_n_steps_and_hooks_go_at_the_end(tmp_path: Path) -> None:
    module, callback = Twin(), GradientRecorderCallback()  # the whole LightningModule: names start with "model."
    csv = _fit(tmp_path, module, _loader(80), callback, max_steps=10, log_every_n_steps=4)
    assert sorted(csv["step"]) == [0, 4, 8] and sorted(callback.to_frame()["step"].unique()) == [0, 4, 8]
    assert "weight_grad/000_model.stem" in csv.columns
    assert callback.recorder.num_hooks == 0
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in module.modules())


def test_a_missing_submodule_is_one_sentence(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"^the LightningModule has no submodule 'nope'\.$"):
        _fit(tmp_path, Twin(), _loader(), GradientRecorderCallback(module="nope"), max_steps=1)


def test_without_lightning_the_import_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "lightning", None)  # import lightning now raises ImportError
    monkeypatch.setitem(sys.modules, "lightning.pytorch", None)
    monkeypatch.delitem(sys.modules, "resgrad.integrations.lightning")
    with pytest.raises(UsageError) as err:
        importlib.import_module("resgrad.integrations.lightning")
    message = str(err.value)
    assert "pip install 'resgrad[lightning]'" in message and message.count(". ") == 0 and message.endswith(".")


def test_a_resgrad_twin_on_mnist_logs_what_it_steps_with(tmp_path: Path, data_dir: Path) -> None:
    """residual-8, width 4, on real MNIST images, bf16-mixed, 2 micro-batches per step; to_frame() is the log."""
    split = load_split(True, data_dir, subset=192)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(split.images, split.labels), batch_size=32)
    module, callback = Twin(depth=8, width=4), GradientRecorderCallback(schedule=1, module="model")
    csv = _fit(tmp_path, module, loader, callback, max_steps=3, accumulate_grad_batches=2, precision="bf16-mixed")
    _check_logged(csv, module, callback, 2, "bf16-mixed")
    frame = callback.to_frame()
    assert set(frame["quantity"]) == {
        "weight_grad", "weight_norm", "activation_grad", "act_deriv", "act_deriv_sq", "param_grad"
    }  # fmt: skip
    assert frame["norm"].notna().all() and (frame.query("quantity == 'weight_grad'")["norm"] > 0).all()


@pytest.mark.slow
def test_ddp_logs_the_all_reduced_gradient_and_rank_0s_backward_signal(tmp_path: Path) -> None:
    """Two CPU processes (gloo, ddp_spawn), 2 micro-batches per step: param_grad is the all-reduced gradient."""
    module = Twin(out_dir=str(tmp_path))
    callback = GradientRecorderCallback(schedule=1, module="model")
    csv = _fit(tmp_path, module, _loader(64), callback, max_steps=2, accumulate_grad_batches=2,
               devices=2, strategy="ddp_spawn")  # fmt: skip
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [s["grads"] for s in ranks[0]] == [s["grads"] for s in ranks[1]]  # all-reduced: the same on both ranks
    names = [n for n, _ in Twin().model.named_parameters()]
    for step in ranks[0]:
        row = csv[csv["step"] == step["step"]].iloc[0]
        for i, name in enumerate(names):
            assert row[scalar_tag("param_grad", i, name)] == pytest.approx(step["grads"][name], rel=1e-12)
    assert list(csv["step"]) == [0, 1] and csv.filter(like="activation_grad/").notna().all().all()
