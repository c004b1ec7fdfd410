"""Sound global L2 Lipschitz upper bounds of a network's pre-logit features, from its layer norms.

Phi maps a [0, 1] image to the pre-logit features (``NormalizedModel.features``); ``L`` below satisfies
``||Phi(x) - Phi(x')|| <= L ||x - x'||`` for every x, x' (L2, [0, 1] pixel units in, feature units out).
It is a product over the path of per-layer bounds (ALGORITHMS.md section 6):

* input normalization ``(x - mean) / std``: ``1 / min(std)``;
* a conv or linear layer followed by an eval-mode BatchNorm is one linear map with kernel
  ``diag(gamma / sqrt(running_var + eps)) W`` (:mod:`repspec_zoo.spectral.bn`); its bound is that map's operator
  norm at the layer's actual input size (a conv's operator depends on it, recorded by one forward).
  Conv: the exact norm of the circular conv on a grid ``N >= n + lo + hi`` (divisible by the stride), an
  upper bound of the zero-padded operator (:func:`repspec_zoo.spectral.fft.conv_fft_upper_bound`, float64); linear:
  the exact ``sigma_max`` (SVD). A BatchNorm folded in place by ``NormalizedModel.fast_eval`` (an
  ``nn.Identity`` after a fused conv) needs nothing more;
* activations: ``max |act'|`` (ReLU 1, GELU 1.1289; timm's ``BatchNormAct2d`` carries its own);
* max or average pooling with kernel k, stride s (per dim): ``sqrt(prod_d ceil(k_d / s_d))`` -- every input
  lies in at most ``prod_d ceil(k_d / s_d)`` windows and a window's max or mean moves by at most the
  window's L2 change; global average pooling over n positions: ``1 / sqrt(n)`` (``|mean_c(x)| <=
  ||x_c|| / sqrt(n)`` per channel); global max pooling: 1;
* a residual block ``act(P(x) + F(x))``: ``max|act'| * (Lip(P) + Lip(F))`` with ``Lip(P) = 1`` for the
  identity shortcut (timm's BasicBlock / Bottleneck, its conv+BN ``downsample``);
* dropout, drop-path, drop-block: the identity in eval mode.

Supported: the single-hidden-layer ``slp``, ``resnet_small`` and timm's ResNet family (BasicBlock /
Bottleneck without squeeze-excitation or anti-aliasing). Anything else raises ValueError naming the module;
:func:`try_feature_lipschitz` returns None instead.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn
from timm.layers import Conv2dSame, DropBlock2d, DropPath, SelectAdaptivePool2d
from timm.layers.activations import GELU as TimmGELU
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..models.fold import conv_bn_pairs
from ..models.normalize import NormalizedModel
from ..models.tiny import ResNetSmall, SingleHiddenLayerNet
from ..spectral.bn import bn_scale, bn_scaled_weight
from ..spectral.fft import conv_fft_upper_bound
from ..spectral.operator import ConvGeometry

__all__ = ["GELU_MAX_SLOPE", "ESTIMATOR", "LayerNorm", "LipschitzBound", "activation_max_slope",
           "feature_lipschitz", "function_bound", "try_feature_lipschitz"]

#: exact max_z |phi'(z)| of common activations (GELU: at z = sqrt(2), Phi(sqrt2) + sqrt2 phi(sqrt2) = 1.1289).
GELU_MAX_SLOPE = 0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1.0) / math.sqrt(2 * math.pi)
ACTIVATION_MAX_SLOPE = {
    nn.ReLU: 1.0, nn.LeakyReLU: 1.0, nn.Tanh: 1.0, nn.Identity: 1.0, nn.Sigmoid: 0.25,
    nn.GELU: GELU_MAX_SLOPE, TimmGELU: GELU_MAX_SLOPE,
}
#: how every layer norm is measured
ESTIMATOR = ("conv: exact norm of the circular conv on a grid N >= n + 2p, an upper bound of the zero-padded "
             "operator (spectral.fft.conv_fft_upper_bound, float64); linear: exact sigma_max (SVD)")

_CONVS = (nn.Conv2d, Conv2dSame)
_EVAL_IDENTITY = (nn.Dropout, DropPath, DropBlock2d)  # the identity in eval mode


def activation_max_slope(act: nn.Module) -> float | None:
    """max |act'(z)| over z for known activations, else None (no certificate)."""
    return next((slope for cls, slope in ACTIVATION_MAX_SLOPE.items() if type(act) is cls), None)


