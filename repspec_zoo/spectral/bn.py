"""BatchNorm-aware norms: fold an eval-mode BatchNorm into the layer before it.

In eval mode ``BN(y) = scale * y + shift`` per channel, so ``BN o conv`` (or ``BN o linear``) is the layer
with its output channels rescaled, plus a constant. Its operator norm, not the bare layer's, bounds the
feature Jacobian of a BatchNorm network; measure ``bn_scaled_weight(W, bn_scale(bn))`` with :mod:`.power`.
"""
from __future__ import annotations

import torch.nn as nn
from torch import Tensor

__all__ = ['bn_scale', 'bn_scaled_weight']


def bn_scale(bn: nn.Module) -> Tensor:
    """Per-channel multiplier of an eval-mode BatchNorm: ``gamma / sqrt(running_var + eps)``.

    In eval mode ``BN(y) = scale * y + shift`` per channel, so ``BN o conv`` is the conv with kernel
    ``scale[:, None, ...] * W`` (:func:`bn_scaled_weight`) plus a constant; its operator norm is what
    bounds the feature Jacobian of a BN network. Without affine parameters ``gamma = 1`` (the
    ``1/sqrt(running_var + eps)`` factor remains). Differentiable in ``gamma`` (``bn.weight``);
    ``running_var`` is a buffer. Training-mode BN uses batch statistics instead, which this ignores.

    Args:
        bn: nn.BatchNorm1d/2d/3d (or a subclass, e.g. timm BatchNormAct2d) with running statistics.

    Returns:
        ``(C,)`` tensor.

    Example::

        >>> bn = torch.nn.BatchNorm2d(8).eval()
        >>> scaled = bn_scaled_weight(torch.randn(8, 3, 3, 3), bn_scale(bn))
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn_scale expects a BatchNorm module, got {type(bn).__name__}.")
    if bn.running_var is None:
        raise ValueError(f"{bn!r} has track_running_stats=False: it always normalizes by batch statistics, so it "
                         f"is not a fixed linear map; use track_running_stats=True or skip the BN-aware norm.")
    scale = (bn.running_var + bn.eps).rsqrt()
    if bn.affine and bn.weight is not None:
        scale = bn.weight * scale
    return scale


def bn_scaled_weight(weight: Tensor, scale: Tensor) -> Tensor:
    """Kernel of ``BN o layer`` (shift dropped): ``weight * scale[:, None, ...]`` (rows scaled).

    Args:
        weight: ``(C_out, ...)`` conv kernel or linear weight.
        scale: ``(C_out,)`` from :func:`bn_scale`.

    Returns:
        tensor of ``weight``'s shape (dtype promoted), differentiable in both arguments.

    Example::

        >>> bn_scaled_weight(torch.ones(2, 1, 1, 1), torch.tensor([2., 3.])).flatten()
        tensor([2., 3.])
    """
    if scale.dim() != 1 or scale.numel() != weight.shape[0]:
        raise ValueError(f"scale of shape {tuple(scale.shape)} does not match the {weight.shape[0]} output channels "
                         f"of weight {tuple(weight.shape)}: pass bn_scale(bn) of the BN right after this layer.")
    return weight * scale.reshape((-1,) + (1,) * (weight.dim() - 1))
