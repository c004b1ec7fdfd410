"""adv-lib 0.2.8's L2 minimal-norm attacks FMN, ALMA and DDN, vendored (L2 paths, untargeted).

Why a copy: every adv-lib release requires ``visdom``, and visdom's only releases for Python
< 3.12 are sdists whose ``setup.py`` imports ``pkg_resources`` (removed in setuptools 81), so
``pip install adv-lib`` fails on Python 3.10 / 3.11 with stock pip; adv-lib's ALMA and DDN modules
also import visdom at import time (for a plotting callback). The three functions below are
adv-lib's code with only the other norms / distances, the ``targeted`` switch and the visdom
``callback`` removed; the arithmetic is unchanged, and ``tests/test_advlib_l2.py`` checks
that they return bit-identical points to adv-lib itself (installed by the ``test`` extra).

Units: inputs in [0, 1]; distances are L2 norms in those units. Each function returns the
closest adversarial point it saw per sample, or the input itself where it found none.

adv-lib: https://github.com/jeromerony/adversarial-library (FMN adapted there from
https://github.com/maurapintor/Fast-Minimum-Norm-FMN-Attack). Its licence:

    BSD 3-Clause License

    Copyright (c) 2020, Jérôme Rony
    All rights reserved.

    Redistribution and use in source and binary forms, with or without
    modification, are permitted provided that the following conditions are met:

    1. Redistributions of source code must retain the above copyright notice, this
       list of conditions and the following disclaimer.

    2. Redistributions in binary form must reproduce the above copyright notice,
       this list of conditions and the following disclaimer in the documentation
       and/or other materials provided with the distribution.

    3. Neither the name of the copyright holder nor the names of its
       contributors may be used to endorse or promote products derived from
       this software without specific prior written permission.

    THIS SOFTWARE IS PROVIDED BY THE COPYRIGHT HOLDERS AND CONTRIBUTORS "AS IS"
    AND ANY EXPRESS OR IMPLIED WARRANTIES, INCLUDING, BUT NOT LIMITED TO, THE
    IMPLIED WARRANTIES OF MERCHANTABILITY AND FITNESS FOR A PARTICULAR PURPOSE ARE
    DISCLAIMED. IN NO EVENT SHALL THE COPYRIGHT HOLDER OR CONTRIBUTORS BE LIABLE
    FOR ANY DIRECT, INDIRECT, INCIDENTAL, SPECIAL, EXEMPLARY, OR CONSEQUENTIAL
    DAMAGES (INCLUDING, BUT NOT LIMITED TO, PROCUREMENT OF SUBSTITUTE GOODS OR
    SERVICES; LOSS OF USE, DATA, OR PROFITS; OR BUSINESS INTERRUPTION) HOWEVER
    CAUSED AND ON ANY THEORY OF LIABILITY, WHETHER IN CONTRACT, STRICT LIABILITY,
    OR TORT (INCLUDING NEGLIGENCE OR OTHERWISE) ARISING IN ANY WAY OUT OF THE USE
    OF THIS SOFTWARE, EVEN IF ADVISED OF THE POSSIBILITY OF SUCH DAMAGE.
"""
from __future__ import annotations

import math
from functools import partial
from typing import Optional

import torch
from torch import Tensor, nn
from torch.autograd import grad
from torch.nn import functional as F

#: adv-lib release these functions were copied from
ADV_LIB_VERSION = "0.2.8"


