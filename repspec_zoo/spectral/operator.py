"""The linear operator a conv layer applies to one input sample, and its exact adjoint.

rep-spectral penalizes ``gamma/2 * sum_l sigma_max(W_l)^2`` where, for a convolution, ``W_l`` is the
*linear operator* the layer applies to one input sample, not the kernel tensor. That operator depends on
the input size, stride, padding, dilation and groups, and no library computes its norm:
``torch.nn.utils.parametrizations.spectral_norm`` (and most papers' code) reshape the kernel to a
``C_out x (C_in*k*k)`` matrix, whose norm is not the conv's (it can be larger or smaller, e.g. by a factor
up to ``k`` for a stride-1 conv, and it ignores the input size). This module defines the operator;
:mod:`.power`, :mod:`.fft` and :mod:`.bn` measure it:

* :class:`ConvGeometry` -- everything but the kernel that makes a ConvNd a linear map (input size,
  stride, zero or circular padding, dilation, groups), read off a layer by :meth:`ConvGeometry.from_module`.
* :func:`conv_apply` -- ``A x = conv(pad(x), weight)`` (no bias);
  :func:`conv_adjoint` -- the exact ``A^T y``, so ``<A x, y> = <x, A^T y>``.

Shapes never include a batch dim unless stated: the operator maps ``(C_in, *spatial)`` to
``(C_out, *spatial_out)``; :func:`conv_apply` / :func:`conv_adjoint` also take a leading batch dim.

Example::

    >>> conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    >>> geom = ConvGeometry.from_module(conv, (3, 32, 32))
    >>> conv_apply(conv.weight, geom, torch.randn(3, 32, 32)).shape
    torch.Size([8, 16, 16])
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = ['ConvGeometry', 'conv_apply', 'conv_adjoint']

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_PADDING_MODES = ('zeros', 'circular')


# ----------------------------------------------------------------------------------------------------
# geometry

def _int_tuple(value, n: int, name: str) -> tuple[int, ...]:
    if isinstance(value, int):
        return (value,) * n
    out = tuple(int(v) for v in value)
    if len(out) != n:
        raise ValueError(
            f"ConvGeometry.{name}={tuple(value)!r} has {len(out)} entries but the input has {n} spatial "
            f"dim(s); give one int per spatial dim (or a single int for all).")
    return out


@dataclass(frozen=True)
class ConvGeometry:
    """Everything but the kernel that makes a ConvNd a linear map on one input sample.

    The operator is ``x -> conv(pad(x), weight)`` with no bias: ``pad`` adds ``padding[d]`` entries
    before and ``padding_hi[d]`` after spatial dim ``d`` (zeros, or wrapped around for ``'circular'``),
    then a 'valid' strided/dilated/grouped convolution follows. The output shape depends on the kernel,
    so it is a method, :meth:`out_shape(weight) <out_shape>`, rather than a field.

    Ints are accepted for the per-dim fields and broadcast to every spatial dim. Build one from a layer
    with :meth:`from_module` (which resolves ``'same'``/``'valid'`` and timm's dynamic 'SAME' padding).

    Example::

        >>> g = ConvGeometry((3, 9, 9), stride=2, padding=1)
        >>> g.out_shape(torch.zeros(8, 3, 3, 3))
        (8, 5, 5)
    """
    in_shape: tuple[int, ...]  # (C_in, L), (C_in, H, W) or (C_in, D, H, W): one sample, no batch dim
    stride: tuple[int, ...] = 1  # per spatial dim
    padding: tuple[int, ...] = 0  # low-side (top/left) padding per spatial dim, as nn.ConvNd.padding
    dilation: tuple[int, ...] = 1  # per spatial dim
    groups: int = 1  # C_in and C_out are split into this many independent blocks
    padding_mode: str = 'zeros'  # 'zeros' or 'circular'
    padding_hi: tuple[int, ...] | None = None  # high-side (bottom/right) padding; None -> same as padding

    def __post_init__(self):
        in_shape = tuple(int(s) for s in self.in_shape)
        if not 2 <= len(in_shape) <= 4 or min(in_shape) < 1:
            raise ValueError(
                f"ConvGeometry.in_shape={self.in_shape!r} must be (C_in, *spatial) with 1-3 positive spatial "
                f"sizes and no batch dim, e.g. (3, 32, 32) for a Conv2d.")
        nd = len(in_shape) - 1
        stride = _int_tuple(self.stride, nd, 'stride')
        padding = _int_tuple(self.padding, nd, 'padding')
        dilation = _int_tuple(self.dilation, nd, 'dilation')
        padding_hi = padding if self.padding_hi is None else _int_tuple(self.padding_hi, nd, 'padding_hi')
        if min(stride) < 1 or min(dilation) < 1:
            raise ValueError(f"ConvGeometry stride={stride} and dilation={dilation} must be >= 1.")
        if min(padding + padding_hi) < 0:
            raise ValueError(f"ConvGeometry padding={padding}/padding_hi={padding_hi} must be >= 0.")
        groups = int(self.groups)
        if groups < 1 or in_shape[0] % groups:
            raise ValueError(f"ConvGeometry.groups={self.groups} must be >= 1 and divide C_in={in_shape[0]}.")
        if self.padding_mode not in _PADDING_MODES:
            raise ValueError(
                f"padding_mode={self.padding_mode!r} is not supported: operator norms are implemented for "
                f"{_PADDING_MODES} padding only. ('reflect'/'replicate' padding is linear too, but its "
                f"adjoint is not implemented here.) Use padding_mode='zeros' or 'circular' for layers "
                f"whose norm you need, or exclude this layer from the regularizer.")
        for name, value in (('in_shape', in_shape), ('stride', stride), ('padding', padding),
                            ('dilation', dilation), ('groups', groups), ('padding_hi', padding_hi)):
            object.__setattr__(self, name, value)

    # -- derived quantities
    @property
    def spatial_ndim(self) -> int:
        """Number of spatial dims (1 for Conv1d, 2 for Conv2d, ...)."""
        return len(self.in_shape) - 1

    @property
    def in_spatial(self) -> tuple[int, ...]:
        """Spatial input size ``(H, W)`` (or ``(L,)``)."""
        return self.in_shape[1:]

    @property
    def padded_spatial(self) -> tuple[int, ...]:
        """Spatial size after padding, ``n + padding + padding_hi`` per dim."""
        return tuple(n + lo + hi for n, lo, hi in zip(self.in_spatial, self.padding, self.padding_hi))

    @property
    def _native(self) -> bool:
        # symmetric zero padding: F.convNd / F.conv_transposeNd do the padding themselves
        return self.padding_mode == 'zeros' and self.padding == self.padding_hi

    def out_spatial(self, kernel_size: Sequence[int]) -> tuple[int, ...]:
        """Spatial output size for a kernel of spatial size ``kernel_size``.

        ``out = floor((n + lo + hi - dilation*(k-1) - 1) / stride) + 1`` per dim. Raises ValueError if
        the padded input is smaller than the dilated kernel.
        """
        kernel_size = tuple(int(k) for k in kernel_size)
        if len(kernel_size) != self.spatial_ndim:
            raise ValueError(f"kernel_size={kernel_size} does not match the {self.spatial_ndim} spatial "
                             f"dim(s) of in_shape={self.in_shape}.")
        out = []
        for n_pad, k, s, d in zip(self.padded_spatial, kernel_size, self.stride, self.dilation):
            extent = d * (k - 1) + 1
            if n_pad < extent:
                raise ValueError(
                    f"input of spatial size {self.in_spatial} (padded to {self.padded_spatial}) is too small "
                    f"for kernel {kernel_size} with dilation {self.dilation} (extent {extent}): use a larger "
                    f"input size or more padding.")
            out.append((n_pad - extent) // s + 1)
        return tuple(out)

    def out_shape(self, weight: Tensor) -> tuple[int, ...]:
        """Output shape ``(C_out, *spatial_out)`` of this geometry with kernel ``weight``."""
        _check_weight(weight, self)
        return (int(weight.shape[0]),) + self.out_spatial(weight.shape[2:])

    @classmethod
    def from_module(cls, conv: nn.Module, in_shape: Sequence[int]) -> 'ConvGeometry':
        """Geometry of ``conv`` (nn.Conv1d/2d/3d or a subclass) applied to inputs of ``in_shape``.

        Args:
            conv: the layer. Its ``padding`` may be ints, ``'same'`` or ``'valid'``; timm's dynamic 'SAME'
                convs (``Conv2dSame``, ``StdConv2dSame``, ...) are resolved for this input size.
            in_shape: ``(C_in, *spatial)``; a leading batch dim is accepted and dropped.

        Raises ValueError (naming the layer) if the layer cannot take that input.

        Note: only the geometry is read. Layers that transform their weight in ``forward`` (timm
        ``StdConv2d`` weight standardization) have an operator kernel that differs from ``conv.weight``.
        """
        if not isinstance(conv, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            raise TypeError(f"ConvGeometry.from_module expects nn.Conv1d/2d/3d, got {type(conv).__name__}; "
                            f"transposed convs are not supported.")
        nd = conv.weight.dim() - 2
        in_shape = tuple(int(s) for s in in_shape)
        if len(in_shape) == nd + 2:  # batched shape
            in_shape = in_shape[1:]
        if len(in_shape) != nd + 1 or in_shape[0] != conv.in_channels:
            raise ValueError(f"{conv!r} cannot take input of shape {in_shape}: expected (C_in={conv.in_channels}, "
                             f"{nd} spatial size(s)) without batch dim.")
        ks, stride, dil = tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.dilation)
        if _is_dynamic_same(conv):
            # TF 'SAME': total pad so that out = ceil(n / s), split low = total // 2, high = rest
            totals = [max((math.ceil(n / s) - 1) * s + (k - 1) * d + 1 - n, 0)
                      for n, k, s, d in zip(in_shape[1:], ks, stride, dil)]
            lo, hi = tuple(t // 2 for t in totals), tuple(t - t // 2 for t in totals)
        elif isinstance(conv.padding, str):
            if conv.padding == 'valid':
                lo = hi = (0,) * nd
            else:  # 'same' (stride 1): PyTorch puts the odd extra pad on the high side
                totals = [d * (k - 1) for k, d in zip(ks, dil)]
                lo, hi = tuple(t // 2 for t in totals), tuple(t - t // 2 for t in totals)
        else:
            lo = hi = tuple(conv.padding)
        try:
            geom = cls(in_shape, stride, lo, dil, conv.groups, conv.padding_mode, hi)
            geom.out_spatial(ks)
        except ValueError as e:
            raise ValueError(f"{conv!r} with input shape {in_shape}: {e}") from None
        return geom


def _is_dynamic_same(conv: nn.Module) -> bool:
    if getattr(conv, 'same_pad', False) is True:  # timm StdConv2dSame / ScaledStdConv2dSame
        return True
    try:
        from timm.layers.conv2d_same import Conv2dSame, Conv2dSameExport
    except ImportError:  # timm is a dependency, but keep this module importable without it
        return False
    return isinstance(conv, (Conv2dSame, Conv2dSameExport))


def _check_weight(weight: Tensor, geom: ConvGeometry) -> None:
    nd = geom.spatial_ndim
    if weight.dim() != nd + 2:
        raise ValueError(f"kernel of shape {tuple(weight.shape)} does not fit in_shape={geom.in_shape}: expected "
                         f"(C_out, C_in/groups, *{nd} kernel sizes).")
    c_in, g = geom.in_shape[0], geom.groups
    if weight.shape[1] * g != c_in or weight.shape[0] % g:
        raise ValueError(f"kernel of shape {tuple(weight.shape)} with groups={g} does not fit C_in={c_in}: need "
                         f"weight.shape[1] * groups == C_in and groups | C_out.")


def _reaching_taps(weight: Tensor, geom: ConvGeometry) -> tuple[Tensor, ConvGeometry]:
    """The kernel cropped to the taps that meet the input, with a geometry whose operator contains the original.

    With zero padding, tap ``j`` of a dim (stride ``s``, dilation ``d``, low padding ``lo``) reads input
    ``o*s + j*d - lo`` for the outputs ``o < out``: it meets the input ``[0, n)`` only if ``lo - (out-1)*s <= j*d
    <= n - 1 + lo``; other taps multiply padding zeros only. Cropping them (padding ``lo - first*d``, and the
    smallest ``padding_hi >= 0`` that keeps ``out`` outputs) gives the same operator, or one with extra output
    rows where ``padding_hi`` cannot shrink enough, whose norm is no smaller. The symbol bounds on a grid
    ``N >= n + lo + hi`` (:mod:`.fft`, :mod:`.gram`) would apply the unused taps: e.g. a 3x3 conv on a 1x1 input
    (ResNet-18's last stage at 32x32) is its centre tap alone. Other padding modes are returned unchanged.
    """
    if geom.padding_mode != 'zeros':
        return weight, geom
    ks = tuple(weight.shape[2:])
    index, lows, highs = [], [], []
    for k, n, lo, s, d, out in zip(ks, geom.in_spatial, geom.padding, geom.stride, geom.dilation,
                                   geom.out_spatial(ks)):
        first = min(max(0, -(-(lo - (out - 1) * s) // d)), lo // d)  # keep lo - first*d >= 0
        last = min(k - 1, (n - 1 + lo) // d)
        if last < first:  # no tap meets the input (a zero operator): keep the dim as it is
            first, last = 0, k - 1
        low = lo - first * d
        index.append(slice(first, last + 1))
        lows.append(low)
        highs.append(max(0, (out - 1) * s + d * (last - first) + 1 - n - low))
    if all(i == slice(0, k) for i, k in zip(index, ks)):
        return weight, geom
    return weight[(slice(None), slice(None), *index)], replace(geom, padding=tuple(lows), padding_hi=tuple(highs))


def _batched(x: Tensor, shape: tuple[int, ...], name: str) -> tuple[Tensor, bool]:
    if tuple(x.shape) == shape:
        return x.unsqueeze(0), True
    if x.dim() == len(shape) + 1 and tuple(x.shape[1:]) == shape:
        return x, False
    raise ValueError(f"{name} has shape {tuple(x.shape)}; expected {shape} or (batch, *{shape}).")


def _circular_index(n: int, lo: int, hi: int, device) -> Tensor:
    # padded position i in [0, n+lo+hi) reads input position (i - lo) mod n
    return torch.arange(-lo, n + hi, device=device) % n


class _ConvOperator:
    """``A`` and ``A^T`` of one (kernel, geometry) pair on batched tensors, with the call arguments
    precomputed once: power iterations call these thousands of times on tiny tensors."""

    def __init__(self, weight: Tensor, geom: ConvGeometry):
        _check_weight(weight, geom)
        nd = geom.spatial_ndim
        ks = tuple(weight.shape[2:])
        self.weight, self.geom = weight, geom
        self.in_shape = geom.in_shape
        self.out_shape = (int(weight.shape[0]),) + geom.out_spatial(ks)
        self._conv, self._conv_t = _CONV[nd], _CONV_T[nd]
        self._native = geom._native  # symmetric zero padding: the conv pads (and the adjoint crops) itself
        self._padding = geom.padding if self._native else (0,) * nd
        # the transposed conv alone yields (o-1)*s + d*(k-1) + 1 - 2p per dim: output_padding adds the rows
        # a stride dropped (3x3 stride-2 maps 9x9 and 10x10 both to 5x5), so A^T returns the input size
        self._output_padding = tuple(
            n_pad - ((o - 1) * s + d * (k - 1) + 1)
            for n_pad, o, s, d, k in zip(geom.padded_spatial, self.out_shape[1:], geom.stride, geom.dilation, ks))
        self._zero_pads = []  # F.pad argument (last dim first)
        for lo, hi in zip(reversed(geom.padding), reversed(geom.padding_hi)):
            self._zero_pads += [lo, hi]
        self._circ_index = [_circular_index(n, lo, hi, weight.device)
                            for n, lo, hi in zip(geom.in_spatial, geom.padding, geom.padding_hi)]

    def apply(self, x: Tensor) -> Tensor:
        g = self.geom
        if not self._native:
            if g.padding_mode == 'zeros':
                x = F.pad(x, self._zero_pads)
            else:  # circular via index_select: same as F.pad(mode='circular'), and also valid for pad > n
                for d, idx in enumerate(self._circ_index):
                    x = x.index_select(2 + d, idx)
        return self._conv(x, self.weight, None, g.stride, self._padding, g.dilation, g.groups)

    def adjoint(self, y: Tensor) -> Tensor:
        g = self.geom
        x = self._conv_t(y, self.weight, None, g.stride, self._padding, self._output_padding, g.groups, g.dilation)
        if not self._native:  # adjoint of the padding: crop (zeros) or fold the wrapped border back (circular)
            for d, (n, lo, idx) in enumerate(zip(g.in_spatial, g.padding, self._circ_index)):
                if g.padding_mode == 'zeros':
                    x = x.narrow(2 + d, lo, n)
                else:
                    shape = list(x.shape)
                    shape[2 + d] = n
                    x = x.new_zeros(shape).index_add_(2 + d, idx, x)
        return x


# ----------------------------------------------------------------------------------------------------
# the operator and its adjoint

def conv_apply(weight: Tensor, geom: ConvGeometry, x: Tensor) -> Tensor:
    """Apply the conv operator ``A`` (no bias): ``y = conv(pad(x), weight)``.

    Args:
        weight: kernel ``(C_out, C_in/groups, *k)``, same dtype as ``x``.
        geom: the geometry (input size, stride, padding, ...).
        x: ``(B, *geom.in_shape)``, or one sample of shape ``geom.in_shape``.

    Returns:
        ``(B, *geom.out_shape(weight))`` (or without the batch dim if ``x`` had none).

    Example::

        >>> g = ConvGeometry((2, 5, 5), padding=1, padding_mode='circular')
        >>> conv_apply(torch.randn(4, 2, 3, 3), g, torch.randn(7, 2, 5, 5)).shape
        torch.Size([7, 4, 5, 5])
    """
    op = _ConvOperator(weight, geom)
    x, unbatched = _batched(x, op.in_shape, 'x')
    y = op.apply(x)
    return y[0] if unbatched else y


def conv_adjoint(weight: Tensor, geom: ConvGeometry, y: Tensor) -> Tensor:
    """Apply the exact adjoint ``A^T`` of :func:`conv_apply`, so ``<A x, y> = <x, A^T y>``.

    ``A^T`` is a transposed conv whose ``output_padding`` restores the rows/cols that a stride drops
    (e.g. a 3x3 stride-2 conv maps 9x9 and 10x10 inputs both to 5x5; the adjoint must return the
    original size), followed by the adjoint of the padding: cropping for zeros, and for circular
    padding folding the wrapped border back onto the positions it was copied from (wrap-around add).

    Args:
        weight: kernel ``(C_out, C_in/groups, *k)``.
        geom: the geometry.
        y: ``(B, *geom.out_shape(weight))`` or one sample without batch dim.

    Returns:
        ``(B, *geom.in_shape)`` (or without the batch dim if ``y`` had none).

    Example::

        >>> g, w = ConvGeometry((2, 9, 9), stride=2, padding=1), torch.randn(4, 2, 3, 3)
        >>> conv_adjoint(w, g, torch.randn(4, 5, 5)).shape
        torch.Size([2, 9, 9])
    """
    op = _ConvOperator(weight, geom)
    y, unbatched = _batched(y, op.out_shape, 'y')
    x = op.adjoint(y)
    return x[0] if unbatched else x
