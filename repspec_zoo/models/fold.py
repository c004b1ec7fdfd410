"""Fold eval-mode BatchNorm into the convolution before it, in place, for evaluation only.

In eval mode ``BN(conv(x)) = g * (W * x + b - mu) / sqrt(var + eps) + beta`` is itself one
convolution, with weights ``W' = W * s`` and bias ``b' = (b - mu) * s + beta`` per output channel,
``s = g / sqrt(var + eps)``. Folding removes one full pass over every activation map from the
forward and from the backward of the attacks' input gradients; on the small Fashion-MNIST ResNet
that is 1.13-1.18x forward rows/s and about 1.2x forward+backward (benchmarks/README.md).

The pairs come from torch.fx's graph of the model (``torch.fx.symbolic_trace``): a plain
``nn.Conv2d`` whose output goes *only* into a plain ``nn.BatchNorm2d`` with running statistics,
each module called once. Module order alone cannot tell (pre-activation nets put BatchNorm
before the convolution). The arithmetic is torch's ``fuse_conv_bn_eval``; what torch offers on
top (``torch.fx.experimental.optimization.fuse``) returns a GraphModule, which would lose timm's
``forward_features`` / ``forward_head`` that `NormalizedModel.features` needs, so the fused
convolutions are put back into the model's own module tree and each folded BatchNorm becomes
``nn.Identity``. Subclasses (timm's ``BatchNormAct2d`` carries an activation, ``StdConv2d``
re-standardizes its weight) are left as they are.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

__all__ = ["conv_bn_pairs", "fold_batchnorm", "unfold_batchnorm"]

#: what a fold replaced: (conv name, original conv, BatchNorm name, original BatchNorm) per pair
Folded = list[tuple[str, nn.Conv2d, str, nn.BatchNorm2d]]


def conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """(conv name, BatchNorm name) of every foldable pair in ``model``'s traced graph.

    Raises whatever ``torch.fx.symbolic_trace`` raises for a model it cannot trace."""
    graph = torch.fx.symbolic_trace(model).graph
    modules = dict(model.named_modules())
    calls: dict[str, int] = {}
    for node in graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or type(modules[node.target]) is not nn.BatchNorm2d:
            continue
        source = node.args[0]
        if not (isinstance(source, torch.fx.Node) and source.op == "call_module"
                and type(modules[source.target]) is nn.Conv2d and len(source.users) == 1):
            continue
        bn = modules[node.target]
        if bn.running_mean is None or calls[node.target] != 1 or calls[source.target] != 1:
            continue
        pairs.append((source.target, node.target))
    return pairs


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, leaf = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, leaf, module)


def fold_batchnorm(model: nn.Module) -> Folded:
    """Fold every `conv_bn_pairs` pair of the eval-mode ``model`` in place; returns what it
    replaced (for `unfold_batchnorm`).

    Afterwards the model computes the same function in eval mode (up to float rounding, about
    1e-5 on logits of order 10) and has no BatchNorm there any more, so it must not be trained.
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode (BatchNorm's running statistics)")
    replaced = []
    for conv_name, bn_name in conv_bn_pairs(model):
        conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        with torch.no_grad():
            _set(model, conv_name, fuse_conv_bn_eval(conv, bn))
        _set(model, bn_name, nn.Identity())
        replaced.append((conv_name, conv, bn_name, bn))
    return replaced


def unfold_batchnorm(model: nn.Module, replaced: Folded) -> None:
    """Put back the modules that `fold_batchnorm` replaced."""
    for conv_name, conv, bn_name, bn in replaced:
        _set(model, conv_name, conv)
        _set(model, bn_name, bn)
