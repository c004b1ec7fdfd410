"""White-box L2 PGD in [0, 1] pixel space: robust-accuracy curves and adversarial training.

The model's train/eval mode is the caller's choice and is never changed; gradients are taken
with ``torch.autograd.grad`` with respect to the input only, so parameter ``.grad`` buffers
are untouched (safe inside a training step).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from .oracle import EVAL_BATCH_SIZE, Classifier, check_image_values, predict_labels

__all__ = ["pgd_l2", "robust_accuracy_curve"]


def _per_sample(value: float | torch.Tensor, like: torch.Tensor, name: str) -> torch.Tensor:
    """(N, 1, ..., 1) tensor broadcastable against ``like`` from a float or an (N,) tensor."""
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device).flatten()
    if t.numel() == 1:
        t = t.expand(len(like))
    if t.shape != (len(like),) or not torch.isfinite(t).all() or (t < 0).any():
        raise ValueError(f"{name} must be a finite number >= 0 or one per sample "
                         f"({len(like)},), got {value!r}")
    return t.view(-1, *([1] * (like.dim() - 1)))


def _norm(t: torch.Tensor) -> torch.Tensor:
    """Per-sample L2 norm, shaped to broadcast against t; never zero."""
    n = t.flatten(1).norm(dim=1).clamp_min(torch.finfo(t.dtype).tiny)
    return n.view(-1, *([1] * (t.dim() - 1)))


def pgd_l2(model: Classifier, x: torch.Tensor, y: torch.Tensor, eps: float | torch.Tensor,
           steps: int = 10, step_size: float | torch.Tensor | None = None,
           random_start: bool = True, generator: torch.Generator | None = None,
           bounds: Sequence[float] = (0.0, 1.0)) -> torch.Tensor:
    """Untargeted L2 projected gradient ascent on the cross-entropy loss.

    Each step: ``x' <- x' + step_size * g / ||g||`` (g the input gradient of the summed
    cross-entropy, normalized per sample), then projection onto the L2 ball of radius eps
    around x (``delta *= min(1, eps / ||delta||)``) and onto the box ``bounds`` (clipping
    only moves coordinates towards x, so the result stays in the ball).

    Args:
        model: differentiable classifier on images in ``bounds`` returning logits; its mode
            (train/eval) is left as the caller set it.
        x: images (N, ...) in ``bounds``; y: labels (N,).
        eps: L2 radius in pixel units, a float or one per sample (N,).
        steps: gradient steps (>= 1).
        step_size: per step; default 2 * eps / steps (Madry et al.; Roth et al. CNN7 recipe).
        random_start: start uniformly in the L2 ball (direction Gaussian, radius
            eps * U^{1/d}), clipped to the box.
        generator: torch.Generator on x's device for the random start.

    Returns:
        Adversarial images (N, ...), detached, with ||x_adv - x|| <= eps and inside bounds.

    Example::

        x_adv = pgd_l2(model, x, y, eps=1.75, steps=10)
        loss = F.cross_entropy(model(x_adv), y)   # adversarial training step
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    check_image_values("x", x, (lo, hi))
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")
    x = x.detach()
    eps_t = _per_sample(eps, x, "eps")
    alpha = 2 * eps_t / steps if step_size is None else _per_sample(step_size, x, "step_size")
    if random_start:
        direction = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        u = torch.rand((len(x),) + (1,) * (x.dim() - 1), generator=generator,
                       dtype=x.dtype, device=x.device)
        radius = eps_t * u ** (1.0 / x[0].numel())
        x_adv = (x + direction / _norm(direction) * radius).clamp(lo, hi)
    else:
        x_adv = x.clone()
    for _ in range(steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, x_adv)
        with torch.no_grad():
            delta = x_adv + alpha * grad / _norm(grad) - x
            delta = delta * (eps_t / _norm(delta)).clamp(max=1.0)
            x_adv = (x + delta).clamp(lo, hi)
    return x_adv.detach()


def robust_accuracy_curve(model: Classifier, x: torch.Tensor, y: torch.Tensor,
                          eps_list: Sequence[float], steps: int = 10,
                          step_size: float | None = None, random_start: bool = True,
                          generator: torch.Generator | None = None, batch_size: int = EVAL_BATCH_SIZE,
                          bounds: Sequence[float] = (0.0, 1.0)) -> list[float]:
    """Robust accuracy (fraction 0..1) under L2 PGD for each eps in ``eps_list``.

    An example counts as broken at eps if it is misclassified clean or PGD broke it at any
    eps' <= eps (the eps'-ball lies inside the eps-ball), so the curve is non-increasing in
    eps whatever PGD's luck. ``step_size`` None: 2 * eps / steps for each eps. Runs in
    chunks of ``batch_size`` samples; the result is aligned with ``eps_list``.
    """
    eps_sorted = sorted(range(len(eps_list)), key=lambda i: eps_list[i])
    if any(not float(e) >= 0 for e in eps_list):
        raise ValueError(f"eps_list must hold numbers >= 0, got {list(eps_list)}")
    robust = torch.zeros(len(eps_list), dtype=torch.long)
    y = torch.as_tensor(y, device=x.device)
    for start in range(0, len(x), batch_size):
        xb, yb = x[start:start + batch_size], y[start:start + batch_size]
        broken = predict_labels(model, xb, batch_size).to(yb.device) != yb
        for i in eps_sorted:
            if eps_list[i] > 0:
                todo = (~broken).nonzero().flatten()
                if len(todo):
                    adv = pgd_l2(model, xb[todo], yb[todo], eps_list[i], steps, step_size,
                                 random_start, generator, bounds)
                    broken[todo] = predict_labels(model, adv, batch_size).to(yb.device) != yb[todo]
            robust[i] += int((~broken).sum())
    return (robust.double() / len(x)).tolist()
