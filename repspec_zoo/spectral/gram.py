"""Gram iteration: a deterministic, differentiable upper bound on a conv layer's operator norm.

Delattre, Barthelemy, Araujo, Allauzen, "Efficient Bound of Lipschitz Constant for Convolutional Layers
by Gram Iteration", ICML 2023.

Maths. A circular conv with kernel ``K`` (C_out x C_in x k x k) on an ``n x n`` grid is block-diagonalized
by the 2-D DFT into ``n^2`` matrices ``K_hat(w)`` (C_out x C_in), so ``sigma_max = max_w ||K_hat(w)||_2``
(Sedghi et al. 2018; :mod:`.fft` computes it exactly by an eigensolver per frequency). Gram iteration
replaces the eigensolver by matrix products: with ``G_0 = M`` and ``G_{t+1} = G_t^H G_t``, ``G_t = (M^H
M)^(2^(t-1))`` (t >= 1) is Hermitian PSD with eigenvalues ``sigma_i^(2^t)``, hence for every ``t``

    sigma_1(M) = ||G_t||_2^(1/2^t) <= ||G_t||_F^(1/2^t) = (sum_i sigma_i^p)^(1/p) = ||M||_{S_p},  p = 2^(t+1),

the Schatten p-norm: a deterministic upper bound that decreases monotonically in ``t`` and converges to
``sigma_1`` from above, ``sigma_1 <= bound_t <= r^(1/p) sigma_1`` (``r`` the number of non-zero singular
values). Exactly, ``log(bound_t / sigma_1) = log(sum_i (sigma_i/sigma_1)^p) / p``: every step squares the
ratios ``sigma_i/sigma_1`` (a separated top converges in a few steps; a degenerate one of multiplicity ``m``
leaves ``m^(1/p)``, halving the log-error per step). The max over frequencies (and groups) of the per-matrix
bounds bounds the conv. Rescaling: ``M`` is divided by its largest entry and ``G_t`` by its Frobenius norm
``c_t`` before each product (``c_t^2`` is the trace of the product), so entries stay <= 1 however many steps
run (the plain powers ``sigma^(2^T)`` overflow float32 for ``sigma = 10`` at ``T = 6``); ``bound =
||G_T||_F^(2^-T) * prod_t c_t^(2^-t)``. Certified up to floating-point rounding (relative ~1e-6 in float32;
compute in float64 to certify).

Which operator. The paper iterates on the rfft of the kernel zero-padded to the layer's ``n`` (its Algorithm
3, circular padding; its reference notebook bounds a strided conv by its unstrided one). Here the symbol of
:mod:`.fft` is used:

* circular padding, block-circulant (sizes divisible by the stride, output ``n/s``): the symbol on ``n``,
  so the bound is ``>=`` the exact circular norm :func:`.fft.conv_fft_sigma`;
* zero padding (timm layers) and other circular geometries: the operator is ``R C_N E`` with ``E`` the
  isometric embedding of the padded input into a circular grid ``N >= n + lo + hi`` (divisible by the
  stride), ``C_N`` the circular conv there and ``R`` a row selection (valid outputs never wrap), so
  ``||zero-padded conv on n|| <= ||C_N|| <= bound`` (:func:`.fft.conv_fft_upper_bound` is the exact
  ``||C_N||``). The circular norm on the layer's own ``n`` is *not* an upper bound on the zero-padded norm
  in general (tests/test_gram.py has a counterexample), hence the larger grid. Taps that never meet the
  input are cropped first (``operator._reaching_taps``: a 3x3 conv on a 1x1 input is its centre tap).
  Loose where ``n`` is small next to the kernel (``N`` much larger than ``n``); tight as ``n`` grows.
* Strides: the polyphase symbol ``M(w)`` (C_out x C_in*s*s on the ``(n/s)^2`` grid) is the strided
  operator's exact block diagonalization, tighter than bounding by the unstrided conv. Groups: the symbol
  is block-diagonal, the bound is the max over groups (batched with the frequencies). Dilation: taps at
  dilated positions. 1x1 kernels: a constant symbol, one matrix per group. 1-D and 3-D convs likewise.

Differentiable: the bound is a max over (frequency, group); its gradient is that of the maximizing matrix.
All frequencies are scanned without autograd (batched, in chunks of bounded memory); the maximizing matrix
is then recomputed with autograd (one k*k-tap DFT and ``T`` products of one small matrix). The rescaling
factors are detached: ``||.||_{S_p}`` is positively homogeneous of degree 1, so ``c * f(M / c)`` with a
constant ``c`` has the same value and gradient as ``f(M)``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from .fft import _block_circulant, _bounding_grid, _symbol_chunks
from .operator import ConvGeometry, _check_weight, _reaching_taps
from .power import _compute_dtype, _no_autocast

__all__ = ['GRAM_ITERS', 'gram_schatten_bound', 'conv_gram_bound']

# Schatten-128 norms: at most 0.9% (median 0.2%) above the exact symbol norm on the ResNet-50 convs at 224, at most
# 0.7% (median 6e-5) on ResNet-18 at 32 (benchmarks/results_gram.json)
GRAM_ITERS = 6


def gram_schatten_bound(mats: Tensor, n_iter: int = GRAM_ITERS) -> Tensor:
    """``||M||_{S_p} >= sigma_max(M)``, ``p = 2^(n_iter+1)``, of each matrix of the batch ``mats`` (..., r, c).

    Rescaled Gram iteration (module docstring) on the smaller Gram side; differentiable; ``n_iter=0`` is the
    Frobenius norm. Real or complex input; returns the real dtype, shape ``mats.shape[:-2]``.

    Example::

        >>> m = torch.diag(torch.tensor([3., 1.], dtype=torch.float64))
        >>> float(gram_schatten_bound(m, 4))  # (3^32 + 1)^(1/32)
        3.0
    """
    g, log_scale = _rescaled(mats)
    for t in range(n_iter):
        g, log_scale, _ = _gram_step(g, log_scale, t)
    return torch.linalg.matrix_norm(g) ** 2.0 ** -n_iter * log_scale.exp()


def _rescaled(mats: Tensor) -> tuple[Tensor, Tensor]:
    """``(g, log c)``: the side of ``mats`` whose Gram matrix is the smaller, divided by its largest entry ``c``
    (entries <= 1: its Frobenius norm cannot overflow)."""
    g = mats if mats.shape[-1] <= mats.shape[-2] else mats.mH
    scale = g.abs().amax(dim=(-2, -1)).detach().clamp_min(torch.finfo(mats.real.dtype).tiny)
    return g / scale[..., None, None].to(g.dtype), scale.log()


def _gram_step(g: Tensor, log_scale: Tensor, t: int) -> tuple[Tensor, Tensor, Tensor]:
    """Gram step ``t`` (0-based): ``G_(t+1) = (G_t / c_t)^H (G_t / c_t)`` with ``c_t = ||G_t||_F`` (detached),
    carrying ``sum_t 2^-t log c_t`` in ``log_scale``; also returns ``c_t^2``. ``c_t^2 = tr(G_t^H G_t)``: the
    norm comes from the product's trace, and for ``t >= 1`` ``G_t`` is Hermitian, so ``G_t^H G_t = G_t G_t``."""
    h = g.mH @ g if t == 0 else g @ g
    norm2 = h.diagonal(dim1=-2, dim2=-1).real.sum(-1).detach().clamp_min(torch.finfo(log_scale.dtype).tiny)
    return h / norm2[..., None, None].to(h.dtype), log_scale + 0.5 * norm2.log() * 2.0 ** -t, norm2


