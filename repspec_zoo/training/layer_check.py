"""The regularizer's layer selection checked before a run directory exists (``regularizer.layers``).

Its own module: it builds the self-supervised network too (:mod:`repspec_zoo.ssl.model`), which itself
builds on :mod:`.model`, so :mod:`.model` cannot hold it without an import circle.
"""
from __future__ import annotations

import timm
import torch

from ..spectral import select_layers
from ..ssl.model import SSLNetwork, projector
from .config import ConfigError, TrainConfig

__all__ = ["check_regularizer_layers"]


def check_regularizer_layers(cfg: TrainConfig) -> None:
    """ConfigError if the spectral regularizer cannot select its layers (``regularizer.layers`` names a
    layer the network lacks or cannot regularize): checked on the architecture built on the meta device
    (no memory, no weights, no random numbers), before the run directory is created.

    A self-supervised recipe (``ssl.method``) regularizes the backbone + projector network, whose
    layers are named ``backbone.*`` and ``projector.*``.
    """
    r, spec = cfg.regularizer, cfg.regularizer.spec
    if not spec.spectral:
        return
    ssl = cfg.ssl.method is not None
    with torch.device("meta"):
        net = timm.create_model(cfg.model, num_classes=0 if ssl else cfg.num_classes or 2, **cfg.model_kwargs)
        if ssl:
            net = SSLNetwork(net, projector(net.num_features, cfg.ssl.projector))
    try:
        select_layers(net, spec.spectral_kwargs.get("mode", r.mode), r.layers)  # what attach_regularizer selects
    except ValueError as err:
        where = " (a self-supervised recipe names backbone.* and projector.* layers)" if ssl else ""
        raise ConfigError(f"regularizer.layers={r.layers!r}{where}: {err}") from err
