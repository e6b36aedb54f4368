"""Folding eval-mode BatchNorm into the convolution before it, to evaluate grid points faster.

In eval mode `bn(conv(x))` is `conv'(x)` with W' = s·W (per output channel) and
b' = s·(b − μ) + β, where s = γ/√(σ² + ε). When the landscape moves only the conv weights
(biases and BatchNorm parameters have zero direction, statistics frozen: `BNMode.eval`), the
move is linear in the folded weights too: W' + c·(s·d). So a folded copy of the model, moved
along s·d, computes exactly the same function at every grid point, one BatchNorm pass fewer per
layer (~25% less time for small-cnn on a CPU). The original model is not touched.

Conv → BatchNorm pairs are found on a torch.fx trace (a Conv2d whose only user is a
BatchNorm2d). A model that cannot be traced, or has no such pair, is simply not folded.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import fx, nn

Direction = dict[str, torch.Tensor]


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv module name, BatchNorm module name) for every conv feeding only a BatchNorm."""
    try:
        graph = fx.symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - data-dependent control flow: evaluate unfolded
        return []
    modules = dict(model.named_modules())
    pairs: list[tuple[str, str]] = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules.get(node.target)) is not nn.BatchNorm2d:
            continue
        src = node.args[0] if len(node.args) == 1 and not node.kwargs else None
        if (
            isinstance(src, fx.Node)
            and src.op == "call_module"
            and type(modules.get(src.target)) is nn.Conv2d
            and len(src.users) == 1
        ):
            bn = modules[str(node.target)]
            if bn.track_running_stats and bn.running_mean is not None:
                pairs.append((str(src.target), str(node.target)))
    return pairs


@dataclass
class Folded:
    model: nn.Module  # a folded copy, in eval mode
    scales: dict[str, torch.Tensor]  # folded conv weight name -> s per output channel


def _set_module(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


def fold_batchnorm(model: nn.Module) -> Folded | None:
    """A copy of `model` with every conv → BatchNorm pair folded; None when there is none."""
    pairs = conv_bn_pairs(model)
    if not pairs:
        return None
    folded = copy.deepcopy(model).eval()
    scales: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for conv_name, bn_name in pairs:
            conv = folded.get_submodule(conv_name)
            bn = folded.get_submodule(bn_name)
            assert isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
            mean, var = bn.running_mean, bn.running_var
            assert mean is not None and var is not None
            s = torch.rsqrt(var + bn.eps)
            if bn.affine:
                s = s * bn.weight
            shift = -mean * s + (bn.bias if bn.affine else 0.0)
            if conv.bias is not None:
                shift = shift + conv.bias * s
            conv.weight.mul_(s.view(-1, 1, 1, 1))
            conv.bias = nn.Parameter(shift.detach().clone())
            _set_module(folded, bn_name, nn.Identity())
            scales[f"{conv_name}.weight"] = s.detach().clone()
    return Folded(model=folded, scales=scales)


def fold_direction(direction: Direction, folded: Folded) -> Direction:
    """The direction in the folded model's parameters: s·d for folded conv weights, zero for the
    new conv biases, unchanged elsewhere. Only valid when 1-D parameters do not move."""
    out: Direction = {}
    for name, p in folded.model.named_parameters():
        if name in folded.scales:
            d = direction[name] * folded.scales[name].view(-1, 1, 1, 1)
        elif name in direction:
            d = direction[name]
        else:
            d = torch.zeros_like(p)
        out[name] = torch.empty_like(p).copy_(d)
    return out
