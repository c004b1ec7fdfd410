"""How SpectralRegularizer measures a conv layer: the one table behind ``estimator=``.

An estimator refreshes a conv layer's ``(sigma, u, v)`` under ``torch.no_grad``; the penalty is then the
differentiable ``sigma = <u, A(W) v>`` (:func:`.power.sigma_from_vectors`) whatever the estimator, so
``(u, v)`` must be a (near) top singular pair of the operator measured. Linear layers always use
:func:`.power.matrix_power_iteration`.

* ``'power'``: warm-started power iteration on the layer's own operator (zero or circular padding);
  ``n_iter`` steps per update, exact at convergence.
* ``'fft'``: the exact norm of the *circularly* padded operator from its DFT symbol at every update
  (no warm start; ``n_iter`` is ignored).
* ``'gram'``: the Gram-iteration upper bound (:mod:`.gram`) on the layer's own operator (zero padding: via
  the circular conv on a grid ``N >= n + 2p``; every stride, group and dilation), recomputed with autograd
  by every ``penalty()``, so the penalty bounds the true ``sum sigma^2`` from above. Deterministic, nothing to
  warm-start: ``n_iter`` does not apply and ``u``, ``v`` stay unused; ``step()`` alone (burn-in) refreshes
  only the logged value, every ``every`` steps.

To add one: write ``refresh(weight, geom, u, v, n_iter) -> (sigma, u, v)`` and add it to
:data:`ESTIMATORS`; an estimator whose value is itself differentiable also gives ``differentiable(weight,
geom) -> sigma`` (with autograd), which the penalty and ``direct_step`` use instead of ``<u, A(W) v>``. For a
layer it cannot measure it raises :class:`EstimatorUnavailable`; the regularizer then warns once and uses
power iteration on the same operator for that layer from then on.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Sequence

from torch import Tensor, nn

from .fft import conv_fft_sigma
from .gram import conv_gram_bound
from .operator import ConvGeometry
from .power import conv_power_iteration

__all__ = ['ESTIMATORS', 'Estimator', 'EstimatorUnavailable']


class EstimatorUnavailable(ValueError):
    """The estimator cannot measure this layer (e.g. FFT on a conv that is not block-circulant)."""


@dataclass(frozen=True)
class Estimator:
    """One way to measure ``sigma_max`` of a conv layer.

    Example::

        >>> est = ESTIMATORS['fft']
        >>> geom = est.geometry(conv, (3, 32, 32))  # circular padding
        >>> sigma, u, v = est.refresh(conv.weight, geom, u, v, n_iter=1)
    """
    # (weight, geom, u, v, n_iter) -> (sigma, u, v), under no_grad; u, v are the previous pair (warm start)
    refresh: Callable[[Tensor, ConvGeometry, Tensor, Tensor, int], tuple[Tensor, Tensor, Tensor]]
    circular: bool = False  # measures the layer with circular padding instead of its own padding
    # (weight, geom) -> sigma with autograd, for the penalty; None: sigma = <u, A(W) v> with the refreshed (u, v)
    differentiable: Callable[[Tensor, ConvGeometry], Tensor] | None = None

    def geometry(self, conv: nn.Module, in_shape: Sequence[int]) -> ConvGeometry:
        """The operator this estimator measures for ``conv`` on inputs of ``in_shape``."""
        geom = ConvGeometry.from_module(conv, in_shape)
        return replace(geom, padding_mode='circular') if self.circular else geom


def _power(weight: Tensor, geom: ConvGeometry, u: Tensor, v: Tensor, n_iter: int):
    return conv_power_iteration(weight, geom, u, v, n_iter=n_iter)


def _fft(weight: Tensor, geom: ConvGeometry, u: Tensor, v: Tensor, n_iter: int):
    try:
        return conv_fft_sigma(weight, geom)
    except ValueError as err:  # not block-circulant (e.g. stride 2 on an odd grid)
        raise EstimatorUnavailable(str(err)) from None


def _gram(weight: Tensor, geom: ConvGeometry, u: Tensor, v: Tensor, n_iter: int):
    return conv_gram_bound(weight, geom), u, v


ESTIMATORS: dict[str, Estimator] = {
    'power': Estimator(_power),
    'fft': Estimator(_fft, circular=True),
    'gram': Estimator(_gram, differentiable=conv_gram_bound),
}
