"""Refuse a model that cannot be evaluated as a classifier, before any attack runs.

Two faults make every attack number meaningless while the evaluation still "succeeds":

* a **headless backbone** (timm ``num_classes == 0``, e.g. a SimCLR/Barlow Twins backbone): its
  outputs are features, not class logits, so "accuracy" and "distances" compare labels with
  feature indices. `repspec-zoo probe` fits a linear head first and evaluates that.
* **non-finite values**: a NaN/inf weight or buffer (a diverged run, a damaged file) makes the
  logits NaN, argmax answers class 0 everywhere, and no perturbation changes the answer, so the
  model reads as unbreakable (median distance inf). Logits can also overflow with finite weights.

`check_model` costs one scan of the parameters and buffers (one ``isfinite`` per tensor) and one
no-grad forward on a few images; it names the first layer at fault (a second forward, with hooks,
only when the logits are not finite).
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..errors import UserError

__all__ = ["UnusableModelError", "check_model", "first_images"]


class UnusableModelError(UserError, ValueError):
    """The model cannot be evaluated as a classifier: headless, or non-finite weights or logits."""


def first_images(dataset, device=None, count: int = 8) -> Tensor:
    """The first ``count`` images (fewer if the split is smaller) of a Dataset of (image, label) or a
    tuple (X, Y), stacked on ``device``."""
    if isinstance(dataset, tuple):
        x = dataset[0][:count]
    else:
        x = torch.stack([dataset[i][0] for i in range(min(count, len(dataset)))]) if len(dataset) else torch.empty(0)
    return x.to(device)


def _inner(model: nn.Module) -> nn.Module:
    """The timm network inside a NormalizedModel (or the model itself)."""
    from ..models.normalize import NormalizedModel

    return model.model if isinstance(model, NormalizedModel) else model


def _non_finite_tensor(net: nn.Module) -> tuple[str, int, int] | None:
    """(name, count of non-finite values, numel) of the first floating parameter or buffer with a NaN/inf."""
    for name, t in [*net.named_parameters(), *net.named_buffers()]:
        if t.is_floating_point() and t.numel() and not (finite := torch.isfinite(t.detach())).all():
            return name, int((~finite).sum()), t.numel()
    return None


def _first_non_finite_layer(model: nn.Module, x: Tensor) -> str | None:
    """The name of the first module (in call order) whose output on ``x`` holds a NaN/inf, if one does."""
    net, found, hooks = _inner(model), [], []

    def hook(name):
        def check(_module, _inputs, output):
            if not found and isinstance(output, Tensor) and output.is_floating_point() \
                    and not torch.isfinite(output).all():
                found.append(name)
        return check
    for name, module in net.named_modules():
        if name and not any(module.children()):  # leaves: the layers that compute
            hooks.append(module.register_forward_hook(hook(name)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return found[0] if found else None


def check_model(model: nn.Module, x: Tensor, model_name: str = "model") -> None:
    """UnusableModelError unless ``model`` is a classifier with finite weights and finite logits on ``x``.

    Args:
        model: the classifier to evaluate (a NormalizedModel or a plain module), in eval mode.
        x: a few images the model takes (e.g. the split's first 8), on the model's device.
        model_name: how the message names the model.
    """
    net = _inner(model)
    if getattr(net, "num_classes", None) == 0:
        raise UnusableModelError(
            f"{model_name} is a headless backbone (num_classes=0): its outputs are {getattr(net, 'num_features', 'its')} "
            "features, not class logits, so accuracy and attack distances would be meaningless; evaluate it with a "
            f"linear probe: `repspec-zoo probe {model_name}` (repspec_zoo.evaluation.linear_probe in Python)")
    bad = _non_finite_tensor(net)
    if bad is not None:
        name, count, total = bad
        raise UnusableModelError(
            f"{model_name}: {name} holds {count} non-finite value(s) (NaN/inf) of {total}, so its logits are not "
            "numbers and every attack would fail (the model would read as perfectly robust); the weights are damaged "
            "or training diverged: restore or retrain them")
    with torch.no_grad():
        logits = model(x)
    if logits.ndim != 2:
        raise UnusableModelError(f"{model_name} returns outputs of shape {tuple(logits.shape)}, not (batch, classes) "
                                 "logits; evaluate a classifier (a backbone needs `repspec-zoo probe`)")
    if not torch.isfinite(logits).all():  # only now the forward again, with hooks (a compiled one would recompile)
        layer = _first_non_finite_layer(model, x)
        where = f"the output of layer {layer!r}" if layer else "its logits"
        raise UnusableModelError(
            f"{model_name}: {where} is not finite (NaN/inf) on the first {len(x)} images although every weight is, "
            "so every attack would fail (the model would read as perfectly robust); check the model's numerics "
            "(e.g. an overflowing dtype or a custom layer)")
