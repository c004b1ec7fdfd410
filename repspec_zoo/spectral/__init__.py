"""Operator norms of layers and the rep-/ll-spectral regularizers built on them."""
from .hooks import GAMMA_CONVENTION, SpectralRegularizer, attach_spectral
from .select import head_modules, select_layers

__all__ = ["GAMMA_CONVENTION", "SpectralRegularizer", "attach_spectral", "head_modules", "select_layers"]
