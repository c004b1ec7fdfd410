"""timm registration of the zoo: tiny CPU-scale archs and the regularized architectures."""
from . import tiny  # noqa: F401  (registers slp, resnet_small)
from .tiny import ResNetSmall, SingleHiddenLayerNet
from .zoo import ARCHS, PretrainedWeightsUnavailable

__all__ = ["ARCHS", "PretrainedWeightsUnavailable", "ResNetSmall", "SingleHiddenLayerNet"]
