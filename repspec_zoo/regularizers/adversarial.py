"""L2-PGD adversarial training batches (Madry et al. 2018; Roth et al. 2019, eq. 15).

Roth et al.'s CIFAR-10 setting: eps = 1.75 (unit not stated; see
:mod:`repspec_zoo.regularizers.data_dependent`), 10 steps of size 2 * eps / steps, random start
in the ball. Here eps is an L2 radius in [0, 1] pixel units.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ..attacks import pgd_l2
from .data_dependent import eval_mode

__all__ = ["adversarial_batch"]


def adversarial_batch(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 10,
                      step_size: float | None = None, random_start: bool = True,
                      generator: torch.Generator | None = None) -> Tensor:
    """L2-PGD examples ``x_adv`` (detached) with ``||x_adv - x|| <= eps`` and x_adv in [0, 1].

    Maximizes the cross-entropy of ``model`` (images in [0, 1] -> logits) by ``steps`` normalized
    gradient steps of ``step_size`` (default 2 * eps / steps), projected on the eps-ball and the box.

    Mode: the attack runs with the model in eval mode, and every submodule's mode is restored
    afterwards. Madry et al.'s reference code attacks in train mode; we do not, because in train
    mode BatchNorm would (a) couple the samples through batch statistics, so sample i's
    perturbation would depend on the rest of the batch, (b) update its running statistics at
    every attack step with half-finished adversarial inputs, and (c) dropout would change the
    attacked function at every step. In eval mode the attack is the per-sample attack used at test
    time. Parameter ``.grad`` buffers are not touched (only input gradients are taken).

    Example::

        x_adv = adversarial_batch(model, x, y, eps=0.5, steps=10)
        loss = F.cross_entropy(model(x_adv), y)      # model back in train mode here
    """
    with eval_mode(model):
        return pgd_l2(model, x, y, eps, steps=steps, step_size=step_size, random_start=random_start,
                      generator=generator)
