"""repspec_zoo: adversarially-robust backbones (rep-spectral) as a timm plugin.

Importing the package registers the zoo's architectures with timm::

    import timm, repspec_zoo
    model = timm.create_model("resnet18_repspectral", num_classes=10, gamma=1e-3)
    loss = criterion(model(x), y) + model.spectral.penalty()
"""
__version__ = "0.1.0"

from . import models  # noqa: F401  (registers the zoo with timm)
from .models.zoo import create_model, list_pretrained
from .spectral import SpectralRegularizer, attach_spectral, select_layers

__all__ = ["SpectralRegularizer", "attach_spectral", "create_model", "list_pretrained", "select_layers", "__version__"]
