"""Exact operator norm of a circularly padded conv from its DFT symbol, and the symbol bound on zero padding.

* :func:`conv_fft_sigma` -- the exact norm of a *circularly* padded conv (Sedghi et al. 2018; strided
  convs via polyphase components, Senderovich et al. 2022), with an exact top singular pair ``(u, v)``.
* :func:`conv_fft_upper_bound` -- the same symbol on a grid ``N >= n + 2p``: an upper bound on the
  zero-padded norm (what timm models compute).

Deterministic, unlike power iteration (:mod:`.power`), and it follows that module's dtype conventions.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn as nn
from torch import Tensor

from .operator import ConvGeometry, _check_weight, _circular_index, _reaching_taps, conv_apply
from .power import _compute_dtype, _no_autocast, _normalize

__all__ = ['conv_fft_sigma', 'conv_fft_upper_bound']

# Cap on the complex symbol entries held at once by the FFT path (2**23 complex64 = 64 MiB); larger
# symbols are processed in chunks of frequencies.
_SYMBOL_CHUNK_ELEMS = 2 ** 23
# Gram matrices at least this large get the Cholesky pruning of _top_eigenvalues (below it plain
# eigvalsh is as fast); power steps for its lower bounds; how many best-ranked matrices get eigvalsh first.
_PRUNE_MIN = 64
_PRUNE_POWER_STEPS = 8
_PRUNE_TOP = 4


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


def _freq_sizes(grid: tuple[int, ...], stride: tuple[int, ...]) -> tuple[int, ...]:
    """Frequencies per dim of the symbol on ``grid``: the coarse grid ``n/s``, the rfft half in the last dim."""
    coarse = tuple(n // s for n, s in zip(grid, stride))
    return coarse[:-1] + (coarse[-1] // 2 + 1,)


def _symbol_phases(ks: tuple[int, ...], grid: tuple[int, ...], stride: tuple[int, ...],
                   dilation: tuple[int, ...], device) -> Tensor:
    """The DFT of the taps, (freq*phase, taps) complex128: ``phases[(f, i), k] = exp(-2 pi j w_f . a_k / m)``
    if tap ``k`` falls in polyphase component ``i``, else 0 (frequency, tap and phase indices flattened in C
    order). Built as a product over dims of ``P_d[w, k, i]``; conventions in :func:`_symbol_top`."""
    coarse = tuple(n // s for n, s in zip(grid, stride))
    fsizes = _freq_sizes(grid, stride)
    phases = torch.ones((1, 1, 1), dtype=torch.complex128, device=device)
    for k, n, s, d, m, nf in zip(ks, grid, stride, dilation, coarse, fsizes):
        t = (torch.arange(k, device=device) * d) % n
        w = torch.arange(nf, device=device, dtype=torch.float64)
        p = torch.zeros((nf, k, s), dtype=torch.complex128, device=device)
        p[:, torch.arange(k, device=device), t % s] = torch.exp((-2j * math.pi / m) * w[:, None] * (t // s)[None, :])
        a, b, c = phases.shape
        phases = (phases[:, None, :, None, :, None] * p[None, :, None, :, None, :]).reshape(a * nf, b * k, c * s)
    n_freq = phases.shape[0]
    return phases.permute(0, 2, 1).reshape(n_freq * math.prod(stride), -1)


def _symbol_chunks(weight: Tensor, grid: tuple[int, ...], stride: tuple[int, ...], dilation: tuple[int, ...],
                   groups: int, freqs: range | None = None):
    """Yield ``(start, mt)``: ``mt[f, g] = M_g(w_{start+f})^T`` of shape (freq, groups, C_in/groups*prod(stride),
    C_out/groups), the transposed symbol matrices of :func:`_symbol_top` at the flat frequency indices ``freqs``
    (default all, see :func:`_freq_sizes`), at most ``_SYMBOL_CHUNK_ELEMS`` complex entries at a time.
    Differentiable in ``weight`` (one complex GEMM per chunk)."""
    c_out, c_in_g = weight.shape[:2]
    n_phase = math.prod(stride)
    ctype = torch.complex128 if weight.dtype == torch.float64 else torch.complex64
    # rows (freq, phase), cols taps
    phases = _symbol_phases(tuple(weight.shape[2:]), grid, stride, dilation, weight.device).to(ctype)
    kernel = weight.reshape(c_out, c_in_g, -1).permute(2, 1, 0).reshape(-1, c_in_g * c_out).to(ctype)
    co_g, ci_star = c_out // groups, c_in_g * n_phase
    freqs = range(phases.shape[0] // n_phase) if freqs is None else freqs
    chunk = max(1, _SYMBOL_CHUNK_ELEMS // (n_phase * c_in_g * c_out))
    for start in range(freqs.start, freqs.stop, chunk):
        stop = min(start + chunk, freqs.stop)
        # mt[f, (phase, ci), co] = M(w_f)^T
        mt = (phases[start * n_phase:stop * n_phase] @ kernel).reshape(stop - start, n_phase, c_in_g, groups, co_g)
        mt = mt.permute(0, 3, 1, 2, 4) if groups > 1 else mt.reshape(stop - start, 1, n_phase, c_in_g, co_g)
        yield start, mt.reshape(stop - start, groups, ci_star, co_g)


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
    over frequencies to bound memory (:func:`_symbol_chunks`). ``M(w)`` is reduced to the Gram matrix of
    its smaller side, whose top eigenvalue is ``sigma^2`` (eigvalsh: faster than svdvals on CPU; see
    _top_eigenvalues).

    Returns ``(sigma, best)`` where ``best = (freq, group, z)`` (top right singular vector ``z`` of
    ``M(freq)`` in layout ``(C_in/groups, *stride)``) if ``want_vector``, else None.
    """
    nd = len(grid)
    c_out, c_in_g = weight.shape[:2]
    ks = tuple(weight.shape[2:])
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

    best_eig, best = None, None
    for start, mt in _symbol_chunks(weight, grid, stride, dilation, groups):
        co_g, ci_star = mt.shape[-1], mt.shape[-2]
        gram = mt.mH @ mt if co_g <= ci_star else mt @ mt.mH  # conj of M M^H / M^H M: same eigenvalues
        eig = _top_eigenvalues(gram.reshape((-1,) + gram.shape[2:]), best_eig).reshape(mt.shape[:2])
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
    for size in reversed(_freq_sizes(grid, stride)):  # unravel the flat frequency index (C order)
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
    the symbol. Taps that never meet the input are cropped first (``operator._reaching_taps``). Cheap and
    deterministic; tight on large inputs, loose on tiny ones (for an exact value use
    :func:`conv_power_iteration`). For circular geometries the exact :func:`conv_fft_sigma` value is
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
    if _block_circulant(geom, tuple(weight.shape[2:])):
        return conv_fft_sigma(weight, geom, vectors=False, dtype=dtype)[0]
    weight, geom = _reaching_taps(weight, geom)
    grid, factor = _bounding_grid(geom)
    cdtype = _compute_dtype(weight.dtype, dtype)
    with torch.no_grad(), _no_autocast(weight.device):
        sigma, _ = _symbol_top(weight.detach().to(cdtype), grid, geom.stride, geom.dilation, geom.groups, False)
    return sigma * factor


