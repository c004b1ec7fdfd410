"""The FMN, DDN and ALMA optimization loops (L2, untargeted) on the unit box, batched and device-resident.

Written here rather than called from a library, for these measured reasons:

- foolbox 3.3.4's ``L2FMNAttack`` never projects onto the eps-ball (its L2 ``project`` scales
  by ``min(1, norms / norms) = 1``): on the analytic hyperplane of ``tests/test_attacks.py`` it
  returns 1.79-3.57x the true distance at any step count; foolbox has had no release since 2024
  and imports GitPython, which fails without a git executable.
- secml-torch 1.5's min-distance loop copies each step's distances to the host (``.cpu()``), a
  per-step device sync, and takes data loaders and its own model wrapper.
- adv-lib (0.2.8) has all three, but needs visdom, which stock pip cannot build on Python < 3.12.

The loops keep everything on the input's device, with no host sync inside the loop, and return
the best adversarial point seen (``u`` itself where none was found), as the libraries do.

FMN, L2 (Pintor, Roli, Brendel, Biggio; NeurIPS 2021, Alg. 1), on the logit margin
``L(u) = z_y(u) - max_{j != y} z_j(u)`` (adversarial iff ``L < 0``). Per step k of K, with
``alpha_k`` and ``gamma_k`` cosine-annealed from ``max_stepsize`` to ``min_stepsize`` and from
``gamma`` to ``gamma_final``:

    eps <- min(eps (1 - gamma_k), ||delta*||)        if u + delta is adversarial
           eps (1 + gamma_k)                          elif an adversarial point was seen
           ||delta|| + |L| / ||grad L||               else (linearized distance to the boundary)
    eps <- min(eps, ||max(u, 1 - u)||)                (no farther than the farthest point of the box)
    delta <- delta - alpha_k grad L / ||grad L||,  then onto the L2 ball of radius eps and the box.

``starting_points`` (adversarial): 10 bisection steps on the segment from ``u`` to the start give
the first ``delta`` (on the adversarial side), as in the paper's warm start.

DDN (Rony et al.; CVPR 2019, Alg. 1), untargeted: an ascent step ``alpha_k g / ||g||`` on the
cross-entropy of ``y`` (``alpha_k`` cosine-annealed from 1 to 0.01), then the norm is set to
``eps``, which shrinks by (1 - gamma) after an adversarial iterate and grows by (1 + gamma)
otherwise (``eps`` starts at ``init_epsilon``); points are continuous (not quantized).

ALMA, L2 (Rony, Granger, Pedersoli, Ben Ayed; ICCV 2021), untargeted: minimize
``||delta|| + P2(dlr, rho, mu)`` where the difference-of-logits ratio
``dlr = (z_y - max_{j != y} z_j + tol) / (z_(1) - z_(3) + 1e-8)`` (``z_(k)`` the k-th largest logit)
is negative iff the point is adversarial, and P2 is the penalty-Lagrangian function of Birgin et
al. (2005):

    P2(y; rho, mu) = mu y + mu rho y^2 + rho^2 y^3 / 6   (y >= 0),   mu y / (1 - rho y)   (y < 0).

The first step minimizes P2 alone. The multiplier follows ``mu <- a mu + (1 - a) dP2/dy`` (clamped to
[1e-6, 1e12]); every ``check_steps`` steps ``rho <- gamma rho`` for samples that are not yet
adversarial and whose dlr did not fall below ``tau`` times its value at the last check. Steps are
RMSProp with momentum (both smoothing constants ``a``) at ``lr_init``, decayed exponentially to
``lr_init * lr_reduction`` between a sample's first adversarial iterate and the last step.

Units: ``u`` in [0, 1]; norms are L2 in those units.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["alma_l2", "ddn_l2", "fmn_l2", "p2_penalty", "p2_penalty_grad"]


def _cosine(start: float, end: float, k: int, steps: int) -> float:
    """Cosine annealing from ``start`` (k = 0) towards ``end`` (k = steps)."""
    return end + (start - end) * (1 + math.cos(math.pi * k / steps)) / 2


def _norms(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1)


def _view(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return v.view(-1, *([1] * (like.dim() - 1)))


def _margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Logit margin ``z_y - max_{j != y} z_j`` per row (negative iff the arg-max is not ``y``)."""
    return logits.gather(1, y[:, None])[:, 0] - logits.scatter(1, y[:, None], -math.inf).amax(1)