class ForwardCounter:
    """Forward pre-hook: rows passed through the module since `reset`."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.num_samples_called = 0

    def __call__(self, module, input) -> None:
        self.num_samples_called += len(input[0])


class BackwardCounter:
    """Full backward hook: rows back-propagated through the module since `reset`."""

    def __init__(self):
        self.reset()

    def reset(self):
        self.num_samples_called = 0

    def __call__(self, module, grad_input, grad_output) -> None:
        self.num_samples_called += len(grad_output[0])


def difference_of_logits(logits: Tensor, labels: Tensor, labels_infhot: Optional[Tensor] = None) -> Tensor:
    """``z_y - max_{k != y} z_k`` per sample (positive while the label wins)."""
    if labels_infhot is None:
        labels_infhot = torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), float('inf'))

    class_logits = logits.gather(1, labels.unsqueeze(1)).squeeze(1)
    other_logits = (logits - labels_infhot).amax(dim=1)
    return class_logits - other_logits


def difference_of_logits_ratio(logits: Tensor, labels: Tensor, labels_infhot: Optional[Tensor] = None,
                               ε: float = 0) -> Tensor:
    """Untargeted DLR (Croce & Hein 2020), ``(z_y - max_{k != y} z_k + ε) / (z_(1) - z_(3))``
    with the sorted logits ``z_(1) >= z_(2) >= z_(3)``; positive while the label wins."""
    logit_dists = difference_of_logits(logits=logits, labels=labels, labels_infhot=labels_infhot)
    top3_logits = torch.topk(logits, k=3, dim=1).values
    logit_normalization = top3_logits[:, 0] - top3_logits[:, -1]
    return (logit_dists + ε) / (logit_normalization + 1e-8)


def P2(y: Tensor, ρ: Tensor, μ: Tensor) -> Tensor:
    """ALMA's penalty-Lagrangian P2 of the constraint value ``y`` (``y < 0``: satisfied)."""
    y_sup = μ * y + μ * ρ * y ** 2 + 1 / 6 * ρ ** 2 * y ** 3
    y_inf = μ * y / (1 - ρ * y.clamp(max=0))
    return torch.where(y >= 0, y_sup, y_inf)


def l2_distances(x1: Tensor, x2: Tensor, dim: int = 1) -> Tensor:
    return (x1 - x2).flatten(dim).norm(p=2, dim=dim)


def _l2_projection_(δ: Tensor, ε: Tensor) -> Tensor:
    """In-place l2 projection"""
    δ = δ.flatten(1)
    l2_norms = δ.norm(p=2, dim=1, keepdim=True).clamp_(min=1e-12)
    δ.mul_(ε.unsqueeze(1) / l2_norms).clamp_(max=1)
    return δ


def _l2_mid_points(x0: Tensor, x1: Tensor, ε: Tensor) -> Tensor:
    return torch.lerp(x0.flatten(1), x1.flatten(1), weight=ε.unsqueeze(1)).view_as(x0)


