"""How each regularizer acts on a training step; the Accelerate loop asks these and nothing else.

One object per run (``get_spec(mode).step(cfg.regularizer, model)``), called by the loop at three
points of every micro-batch / optimizer step:

1. :meth:`RegularizerStep.batch`: the images the step trains on (adv: their L2-PGD examples);
2. :meth:`RegularizerStep.penalty`: the term added to the cross-entropy (or None);
3. :meth:`RegularizerStep.after_optimizer_step`: work outside the optimizer (rep/ll ``apply: direct``).

``active`` is False during burn-in (epochs < ``regularizer.burn_in_epochs``): no penalty, no
adversarial examples, no direct step; the spectral power iteration keeps its vectors warm.
"""
from __future__ import annotations

import torch
from torch import nn

from ..spectral.select import select_layers
from .adversarial import adversarial_batch
from .bss import bss_penalty
from .data_dependent import DataDependentSpectralNorm

__all__ = ["RegularizerStep", "SpectralStep", "BssStep", "DdsnrStep", "AdversarialStep", "ConvWeightDecayStep"]


class RegularizerStep:
    """No regularizer: plain cross-entropy steps. The base of every mode's step.

    Args:
        cfg: the recipe's RegularizerConfig.
        model: the timm model being trained (regularizer attached, not the DDP wrapper).
    """

    def __init__(self, cfg, model: nn.Module):
        self.cfg, self.model = cfg, model

    def batch(self, net: nn.Module, x: torch.Tensor, y: torch.Tensor, active: bool) -> torch.Tensor:
        """The images to train on; ``net`` is the unwrapped TrainingModule (images in [0, 1] -> logits)."""
        return x

    def penalty(self, net: nn.Module, x: torch.Tensor, logits: torch.Tensor, features: torch.Tensor | None,
                active: bool) -> torch.Tensor | None:
        """The term added to the batch's mean cross-entropy, or None."""
        return None

    def after_optimizer_step(self, global_step: int, active: bool) -> None:
        """Called after optimizer step number ``global_step`` (1-based)."""


class SpectralStep(RegularizerStep):
    """rep / ll: gamma/2 * sum sigma_max^2 of ``model.spectral`` in the loss, or (``apply: direct``)
    the authors' step W <- W - gamma/2 * grad_W sigma_max^2 after every ``every``-th optimizer step."""

    def __init__(self, cfg, model: nn.Module):
        super().__init__(cfg, model)
        self.spectral = model.spectral
        self.direct = cfg.apply == "direct"

    def penalty(self, net, x, logits, features, active):
        if self.direct:
            return None  # the direct step follows the optimizer step
        if active:
            return self.spectral.penalty()  # also advances the power iteration
        self.spectral.step()  # burn-in: no penalty, but keep u, v warm
        return None

    def after_optimizer_step(self, global_step, active):
        if self.direct and active and global_step % self.cfg.every == 0:
            self.spectral.direct_step()  # same weights and vectors on every process: no sync needed


class BssStep(RegularizerStep):
    """Batch Spectral Shrinkage of the batch's pre-logit features (:func:`.bss.bss_penalty`)."""

    def penalty(self, net, x, logits, features, active):
        return bss_penalty(features, self.cfg.bss_k, self.cfg.bss_eta) if active else None


class DdsnrStep(RegularizerStep):
    """Roth et al.'s data-dependent spectral norm penalty (:class:`.data_dependent.DataDependentSpectralNorm`)."""

    def __init__(self, cfg, model: nn.Module):
        super().__init__(cfg, model)
        self.regularizer = DataDependentSpectralNorm(cfg.ddsnr_lambda, cfg.ddsnr_eps, cfg.ddsnr_iters)

    def penalty(self, net, x, logits, features, active):
        return self.regularizer.penalty(net, x, fx=logits) if active else None


class AdversarialStep(RegularizerStep):
    """L2-PGD adversarial training: the batch is replaced by its adversarial examples."""

    def batch(self, net, x, y, active):
        return adversarial_batch(net, x, y, self.cfg.pgd_eps, steps=self.cfg.pgd_steps) if active else x


class ConvWeightDecayStep(RegularizerStep):
    """A control for rep-spectral: ``wd_lambda/2 * sum_l ||W_l||_F^2`` over the same layers (head excluded).

    Like rep-spectral's raw-kernel penalty it shrinks the conv kernels, which the BatchNorm after each
    one rescales away; unlike it, it has no spectral term. Plain ``optim.weight_decay`` would also
    decay the BN gains and the head, which does change the function."""

    def __init__(self, cfg, model: nn.Module):
        super().__init__(cfg, model)
        self.weights = [m.weight for m in select_layers(model, "rep").values()]

    def penalty(self, net, x, logits, features, active):
        if not active:
            return None
        return 0.5 * self.cfg.wd_lambda * torch.stack([w.float().square().sum() for w in self.weights]).sum()