@dataclass
class LayerNorm:
    """One conv or linear layer up to the features: ``raw_sigma`` of its own kernel (None when not asked for),
    ``folded_sigma`` of the map the network computes (the BatchNorm after it folded in; raw without one)."""
    name: str
    raw_sigma: float | None
    folded_sigma: float


@dataclass
class LipschitzBound:
    """``features``: L of Phi ([0, 1] image -> pre-logit features), None where the architecture has no bound;
    ``layers``: every conv / linear layer up to the features, in forward order."""
    features: float | None
    layers: list[LayerNorm] = field(default_factory=list)
    estimator: str = ESTIMATOR
    reason: str | None = None  # why ``features`` is None


def _sigma(layer: nn.Module, weight: Tensor, in_shape: tuple[int, ...]) -> float:
    """Upper bound (exact for linear) on the operator norm of ``layer`` with kernel ``weight`` on ``in_shape``."""
    weight = weight.detach().double()
    if isinstance(layer, nn.Linear):
        return float(torch.linalg.matrix_norm(weight, ord=2))
    return float(conv_fft_upper_bound(weight, ConvGeometry.from_module(layer, in_shape)))


def _input_shapes(net: nn.Module, in_shape: tuple[int, ...]) -> dict[int, set[tuple[int, ...]]]:
    """Per module id, the shapes (no batch dim) of its inputs in one forward of a zero image of ``in_shape``."""
    shapes: dict[int, set[tuple[int, ...]]] = {}

    def record(module, args):
        if args and isinstance(args[0], Tensor):
            shapes.setdefault(id(module), set()).add(tuple(args[0].shape[1:]))

    param = next(net.parameters())
    hooks = [m.register_forward_pre_hook(record) for m in net.modules()]
    try:
        net(torch.zeros((1, *in_shape), dtype=param.dtype, device=param.device))
    finally:
        for h in hooks:
            h.remove()
    return shapes


def _flatten(items: list[tuple[str, nn.Module | None]]) -> list[tuple[str, nn.Module]]:
    """``items`` with every nn.Sequential replaced by its children (recursively, named by path), Nones dropped."""
    flat = []
    for name, module in items:
        if isinstance(module, nn.Sequential):
            flat += _flatten([(f"{name}.{child}", m) for child, m in module.named_children()])
        elif module is not None:
            flat.append((name, module))
    return flat


