"""Largest singular values (operator 2-norms) of linear and convolutional layers.

rep-spectral penalizes ``gamma/2 * sum_l sigma_max(W_l)^2`` where, for a convolution, ``W_l`` is the
*linear operator* the layer applies to one input sample, not the kernel tensor. That operator depends on
the input size, stride, padding, dilation and groups, and no library computes its norm:
``torch.nn.utils.parametrizations.spectral_norm`` (and most papers' code) reshape the kernel to a
``C_out x (C_in*k*k)`` matrix, whose norm is not the conv's (it can be larger or smaller, e.g. by a factor
up to ``k`` for a stride-1 conv, and it ignores the input size). So we hand-write:

* :func:`conv_power_iteration` -- power iteration on the real operator, ``A v = conv(v)`` and
  ``A^T u = conv_transpose(u)`` (exact adjoint, :func:`conv_adjoint`), for zero or circular padding.
  Cheap per step (one forward + one backward conv of a single sample); converges to the exact norm.
* :func:`conv_fft_sigma` -- the exact norm of a *circularly* padded conv from its DFT symbol
  (Sedghi et al. 2018; strided convs via polyphase components, Senderovich et al. 2022).
* :func:`conv_fft_upper_bound` -- the same symbol on a grid ``N >= n + 2p``: an upper bound on the
  zero-padded norm (what timm models compute).
* :func:`matrix_power_iteration` for linear layers, :func:`sigma_from_vectors` for the differentiable
  ``sigma = <u, A(W) v>`` used in the penalty, and :func:`bn_scale` / :func:`bn_scaled_weight` for the
  BatchNorm-aware composite ``BN o conv``.

Conventions: iterations run under ``torch.no_grad`` with autocast disabled, in float64 if the weight is
float64 and float32 otherwise (fp16/bf16 weights are cast up); results come back in that compute dtype.
Shapes never include a batch dim unless stated: ``v`` has the layer's input shape ``(C_in, *spatial)``,
``u`` its output shape ``(C_out, *spatial_out)``; both have unit Euclidean norm.

Example::

    >>> conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    >>> geom = ConvGeometry.from_module(conv, (3, 32, 32))
    >>> sigma, u, v = conv_power_iteration(conv.weight, geom, n_iter=50)
    >>> penalty = 0.5 * 1e-3 * sigma_from_vectors(conv.weight, u, v, geom) ** 2  # differentiable
"""
from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    'ConvGeometry',
    'conv_apply',
    'conv_adjoint',
    'matrix_power_iteration',
    'conv_power_iteration',
    'conv_fft_sigma',
    'conv_fft_upper_bound',
    'sigma_from_vectors',
    'bn_scale',
    'bn_scaled_weight',
]

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_CONV_T = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}
_PADDING_MODES = ('zeros', 'circular')
# Cap on the complex symbol entries held at once by the FFT path (2**23 complex64 = 64 MiB); larger
# symbols are processed in chunks of frequencies.
_SYMBOL_CHUNK_ELEMS = 2 ** 23
# Gram matrices at least this large get the Cholesky pruning of _top_eigenvalues (below it plain
# eigvalsh is as fast); power steps for its lower bounds; how many best-ranked matrices get eigvalsh first.
_PRUNE_MIN = 64
_PRUNE_POWER_STEPS = 8
_PRUNE_TOP = 4


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


# ----------------------------------------------------------------------------------------------------
# power iterations

def _compute_dtype(weight_dtype: torch.dtype, dtype: torch.dtype | None = None) -> torch.dtype:
    if dtype is not None:
        if dtype not in (torch.float32, torch.float64):
            raise ValueError(f"dtype={dtype} is not a compute dtype: use torch.float32 or torch.float64.")
        return dtype
    return torch.float64 if weight_dtype == torch.float64 else torch.float32


def _no_autocast(device: torch.device):
    try:
        return torch.autocast(device_type=device.type, enabled=False)
    except (RuntimeError, ValueError):  # device type without autocast support
        return contextlib.nullcontext()


