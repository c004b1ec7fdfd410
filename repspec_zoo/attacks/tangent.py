"""Tangent Attack (Ma et al., NeurIPS 2021): hemisphere (TA) and semi-ellipsoid (G-TA).

Hard-label, untargeted, L2, in [0, 1] pixel space. Same loop as HopSkipJump
(`boundary.run_boundary_attack`); only the step differs: instead of walking from the
boundary point o along the estimated normal u, TA jumps to the point k of a hemisphere
(G-TA: semi-ellipsoid) centred at o on the adversarial side where the line from x touches it.
The bisection between x and k then lands on the boundary at a shallower angle than a step
along u would, i.e. closer to x.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Sequence

import torch

from .boundary import LARGE_INPUT_DIM, run_boundary_attack
from .oracle import Classifier
from .result import AttackResult
from .settings import AttackSettings
from .starts import StartPool

__all__ = ["tangent_point", "tangent_attack", "generalized_tangent_attack", "default_ratio"]

_OUTSIDE = 1e-6  # relative margin keeping x strictly outside the sphere / ellipse


def default_ratio(d: int) -> float:
    """G-TA axis ratio r = L / S: 1.5 for MNIST/CIFAR-size inputs, 1.1 for ImageNet-size."""
    return 1.1 if d > LARGE_INPUT_DIM else 1.5


def _orthogonal_unit(u: torch.Tensor) -> torch.Tensor:
    """A unit vector orthogonal to each (unit) row of u: e_j - u_j u with j = argmin |u_j|."""
    j = u.abs().argmin(1, keepdim=True)
    w = torch.zeros_like(u).scatter_(1, j, 1.0) - u.gather(1, j) * u
    return w / w.norm(dim=1, keepdim=True)


def tangent_point(x: torch.Tensor, o: torch.Tensor, u: torch.Tensor, radius: torch.Tensor,
                  ratio: float = 1.0) -> torch.Tensor:
    """Tangent point k from x to the semi-ellipsoid centred at o with axis ``radius`` along u.

    Rows are samples: x, o, u (n, d) with u unit, radius (n,) > 0. The semi-ellipsoid has
    semi-axis L = radius along u and S = L / ratio in every direction orthogonal to u; its
    adversarial half is <k - o, u> >= 0. ``ratio = 1`` is TA's hemisphere of radius R = L.

    Derivation. By symmetry k lies in the 2-D plane through o spanned by u and
    p_hat = p / ||p||, where v = x - o, a = <v, u>, p = v - a u. In plane coordinates
    (xi along p_hat, eta along u), x = (P, a) with P = ||p|| and the ellipse is
    xi^2 / S^2 + eta^2 / L^2 = 1. The tangent line at (xi0, eta0) is
    xi xi0 / S^2 + eta eta0 / L^2 = 1; it passes through x iff P xi0 / S^2 + a eta0 / L^2 = 1.
    Scaling xi0 = S c1, eta0 = L c2 turns this into the unit-circle problem
    c1^2 + c2^2 = 1, c1 P' + c2 a' = 1 with P' = P / S, a' = a / L, whose solutions are
    c = ((P', a') +- s' (-a', P')) / n'^2, with n'^2 = P'^2 + a'^2 and s' = sqrt(n'^2 - 1)
    (check: c.(P', a') = 1 and |c|^2 = (1 + s'^2) / n'^2 = 1). The '+' root has the larger
    eta, i.e. is the one towards the adversarial side:

        k = o + S (P' - a' s') / n'^2 * p_hat + L (s' P' + a') / n'^2 * u.

    For ratio = 1 (S = L = R, s = sqrt(n^2 - R^2), n = ||v||) this is the TA formula
    k = o + (R / n^2) ((R ||p|| - a s) p / ||p|| + (s ||p|| + R a) u), with ||k - o|| = R and
    <k - o, x - k> = 0. k is on the adversarial half (eta >= 0) iff P >= S; otherwise it lies
    below the base plane, is usually not adversarial, and the caller's halving of the radius
    brings S below P.

    Guards (absent from the reference): if x is not strictly outside the ellipse (n' <= 1,
    e.g. R = ||x - o|| at t = 1) both axes shrink by a common factor until n' = 1 / (1 - 1e-6);
    if p vanishes (x on the normal line through o) p_hat is any unit vector orthogonal to u.
    Requires x != o.
    """
    v = x - o
    a = (v * u).sum(1, keepdim=True)
    p = v - a * u
    pn = p.norm(dim=1, keepdim=True)
    # p below sqrt(eps) ||v|| is rounding noise, not a direction: treat it as zero
    flat = pn <= math.sqrt(torch.finfo(x.dtype).eps) * v.norm(dim=1, keepdim=True)
    p_hat = torch.where(flat, _orthogonal_unit(u), p / pn.clamp_min(torch.finfo(x.dtype).tiny))
    pn = torch.where(flat, torch.zeros_like(pn), pn)
    big = radius[:, None].to(x.dtype)
    small = big / ratio
    pp, aa = pn / small, a / big
    n1 = torch.sqrt(pp ** 2 + aa ** 2)
    shrink = (n1 * (1 - _OUTSIDE)).clamp(max=1.0)  # < 1 only when x is not outside
    big, small = big * shrink, small * shrink
    pp, aa, n1 = pp / shrink, aa / shrink, n1 / shrink
    s1 = torch.sqrt((n1 ** 2 - 1).clamp_min(0))
    n2 = n1 ** 2
    return o + small * (pp - aa * s1) / n2 * p_hat + big * (s1 * pp + aa) / n2 * u


def tangent_attack(model: Classifier, x: torch.Tensor, y: torch.Tensor, budget: int | torch.Tensor,
                   settings: AttackSettings = AttackSettings(), *,
                   starts: StartPool | torch.Tensor | None = None,
                   sample_ids: Sequence[int] | torch.Tensor | None = None) -> AttackResult:
    """Tangent Attack with a hemisphere of radius R = ||o - x|| / sqrt(t) (halved on failure).

    Args:
        model: classifier on images in ``settings.bounds`` returning logits, in eval mode.
        x: images (N, C, H, W) in the bounds; y: their labels (N,).
        budget: hard per-sample query budget (int or LongTensor (N,)).
        settings: seed, batch size (never changes results), ``max_iter`` (the rep-spectral
            paper uses 40), ``theta_scale`` (bisection threshold theta_scale / d^{3/2}; None: 1
            for d <= 3*64*64, else 1000), bounds, progress bar.
        starts: fallback starts when noise never fools the model (`StartPool` or images).
        sample_ids: per-sample ids for the random streams (default 0..N-1).

    Returns:
        `AttackResult` (verified: in bounds, misclassified, l2 = ||x_adv - x||).

    Example::

        res = tangent_attack(NormalizedModel(net).eval(), x, y, budget=10_000)
        res.l2_at_budgets([1000, 5000, 10000]).median(0)
    """
    return run_boundary_attack("ta", model, x, y, budget, partial(tangent_point, ratio=1.0), settings,
                               starts=starts, sample_ids=sample_ids, params={"ratio": 1.0})


def generalized_tangent_attack(model: Classifier, x: torch.Tensor, y: torch.Tensor,
                               budget: int | torch.Tensor, settings: AttackSettings = AttackSettings(), *,
                               starts: StartPool | torch.Tensor | None = None,
                               sample_ids: Sequence[int] | torch.Tensor | None = None,
                               ratio: float | None = None) -> AttackResult:
    """G-TA: Tangent Attack on a semi-ellipsoid with semi-axis L = ||o - x|| / sqrt(t) along
    the estimated normal and S = L / ratio across it (both halved on failure).

    ``ratio`` None: 1.5 for MNIST/CIFAR-size inputs, 1.1 for ImageNet-size (d > 3*64*64).
    Other arguments as `tangent_attack`; see `tangent_point` for the geometry.
    """
    ratio = default_ratio(x[0].numel()) if ratio is None else float(ratio)
    if not (ratio > 0 and math.isfinite(ratio)):
        raise ValueError(f"ratio must be a finite number > 0 (L / S of the semi-ellipsoid; "
                         f"1.5 CIFAR/MNIST, 1.1 ImageNet), got {ratio}")
    return run_boundary_attack("gta", model, x, y, budget, partial(tangent_point, ratio=ratio), settings,
                               starts=starts, sample_ids=sample_ids, params={"ratio": ratio})
