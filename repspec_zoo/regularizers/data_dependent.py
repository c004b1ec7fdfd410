"""Data-dependent spectral norm regularization (Roth, Kilcher & Hofmann 2019, eq. 11-13).

For a classifier f: [0,1]^d -> R^K (logits) and a training point x, power iteration on the
input-output Jacobian J = J_f(x) (eq. 11),

    u_k = J v_{k-1} / ||J v_{k-1}||      (forward-mode AD, one jvp)
    v_k = J^T u_k / ||J^T u_k||          (reverse-mode AD, one vjp)

converges to the top right singular vector v of J (error ~ (sigma_2/sigma_1)^(2k)). The
sum-of-squares regularizer (eq. 13, the variant the authors trained with) is

    lam * ||f(x + eps v) - f(x)||_2^2  ~=  lam * eps^2 * (u^T J v)^2 = lam * eps^2 * sigma_max(J)^2

(the right side is eq. 12; equality holds exactly for affine f), averaged over the batch. v
is held fixed (no gradient); the gradient flows through both forward passes of f.

Units: x in [0, 1], eps an L2 radius in [0, 1] pixel units (normalization inside the model).
Roth et al. standardize every CIFAR-10 image to zero mean / unit variance before their CNN and
do not state the unit of their eps = 1.75 (lam = 1e-2, 10 iterations); read as standardized
units it is about 1.75 * 0.25 ~ 0.44 in [0, 1] pixels (CIFAR-10 channel std ~ 0.25). Choose
eps on our scale, e.g. the smallest radius at which PGD breaks almost every test point of the
standard model (their rule).
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
from torch import Tensor, nn

from ..spectral.jacobian import jvp, vjp

__all__ = ["DataDependentSpectralNorm", "eval_mode", "power_iteration"]


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule of ``model`` in eval mode; restore each one's own mode on exit."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def _unit(t: Tensor) -> Tensor:
    """t / ||t|| per sample (flattened), never dividing by zero."""
    return t / t.flatten(1).norm(dim=1).clamp_min(torch.finfo(t.dtype).tiny).view(-1, *([1] * (t.dim() - 1)))


def power_iteration(fn: Callable[[Tensor], Tensor], x: Tensor, iters: int, v0: Tensor | None = None,
                    generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Top singular value and right singular vector of J_fn(x_i) for every sample (eq. 11).

    Args:
        fn: sample-wise map (N, *in) -> (N, *out), e.g. a model in eval mode.
        x: points (N, *in).
        iters: forward/backward pairs (u <- J v, v <- J^T u); Roth et al. used 10.
        v0: warm start (N, *in), e.g. the ``v`` of this sample's previous step; random if None.
        generator: for the random start.

    Returns:
        sigma (N,) = ||J v|| and v (N, *in) unit, both detached.
    """
    if v0 is None:
        v0 = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
    elif v0.shape != x.shape:
        raise ValueError(f"v0 must have the shape of x {tuple(x.shape)}, got {tuple(v0.shape)}; pass the v returned "
                         "for the same samples, or None for a random start")
    v = _unit(v0.to(x.dtype))
    for _ in range(iters):
        _, u = jvp(fn, x, v)
        v = _unit(vjp(fn, x, u))
    _, jv = jvp(fn, x, v)
    return jv.flatten(1).norm(dim=1).detach(), v.detach()


class DataDependentSpectralNorm:
    """``lam * mean_i ||f(x_i + eps v_i) - f(x_i)||^2`` with v_i the top right singular vector of J_f(x_i).

    Args:
        lam: weight lambda >= 0 (Roth et al.: 1e-2 on CIFAR-10).
        eps: step along v, an L2 length > 0 in [0, 1] pixel units (see the module docstring).
        iters: power-iteration steps per call, >= 1 (Roth et al.: 10).

    The power iteration runs in eval mode (modes restored afterwards), with autocast off (so in
    the parameters' precision, float32 for mixed-precision training) and without building a
    parameter graph: in eval mode BatchNorm uses running statistics, so
    J_f(x) is block-diagonal over the batch (one jvp/vjp serves all samples) and the iteration does
    not touch the running statistics. The penalty's forward pass ``f(x + eps v)`` runs in the
    model's own mode (train mode during training: BatchNorm then normalizes it with its own batch
    statistics and updates the running ones, as any extra training forward does). ``x + eps v`` is
    not clipped to [0, 1]: the penalty measures f along the exact singular direction.

    After each call ``last_sigma`` (N,) and ``last_v`` (N, *in) hold the estimate, e.g. to
    warm-start the next visit of the same samples (``v0=``) or to log sigma_max.

    Example::

        reg = DataDependentSpectralNorm(lam=1e-2, eps=0.5, iters=10)
        logits = model(x)                      # x in [0, 1]
        loss = F.cross_entropy(logits, y) + reg.penalty(model, x, fx=logits)
    """

    def __init__(self, lam: float, eps: float, iters: int = 10):
        if not float(lam) >= 0:
            raise ValueError(f"lam must be a number >= 0 (Roth et al. used 1e-2), got {lam!r}")
        if not float(eps) > 0:
            raise ValueError(f"eps must be an L2 length > 0 in [0, 1] pixel units, got {eps!r}")
        if isinstance(iters, bool) or not isinstance(iters, int) or iters < 1:
            raise ValueError(f"iters must be an int >= 1 (Roth et al. used 10), got {iters!r}")
        self.lam, self.eps, self.iters = float(lam), float(eps), iters
        self.last_sigma: Tensor | None = None
        self.last_v: Tensor | None = None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(lam={self.lam}, eps={self.eps}, iters={self.iters})"

    def singular_direction(self, model: nn.Module, x: Tensor, v0: Tensor | None = None,
                           generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """(sigma (N,), v (N, *in)): power iteration on J_model(x) in eval mode, autocast off, no parameter graph."""
        with eval_mode(model), torch.no_grad(), torch.autocast(x.device.type, enabled=False):
            return power_iteration(model, x.detach(), self.iters, v0, generator)

    def penalty(self, model: nn.Module, x: Tensor, fx: Tensor | None = None, v0: Tensor | None = None,
                generator: torch.Generator | None = None) -> Tensor:
        """The scalar penalty for a batch x (N, *in) in [0, 1]; differentiable in the model's parameters.

        Args:
            model: x -> logits (N, K); plain module (unwrap DDP for the jvp/vjp).
            x: the clean batch.
            fx: ``model(x)`` if the caller already computed it (saves one forward pass).
            v0: warm start for the power iteration (N, *in), see :func:`power_iteration`.
            generator: for the random start.
        """
        if x.dim() < 2 or len(x) == 0:
            raise ValueError(f"x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
        sigma, v = self.singular_direction(model, x, v0, generator)
        self.last_sigma, self.last_v = sigma, v
        fx = model(x) if fx is None else fx
        f_moved = model(x + self.eps * v.to(x.dtype))
        if f_moved.shape != fx.shape:
            raise ValueError(f"fx has shape {tuple(fx.shape)} but model(x + eps v) has {tuple(f_moved.shape)}; pass "
                             "fx=model(x) (the logits of the same batch) or leave it None")
        diff = (f_moved - fx).flatten(1)
        return self.lam * diff.to(torch.promote_types(diff.dtype, torch.float32)).square().sum(1).mean()