def fmn(model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        steps: int = 10,
        α_init: float = 1.0,
        α_final: Optional[float] = None,
        γ_init: float = 0.05,
        γ_final: float = 0.001,
        starting_points: Optional[Tensor] = None,
        binary_search_steps: int = 10) -> Tensor:
    """Fast Minimum-Norm attack, L2, untargeted (https://arxiv.org/abs/2102.12827); adv-lib's
    ``fmn(norm=2)``.

    Args: ``steps`` optimization steps; step size cosine-annealed from ``α_init`` to ``α_final``
    (default ``α_init / 100``); ε factor annealed from ``γ_init`` to ``γ_final``;
    ``starting_points``: adversarial warm starts, first bisected (``binary_search_steps``) to
    the boundary. Raises ValueError when a starting point is not adversarial.
    """
    if inputs.min() < 0 or inputs.max() > 1: raise ValueError('Input values should be in the [0, 1] range.')
    device = inputs.device
    batch_size = len(inputs)
    batch_view = lambda tensor: tensor.view(batch_size, *[1] * (inputs.ndim - 1))
    α_final = α_init / 100 if α_final is None else α_final

    # If starting_points is provided, search for the boundary
    if starting_points is not None:
        start_preds = model(starting_points).argmax(dim=1)
        is_adv = start_preds != labels
        if not is_adv.all():
            raise ValueError('Starting points are not all adversarial.')
        lower_bound = torch.zeros(batch_size, device=device)
        upper_bound = torch.ones(batch_size, device=device)
        for _ in range(binary_search_steps):
            ε = (lower_bound + upper_bound) / 2
            mid_points = _l2_mid_points(x0=inputs, x1=starting_points, ε=ε)
            pred_labels = model(mid_points).argmax(dim=1)
            is_adv = pred_labels != labels
            lower_bound = torch.where(is_adv, lower_bound, ε)
            upper_bound = torch.where(is_adv, ε, upper_bound)

        δ = _l2_mid_points(x0=inputs, x1=starting_points, ε=upper_bound).sub_(inputs)
    else:
        δ = torch.zeros_like(inputs)
    δ.requires_grad_(True)

    ε = torch.full((batch_size,), float('inf'), device=device)

    # Init trackers
    worst_norm = torch.maximum(inputs, 1 - inputs).flatten(1).norm(p=2, dim=1)
    best_norm = worst_norm.clone()
    best_adv = inputs.clone()
    adv_found = torch.zeros(batch_size, dtype=torch.bool, device=device)

    for i in range(steps):
        cosine = (1 + math.cos(math.pi * i / steps)) / 2
        α = α_final + (α_init - α_final) * cosine
        γ = γ_final + (γ_init - γ_final) * cosine

        δ_norm = δ.data.flatten(1).norm(p=2, dim=1)
        adv_inputs = inputs + δ
        logits = model(adv_inputs)
        pred_labels = logits.argmax(dim=1)

        if i == 0:
            labels_infhot = torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), float('inf'))
            logit_diff_func = partial(difference_of_logits, labels=labels, labels_infhot=labels_infhot)

        logit_diffs = logit_diff_func(logits=logits)
        loss = -logit_diffs
        δ_grad = grad(loss.sum(), δ, only_inputs=True)[0]

        is_adv = pred_labels != labels
        is_smaller = δ_norm < best_norm
        is_both = is_adv & is_smaller
        adv_found.logical_or_(is_adv)
        best_norm = torch.where(is_both, δ_norm, best_norm)
        best_adv = torch.where(batch_view(is_both), adv_inputs.detach(), best_adv)

        distance_to_boundary = loss.detach().abs_().div_(δ_grad.flatten(1).norm(p=2, dim=1).clamp_(min=1e-12))
        ε = torch.where(is_adv,
                        torch.minimum(ε * (1 - γ), best_norm),
                        torch.where(adv_found, ε * (1 + γ), δ_norm + distance_to_boundary))

        # clip ε
        ε = torch.minimum(ε, worst_norm)
        # gradient ascent step with normalized gradient
        grad_l2_norms = δ_grad.flatten(1).norm(p=2, dim=1).clamp_(min=1e-12)
        δ.data.addcdiv_(δ_grad, batch_view(grad_l2_norms), value=α)
        # project in place
        _l2_projection_(δ=δ.data, ε=ε)
        # clamp
        δ.data.add_(inputs).clamp_(min=0, max=1).sub_(inputs)

    return best_adv


def _init_lr_finder(inputs: Tensor, grad: Tensor, distance_function, target_distance: float) -> Tensor:
    """Per-sample learning rate η with ``distance_function(inputs - η * grad) = target_distance``
    (line search, then 20 bisection steps)."""
    batch_size = len(inputs)
    batch_view = lambda tensor: tensor.view(batch_size, *[1] * (inputs.ndim - 1))
    lr = torch.ones(batch_size, device=inputs.device)
    lower = torch.zeros_like(lr)

    found_upper = distance_function((inputs - grad).clamp_(min=0, max=1)) > target_distance
    while (~found_upper).any():
        lower = torch.where(found_upper, lower, lr)
        lr = torch.where(found_upper, lr, lr * 2)
        found_upper = distance_function((inputs - batch_view(lr) * grad).clamp_(min=0, max=1)) > target_distance

    for i in range(20):
        new_lr = (lower + lr) / 2
        larger = distance_function((inputs - batch_view(new_lr) * grad).clamp_(min=0, max=1)) > target_distance
        lower, lr = torch.where(larger, lower, new_lr), torch.where(larger, new_lr, lr)

    return (lr + lower) / 2


