"""Small architectures of the paper's CPU-scale experiments, as timm models.

Fixed order as in timm model files: blocks, models, builder, cfgs, entrypoints.

* ``slp``: the paper's single-hidden-layer network (784-2000-10, GELU, Yang et al. App. F.2).
  Its representation Phi(x) is the hidden activation; the head is the readout Linear.
  ``init_std`` and ``scale_logits`` give the authors' code's MLP (rep-spectral repo,
  ``src/model/architectures/MLP.py``): N(0, init_std^2) on every weight and bias, and logits
  multiplied by 1/sqrt(hidden_dim) after the head (their ``ScaleLayer``).
* ``resnet_small``: a 3-stage ResNet (timm BasicBlocks, widths 16/32/64) for 28x28 inputs,
  stem stride 1 and no max-pool so the small images keep their resolution. Trains on a CPU
  in minutes.

Both take images in [0,1] with mean 0 / std 1 in their pretrained cfg, so that Lipschitz
bounds and attack distances need no normalization factor.
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn
from timm.layers import SelectAdaptivePool2d, get_act_layer, to_2tuple
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock

__all__ = ["SingleHiddenLayerNet", "ResNetSmall"]


class SingleHiddenLayerNet(nn.Module):
    """x -> s * head(act(W1 flatten(x) + b1)); features Phi(x) = act(W1 x + b1), (B, hidden_dim).

    Args:
        init_std: draw every weight and bias from N(0, init_std^2) (the authors' 0.01: "small
            initialization is more effective"); None = PyTorch's default Linear init.
        scale_logits: s = 1/sqrt(hidden_dim) (the authors' mean-field head scaling); False: s = 1.
            The head's weight stays the raw parameter, so sigma_max(head) is that of W2, as in
            their code's penalty.
    """

    def __init__(self, num_classes: int = 10, in_chans: int = 1, img_size: int | Sequence[int] = 28,
                 hidden_dim: int = 2000, act_layer: str = "gelu", global_pool: str = "", drop_rate: float = 0.0,
                 init_std: float | None = None, scale_logits: bool = False):
        super().__init__()
        h, w = to_2tuple(img_size)
        self.num_classes = num_classes
        self.num_features = self.head_hidden_size = hidden_dim
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(in_chans * h * w, hidden_dim)
        self.act = get_act_layer(act_layer)()
        self.head_drop = nn.Dropout(drop_rate)
        self.head = nn.Linear(hidden_dim, num_classes) if num_classes > 0 else nn.Identity()
        self.feature_info = [dict(num_chs=hidden_dim, reduction=1, module="act")]
        self.logit_scale = hidden_dim ** -0.5 if scale_logits else 1.0
        self.init_std = init_std
        if init_std is not None:
            self._small_init(self.modules())

    def _small_init(self, modules) -> None:
        with torch.no_grad():
            for module in modules:
                if isinstance(module, nn.Linear):
                    module.weight.normal_(0.0, self.init_std)
                    module.bias.normal_(0.0, self.init_std)

    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        self.head = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()
        if self.init_std is not None:
            self._small_init([self.head])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.fc1(self.flatten(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(x)
        if pre_logits:
            return x
        x = self.head(x)
        return x * self.logit_scale if self.logit_scale != 1.0 else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _downsample(in_chs: int, out_chs: int, stride: int) -> nn.Module | None:
    if stride == 1 and in_chs == out_chs:
        return None
    return nn.Sequential(nn.Conv2d(in_chs, out_chs, 1, stride=stride, bias=False), nn.BatchNorm2d(out_chs))


class ResNetSmall(nn.Module):
    """3-stage ResNet for small images: conv3x3 stem (stride 1) + BasicBlock stages + avg pool + fc."""

    def __init__(self, num_classes: int = 10, in_chans: int = 1, widths: Sequence[int] = (16, 32, 64),
                 depths: Sequence[int] = (1, 1, 1), global_pool: str = "avg", drop_rate: float = 0.0):
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(in_chans, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act1 = nn.ReLU(inplace=True)
        self.feature_info = [dict(num_chs=widths[0], reduction=1, module="act1")]
        in_chs, reduction = widths[0], 1
        for i, (width, depth) in enumerate(zip(widths, depths)):
            stride = 1 if i == 0 else 2
            reduction *= stride
            blocks = []
            for j in range(depth):
                s = stride if j == 0 else 1
                blocks.append(BasicBlock(in_chs, width, stride=s, downsample=_downsample(in_chs, width, s)))
                in_chs = width
            self.add_module(f"layer{i + 1}", nn.Sequential(*blocks))
            self.feature_info.append(dict(num_chs=width, reduction=reduction, module=f"layer{i + 1}"))
        self.num_features = self.head_hidden_size = in_chs
        self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.head_drop = nn.Dropout(drop_rate)
        self.fc = nn.Linear(in_chs, num_classes) if num_classes > 0 else nn.Identity()
        self.num_stages = len(widths)

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        self.num_classes = num_classes
        if global_pool is not None:
            self.global_pool = SelectAdaptivePool2d(pool_type=global_pool, flatten=True)
        self.fc = nn.Linear(self.num_features, num_classes) if num_classes > 0 else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.head_drop(self.global_pool(x))
        return x if pre_logits else self.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _create(cls, variant: str, pretrained: bool = False, n_features: int = 1, **kwargs) -> nn.Module:
    # timm's default out_indices (0..4) assume five feature levels; ours have n_features. Children
    # are already flat (stages are modules named in feature_info), so no flatten_sequential.
    out_indices = kwargs.pop("out_indices", tuple(range(n_features)))
    return build_model_with_cfg(cls, variant, pretrained, feature_cfg=dict(out_indices=out_indices), **kwargs)


def _cfg(**kwargs) -> dict:
    return dict(num_classes=10, input_size=(1, 28, 28), pool_size=None, crop_pct=1.0, interpolation="bilinear",
                mean=(0.0,), std=(1.0,), license="apache-2.0", **kwargs)


default_cfgs = generate_default_cfgs({
    "slp": _cfg(first_conv="fc1", classifier="head", fixed_input_size=True),
    "resnet_small": _cfg(first_conv="conv1", classifier="fc"),
})


@register_model
def slp(pretrained: bool = False, **kwargs) -> SingleHiddenLayerNet:
    """Single-hidden-layer GELU net, 784-2000-10 by default (Yang et al. 2024, App. F.2)."""
    return _create(SingleHiddenLayerNet, "slp", pretrained, n_features=1, **kwargs)


@register_model
def resnet_small(pretrained: bool = False, **kwargs) -> ResNetSmall:
    """3-stage ResNet (16/32/64 channels, one BasicBlock each) for 28x28 images."""
    return _create(ResNetSmall, "resnet_small", pretrained, n_features=1 + len(kwargs.get("widths", (16, 32, 64))),
                   **kwargs)
