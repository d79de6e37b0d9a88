"""The numerics of ``resgrad landscape``: directions, points on planes and lines, and the Hessian's extremes.

- :func:`random_directions` and :func:`filter_normalise`: Li et al. (2018)'s filter-normalised
  random directions;
- :func:`move_to` and :func:`move_between`: write θ + αδ + βη, or the point t of the way from
  one state to another, into a model in place;
- :func:`fold_batch_norm`: the same function with each eval-mode batch norm folded into the
  convolution before it (one pass over the activations fewer per layer);
- :func:`hessian_vector_product` and :func:`lanczos_extremes`: λ_max and λ_min of the training
  loss's Hessian from Hessian-vector products (Lanczos with full reorthogonalisation).
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from resgrad.data import Split

# ---------------------------------------------------------------- directions


def random_directions(params: Sequence[torch.Tensor], seed: int, count: int = 2) -> list[list[torch.Tensor]]:
    """``count`` Gaussian directions over ``params`` (float64, on the CPU), one generator seeded with ``seed``.

    Only parameters with two or more dimensions (conv and linear weights) get random entries,
    drawn in order: direction 1 for every such parameter, then direction 2, ... So every net
    with the same parameter shapes (plain and residual twins) gets the same directions. The
    entries of biases and batch-norm parameters are zero: they are not perturbed.
    """
    generator = torch.Generator().manual_seed(seed)
    return [
        [
            torch.randn(p.shape, generator=generator, dtype=torch.float64)
            if p.dim() > 1
            else torch.zeros(p.shape, dtype=torch.float64)
            for p in params
        ]
        for _ in range(count)
    ]


def filter_normalise(direction: Sequence[torch.Tensor], weights: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """Li et al. (2018)'s filter normalisation, in float64.

    Each filter of ``direction`` (a slice along dim 0 of a parameter with two or more
    dimensions: a conv's output channel, a linear layer's row) is rescaled to the norm of the
    same filter of ``weights``: d_i ← d_i · ‖θ_i‖ / ‖d_i‖. A filter whose weights are all zero,
    and every parameter with fewer than two dimensions (biases, batch norm), gets zeros.
    """
    out = []
    for d, w in zip(direction, weights, strict=True):
        d = d.to(torch.float64)
        if d.dim() < 2:
            out.append(torch.zeros_like(d))
            continue
        d_norm = torch.linalg.vector_norm(d.flatten(1), dim=1)
        w_norm = torch.linalg.vector_norm(w.detach().to(torch.float64).flatten(1), dim=1).to(d.device)
        scale = torch.where(w_norm > 0, w_norm / torch.where(d_norm > 0, d_norm, 1.0), 0.0)
        out.append(d * scale.view(-1, *[1] * (d.dim() - 1)))
    return out


# ---------------------------------------------------------------- moving a model


@torch.no_grad()
def move_to(
    targets: Sequence[torch.Tensor],
    origin: Sequence[torch.Tensor],
    directions: Sequence[Sequence[torch.Tensor] | None],
    coefficients: Sequence[float],
) -> None:
    """Write origin + Σ cₖ·directionₖ into ``targets`` in place (a direction entry of None counts as zero).

    ``directions`` hold one list per coefficient, in the targets' dtype and device.
    """
    for i, (target, start) in enumerate(zip(targets, origin, strict=True)):
        target.copy_(start)
        for direction, c in zip(directions, coefficients, strict=True):
            if direction is not None and direction[i] is not None and c != 0:
                target.add_(direction[i], alpha=c)


@torch.no_grad()
def move_between(
    targets: Sequence[torch.Tensor], start: Sequence[torch.Tensor], end: Sequence[torch.Tensor], t: float
) -> None:
    """Write the point ``t`` of the way from ``start`` to ``end`` into ``targets`` (``start`` at 0, ``end`` at 1,
    exactly)."""
    for target, a, b in zip(targets, start, end, strict=True):
        target.copy_(torch.lerp(a, b, t))


def fold_batch_norm(model: nn.Module) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """A copy of ``model`` for eval mode with every batch norm that alone reads a convolution folded into it.

    In eval mode batch norm is an affine map per channel, y = s·x + (β − s·μ) with
    s = γ / √(σ² + ε), so conv-then-norm is one convolution with weight s·W and bias
    s·(b − μ) + β. The batch-norm parameters stay as they are, so a move of W by δ is a move
    of the folded weight by s·δ. A model without batch norm comes back as it is.

    Returns:
        The folded copy (a ``torch.fx.GraphModule`` in eval mode, sharing nothing with
        ``model``), and s for each folded convolution's weight, by the weight's name.
    """
    if not any(isinstance(m, nn.BatchNorm2d) for m in model.modules()):
        return model, {}
    graph = torch.fx.symbolic_trace(copy.deepcopy(model).eval())
    modules = dict(graph.named_modules())
    scales = {}
    for node in list(graph.graph.nodes):
        bn = modules.get(node.target) if node.op == "call_module" else None
        source = node.args[0] if bn is not None else None
        conv = modules.get(source.target) if isinstance(source, torch.fx.Node) and source.op == "call_module" else None
        if not isinstance(bn, nn.BatchNorm2d) or not isinstance(conv, nn.Conv2d) or len(source.users) != 1:
            continue
        with torch.no_grad():
            s = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
            conv.weight = nn.Parameter(conv.weight * s.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(s * (bias - bn.running_mean) + bn.bias)
        scales[f"{source.target}.weight"] = s.detach().clone()
        node.replace_all_uses_with(source)
        graph.graph.erase_node(node)
    graph.delete_all_unused_submodules()
    graph.recompile()
    return graph.eval(), scales


def floating_state(model: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """The model's floating-point state (parameters and buffers such as batch norm's running statistics), by name."""
    return [(k, v) for k, v in model.state_dict(keep_vars=True).items() if v.is_floating_point()]


# ---------------------------------------------------------------- curvature


def hessian_vector_product(
    model: nn.Module, params: Sequence[nn.Parameter], data: Split, batch_size: int
) -> Callable[[torch.Tensor], torch.Tensor]:
    """v ↦ H·v for the mean cross-entropy over ``data`` with respect to ``params`` (flat vectors, float64).

    Double backward per batch of ``batch_size`` images, summed; the model is used as it is
    (put it in eval mode first, so that batch norm uses its running statistics).
    """
    n = len(data)
    shapes = [p.shape for p in params]
    sizes = [p.numel() for p in params]
    dtype = params[0].dtype

    def hvp(v: torch.Tensor) -> torch.Tensor:
        vs = [part.view(shape).to(dtype) for part, shape in zip(v.split(sizes), shapes)]
        out = torch.zeros(sum(sizes), dtype=torch.float64, device=v.device)
        for x, y in zip(data.images.split(batch_size), data.labels.split(batch_size)):
            loss = F.cross_entropy(model(x), y, reduction="sum") / n
            # allow_unused: a parameter the forward never uses (a plain block's projection shortcut) has H = 0
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True)
            used = [(g, u) for g, u in zip(grads, vs) if g is not None and g.requires_grad]
            if not used:
                continue
            dot = sum((g * u).sum() for g, u in used)
            hv = torch.autograd.grad(dot, params, allow_unused=True)
            out += torch.cat([(h if h is not None else torch.zeros_like(p)).reshape(-1) for h, p in zip(hv, params)])
        return out

    return hvp


@dataclass
class Extremes:
    """The largest and the smallest eigenvalue that :func:`lanczos_extremes` found, and how sure it is."""

    lambda_max: float
    lambda_min: float
    max_error: float  # residual bound |β_k s_k| of the Ritz pair: an eigenvalue lies within it
    min_error: float
    steps: int  # matrix-vector products used


def lanczos_extremes(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    steps: int,
    seed: int = 0,
    device: torch.device | str = "cpu",
    on_step: Callable[[], None] | None = None,
) -> Extremes:
    """The extreme eigenvalues of a symmetric operator on Rⁿ by Lanczos with full reorthogonalisation (float64).

    Both ends come from one Krylov space, the one that shifted power iteration (Li et al. 2018:
    ARPACK on H − σI) explores too. Runs ``steps`` products, or fewer when the Krylov space
    becomes invariant (the Ritz values are then eigenvalues). There is no earlier stop: at
    the small end a Ritz value near a cluster of eigenvalues has a small residual long before
    the smallest eigenvalue is found. The extreme Ritz values bound the spectrum from inside:
    λ_max ≥ the reported λ_max, λ_min ≤ the reported λ_min.

    Args:
        matvec: v ↦ A·v on flat float64 vectors.
        n: the dimension.
        steps: the most products.
        seed: seeds the start vector.
        device: where the Krylov vectors live.
        on_step: called after each product (a progress bar).
    """
    q = torch.randn(n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).to(device)
    basis = [q / torch.linalg.vector_norm(q)]
    alphas: list[float] = []
    betas: list[float] = []
    for _ in range(min(steps, n)):
        q = basis[-1]
        w = matvec(q)
        if on_step is not None:
            on_step()
        alphas.append(float(w @ q))
        Q = torch.stack(basis)  # (k, n)
        for _ in range(2):  # "twice is enough" (Kahan): orthogonal to the basis up to rounding
            w = w - Q.T @ (Q @ w)
        beta = float(torch.linalg.vector_norm(w))
        values, vectors = _ritz(alphas, betas)
        scale = max(abs(values[0]), abs(values[-1]), 1e-300)
        if beta <= 1e-12 * scale or len(alphas) == n:  # an invariant subspace: the Ritz values are eigenvalues
            return Extremes(float(values[-1]), float(values[0]), 0.0, 0.0, len(alphas))
        betas.append(beta)
        basis.append(w / beta)
    errors = (beta * vectors[-1, [-1, 0]].abs()).tolist()
    return Extremes(float(values[-1]), float(values[0]), errors[0], errors[1], len(alphas))


def _ritz(alphas: list[float], betas: list[float]) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and eigenvectors of the tridiagonal matrix of the Lanczos coefficients."""
    k = len(alphas)
    t = torch.diag(torch.tensor(alphas, dtype=torch.float64))
    if k > 1:
        off = torch.tensor(betas[: k - 1], dtype=torch.float64)
        t += torch.diag(off, 1) + torch.diag(off, -1)
    return torch.linalg.eigh(t)
