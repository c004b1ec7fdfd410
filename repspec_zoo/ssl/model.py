"""The network a self-supervised recipe trains: a zoo/timm backbone's features and a projection head.

:class:`SSLNetwork` holds ``backbone`` (timm, ``num_classes=0``: its pooled pre-logit features
h = phi(x)) and ``projector`` (an MLP, z = g(h)), and answers timm's ``get_classifier()`` with the
projector. The spectral regularizer is attached to this network, so its layer selection
(:mod:`repspec_zoo.spectral.select`) reads the projector as the head: rep-spectral penalizes the
backbone's layers only, ll-spectral every layer including the projector. Only the backbone is
saved as the run's weights: the projector is discarded after training, as in both papers.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch
from torch import nn

from ..models.normalize import NormalizedModel

__all__ = ["projector", "SSLNetwork", "SSLModule", "build_ssl_model"]


def projector(in_features: int, dims: Sequence[int]) -> nn.Sequential:
    """MLP in_features -> dims[0] -> ... -> dims[-1]: Linear (no bias) + BatchNorm1d + ReLU between
    layers, a plain Linear last (SimCLR's 2-layer head with BN as in its code; Barlow Twins' 3 layers)."""
    layers: list[nn.Module] = []
    width = in_features
    for hidden in dims[:-1]:
        layers += [nn.Linear(width, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        width = hidden
    layers.append(nn.Linear(width, dims[-1]))
    return nn.Sequential(*layers)


class SSLNetwork(nn.Module):
    """Backbone (timm, headless) + projection head, with timm's feature/head interface."""

    def __init__(self, backbone: nn.Module, head: nn.Module):
        super().__init__()
        self.backbone, self.projector = backbone, head
        self.pretrained_cfg = backbone.pretrained_cfg  # the input size and normalization of the backbone

    def get_classifier(self) -> nn.Module:
        return self.projector

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        h = self.backbone.forward_head(x, pre_logits=True)
        return h if pre_logits else self.projector(h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class SSLModule(NormalizedModel):
    """What the loop trains: two views (N, 2, C, H, W) in [0, 1] -> their projections (z1, z2), each (N, D).

    Both views go through one forward pass (2N images), so BatchNorm sees them together.
    """

    def forward(self, views: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        z = super().forward(views.flatten(0, 1)).unflatten(0, (len(views), 2))
        return z[:, 0], z[:, 1]


def build_ssl_model(cfg) -> SSLNetwork:
    """The backbone of ``cfg.model`` (``init`` weights if set) without its head, a projector of
    ``cfg.ssl.projector`` dims, and the configured spectral regularizer on the whole network."""
    from ..training.model import attach_regularizer, build_model

    plain = dataclasses.replace(cfg, num_classes=0, regularizer=dataclasses.replace(cfg.regularizer, mode="none"))
    backbone = build_model(plain)
    return attach_regularizer(SSLNetwork(backbone, projector(backbone.num_features, cfg.ssl.projector)), cfg)