class _Walk:
    """Multiplies the per-layer bounds along ``net``'s module structure, collecting the layer norms."""

    def __init__(self, net: nn.Module, in_shape: tuple[int, ...], folded: dict[str, tuple[nn.Module, nn.Module]],
                 raw: bool):
        self.shapes = _input_shapes(net, in_shape)
        self.folded = folded  # conv name -> (original conv, original BN) of a fast_eval fold
        self.raw = raw  # also measure each layer's own kernel (an FFT per layer more)
        self.layers: list[LayerNorm] = []

    def layer(self, name: str, layer: nn.Module, bn: nn.Module | None) -> float:
        """Bound of ``bn o layer`` (``bn`` None: the layer alone), times the slope of a BatchNormAct's act."""
        shape = self.shape(name, layer)
        raw_layer = self.folded[name][0] if name in self.folded else layer
        own = bn is None and raw_layer is layer  # the network computes the layer's own kernel
        raw = _sigma(layer, raw_layer.weight, shape) if self.raw or own else None
        # the scale in float64 (bn_scale of a float64 copy): a float32 scale can round the norm down
        weight = layer.weight if bn is None else bn_scaled_weight(layer.weight.double(),
                                                                  bn_scale(copy.deepcopy(bn).double()))
        folded = raw if own else _sigma(layer, weight, shape)
        self.layers.append(LayerNorm(name, raw, folded))
        return folded * (1.0 if bn is None else self.bn_act(name, bn))

    def shape(self, name: str, m: nn.Module) -> tuple[int, ...]:
        """The one input shape of ``m`` in the forward (ValueError if it is not called, or called on several)."""
        shapes = self.shapes.get(id(m), set())
        if len(shapes) != 1:
            raise ValueError(f"{name} is called on inputs of shapes {sorted(shapes)} in the forward, not on one: "
                             "no Lipschitz bound for this network")
        return next(iter(shapes))

    def bn_act(self, name: str, bn: nn.Module) -> float:
        """max |act'| of the activation a timm BatchNormAct2d applies after normalizing (1 for a plain BN)."""
        drop = getattr(bn, "drop", None)
        if drop is not None:
            self.module(f"{name}.drop", drop)
        return self.module(f"{name}.act", bn.act) if hasattr(bn, "act") else 1.0

    def chain(self, items: list[tuple[str, nn.Module | None]]) -> float:
        """Product of the bounds of modules applied one after the other (a conv/linear followed by a
        BatchNorm is one layer; plain nn.Sequential containers are flattened first)."""
        flat = _flatten(items)
        lip, i = 1.0, 0
        while i < len(flat):
            name, module = flat[i]
            if isinstance(module, _CONVS + (nn.Linear,)):
                if type(module) not in _CONVS + (nn.Linear,):
                    raise ValueError(f"{name} is a {type(module).__name__}, whose kernel is not its weight "
                                     "parameter: no Lipschitz bound for it")
                following = flat[i + 1][1] if i + 1 < len(flat) else None
                bn = following if isinstance(following, nn.modules.batchnorm._BatchNorm) else None
                lip *= self.layer(name, module, bn)
                i += 2 if bn is not None else 1
            else:
                lip *= self.module(name, module)
                i += 1
        return lip

    def module(self, name: str, m: nn.Module) -> float:
        """Bound of one module that is not a conv/linear layer (those go through :meth:`chain`)."""
        slope = activation_max_slope(m)
        if slope is not None:
            return slope
        if isinstance(m, nn.Flatten) or (isinstance(m, _EVAL_IDENTITY) and not m.training):
            return 1.0
        if isinstance(m, (BasicBlock, Bottleneck)):
            return self.block(name, m)
        if isinstance(m, nn.Sequential) or isinstance(m, _CONVS + (nn.Linear,)):
            return self.chain([(name, m)])
        if isinstance(m, nn.modules.batchnorm._BatchNorm):  # not after a conv: a diagonal map
            return float(bn_scale(copy.deepcopy(m).double()).abs().max()) * self.bn_act(name, m)
        if isinstance(m, (nn.MaxPool2d, nn.AvgPool2d)):
            return self.pool(name, m)
        if isinstance(m, SelectAdaptivePool2d):
            return self.global_pool(name, m)
        raise ValueError(f"no Lipschitz bound for {name} ({type(m).__name__}); supported: conv/linear (+BatchNorm), "
                         "ReLU/GELU/Tanh, max/avg pooling, timm BasicBlock/Bottleneck, global avg/max pooling")

    def block(self, name: str, b: nn.Module) -> float:
        """timm BasicBlock / Bottleneck: ``act_out(downsample(x) + branch(x))``."""
        for attr in ("se", "aa"):
            part = getattr(b, attr, None)
            if part is not None and not isinstance(part, nn.Identity):
                raise ValueError(f"{name}.{attr} ({type(part).__name__}): blocks with squeeze-excitation or "
                                 "anti-aliasing have no Lipschitz bound here")
        order = (("conv1", "bn1", "drop_block", "act1", "conv2", "bn2", "drop_path") if isinstance(b, BasicBlock)
                 else ("conv1", "bn1", "act1", "conv2", "bn2", "drop_block", "act2", "conv3", "bn3", "drop_path"))
        branch = self.chain([(f"{name}.{a}", getattr(b, a, None)) for a in order])
        shortcut = 1.0 if b.downsample is None else self.module(f"{name}.downsample", b.downsample)
        out = b.act2 if isinstance(b, BasicBlock) else b.act3
        return self.module(f"{name}.{'act2' if isinstance(b, BasicBlock) else 'act3'}", out) * (shortcut + branch)

    def pool(self, name: str, m: nn.Module) -> float:
        """sqrt(prod_d ceil(k_d / s_d)) for a k x k window with stride s (no dilation, no divisor override)."""
        if getattr(m, "dilation", 1) not in (1, (1, 1)) or getattr(m, "divisor_override", None):
            raise ValueError(f"{name}: pooling with dilation or a divisor override has no Lipschitz bound here")
        k = m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,) * 2
        s = m.stride if isinstance(m.stride, tuple) else (m.stride,) * 2
        return math.sqrt(math.prod(-(-kd // sd) for kd, sd in zip(k, s)))

    def global_pool(self, name: str, m: SelectAdaptivePool2d) -> float:
        """timm's global pooling to one value per channel: avg 1/sqrt(n), max 1, their mean or concatenation."""
        kind = m.pool_type.lower().removeprefix("fast") or ("avg" if m.pool_type else "")
        if not kind:
            return 1.0
        output = getattr(m.pool, "output_size", 1)
        if output not in (1, (1, 1)):
            raise ValueError(f"{name}: adaptive pooling to {output} has no Lipschitz bound here (only to 1 x 1)")
        avg = 1.0 / math.sqrt(math.prod(self.shape(name, m)[1:]))
        bounds = dict(avg=avg, max=1.0, avgmax=0.5 * (avg + 1.0), catavgmax=math.sqrt(avg ** 2 + 1.0))
        if kind not in bounds:
            raise ValueError(f"{name}: global pool type {m.pool_type!r} has no Lipschitz bound here")
        return bounds[kind]


def _feature_path(net: nn.Module) -> list[tuple[str, nn.Module]]:
    """The modules from the input to the pre-logit features, in forward order."""
    if isinstance(net, SingleHiddenLayerNet):
        return [("flatten", net.flatten), ("fc1", net.fc1), ("act", net.act)]
    if isinstance(net, (ResNet, ResNetSmall)):
        stem = [(a, getattr(net, a)) for a in ("conv1", "bn1", "act1", "maxpool") if hasattr(net, a)]
        stages, i = [], 1
        while hasattr(net, f"layer{i}"):
            stages.append((f"layer{i}", getattr(net, f"layer{i}")))
            i += 1
        return stem + stages + [("global_pool", net.global_pool)]
    raise ValueError(f"no Lipschitz bound for a {type(net).__name__}: supported are slp (SingleHiddenLayerNet), "
                     "resnet_small and timm's ResNet family")


def feature_lipschitz(model: nn.Module, in_shape: tuple[int, ...], raw: bool = True) -> LipschitzBound:
    """L of the pre-logit features of ``model`` (a timm net or a NormalizedModel, eval mode) on ``[0, 1]``
    images of shape ``in_shape`` (C, H, W), and the layer norms (module docstring). ValueError where no bound.
    ``raw=False`` skips the raw kernels' norms where a BatchNorm follows (L does not need them; ResNet-50 at 224:
    54 s instead of 89 on one core)."""
    net, std = (model.model, model.std) if isinstance(model, NormalizedModel) else (model, None)
    if net.training:
        raise ValueError("the Lipschitz bound is of the eval-mode network (BatchNorm running statistics): "
                         "call model.eval() first")
    folded = {conv: (c, bn) for conv, c, _, bn in getattr(model, "_folded", [])}
    with torch.no_grad():
        walk = _Walk(net, tuple(in_shape), folded, raw)
        lip = walk.chain(_feature_path(net))
    if std is not None:
        lip /= float(std.min())
    return LipschitzBound(lip, walk.layers)


def function_bound(model: nn.Module, in_shape: tuple[int, ...]) -> LipschitzBound:
    """:func:`feature_lipschitz`; for an architecture it cannot bound, ``features`` None with the reason, and the
    layer norms of every plain conv / linear layer but the classifier (in module order, each folded with the
    BatchNorm that torch.fx finds right after it: ``fold.conv_bn_pairs``; unfolded if the model cannot be traced)."""
    try:
        return feature_lipschitz(model, in_shape)
    except ValueError as err:
        reason = str(err)
    net = model.model if isinstance(model, NormalizedModel) else model
    try:
        pairs = dict(conv_bn_pairs(net))
    except Exception:  # noqa: BLE001  (any tracing failure: norms without folding)
        pairs = {}
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    folded = {conv: (c, bn) for conv, c, _, bn in getattr(model, "_folded", [])}
    with torch.no_grad():
        walk = _Walk(net, tuple(in_shape), folded, raw=True)
        for name, m in net.named_modules():
            if type(m) in _CONVS + (nn.Linear,) and m is not head and len(walk.shapes.get(id(m), ())) == 1:
                walk.layer(name, m, net.get_submodule(pairs[name]) if name in pairs else None)
    return LipschitzBound(None, walk.layers, reason=reason)


def try_feature_lipschitz(model: nn.Module, in_shape: tuple[int, ...], raw: bool = True) -> LipschitzBound | None:
    """:func:`feature_lipschitz`, or None for an architecture it cannot bound."""
    try:
        return feature_lipschitz(model, in_shape, raw)
    except ValueError:
        return None
