"""repspec_zoo: adversarially-robust backbones (rep-spectral) as a timm plugin.

Importing the package registers the zoo's architectures with timm::

    import timm, torch, repspec_zoo
    import torch.nn.functional as F

    model = timm.create_model("resnet18_repspectral", num_classes=10, gamma=1e-3)
    x, y = torch.rand(8, 3, 32, 32), torch.randint(0, 10, (8,))
    loss = F.cross_entropy(model(x), y) + model.spectral.penalty()  # + gamma/2 * sum sigma_max^2
"""
__version__ = "0.1.0"

from . import models  # noqa: F401  (registers the zoo with timm)
from .models.zoo import create_model, list_pretrained
from .spectral import SpectralRegularizer, attach_spectral, select_layers

__all__ = ["SpectralRegularizer", "attach_spectral", "create_model", "list_pretrained", "select_layers", "__version__"]