def alma(model: nn.Module,
         inputs: Tensor,
         labels: Tensor,
         num_steps: int = 1000,
         lr_init: float = 0.1,
         lr_reduction: float = 0.01,
         init_lr_distance: Optional[float] = None,
         μ_init: float = 1,
         ρ_init: float = 1,
         check_steps: int = 10,
         τ: float = 0.95,
         γ: float = 1.2,
         α: float = 0.9,
         α_rms: Optional[float] = None,
         momentum: Optional[float] = None,
         logit_tolerance: float = 1e-4,
         levels: Optional[int] = None) -> Tensor:
    """ALMA, L2, untargeted, penalty P2 (https://arxiv.org/abs/2011.11857); adv-lib's
    ``alma(distance='l2')``.

    Args: ``num_steps`` forward/backward passes; RMSProp learning rate ``lr_init`` decayed to
    ``lr_init * lr_reduction`` after the first adversarial point; ``init_lr_distance``: set the
    first step's lr so that it moves that far (a zero gradient becomes a Gaussian direction);
    multiplier ``μ_init``, penalty ``ρ_init`` raised by ``γ`` when the DLR did not improve by
    ``τ`` over ``check_steps``; ``α`` EMA weight of μ, ``α_rms`` / ``momentum`` RMSProp
    constants (default ``α``); ``logit_tolerance`` added to the logit difference; ``levels``:
    quantize every iterate to that many grey levels.
    """
    device = inputs.device
    batch_size = len(inputs)
    batch_view = lambda tensor: tensor.view(batch_size, *[1] * (inputs.ndim - 1))

    # Setup variables
    δ = torch.zeros_like(inputs, requires_grad=True)
    square_avg = torch.ones_like(inputs)
    momentum_buffer = torch.zeros_like(inputs)
    lr = torch.full((batch_size,), lr_init, device=device, dtype=torch.float)
    α_rms, momentum = α if α_rms is None else α_rms, α if momentum is None else momentum

    # Init rho and mu
    μ = torch.full((batch_size,), μ_init, device=device, dtype=torch.float)
    ρ = torch.full((batch_size,), ρ_init, device=device, dtype=torch.float)

    dist_func = partial(l2_distances, inputs)

    # Init trackers
    best_dist = torch.full((batch_size,), float('inf'), device=device)
    best_adv = inputs.clone()
    adv_found = torch.zeros_like(best_dist, dtype=torch.bool)
    step_found = torch.full_like(best_dist, num_steps + 1)

    for i in range(num_steps):

        adv_inputs = inputs + δ
        logits = model(adv_inputs)
        dist = dist_func(adv_inputs)

        if i == 0:
            labels_infhot = torch.zeros_like(logits).scatter_(1, labels.unsqueeze(1), float('inf'))
            dlr_func = partial(difference_of_logits_ratio, labels=labels, labels_infhot=labels_infhot,
                               ε=logit_tolerance)

        dlr = dlr_func(logits)

        if i == 0:
            prev_dlr = dlr.detach()
        elif (i + 1) % check_steps == 0:
            improved_dlr = (dlr.detach() < τ * prev_dlr)
            ρ = torch.where(~(adv_found | improved_dlr), γ * ρ, ρ)
            prev_dlr = dlr.detach()

        if i:
            new_μ = grad(P2(dlr, ρ, μ).sum(), dlr, only_inputs=True)[0]
            μ.lerp_(new_μ, weight=1 - α).clamp_(min=1e-6, max=1e12)

        is_adv = dlr < 0
        is_smaller = dist < best_dist
        is_both = is_adv & is_smaller
        step_found.masked_fill_((~adv_found) & is_adv, i)
        adv_found.logical_or_(is_adv)
        best_dist = torch.where(is_both, dist.detach(), best_dist)
        best_adv = torch.where(batch_view(is_both), adv_inputs.detach(), best_adv)

        if i == 0:
            loss = P2(dlr, ρ, μ)
        else:
            loss = dist + P2(dlr, ρ, μ)
        δ_grad = grad(loss.sum(), δ, only_inputs=True)[0]

        grad_norm = δ_grad.flatten(1).norm(p=2, dim=1)
        if init_lr_distance is not None and i == 0:
            randn_grad = torch.randn_like(δ_grad).renorm(dim=0, p=2, maxnorm=1)
            δ_grad = torch.where(batch_view(grad_norm <= 1e-6), randn_grad, δ_grad)
            lr = _init_lr_finder(inputs, δ_grad, dist_func, target_distance=init_lr_distance)

        exp_decay = lr_reduction ** ((i - step_found).clamp_(min=0) / (num_steps - step_found))
        step_lr = lr * exp_decay
        square_avg.mul_(α_rms).addcmul_(δ_grad, δ_grad, value=1 - α_rms)
        momentum_buffer.mul_(momentum).addcdiv_(δ_grad, square_avg.sqrt().add_(1e-8))
        δ.data.addcmul_(momentum_buffer, batch_view(step_lr), value=-1)

        δ.data.add_(inputs).clamp_(min=0, max=1)
        if levels is not None:
            δ.data.mul_(levels - 1).round_().div_(levels - 1)
        δ.data.sub_(inputs)

    return best_adv


