"""Self-supervised pretraining (SimCLR, Barlow Twins) of zoo backbones in the recipes' Accelerate loop.

``ssl.method`` in a recipe config (:class:`repspec_zoo.training.config.SSLConfig`) switches
``recipes/train.py`` to: :mod:`.augment` (two SimCLR views per image), :mod:`.model` (backbone +
projection head, the regularizer on the backbone only for rep), :mod:`.losses` (NT-Xent, Barlow
Twins), :mod:`.trainer` (the step, its monitor, the probe evaluation). The run's weights are the
headless backbone; ``repspec-zoo probe RUN_DIR`` fits and evaluates a linear probe on it.
"""
from .losses import barlow_twins, nt_xent, view_matches
from .model import SSLModule, SSLNetwork, build_ssl_model, projector

__all__ = ["barlow_twins", "nt_xent", "view_matches", "SSLModule", "SSLNetwork", "build_ssl_model", "projector"]
