"""param_grad: every parameter once, also those used through a functional call, on a small transformer LM."""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from resgrad.gradients import GradientRecorder
from resgrad.watched import parameters_once


class Block(nn.Module):
    """Pre-norm transformer block: attention (nn.MultiheadAttention) and a GELU MLP, both residual."""

    resgrad_block = True  # the recorder watches its output

    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:  # (B, T, d)
        h = self.ln1(x)
        x = x + self.attn(h, h, h, attn_mask=mask, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class TinyLM(nn.Module):
    """Token and position embeddings, two blocks, a final LayerNorm and a head tied to the token embedding."""

    def __init__(self, vocab: int = 40, d: int = 16, heads: int = 2, ctx: int = 12) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Parameter(torch.randn(ctx, d) * 0.02)  # a bare parameter of the root module
        self.blocks = nn.ModuleList([Block(d, heads) for _ in range(2)])
        self.ln_f = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)
        self.head.weight = self.tok.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:  # (B, T) -> (B, T, vocab)
        t = idx.shape[1]
        mask = torch.triu(torch.full((t, t), -math.inf), diagonal=1)
        x = self.tok(idx) + self.pos[:t]
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.ln_f(x))


def _lm_loss(model: nn.Module, idx: torch.Tensor, scale: float) -> torch.Tensor:
    logits = model(idx[:, :-1])
    return F.cross_entropy(logits.flatten(0, 1).float(), idx[:, 1:].flatten()) * scale


def test_every_parameter_once_tied_under_its_first_name() -> None:
    model = TinyLM()
    names, params, tied = parameters_once(model)
    assert names == [n for n, _ in model.named_parameters()]  # named_parameters() order, duplicates left out
    assert tied == {"tok.weight": ["head.weight"]}
    assert "blocks.0.attn.in_proj_weight" in names and "blocks.1.attn.out_proj.weight" in names
    assert len({id(p) for p in params}) == len(params) == len(list(model.parameters()))


CASES = ["float32", "bf16-autocast", "accumulation", "scale-1e-30", "scale-1e+30"]


@pytest.mark.parametrize("case", CASES)
def test_every_norm_of_a_transformer_lm_equals_a_float64_reference(case: str) -> None:
    """param_grad of every parameter (attention's in_proj_weight and out_proj.weight included), weight_grad,
    weight_norm, activation_grad and the GELU's act_deriv, against autograd.grad in float64."""
    torch.manual_seed(0)
    model = TinyLM()
    idx = torch.randint(0, 40, (4, 13))
    micro = [idx[:2], idx[2:]] if case == "accumulation" else [idx]
    scale = float(case.split("scale")[1]) if "scale" in case else 1.0
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if case == "bf16-autocast" else contextlib.nullcontext()
    with GradientRecorder(model) as rec:
        rec.begin_step(0)
        for mb in micro:
            with ctx:
                loss = _lm_loss(model, mb, scale / len(micro))
            loss.backward()
        rec.end_step()
    frame = rec.to_frame()
    got = frame.set_index(["quantity", "layer"])["norm"]

    # Reference: the same forward passes again, gradients by autograd.grad (no recorder, no .grad), summed in float64.
    named_params = dict(model.named_parameters())
    named_modules = dict(model.named_modules())
    grads = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in named_params.items()}
    outs: dict[str, list[torch.Tensor]] = {n: [] for n in rec.blocks}
    signal = {n: 0.0 for n in rec.blocks}
    gelu_in: dict[str, list[torch.Tensor]] = {n: [] for n in rec.activations}
    hooks = [named_modules[n].register_forward_hook(lambda m, i, o, n=n: outs[n].append(o)) for n in rec.blocks]
    hooks += [
        named_modules[n].register_forward_pre_hook(lambda m, i, n=n: gelu_in[n].append(i[0].detach()))
        for n in rec.activations
    ]
    for mb in micro:
        for o in outs.values():
            o.clear()
        with ctx:
            loss = _lm_loss(model, mb, scale / len(micro))
        names = list(named_params)
        g = torch.autograd.grad(loss, [named_params[n] for n in names] + [outs[n][0] for n in rec.blocks])
        for n, gi in zip(names, g):
            grads[n] += gi.double()
        for n, gi in zip(rec.blocks, g[len(names) :]):
            signal[n] = math.hypot(signal[n], gi.double().norm().item())
    for h in hooks:
        h.remove()

    assert set(rec.params) == set(dict(model.named_parameters())) and "head.weight" not in rec.params
    for name in rec.params:
        expected = grads[name].norm().item()
        assert 0 < expected < math.inf, name
        assert got["param_grad", name] == pytest.approx(expected, rel=1e-6, abs=0), name
    for layer in rec.layers:  # weighted layers whose forward runs: the embedding, the MLPs' Linears, the head
        weight = named_modules[layer].weight
        name = next(n for n in rec.params if named_params[n] is weight)
        assert got["weight_grad", layer] == got["param_grad", name]
        assert got["weight_norm", layer] == pytest.approx(weight.double().norm().item(), rel=1e-12)
    assert "blocks.0.attn.out_proj" not in rec.layers  # used through F.multi_head_attention_forward: no forward
    assert got["weight_grad", "head"] == got["weight_grad", "tok"]  # the tied weight: one gradient
    for block in rec.blocks:
        assert got["activation_grad", block] == pytest.approx(signal[block], rel=1e-6, abs=0)
    for act in rec.activations:
        z = torch.cat([t.flatten() for t in gelu_in[act]]).double()
        prime = 0.5 * torch.erfc(-z / math.sqrt(2)) + z * torch.exp(-z * z / 2) / math.sqrt(2 * math.pi)
        assert got["act_deriv", act] == pytest.approx(prime.mean().item(), rel=1e-6)
        assert got["act_deriv_sq", act] == pytest.approx(prime.square().mean().item(), rel=1e-6)
    assert rec.activations == ["blocks.0.mlp.1", "blocks.1.mlp.1"]