def ddn(model: nn.Module,
        inputs: Tensor,
        labels: Tensor,
        steps: int = 100,
        γ: float = 0.05,
        init_norm: float = 1.,
        levels: Optional[int] = 256) -> Tensor:
    """Decoupled Direction and Norm attack, untargeted (https://arxiv.org/abs/1811.09600);
    adv-lib's ``ddn``.

    Args: ``steps`` optimization steps; the norm ε starts at ``init_norm`` and is scaled by
    ``1 - γ`` (adversarial) or ``1 + γ``; ``levels``: quantize every iterate (None: continuous).
    """
    if inputs.min() < 0 or inputs.max() > 1: raise ValueError('Input values should be in the [0, 1] range.')
    device = inputs.device
    batch_size = len(inputs)
    batch_view = lambda tensor: tensor.view(batch_size, *[1] * (inputs.ndim - 1))

    # Init variables
    δ = torch.zeros_like(inputs, requires_grad=True)
    ε = torch.full((batch_size,), init_norm, device=device, dtype=torch.float)
    worst_norm = torch.max(inputs, 1 - inputs).flatten(1).norm(p=2, dim=1)

    # Init trackers
    best_l2 = worst_norm.clone()
    best_adv = inputs.clone()
    adv_found = torch.zeros(batch_size, dtype=torch.bool, device=device)

    for i in range(steps):
        l2 = δ.data.flatten(1).norm(p=2, dim=1)
        adv_inputs = inputs + δ
        logits = model(adv_inputs)
        pred_labels = logits.argmax(1)
        loss = F.cross_entropy(logits, labels, reduction='none')

        is_adv = pred_labels != labels
        is_smaller = l2 < best_l2
        is_both = is_adv & is_smaller
        adv_found.logical_or_(is_adv)
        best_l2 = torch.where(is_both, l2, best_l2)
        best_adv = torch.where(batch_view(is_both), adv_inputs.detach(), best_adv)

        δ_grad = grad(loss.sum(), δ, only_inputs=True)[0]
        # renorming gradient
        grad_norms = δ_grad.flatten(1).norm(p=2, dim=1)
        δ_grad.div_(batch_view(grad_norms))
        # avoid nan or inf if gradient is 0
        if (zero_grad := (grad_norms < 1e-12)).any():
            δ_grad[zero_grad] = torch.randn_like(δ_grad[zero_grad])

        α = 0.01 + (1 - 0.01) * (1 + math.cos(math.pi * i / steps)) / 2

        δ.data.add_(δ_grad, alpha=α)

        ε = torch.where(is_adv, (1 - γ) * ε, (1 + γ) * ε)
        ε = torch.minimum(ε, worst_norm)

        δ.data.mul_(batch_view(ε / δ.data.flatten(1).norm(p=2, dim=1)))
        δ.data.add_(inputs).clamp_(min=0, max=1)
        if levels is not None:
            δ.data.mul_(levels - 1).round_().div_(levels - 1)
        δ.data.sub_(inputs)

    return best_adv
