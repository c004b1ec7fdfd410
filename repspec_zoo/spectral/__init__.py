"""Operator norms of layers and the rep-/ll-spectral regularizers built on them.

Norms: operator.py (the conv as a linear map and its adjoint) -> power.py (power iteration, the
differentiable sigma), fft.py (exact circular symbol norms), gram.py (the Gram-iteration upper bound);
bn.py folds a BatchNorm into its layer; jacobian.py: the top singular value of a whole network's
input-output Jacobian (jvp / vjp power iteration: the Jacobian regularizer, the bounds, the analyses).
Regularizer: hooks.py (SpectralRegularizer) with estimators.py (the ``estimator=`` table), state.py
(per-layer buffers), activation.py (the eig-ub activation term); select.py picks the layers.
"""
from .bn import bn_scale, bn_scaled_weight
from .fft import conv_fft_sigma, conv_fft_upper_bound
from .gram import conv_gram_bound
from .hooks import DEFAULT_GAMMA, GAMMA_CONVENTION, SpectralRegularizer, attach_spectral, without_regularizer
from .operator import ConvGeometry
from .power import conv_power_iteration, matrix_power_iteration, sigma_from_vectors
from .select import head_modules, select_layers

__all__ = ["DEFAULT_GAMMA", "GAMMA_CONVENTION", "SpectralRegularizer", "attach_spectral", "without_regularizer",
           "head_modules", "select_layers", "ConvGeometry", "conv_power_iteration", "matrix_power_iteration",
           "sigma_from_vectors", "conv_fft_sigma", "conv_fft_upper_bound", "conv_gram_bound", "bn_scale",
           "bn_scaled_weight"]