@torch.no_grad()
def _max_bound(mats: Tensor, n_iter: int, floor: Tensor | None) -> tuple[Tensor, int]:
    """``(max_i bound_i, argmax i)`` of :func:`gram_schatten_bound` over the batch ``mats`` (B, r, c), or
    ``(-inf, -1)`` if no bound reaches ``floor`` (a maximum known from other batches).

    Matrices that provably cannot hold the maximum are dropped as it goes, which leaves the maximum unchanged:
    after ``t >= 1`` steps ``sigma_max`` lies between ``lower = (||G_t||_F^2 / tr G_t)^(2^-t)`` (``G_t`` is PSD,
    so ``sum lam^2 <= lam_max tr G_t``) and ``upper = ||G_t||_F^(2^-t)``, and the bounds only decrease with
    ``t``, so a matrix whose ``upper`` is below the largest ``lower`` (or ``floor``) stays below the final max.
    """
    g, log_scale = _rescaled(mats)
    index = torch.arange(mats.shape[0], device=mats.device)
    for t in range(n_iter):
        trace = g.diagonal(dim1=-2, dim2=-1).real.sum(-1)  # of G_t, before the step replaces it
        g_next, log_next, norm2 = _gram_step(g, log_scale, t)
        if t >= 1:
            upper = norm2 ** (0.5 * 2.0 ** -t) * log_scale.exp()
            lower = (norm2 / trace.clamp_min(torch.finfo(trace.dtype).tiny)) ** 2.0 ** -t * log_scale.exp()
            best_lower = lower.max()
            threshold = best_lower if floor is None else torch.maximum(best_lower, floor)
            keep = upper >= threshold
            if floor is None or best_lower >= floor:  # the matrix that sets the threshold stays, whatever the
                keep[lower.argmax()] = True  # rounding (upper == lower for a rank-one matrix)
            if not keep.any():
                return torch.tensor(-math.inf), -1
            if not keep.all():
                g_next, log_next, index = g_next[keep], log_next[keep], index[keep]
        g, log_scale = g_next, log_next
    bounds = torch.linalg.matrix_norm(g) ** 2.0 ** -n_iter * log_scale.exp()
    if floor is not None and bounds.max() < floor:
        return torch.tensor(-math.inf), -1
    best = int(bounds.argmax())
    return bounds[best], int(index[best])


