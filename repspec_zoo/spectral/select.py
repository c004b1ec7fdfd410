"""Which layers a spectral regularizer acts on.

rep-spectral (Yang et al. 2024, eq. 3) regularizes every layer up to the feature map and
leaves the linear head alone, because the head is what gets re-trained in transfer / SSL.
ll-spectral (Yoshida & Miyato 2017) regularizes every layer including the head.

The head is whatever timm's ``model.get_classifier()`` returns; models without that method
must pass an explicit list of layer names for ``rep``.
"""
from __future__ import annotations

from typing import Iterable

from torch import nn

#: Layer types with a weight that acts as a linear operator we can take the norm of.
SUPPORTED_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d)
MODES = ("rep", "ll")


def head_modules(model: nn.Module) -> set[int]:
    """ids of every module inside the classifier head (``get_classifier()``), or empty."""
    get_classifier = getattr(model, "get_classifier", None)
    if get_classifier is None:
        return set()
    head = get_classifier()
    if not isinstance(head, nn.Module):  # some timm models return the head as a tuple
        heads = [h for h in head if isinstance(h, nn.Module)]
    else:
        heads = [head]
    return {id(m) for h in heads for m in h.modules()}


def _candidates(model: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in model.named_modules() if isinstance(m, SUPPORTED_LAYERS)}


def select_layers(model: nn.Module, mode: str = "rep", layers: Iterable[str] | None = None) -> dict[str, nn.Module]:
    """Return ``{qualified name: module}`` of the layers to regularize, in module order.

    Args:
        model: any ``nn.Module``; timm models identify their head via ``get_classifier()``.
        mode: ``'rep'`` (all Conv1d/Conv2d/Linear layers except the head) or ``'ll'`` (all,
            head included). Ignored when ``layers`` is given.
        layers: explicit list of qualified module names (as in ``model.named_modules()``).

    Example:
        >>> select_layers(timm.create_model("resnet18"), "rep")  # 20 convs, no 'fc'
    """
    candidates = _candidates(model)
    if layers is not None:
        layers = list(layers)
        if not layers:
            raise ValueError("layers=[] selects nothing; pass at least one layer name, or layers=None "
                             f"to use mode={mode!r}")
        modules = dict(model.named_modules())
        chosen = {}
        for name in layers:
            if name not in modules:
                close = [n for n in candidates if name.split(".")[-1] in n][:5]
                raise ValueError(f"layer {name!r} does not exist in {type(model).__name__}"
                                 + (f"; did you mean one of {close}?" if close else
                                    f"; supported layers are e.g. {list(candidates)[:5]}"))
            if not isinstance(modules[name], SUPPORTED_LAYERS):
                raise ValueError(f"layer {name!r} is a {type(modules[name]).__name__}; only "
                                 f"{', '.join(t.__name__ for t in SUPPORTED_LAYERS)} can be regularized")
            chosen[name] = modules[name]
        return chosen
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}: use 'rep' (up to the features, head excluded), "
                         "'ll' (all layers, head included) or pass layers=[names]")
    if mode == "ll":
        chosen = candidates
    else:
        head = head_modules(model)
        if not head:
            raise ValueError(f"mode='rep' needs to know the head, but {type(model).__name__} has no "
                             "get_classifier() (or its head is empty); pass layers=[...] explicitly "
                             "or use mode='ll'")
        chosen = {n: m for n, m in candidates.items() if id(m) not in head}
    if not chosen:
        raise ValueError(f"mode={mode!r} found no Conv1d/Conv2d/Linear layers in {type(model).__name__}")
    return chosen