def _normalize(x: Tensor, eps: float) -> Tensor:
    return x / torch.linalg.vector_norm(x).clamp_min(eps)


def _randn(shape, generator: torch.Generator | None, dtype: torch.dtype, device: torch.device) -> Tensor:
    if generator is None:
        return torch.randn(shape, dtype=dtype, device=device)
    return torch.randn(shape, generator=generator, dtype=dtype, device=generator.device).to(device)


def _start_vector(x: Tensor, numel: int, shape: tuple[int, ...], name: str, dtype, device) -> Tensor:
    if x.numel() != numel:
        raise ValueError(f"warm-start {name} has {x.numel()} entries (shape {tuple(x.shape)}); "
                         f"expected shape {shape}.")
    return x.detach().reshape(shape).to(dtype=dtype, device=device)


def _power_iteration(apply, adjoint, in_shape, out_shape, u, v, n_iter, eps, generator, dtype, device):
    in_numel, out_numel = math.prod(in_shape), math.prod(out_shape)
    if u is not None:
        u = _normalize(_start_vector(u, out_numel, out_shape, 'u', dtype, device), eps)
    if v is not None:
        v = _normalize(_start_vector(v, in_numel, in_shape, 'v', dtype, device), eps)
    elif u is None:
        v = _normalize(_randn(in_shape, generator, dtype, device), eps)
    else:
        v = _normalize(adjoint(u), eps)
    av = apply(v)
    if u is None:
        u = _normalize(av, eps)
    for _ in range(int(n_iter)):
        v = _normalize(adjoint(u), eps)
        av = apply(v)
        u = _normalize(av, eps)
    sigma = (u * av).sum()  # = ||A v|| after a step; a lower bound on sigma_max in exact arithmetic
    return sigma, u, v


