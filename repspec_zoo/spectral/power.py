"""Power iteration for the largest singular value of a linear layer or a conv operator, and the
differentiable ``sigma = <u, A(W) v>`` the penalty is built from.

* :func:`matrix_power_iteration` -- ``sigma_max`` of a matrix (nn.Linear weight).
* :func:`conv_power_iteration` -- ``sigma_max`` of the real conv operator (:func:`.operator.conv_apply`
  and its exact adjoint), for zero or circular padding. Cheap per step (one forward + one backward conv of
  a single sample); warm-started from the last ``(u, v)`` one step per training update suffices.
* :func:`sigma_from_vectors` -- ``sigma = <u, A(W) v>`` for fixed ``(u, v)``: differentiable in the
  weight, with ``d sigma / d W = u v^T``, the gradient of ``sigma_max`` at convergence.

Conventions (shared by :mod:`.fft`): iterations run under ``torch.no_grad`` with autocast disabled, in
float64 if the weight is float64 and float32 otherwise (fp16/bf16 weights are cast up); results come back
in that compute dtype. ``v`` has the layer's input shape ``(C_in, *spatial)``, ``u`` its output shape
``(C_out, *spatial_out)``; both have unit Euclidean norm.

Example::

    >>> conv = torch.nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
    >>> geom = ConvGeometry.from_module(conv, (3, 32, 32))
    >>> sigma, u, v = conv_power_iteration(conv.weight, geom, n_iter=50)
    >>> penalty = 0.5 * 1e-3 * sigma_from_vectors(conv.weight, u, v, geom) ** 2  # differentiable
"""
from __future__ import annotations

import contextlib
import math

import torch
from torch import Tensor

from .operator import ConvGeometry, _ConvOperator, conv_apply

__all__ = ['matrix_power_iteration', 'conv_power_iteration', 'sigma_from_vectors']


# ----------------------------------------------------------------------------------------------------
# compute conventions (shared with .fft)

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


# ----------------------------------------------------------------------------------------------------
# power iterations

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
# differentiable sigma

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