def test_a_frozen_parameter_is_nan_and_one_registered_later_joins_at_the_next_recorded_step() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    model[0].bias.requires_grad_(False)
    x = torch.randn(5, 3)
    with GradientRecorder(model, modules=[]) as rec:
        for step in range(3):
            if step == 1:
                model.append(nn.Linear(2, 2))  # registered after the recorder was made
            rec.begin_step(step)
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
            rec.end_step()
            if step == 2:
                expected = {n: p.grad.double().norm().item() for n, p in model.named_parameters() if p.grad is not None}
    pg = rec.to_frame().query("quantity == 'param_grad'")
    assert rec.params == ["0.weight", "0.bias", "2.weight", "2.bias", "3.weight", "3.bias"]
    assert pg.groupby("step").size().to_dict() == {0: 4, 1: 6, 2: 6}
    at2 = pg[pg.step == 2].set_index("layer")["norm"]
    assert math.isnan(at2["0.bias"])  # frozen: no .grad, not measured
    for name, norm in expected.items():
        assert at2[name] == pytest.approx(norm, rel=1e-12)
    assert list(pg[pg.step == 2].layer_index) == list(range(6))


def test_a_replaced_parameter_is_followed_under_its_name() -> None:
    model = nn.Sequential(nn.Linear(3, 2))
    x = torch.randn(4, 3)
    with GradientRecorder(model, modules=[]) as rec:
        for step in range(2):
            if step == 1:
                model[0].weight = nn.Parameter(torch.full((2, 3), 10.0))
            rec.begin_step(step)
            model.zero_grad(set_to_none=True)
            model(x).sum().backward()
            rec.end_step()
    frame = rec.to_frame()
    at1 = frame[frame.step == 1].set_index(["quantity", "layer"])["norm"]
    assert at1["param_grad", "0.weight"] == pytest.approx(model[0].weight.grad.double().norm().item(), rel=1e-12)
    assert at1["weight_norm", "0"] == pytest.approx(math.sqrt(6) * 10, rel=1e-12)
    assert at1["weight_grad", "0"] == at1["param_grad", "0.weight"]


def test_param_grad_rows_follow_named_parameters_order_at_every_step() -> None:
    model = TinyLM()
    idx = torch.randint(0, 40, (2, 6))
    with GradientRecorder(model, schedule=[0, 2]) as rec:
        for step in range(3):
            rec.begin_step(step)
            model.zero_grad(set_to_none=True)
            _lm_loss(model, idx, 1.0).backward()
            rec.end_step()
    pg = rec.to_frame().query("quantity == 'param_grad'")
    for _, at in pg.groupby("step"):
        assert list(at.layer) == rec.params and list(at.layer_index) == list(range(len(rec.params)))
    assert np.isfinite(pg.norm).all()