def matrix_power_iteration(
        weight2d: Tensor,
        u: Tensor | None = None,
        v: Tensor | None = None,
        n_iter: int = 1,
        eps: float = 1e-12,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Power iteration for ``sigma_max(W)`` of a matrix (e.g. an nn.Linear weight).

    One step: ``v <- W^T u / ||W^T u||``, ``u <- W v / ||W v||``; then ``sigma = u^T W v = ||W v||``,
    which increases to ``sigma_max`` (error shrinks like ``(sigma_2/sigma_1)^(4 n_iter)``).

    Args:
        weight2d: any shape; flattened to ``(shape[0], -1)``.
        u, v: warm start (unit vectors from the previous call; any shape with ``out``/``in`` entries).
            Missing ones are derived from the other, or ``v`` is drawn at random if both are missing.
        n_iter: steps to run (0 just evaluates ``u^T W v`` for the given/derived vectors).
        eps: floor for the norms in the normalizations.
        generator: torch.Generator for the random start (reproducible init).
        dtype: compute dtype, float32/float64; default float64 for float64 weights else float32.

    Returns:
        ``(sigma, u, v)``: 0-dim sigma, ``u`` of shape ``(out,)``, ``v`` of shape ``(in,)``, all in the
        compute dtype, computed under ``torch.no_grad`` (use :func:`sigma_from_vectors` for gradients).

    Example::

        >>> sigma, u, v = matrix_power_iteration(torch.diag(torch.tensor([3., 1.])), n_iter=30)
        >>> round(float(sigma), 4)
        3.0
    """
    cdtype = _compute_dtype(weight2d.dtype, dtype)
    with torch.no_grad(), _no_autocast(weight2d.device):
        w = weight2d.detach().reshape(weight2d.shape[0], -1).to(cdtype)
        return _power_iteration(lambda x: w @ x, lambda y: w.mT @ y, (w.shape[1],), (w.shape[0],),
                                u, v, n_iter, eps, generator, cdtype, w.device)


def conv_power_iteration(
        weight: Tensor,
        geom: ConvGeometry,
        u: Tensor | None = None,
        v: Tensor | None = None,
        n_iter: int = 1,
        eps: float = 1e-12,
        generator: torch.Generator | None = None,
        dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    """Power iteration for ``sigma_max`` of the conv *operator* (exact for any padding/stride/groups).

    Same as :func:`matrix_power_iteration` with ``W v`` replaced by :func:`conv_apply` and ``W^T u`` by
    :func:`conv_adjoint`, i.e. ``v <- normalize(A^T A v)``: one forward and one transposed conv of a
    single sample per step. Warm-start across training steps (pass the last ``u``, ``v``) so one step
    per update suffices. Nearly tied top singular values converge slowly; use :func:`conv_fft_sigma`
    (circular) or many steps when an exact number matters.

    Args:
        weight: kernel ``(C_out, C_in/groups, *k)``; any float dtype (cast to the compute dtype).
        geom: the geometry; the norm depends on the input size.
        u: warm start of shape ``geom.out_shape(weight)``; v: of shape ``geom.in_shape``.
        n_iter, eps, generator, dtype: as in :func:`matrix_power_iteration`.

    Returns:
        ``(sigma, u, v)``, unit ``u`` (output shape) and ``v`` (input shape), in the compute dtype.

    Example::

        >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        >>> geom = ConvGeometry.from_module(conv, (3, 16, 16))
        >>> sigma, u, v = conv_power_iteration(conv.weight, geom, n_iter=100)
        >>> sigma, u, v = conv_power_iteration(conv.weight, geom, u, v)  # one warm-started step
    """
    cdtype = _compute_dtype(weight.dtype, dtype)
    with torch.no_grad(), _no_autocast(weight.device):
        op = _ConvOperator(weight.detach().to(cdtype), geom)
        return _power_iteration(lambda x: op.apply(x[None])[0], lambda y: op.adjoint(y[None])[0],
                                op.in_shape, op.out_shape, u, v, n_iter, eps, generator, cdtype, weight.device)


# ----------------------------------------------------------------------------------------------------
# exact norm of circular convs from the DFT symbol

def _grouped_matrix_top(w2: Tensor, groups: int, want_vector: bool):
    """Largest singular value over groups of ``w2`` = (C_out, C_in/groups): group g is rows g*co..(g+1)*co."""
    co, ci = w2.shape[0] // groups, w2.shape[1]
    m = w2.reshape(groups, co, ci)
    gram = m @ m.mH if co <= ci else m.mH @ m
    eig = torch.linalg.eigvalsh(gram)[:, -1]
    g = int(eig.argmax())
    sigma = eig[g].clamp_min(0).sqrt()
    z = _top_right_singular_vector(m[g]) if want_vector else None
    return sigma, g, z


def _top_right_singular_vector(m: Tensor) -> Tensor:
    """Unit top right singular vector of ``m`` via the Gram matrix of its smaller side (eigh), much
    cheaper than an SVD of a tall or wide matrix (e.g. 2048 x 1024 for a ResNet-50 1x1 conv)."""
    if m.shape[0] < m.shape[1]:
        z = m.mH @ torch.linalg.eigh(m @ m.mH)[1][:, -1]
    else:
        z = torch.linalg.eigh(m.mH @ m)[1][:, -1]
    norm = torch.linalg.vector_norm(z)
    if norm == 0:  # zero matrix: every unit vector is a top singular vector
        z = torch.zeros_like(z)
        z[0] = 1
        return z
    return z / norm


def _top_eigenvalues(gram: Tensor, known: Tensor | None) -> Tensor:
    """Largest eigenvalue of each Hermitian PSD matrix in the batch ``gram`` (B, n, n), or -inf where a
    matrix provably cannot beat the batch maximum (or ``known``, a maximum from earlier batches).

    Full eigvalsh costs ~n^3 per matrix at poor BLAS efficiency and dominates the FFT path, yet only the
    global maximum matters, and in practice only a few frequencies come close to it. For n >= _PRUNE_MIN:
    a few batched power steps rank the matrices by a lower bound ``x^H G x``; eigvalsh on the top few gives
    an exact ``L``. A successful Cholesky factorization of ``t I - G``, ``t = L (1 - 1e-3)``, proves
    ``lam_max(G) < t + O(n eps ||G||) < L`` (backward stability of Cholesky; the 1e-3 margin dwarfs the
    rounding term), so eigvalsh runs only on the matrices whose factorization fails.
    """
    n, batch = gram.shape[-1], gram.shape[0]
    if n < _PRUNE_MIN or batch <= _PRUNE_TOP:
        return torch.linalg.eigvalsh(gram)[:, -1]
    x = torch.randn(n, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(gram)
    x = x.expand(batch, n, 1)
    for _ in range(_PRUNE_POWER_STEPS):
        x = gram @ x
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min(1e-30)
    lower = (x.mH @ (gram @ x)).real.reshape(-1)
    out = torch.full((batch,), -math.inf, dtype=lower.dtype, device=gram.device)
    top = lower.topk(_PRUNE_TOP).indices
    out[top] = torch.linalg.eigvalsh(gram[top])[:, -1]
    best = out.max() if known is None else torch.maximum(out.max(), known)
    eye = torch.eye(n, dtype=gram.dtype, device=gram.device)
    failed = torch.linalg.cholesky_ex(best * (1 - 1e-3) * eye - gram).info != 0
    failed[top] = False
    cand = failed.nonzero().reshape(-1)
    if len(cand):
        out[cand] = torch.linalg.eigvalsh(gram[cand])[:, -1]
    return out


def _symbol_top(weight: Tensor, grid: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
                groups: int, want_vector: bool):
    """sigma_max of the circular conv on ``grid`` (no shift) via its DFT symbol.

    Position ``t = s*a + i`` of the kernel placed on the grid (tap ``k`` at ``t = k*dilation mod n``;
    taps that wrap add up) belongs to polyphase component ``i`` at coarse position ``a`` on the
    ``m = n/s`` grid. With ``Khat_i(w) = sum_a K_i[a] exp(-2 pi j w.a/m)`` (torch's DFT convention),
    the input mode ``x[c, s*b + i] = z[c, i] exp(-2 pi j w.b/m)`` maps to the output mode
    ``exp(-2 pi j w.o/m) * (M(w) z)`` with ``M(w) = [Khat_{c_out, c_in, i}(w)]`` of shape
    ``C_out x (C_in * prod(s))``. The operator is unitarily block-diagonal in these modes, so
    ``sigma_max = max_w sigma_max(M(w))`` (max over groups too: the symbol is block-diagonal in groups).
    ``M(-w) = conj(M(w))`` for a real kernel, so only the rfft half-spectrum of the last dim is needed.

    The symbol is evaluated as a DFT of the k*k taps -- the values rfftn of the zero-padded polyphase
    kernels would give, but as one GEMM ``phases (freq*phase, taps) @ kernel (taps, C_in*C_out)`` whose
    output is already laid out as ``M(w)^T`` per frequency (no transposes of the big tensor), chunked
    over frequencies to bound memory. ``M(w)`` is reduced to the Gram matrix of its smaller side, whose
    top eigenvalue is ``sigma^2`` (eigvalsh: faster than svdvals on CPU; see _top_eigenvalues).

    Returns ``(sigma, best)`` where ``best = (freq, group, z)`` (top right singular vector ``z`` of
    ``M(freq)`` in layout ``(C_in/groups, *stride)``) if ``want_vector``, else None.
    """
    nd = len(grid)
    c_out, c_in_g = weight.shape[:2]
    ks = tuple(weight.shape[2:])
    coarse = tuple(n // s for n, s in zip(grid, stride))
    n_phase = math.prod(stride)
    ctype = torch.complex128 if weight.dtype == torch.float64 else torch.complex64
    dev = weight.device

    if all(k == 1 for k in ks):
        # 1x1 kernels: the symbol is constant, M(w) = [W, 0, ..., 0] (only the phase-0 component is
        # non-zero), so sigma = max_g ||W_g||_2 and the w = 0 mode is a top singular vector.
        sigma, g, z = _grouped_matrix_top(weight.reshape(c_out, c_in_g), groups, want_vector)
        if not want_vector:
            return sigma, None
        zf = torch.zeros((c_in_g, n_phase), dtype=ctype, device=dev)
        zf[:, 0] = z
        return sigma, ((0,) * nd, g, zf.reshape((c_in_g,) + stride))

    # phases[f, k, i] = exp(-2 pi j w_f . a_k / m) if tap k falls in polyphase component i, else 0; built as
    # a product over dims of P_d[w, k, i] (frequency, tap and phase indices flattened in C order)
    fsizes = coarse[:-1] + (coarse[-1] // 2 + 1,)  # rfft half-spectrum in the last dim
    phases = torch.ones((1, 1, 1), dtype=torch.complex128, device=dev)
    for k, n, s, d, m, nf in zip(ks, grid, stride, dilation, coarse, fsizes):
        t = (torch.arange(k, device=dev) * d) % n
        w = torch.arange(nf, device=dev, dtype=torch.float64)
        p = torch.zeros((nf, k, s), dtype=torch.complex128, device=dev)
        p[:, torch.arange(k, device=dev), t % s] = torch.exp((-2j * math.pi / m) * w[:, None] * (t // s)[None, :])
        a, b, c = phases.shape
        phases = (phases[:, None, :, None, :, None] * p[None, :, None, :, None, :]).reshape(a * nf, b * k, c * s)
    n_freq = phases.shape[0]
    phases = phases.permute(0, 2, 1).to(ctype).reshape(n_freq * n_phase, -1)  # rows (freq, phase), cols taps
    kernel = weight.reshape(c_out, c_in_g, -1).permute(2, 1, 0).reshape(-1, c_in_g * c_out).to(ctype)
    co_g, ci_star = c_out // groups, c_in_g * n_phase
    chunk = max(1, _SYMBOL_CHUNK_ELEMS // (n_phase * c_in_g * c_out))

    best_eig, best = None, None
    for start in range(0, n_freq, chunk):
        stop = min(start + chunk, n_freq)
        # mt[f, (phase, ci), co] = M(w_f)^T
        mt = (phases[start * n_phase:stop * n_phase] @ kernel).reshape(stop - start, n_phase, c_in_g, groups, co_g)
        mt = mt.permute(0, 3, 1, 2, 4) if groups > 1 else mt.reshape(stop - start, 1, n_phase, c_in_g, co_g)
        mt = mt.reshape(stop - start, groups, ci_star, co_g)
        gram = mt.mH @ mt if co_g <= ci_star else mt @ mt.mH  # conj of M M^H / M^H M: same eigenvalues
        eig = _top_eigenvalues(gram.reshape((-1,) + gram.shape[2:]), best_eig).reshape(stop - start, groups)
        top = eig.max()
        if best_eig is None or top > best_eig:
            best_eig = top
            if want_vector:
                f_idx, g = divmod(int(eig.argmax()), groups)
                best = (start + f_idx, g, mt[f_idx, g].mT.clone())  # M(w) = (C_out/groups, (phase, ci))
    sigma = best_eig.clamp_min(0).sqrt()
    if not want_vector:
        return sigma, None
    f_idx, g, mat = best
    freq = []
    for size in reversed(fsizes):  # unravel the flat frequency index (C order)
        f_idx, r = divmod(f_idx, size)
        freq.append(r)
    z = _top_right_singular_vector(mat)  # of M(freq), layout (phase, ci)
    z = z.reshape(stride + (c_in_g,)).permute((nd,) + tuple(range(nd)))
    return sigma, (tuple(reversed(freq)), g, z)


def _lift_mode(best, geom: ConvGeometry, c_in: int, dtype: torch.dtype) -> Tensor:
    """Real spatial input vector (unit norm, shape ``geom.in_shape``) of the top frequency mode.

    The complex mode ``x[c, s*b + i] = z[c, i] exp(-2 pi j w.b/m)`` has gain sigma; its real part is
    ``(mode(w) + mode(-w))/2``, a combination of two top singular vectors with equal gain (``M(-w) =
    conj M(w)``), hence itself a top right singular vector. ``z`` is rotated so that its largest entry is
    real: at self-conjugate frequencies (w = -w mod m) ``M`` is real and this makes ``Re`` non-zero.
    The circular padding ``lo`` shifts the input, which is undone by rolling by ``-lo``.
    """
    freq, g, z = best
    nd = geom.spatial_ndim
    stride = geom.stride
    coarse = tuple(n // s for n, s in zip(geom.in_spatial, stride))
    flat = z.reshape(-1)
    z = z * torch.exp(-1j * flat[flat.abs().argmax()].angle())
    mode = z.reshape(z.shape + (1,) * nd)  # (ci_g, *stride, *ones)
    for d, (w, m) in enumerate(zip(freq, coarse)):
        b = torch.arange(m, device=z.device, dtype=torch.float64)
        wave = torch.exp((-2j * math.pi * w / m) * b).to(z.dtype)
        mode = mode * wave.reshape((m,) + (1,) * (nd - 1 - d))
    x = mode.real  # (ci_g, s_1..s_nd, m_1..m_nd)
    perm = [0]
    for d in range(nd):
        perm += [1 + nd + d, 1 + d]  # -> (ci_g, m_1, s_1, m_2, s_2, ...): position b*s + i
    x = x.permute(perm).reshape((z.shape[0],) + geom.in_spatial)
    v = torch.zeros(geom.in_shape, dtype=dtype, device=z.device)
    ci_g = c_in // geom.groups
    v[g * ci_g:(g + 1) * ci_g] = x.to(dtype)
    v = torch.roll(v, shifts=tuple(-lo for lo in geom.padding), dims=tuple(range(1, nd + 1)))
    return v / v.norm()


def conv_fft_sigma(
        weight: Tensor,
        geom: ConvGeometry,
        *,
        vectors: bool = True,
        dtype: torch.dtype | None = None,
        eps: float = 1e-12,
) -> tuple[Tensor, Tensor | None, Tensor | None]:
    """Exact ``sigma_max`` of a circularly padded conv from its 2-D (or 1-D) DFT symbol.

    With circular padding the operator on an ``n x n`` grid is block-circulant: the DFT block-
    diagonalizes it into ``C_out x C_in`` matrices ``A(w)``, one per frequency, and ``sigma_max`` is the
    largest singular value over all of them (Sedghi et al. 2018). For stride ``s`` the padded kernel
    is split into its ``s*s`` polyphase components ``K[:, :, i::s, j::s]``, each transformed on the
    ``(n/s) x (n/s)`` grid and stacked into ``C_out x (C_in*s*s)`` matrices. Dilation places the taps at
    dilated positions; groups give a block-diagonal symbol (max over groups). 1x1 kernels have a
    constant symbol: ``sigma = ||W[:, :, 0, 0]||_2`` for any stride (a strided 1x1 conv keeps a subset
    of positions, and at least one full one). See ``_symbol_top`` for the conventions.

    Singular vectors: ``v`` is the real part of the top frequency mode lifted to the spatial domain
    (an exact top right singular vector, not an approximation), ``u = A v / ||A v||``; so
    ``||A v|| = sigma`` up to rounding, and they warm-start :func:`conv_power_iteration`.

    Requirements (ValueError otherwise): ``padding_mode='circular'``; every spatial size divisible by
    its stride; output size ``n/s`` per dim (the usual 'same'-style padding ``lo+hi`` between
    ``d*(k-1)-s+1`` and ``d*(k-1)``; other paddings repeat or drop output rows and the operator is not
    block-circulant: use :func:`conv_power_iteration`). For zero padding see
    :func:`conv_fft_upper_bound`, or ``dataclasses.replace(geom, padding_mode='circular')`` for the
    common circular approximation.

    Args:
        weight: kernel ``(C_out, C_in/groups, *k)``.
        geom: circular geometry.
        vectors: also return ``(u, v)``; if False they are None (a little faster: no eigenvector, no lifting).
        dtype: compute dtype (float32 -> complex64, float64 -> complex128); default from the weight.
        eps: norm floor for ``u``.

    Returns:
        ``(sigma, u, v)`` with ``u`` of shape ``geom.out_shape(weight)`` and ``v`` of ``geom.in_shape``.

    Example::

        >>> g = ConvGeometry((3, 8, 8), stride=2, padding=1, padding_mode='circular')
        >>> w = torch.randn(4, 3, 3, 3, dtype=torch.float64)
        >>> sigma, u, v = conv_fft_sigma(w, g)
        >>> torch.allclose(conv_apply(w, g, v).norm(), sigma)
        True
    """
    _check_weight(weight, geom)
    if geom.padding_mode != 'circular':
        raise ValueError(
            f"conv_fft_sigma is exact only for padding_mode='circular' (got {geom.padding_mode!r}). For zero "
            f"padding use conv_power_iteration (exact) or conv_fft_upper_bound (an upper bound).")
    for n, s in zip(geom.in_spatial, geom.stride):
        if n % s:
            raise ValueError(
                f"conv_fft_sigma needs every spatial size divisible by the stride: input {geom.in_spatial} with "
                f"stride {geom.stride}. Use conv_power_iteration, or an input size that is a multiple of the stride.")
    ks = tuple(weight.shape[2:])
    out = geom.out_spatial(ks)
    if out != tuple(n // s for n, s in zip(geom.in_spatial, geom.stride)):
        raise ValueError(
            f"circular conv with input {geom.in_spatial}, kernel {ks}, stride {geom.stride}, padding "
            f"{geom.padding}/{geom.padding_hi} gives output {out}, not input/stride, so it is not block-circulant; "
            f"use conv_power_iteration, or padding with padding+padding_hi = dilation*(k-1).")
    cdtype = _compute_dtype(weight.dtype, dtype)
    with torch.no_grad(), _no_autocast(weight.device):
        w = weight.detach().to(cdtype)
        sigma, best = _symbol_top(w, geom.in_spatial, geom.stride, geom.dilation, geom.groups, vectors)
        if not vectors:
            return sigma, None, None
        v = _lift_mode(best, geom, geom.in_shape[0], cdtype)
        u = _normalize(conv_apply(w, geom, v), eps)
    return sigma, u, v


def conv_fft_upper_bound(
        weight: Tensor | None,
        geom: ConvGeometry | nn.Module,
        in_shape: Sequence[int] | None = None,
        *,
        dtype: torch.dtype | None = None,
) -> Tensor:
    """Upper bound on ``sigma_max`` of a (zero-padded) conv from the circular symbol on a larger grid.

    Zero-pad the input to ``n + lo + hi`` and embed it in a circular grid of size ``N >= n + lo + hi``,
    ``N`` divisible by the stride (the smallest such ``N`` is used). The valid outputs never reach the
    wrap-around, so the zero-padded operator is ``R C E`` with ``E`` an isometric embedding, ``C`` the
    circular conv on ``N`` and ``R`` a row selection; hence ``sigma <= sigma_max(C)``, computed exactly by
    the symbol. Cheap and deterministic; tight on large inputs, loose on tiny ones (for an exact value
    use :func:`conv_power_iteration`). For circular geometries the exact :func:`conv_fft_sigma` value is
    returned when it applies; otherwise the bound carries the norm of the circular-padding map.

    Args:
        weight: kernel ``(C_out, C_in/groups, *k)``; None to take ``geom.weight`` when ``geom`` is a module.
        geom: a ConvGeometry, or an nn.Conv1d/2d module (then ``in_shape`` is required).
        in_shape: input shape ``(C_in, *spatial)`` when ``geom`` is a module.
        dtype: compute dtype, as in :func:`conv_fft_sigma`.

    Returns:
        0-dim tensor (the bound; no singular vectors: the symbol's modes live on the bigger grid).

    Example::

        >>> conv = torch.nn.Conv2d(3, 8, 3, padding=1, bias=False)
        >>> bound = conv_fft_upper_bound(None, conv, (3, 16, 16))  # >= the exact zero-padded norm
    """
    if isinstance(geom, nn.Module):
        if in_shape is None:
            raise ValueError("conv_fft_upper_bound(weight, module, in_shape): in_shape is required with a module.")
        weight = geom.weight if weight is None else weight
        geom = ConvGeometry.from_module(geom, in_shape)
    if weight is None:
        raise ValueError("conv_fft_upper_bound: weight=None is only allowed when geom is a conv module.")
    _check_weight(weight, geom)
    ks = tuple(weight.shape[2:])
    out = geom.out_spatial(ks)
    factor = 1.0
    if geom.padding_mode == 'circular':
        if all(n % s == 0 and o == n // s for n, s, o in zip(geom.in_spatial, geom.stride, out)):
            return conv_fft_sigma(weight, geom, vectors=False, dtype=dtype)[0]
        # circular padding copies an input entry up to `reps` times: ||pad|| = sqrt(prod max reps)
        for n, lo, hi in zip(geom.in_spatial, geom.padding, geom.padding_hi):
            factor *= float(torch.bincount(_circular_index(n, lo, hi, 'cpu'), minlength=n).max())
        factor = math.sqrt(factor)
    grid = tuple(-(-n_pad // s) * s for n_pad, s in zip(geom.padded_spatial, geom.stride))
    cdtype = _compute_dtype(weight.dtype, dtype)
    with torch.no_grad(), _no_autocast(weight.device):
        sigma, _ = _symbol_top(weight.detach().to(cdtype), grid, geom.stride, geom.dilation, geom.groups, False)
    return sigma * factor


# ----------------------------------------------------------------------------------------------------
# differentiable sigma and BatchNorm

def sigma_from_vectors(weight: Tensor, u: Tensor, v: Tensor, geom: ConvGeometry | None = None) -> Tensor:
    """Differentiable ``sigma = <u, A(W) v>`` for fixed (detached) unit vectors ``u``, ``v``.

    For a matrix (``geom=None``; ``weight`` flattened to ``(out, -1)``): ``sigma = u^T W v`` and
    ``d sigma / d W = u v^T``. For a conv: ``sigma = <u, conv_apply(W, geom, v)>``, linear in the kernel.
    With ``u``, ``v`` the converged top singular vectors this is ``sigma_max`` and its gradient is the
    gradient of ``sigma_max`` (when the top singular value is simple). Computed in float32 (float64 for
    float64 weights) with autocast disabled; the gradient flows back to ``weight`` in its own dtype.

    Args:
        weight: the parameter (requires_grad as needed).
        u: ``(out,)`` / ``geom.out_shape(weight)``; v: ``(in,)`` / ``geom.in_shape`` (from a power iteration).
        geom: None for a matrix, the conv geometry otherwise.

    Returns:
        0-dim tensor.

    Example::

        >>> w = torch.randn(4, 3, requires_grad=True)
        >>> sigma, u, v = matrix_power_iteration(w, n_iter=50)
        >>> sigma_from_vectors(w, u, v).backward()  # w.grad == outer(u, v)
    """
    cdtype = _compute_dtype(weight.dtype)
    with _no_autocast(weight.device):
        w = weight.to(cdtype)
        u, v = u.detach().to(dtype=cdtype, device=w.device), v.detach().to(dtype=cdtype, device=w.device)
        if geom is None:
            w2 = w.reshape(w.shape[0], -1)
            if u.numel() != w2.shape[0] or v.numel() != w2.shape[1]:
                raise ValueError(f"u ({u.numel()} entries) and v ({v.numel()}) do not fit the {tuple(w2.shape)} "
                                 f"matrix of the weight {tuple(weight.shape)}.")
            return u.reshape(-1) @ (w2 @ v.reshape(-1))
        out_shape = geom.out_shape(w)
        if tuple(u.shape) != out_shape or tuple(v.shape) != geom.in_shape:
            raise ValueError(f"u {tuple(u.shape)} / v {tuple(v.shape)} do not match the conv's output {out_shape} / "
                             f"input {geom.in_shape} shapes.")
        return (u * conv_apply(w, geom, v)).sum()


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
