"""NormalizedModel: the one wrapper of a timm model for [0, 1] images (normalization inside, features())."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

__all__ = ["NormalizedModel", "as_normalized"]


class NormalizedModel(nn.Module):
    """``model((x - mean) / std)`` for images ``x`` in [0, 1], (N, C, H, W).

    Every attack distance is then an L2 distance in [0, 1] pixel space, comparable across
    models with different normalizations (the rep-spectral authors reported CIFAR/ImageNet
    distances in normalized space; this wrapper is what avoids that).

    Args:
        model: classifier that expects normalized input.
        mean, std: per-channel statistics (C values each); when both are omitted they come
            from ``data_config`` or, failing that, from the timm pretrained cfg of ``model``
            (``timm.data.resolve_model_data_config``).
        data_config: a timm data config dict with ``mean`` and ``std``.

    Example::

        model = NormalizedModel(timm.create_model("resnet50", pretrained=True)).eval()
        logits = model(images_in_0_1)
    """

    def __init__(self, model: nn.Module, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, data_config: dict | None = None):
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std, or neither (then they come from "
                             "data_config or the model's timm pretrained cfg)")
        if mean is None:
            if data_config is None:
                from timm.data import resolve_model_data_config
                data_config = resolve_model_data_config(model)
            if "mean" not in data_config or "std" not in data_config:
                raise ValueError(f"data_config needs 'mean' and 'std', got keys "
                                 f"{sorted(data_config)}")
            mean, std = data_config["mean"], data_config["std"]
        mean_t = torch.as_tensor(mean, dtype=torch.float32).flatten()
        std_t = torch.as_tensor(std, dtype=torch.float32).flatten()
        if mean_t.shape != std_t.shape or (std_t <= 0).any():
            raise ValueError(f"mean and std must have one value per channel and std > 0, got "
                             f"mean={mean_t.tolist()} std={std_t.tolist()}")
        self.model = model
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1))
        self.register_buffer("std", std_t.view(1, -1, 1, 1))

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(x - mean) / std per channel for images ``x`` in [0, 1], (N, C, H, W)."""
        if x.dim() != 4 or x.shape[1] != self.mean.shape[1]:
            raise ValueError(f"NormalizedModel expects images (N, {self.mean.shape[1]}, H, W) "
                             f"in [0, 1], got shape {tuple(x.shape)}")
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.normalize(x))

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pre-logit features phi(x) (N, num_features) of images ``x`` in [0, 1]: timm's
        ``forward_head(forward_features(.), pre_logits=True)``, so logits = classifier(phi(x))
        (times ``logit_scale`` for a net that scales its logits)."""
        net = self.model
        if not (hasattr(net, "forward_features") and hasattr(net, "forward_head")):
            raise ValueError(f"{type(net).__name__} has no forward_features/forward_head, so its pre-logit features "
                             "are unknown; features need a timm model")
        return net.forward_head(net.forward_features(self.normalize(x)), pre_logits=True)


def as_normalized(model: nn.Module, channels: int) -> NormalizedModel:
    """``model`` itself if it is a NormalizedModel, else a plain model seen as one with the identity
    normalization (mean 0, std 1 on ``channels`` channels): its input already is the [0, 1] image."""
    if isinstance(model, NormalizedModel):
        return model
    return NormalizedModel(model, mean=[0.0] * channels, std=[1.0] * channels)