def _keep_best(adv: torch.Tensor, l2: torch.Tensor, delta: torch.Tensor, best_l2: torch.Tensor,
               best_delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(best_l2, best_delta) updated with the rows of ``delta`` that are adversarial and smaller."""
    better = adv & (l2 < best_l2)
    return torch.where(better, l2, best_l2), torch.where(_view(better, delta), delta, best_delta)


def _best_point(u: torch.Tensor, best_l2: torch.Tensor, best_delta: torch.Tensor) -> torch.Tensor:
    """``u + best_delta`` where an adversarial point was seen, ``u`` elsewhere."""
    return torch.where(_view(best_l2 < math.inf, u), u + best_delta, u)


def _bisect_to_boundary(model, u: torch.Tensor, start: torch.Tensor, y: torch.Tensor, steps: int) -> torch.Tensor:
    """The point ``u + t (start - u)`` with the smallest ``t`` in [0, 1] found adversarial by
    ``steps`` bisections (``start`` must be adversarial)."""
    lo = torch.zeros(len(u), device=u.device, dtype=u.dtype)
    hi = torch.ones_like(lo)
    with torch.no_grad():
        for _ in range(steps):
            mid = (lo + hi) / 2
            adv = model(u + _view(mid, u) * (start - u)).argmax(1) != y
            hi = torch.where(adv, mid, hi)
            lo = torch.where(adv, lo, mid)
    return u + _view(hi, u) * (start - u)


def fmn_l2(model, u: torch.Tensor, y: torch.Tensor, steps: int, starting_points: torch.Tensor | None = None, *,
           max_stepsize: float = 1.0, min_stepsize: float | None = None, gamma: float = 0.05,
           gamma_final: float = 0.001, binary_search_steps: int = 10) -> torch.Tensor:
    """FMN, L2 (see the module docstring): the smallest adversarial ``u + delta`` seen in
    ``steps`` steps (one forward and one backward per step), ``u`` where none was found."""
    min_stepsize = max_stepsize / 100 if min_stepsize is None else min_stepsize
    if starting_points is not None:
        with torch.no_grad():
            if not bool((model(starting_points).argmax(1) != y).all()):  # one check per call
                raise ValueError("starting points are not all adversarial")
        delta = _bisect_to_boundary(model, u, starting_points, y, binary_search_steps) - u
    else:
        delta = torch.zeros_like(u)
    n = len(u)
    eps = torch.full((n,), math.inf, device=u.device, dtype=u.dtype)
    best_l2 = torch.full_like(eps, math.inf)
    best_delta = torch.zeros_like(u)
    found = torch.zeros(n, dtype=torch.bool, device=u.device)
    worst = _norms(torch.maximum(u, 1 - u))
    for k in range(steps):
        alpha = _cosine(max_stepsize, min_stepsize, k, steps)
        gamma_k = _cosine(gamma, gamma_final, k, steps)
        x_adv = (u + delta).detach().requires_grad_(True)
        margin = _margin(model(x_adv), y)
        (grad,) = torch.autograd.grad(margin.sum(), x_adv)
        margin = margin.detach()
        adv = margin < 0
        l2 = _norms(delta)
        best_l2, best_delta = _keep_best(adv, l2, delta, best_l2, best_delta)
        found |= adv
        grad_norm = _norms(grad).clamp_min(1e-12)
        eps = torch.where(adv, torch.minimum(eps * (1 - gamma_k), best_l2),
                          torch.where(found, eps * (1 + gamma_k), l2 + margin.abs() / grad_norm)).minimum(worst)
        delta = delta - alpha * grad / _view(grad_norm, u)
        delta = delta * _view((eps / _norms(delta).clamp_min(1e-12)).clamp(max=1.0), u)
        delta = (u + delta).clamp(0, 1) - u
    return _best_point(u, best_l2, best_delta)


def ddn_l2(model, u: torch.Tensor, y: torch.Tensor, steps: int, starting_points: torch.Tensor | None = None, *,
           init_epsilon: float = 1.0, gamma: float = 0.05, max_stepsize: float = 1.0,
           min_stepsize: float = 0.01) -> torch.Tensor:
    """DDN, L2, untargeted (see the module docstring): the smallest adversarial ``u + delta``
    seen in ``steps`` steps (one forward and one backward per step), ``u`` where none was found."""
    if starting_points is not None:
        raise TypeError("DDN takes no starting points")
    n = len(u)
    delta = torch.zeros_like(u)
    eps = torch.full((n,), float(init_epsilon), device=u.device, dtype=u.dtype)
    best_l2 = torch.full_like(eps, math.inf)
    best_delta = torch.zeros_like(u)
    for k in range(steps):
        alpha = _cosine(max_stepsize, min_stepsize, k, steps)
        x_adv = (u + delta).detach().requires_grad_(True)
        logits = model(x_adv)
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), x_adv)
        adv = logits.detach().argmax(1) != y
        best_l2, best_delta = _keep_best(adv, _norms(delta), delta, best_l2, best_delta)
        delta = delta + alpha * grad / _view(_norms(grad).clamp_min(1e-12), u)
        eps = torch.where(adv, eps * (1 - gamma), eps * (1 + gamma))
        delta = delta * _view(eps / _norms(delta).clamp_min(1e-12), u)
        delta = (u + delta).clamp(0, 1) - u
    return _best_point(u, best_l2, best_delta)


def p2_penalty(y: torch.Tensor, rho: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """Birgin et al.'s P2 penalty-Lagrangian function (see the module docstring), elementwise."""
    return torch.where(y >= 0, mu * y + mu * rho * y ** 2 + rho ** 2 * y ** 3 / 6,
                       mu * y / (1 - rho * y.clamp(max=0)))


def p2_penalty_grad(y: torch.Tensor, rho: torch.Tensor, mu: torch.Tensor) -> torch.Tensor:
    """dP2/dy: ``mu + 2 mu rho y + rho^2 y^2 / 2`` for y >= 0, ``mu / (1 - rho y)^2`` for y < 0."""
    return torch.where(y >= 0, mu + 2 * mu * rho * y + rho ** 2 * y ** 2 / 2, mu / (1 - rho * y.clamp(max=0)) ** 2)


def _dlr(logits: torch.Tensor, y: torch.Tensor, tol: float) -> torch.Tensor:
    """Difference-of-logits ratio, positive iff the arg-max is ``y`` (needs >= 3 classes)."""
    top3 = logits.topk(3, dim=1).values
    return (_margin(logits, y) + tol) / (top3[:, 0] - top3[:, 2] + 1e-8)


def alma_l2(model, u: torch.Tensor, y: torch.Tensor, steps: int, starting_points: torch.Tensor | None = None, *,
            lr_init: float = 0.1, lr_reduction: float = 0.01, mu_init: float = 1.0, rho_init: float = 1.0,
            check_steps: int = 10, tau: float = 0.95, gamma: float = 1.2, alpha: float = 0.9,
            logit_tolerance: float = 1e-4) -> torch.Tensor:
    """ALMA, L2, untargeted (see the module docstring): the smallest adversarial ``u + delta`` seen in
    ``steps`` steps (one forward and one backward per step), ``u`` where none was found."""
    if starting_points is not None:
        raise TypeError("ALMA takes no starting points")
    n = len(u)
    kw = dict(device=u.device, dtype=u.dtype)
    delta = torch.zeros_like(u)
    square_avg, buffer = torch.ones_like(u), torch.zeros_like(u)
    mu, rho = torch.full((n,), mu_init, **kw), torch.full((n,), rho_init, **kw)
    best_l2 = torch.full((n,), math.inf, **kw)
    best_delta = torch.zeros_like(u)
    found = torch.zeros(n, dtype=torch.bool, device=u.device)
    first_found = torch.full((n,), steps + 1, **kw)  # step of the first adversarial iterate
    prev_dlr = None
    for k in range(steps):
        delta = delta.detach().requires_grad_(True)
        l2 = _norms(delta)
        dlr = _dlr(model(u + delta), y, logit_tolerance)
        d = dlr.detach()
        if k == 0:
            prev_dlr = d
        elif (k + 1) % check_steps == 0:
            rho = torch.where(found | (d < tau * prev_dlr), rho, gamma * rho)
            prev_dlr = d
        if k:
            mu = (alpha * mu + (1 - alpha) * p2_penalty_grad(d, rho, mu)).clamp(1e-6, 1e12)
        adv = d < 0
        first_found = torch.where(adv & ~found, torch.full_like(first_found, k), first_found)
        found |= adv
        best_l2, best_delta = _keep_best(adv, l2.detach(), delta.detach(), best_l2, best_delta)
        loss = p2_penalty(dlr, rho, mu) if k == 0 else l2 + p2_penalty(dlr, rho, mu)
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        decay = lr_reduction ** ((k - first_found).clamp(min=0) / (steps - first_found))
        square_avg = alpha * square_avg + (1 - alpha) * grad * grad
        buffer = alpha * buffer + grad / (square_avg.sqrt() + 1e-8)
        delta = (u + delta.detach() - _view(lr_init * decay, u) * buffer).clamp(0, 1) - u
    return _best_point(u, best_l2, best_delta)
