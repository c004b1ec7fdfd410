"""Robustness regularizers and adversarial training, as library calls for any training loop.

Baselines of Roth, Kilcher & Hofmann (2019), "Adversarial training is a form of data-dependent
operator norm regularization", next to the zoo's rep-spectral:

* :class:`DataDependentSpectralNorm` (Roth et al. eq. 11-13): per training point, power
  iteration on the input-output Jacobian J_f(x) gives its top right singular vector v; the
  penalty is ``lam * mean_i ||f(x_i + eps v_i) - f(x_i)||^2`` (~ lam * eps^2 * sigma_max(J_f(x_i))^2).
* :func:`adversarial_batch`: L2-PGD adversarial examples for adversarial training (Madry et al.;
  Roth et al. eq. 15), a thin wrapper of :func:`repspec_zoo.attacks.pgd_l2` that fixes the
  model's mode during the attack.
* Global (data-independent) spectral norm regularization (Yoshida & Miyato 2017), every layer
  including the head: ``repspec_zoo.attach_spectral(model, mode='ll', gamma=...)``, then
  ``model.spectral.penalty()``; rep-spectral is ``mode='rep'`` (head excluded).
* Batch Spectral Shrinkage (Chen et al. 2019): :func:`repspec_zoo.regularizers.bss.bss_penalty`.

Each mode of the recipes (``regularizer.mode``) is a spec in :mod:`.registry`; how it acts on a
training step is in :mod:`.steps`.

All inputs are images in [0, 1] and all eps are L2 radii in [0, 1] pixel units (normalization
lives inside the model, e.g. :class:`repspec_zoo.models.normalize.NormalizedModel`).

Recipe step, one of::

    x_adv = adversarial_batch(model, x, y, eps=0.5, steps=10)
    loss = F.cross_entropy(model(x_adv), y)

    reg = DataDependentSpectralNorm(lam=1e-2, eps=0.5, iters=10)
    logits = model(x)
    loss = F.cross_entropy(logits, y) + reg.penalty(model, x, fx=logits)
"""
from .adversarial import adversarial_batch
from .bss import bss_penalty
from .data_dependent import DataDependentSpectralNorm
from .registry import REGULARIZERS, RegularizerSpec, get_spec

__all__ = ["DataDependentSpectralNorm", "REGULARIZERS", "RegularizerSpec", "adversarial_batch", "bss_penalty", "get_spec"]
