"""BatchNorm-aware norms: fold an eval-mode BatchNorm into the layer before it.

In eval mode ``BN(y) = scale * y + shift`` per channel, so ``BN o conv`` (or ``BN o linear``) is the layer
with its output channels rescaled, plus a constant. Its operator norm, not the bare layer's, bounds the
feature Jacobian of a BatchNorm network; measure ``bn_scaled_weight(W, bn_scale(bn))`` with :mod:`.power`.
"""
from __future__ import annotations

from functools import partial

import torch
import torch.nn as nn
from torch import Tensor

__all__ = ['BatchNormPairs', 'bn_scale', 'bn_scaled_weight']


def bn_scale(bn: nn.Module, var: Tensor | None = None) -> Tensor:
    """Per-channel multiplier of an eval-mode BatchNorm: ``gamma / sqrt(running_var + eps)``; with ``var`` (a
    batch's variance of the BN's input, as training-mode BN normalizes by) ``gamma / sqrt(var + eps)``.

    In eval mode ``BN(y) = scale * y + shift`` per channel, so ``BN o conv`` is the conv with kernel
    ``scale[:, None, ...] * W`` (:func:`bn_scaled_weight`) plus a constant; its operator norm is what
    bounds the feature Jacobian of a BN network. Without affine parameters ``gamma = 1`` (the
    ``1/sqrt(running_var + eps)`` factor remains). Differentiable in ``gamma`` (``bn.weight``);
    ``running_var`` is a buffer; a passed ``var`` keeps its autograd graph.

    Args:
        bn: nn.BatchNorm1d/2d/3d (or a subclass, e.g. timm BatchNormAct2d); running statistics unless ``var``.
        var: ``(C,)`` variance to normalize by instead of ``running_var`` (None: the running one).

    Returns:
        ``(C,)`` tensor.

    Example::

        >>> bn = torch.nn.BatchNorm2d(8).eval()
        >>> scaled = bn_scaled_weight(torch.randn(8, 3, 3, 3), bn_scale(bn))
    """
    if not isinstance(bn, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"bn_scale expects a BatchNorm module, got {type(bn).__name__}.")
    if var is None and bn.running_var is None:
        raise ValueError(f"{bn!r} has track_running_stats=False: it always normalizes by batch statistics, so it "
                         f"is not a fixed linear map; use track_running_stats=True or skip the BN-aware norm.")
    scale = ((bn.running_var if var is None else var) + bn.eps).rsqrt()
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


class BatchNormPairs:
    """The BatchNorm after each conv, and the per-channel scale ``g / sqrt(var + eps)`` it applies to the conv's output.

    Pairs are found during the first forward by tensor identity (the BN's input *is* the conv's output), which
    works for any model, timm's BatchNormAct2d included, without name rules; a conv whose output goes
    elsewhere first (pre-activation nets) has no pair. From then on, every training-mode forward with grad
    records each paired conv's output variance over the batch (biased, per channel, as BN normalizes by it),
    with autograd: :meth:`scale` uses it while the BN is in training mode, the running variance in eval.

    Args:
        model: the network; hooks are attached to it (:meth:`remove` detaches them).
        convs: {name: conv module} to pair.
    """

    def __init__(self, model: nn.Module, convs: dict[str, nn.Module]):
        self.bn_of: dict[str, nn.Module] = {}  # conv name -> the BatchNorm that consumes its output
        self._batch_var: dict[str, Tensor] = {}  # conv name -> variance of its output in the latest training forward
        self._pending: dict[int, tuple[str, Tensor]] = {}
        self._pairing = [m.register_forward_hook(partial(self._conv_out, name)) for name, m in convs.items()]
        self._pairing += [m.register_forward_pre_hook(self._bn_in) for m in model.modules()
                          if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._pairing.append(model.register_forward_hook(self._paired))
        self._recording: list = []

    def _conv_out(self, name: str, module, args, out) -> None:
        self._pending[id(out)] = (name, out)

    def _bn_in(self, bn: nn.Module, args) -> None:
        hit = self._pending.get(id(args[0]))
        if hit is not None and hit[1] is args[0]:
            self.bn_of[hit[0]] = bn
            self._record(hit[0], bn, args)  # the first training step uses batch statistics too

    def _paired(self, module, args, out) -> None:
        self._pending.clear()
        for handle in self._pairing:
            handle.remove()
        self._pairing.clear()
        self._recording = [bn.register_forward_pre_hook(partial(self._record, name)) for name, bn in self.bn_of.items()]

    def _record(self, name: str, bn: nn.Module, args) -> None:
        if bn.training and torch.is_grad_enabled():
            y = args[0]
            y = y if y.dtype in (torch.float32, torch.float64) else y.float()  # autocast: statistics in float32
            self._batch_var[name] = y.var(dim=[d for d in range(y.dim()) if d != 1], unbiased=False)

    def scale(self, name: str) -> Tensor | None:
        """``g / sqrt(var + eps)`` of the BN after conv ``name`` (batch variance in training, running in eval);
        None if ``name`` has no BatchNorm after it."""
        if self._pairing:
            raise RuntimeError("BatchNorm-aware norms pair each conv with its BatchNorm during the first forward "
                               "pass; run model(x) once first")
        bn = self.bn_of.get(name)
        if bn is None:
            return None
        return bn_scale(bn, self._batch_var.get(name) if bn.training else None)

    def remove(self) -> None:
        """Detach every hook and forget the recorded variances."""
        for handle in [*self._pairing, *self._recording]:
            handle.remove()
        self._pairing.clear()
        self._recording.clear()
        self._batch_var.clear()