def _block_circulant(geom: ConvGeometry, ks: tuple[int, ...]) -> bool:
    """Whether ``geom`` is a circular conv on its own grid: circular padding, sizes divisible by the stride,
    output size ``n/s`` (then its symbol on ``in_spatial`` gives the exact norm)."""
    out = geom.out_spatial(ks)
    return geom.padding_mode == 'circular' and all(
        n % s == 0 and o == n // s for n, s, o in zip(geom.in_spatial, geom.stride, out))


def _bounding_grid(geom: ConvGeometry) -> tuple[tuple[int, ...], float]:
    """``(grid, factor)`` with ``sigma_max(geom's operator) <= factor * sigma_max(circular conv on grid)``.

    The padded input (size ``n + lo + hi``) is embedded in the smallest grid ``N >= n + lo + hi`` divisible by
    the stride, where the valid outputs never wrap around (see :func:`conv_fft_upper_bound`); a circular
    padding that repeats input entries carries its own norm ``sqrt(prod_d max repeats)`` as ``factor``
    (1 for zero padding). For a :func:`_block_circulant` geometry the own grid is exact instead.
    """
    factor = 1.0
    if geom.padding_mode == 'circular':
        # circular padding copies an input entry up to `reps` times: ||pad|| = sqrt(prod max reps)
        for n, lo, hi in zip(geom.in_spatial, geom.padding, geom.padding_hi):
            factor *= float(torch.bincount(_circular_index(n, lo, hi, 'cpu'), minlength=n).max())
        factor = math.sqrt(factor)
    return tuple(-(-n_pad // s) * s for n_pad, s in zip(geom.padded_spatial, geom.stride)), factor
