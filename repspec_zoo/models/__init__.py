"""Model building: timm registration of the zoo (tiny CPU-scale archs, the regularized architectures).

Beside it, as in timm (_builder.py, _hub.py): :mod:`.pretrained` finds and sha256-verifies a zoo
model's weights, :mod:`.timm_routes` verifies timm's own hf-hub: / local-dir: routes, and
:mod:`.normalize` is ``NormalizedModel``, the [0, 1]-image wrapper every part uses (with its
BatchNorm folding, :mod:`.fold`).
"""
from . import tiny  # noqa: F401  (registers slp, resnet_small)
from .tiny import ResNetSmall, SingleHiddenLayerNet
from .zoo import ARCHS, PretrainedWeightsUnavailable

__all__ = ["ARCHS", "PretrainedWeightsUnavailable", "ResNetSmall", "SingleHiddenLayerNet"]
