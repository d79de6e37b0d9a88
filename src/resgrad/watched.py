"""What the recorder watches in a model, and under which names: blocks, weighted layers, activations, parameters.

Pure functions of a model's module tree; :class:`resgrad.gradients.GradientRecorder` hooks what
they name. Their order rules: blocks, weighted layers and activations in module order here (the
recorder then numbers layers and activations in the order the forward pass first runs them);
parameters in ``named_parameters()`` order.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from resgrad.activations import Sums, sums_for

NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)


def default_signal_modules(model: nn.Module) -> list[str]:
    """Qualified names of the modules whose class sets ``resgrad_block = True``, in module order."""
    return [name for name, m in model.named_modules() if getattr(type(m), "resgrad_block", False)]


def weighted_modules(model: nn.Module, include_norm_layers: bool = False) -> list[tuple[str, nn.Module]]:
    """The modules that own a ``weight`` parameter (normalisation layers only if asked), in module order."""
    return [
        (n, m)
        for n, m in model.named_modules()
        if isinstance(m._parameters.get("weight"), torch.Tensor)
        and (include_norm_layers or not isinstance(m, NORM_LAYERS))
    ]


def activation_modules(model: nn.Module, extra: Iterable[type[nn.Module]] = ()) -> list[tuple[str, nn.Module, Sums]]:
    """The elementwise activation modules (see :func:`resgrad.activations.sums_for`), with how to sum their σ′."""
    extra = tuple(extra)
    return [(n, m, s) for n, m in model.named_modules() if (s := sums_for(type(m), extra)) is not None]


def parameters_once(model: nn.Module) -> tuple[list[str], list[nn.Parameter], dict[str, list[str]]]:
    """Every parameter of ``model`` once, in ``named_parameters()`` order under the first name it has there.

    Returns the names, the parameters, and for a tied parameter (one object under several names)
    its other names, keyed by the name it is recorded under.
    """
    names: list[str] = []
    params: list[nn.Parameter] = []
    tied: dict[str, list[str]] = {}
    first: dict[int, str] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            tied.setdefault(first[id(p)], []).append(name)
        else:
            first[id(p)] = name
            names.append(name)
            params.append(p)
    return names, params, tied