def conv_gram_bound(weight: Tensor, geom: ConvGeometry, n_iter: int = GRAM_ITERS, *,
                    dtype: torch.dtype | None = None) -> Tensor:
    """Upper bound on ``sigma_max`` of the conv operator ``geom`` (any padding, stride, groups, dilation).

    ``max`` over frequencies and groups of :func:`gram_schatten_bound` of the symbol matrices on the grid of
    the module docstring: ``>=`` the exact circular norm for block-circulant circular geometries, ``>=`` the
    exact norm of the real (zero-padded) operator always; decreasing to the symbol's norm as ``n_iter`` grows.
    Differentiable in ``weight`` (autograd through the maximizing matrix only); under ``torch.no_grad`` or
    for a weight without grad only the scan runs.

    Args:
        weight: kernel ``(C_out, C_in/groups, *k)``.
        geom: the operator (:meth:`ConvGeometry.from_module` of the layer).
        n_iter: Gram steps ``T`` (the bound is a Schatten ``2^(T+1)`` norm of each symbol matrix).
        dtype: compute dtype (float32 -> complex64, float64 -> complex128); default from the weight.

    Returns:
        0-dim tensor in the compute dtype.

    Example::

        >>> conv = torch.nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        >>> geom = ConvGeometry.from_module(conv, (16, 32, 32))
        >>> conv_gram_bound(conv.weight, geom).backward()  # conv.weight.grad: gradient of the bound
    """
    _check_weight(weight, geom)
    if n_iter < 0:
        raise ValueError(f"conv_gram_bound: n_iter={n_iter} must be >= 0 (Gram steps).")
    if _block_circulant(geom, tuple(weight.shape[2:])):
        grid, factor = geom.in_spatial, 1.0
    else:
        weight, geom = _reaching_taps(weight, geom)  # differentiable: unused taps get a zero gradient
        grid, factor = _bounding_grid(geom)
    with _no_autocast(weight.device):
        w = weight.to(_compute_dtype(weight.dtype, dtype))
        best, where = None, None
        for start, mats in _symbol_matrices(w.detach(), geom, grid):
            top, i = _max_bound(mats.reshape((-1,) + mats.shape[2:]), n_iter, best)
            if best is None or top > best:
                f, g = divmod(i, geom.groups)
                best, where = top, (start + f, g)
        if not (torch.is_grad_enabled() and w.requires_grad):
            return best * factor
        if best == 0:  # zero kernel: 0 is a subgradient of the norm there (the bound's x^(1/p) has none)
            return (w * 0).sum()
        f, g = where
        _, mats = next(_symbol_matrices(w, geom, grid, freqs=range(f, f + 1)))
        return gram_schatten_bound(mats[0, g], n_iter) * factor


def _symbol_matrices(w: Tensor, geom: ConvGeometry, grid: tuple[int, ...], freqs: range | None = None):
    """``(start, mats)`` chunks of the symbol matrices (freq, groups, rows, cols) on ``grid`` (transposed: the
    bound does not care); a 1x1 kernel's symbol is constant, one frequency: the group matrices ``W_g``."""
    if all(k == 1 for k in w.shape[2:]):
        yield 0, w.reshape(1, geom.groups, w.shape[0] // geom.groups, w.shape[1])
    else:
        yield from _symbol_chunks(w, grid, geom.stride, geom.dilation, geom.groups, freqs)
