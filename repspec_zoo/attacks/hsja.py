"""HopSkipJump (Chen, Jordan, Wainwright 2020), L2 untargeted, batched over samples.

Shares the oracle, initialization, normal estimation and bisection with the Tangent Attack
(`boundary.run_boundary_attack`); the step walks from the boundary point o along the
estimated normal u: ``o + eps u`` with ``eps = ||o - x|| / sqrt(t)``, halved until adversarial.
Unlike ART's HSJA it always ends with a bisection (returned points lie within theta of the
boundary), and unlike foolbox 3.3.4 it normalizes the normal estimate per sample.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .boundary import run_boundary_attack
from .oracle import Classifier
from .result import AttackResult
from .settings import AttackSettings
from .starts import StartPool

__all__ = ["hop_skip_jump"]


def _normal_step(x: torch.Tensor, o: torch.Tensor, u: torch.Tensor,
                 scale: torch.Tensor) -> torch.Tensor:
    """Geometric-progression candidate ``o + eps u`` (eps = ``scale``, (n,))."""
    return o + scale[:, None].to(o.dtype) * u


def hop_skip_jump(model: Classifier, x: torch.Tensor, y: torch.Tensor, budget: int | torch.Tensor,
                  settings: AttackSettings = AttackSettings(), *,
                  starts: StartPool | torch.Tensor | None = None,
                  sample_ids: Sequence[int] | torch.Tensor | None = None) -> AttackResult:
    """HopSkipJump attack; arguments and result as `repspec_zoo.attacks.tangent_attack`.

    Example::

        res = hop_skip_jump(NormalizedModel(net).eval(), x, y, budget=10_000)
    """
    return run_boundary_attack("hsja", model, x, y, budget, _normal_step, settings, starts=starts,
                               sample_ids=sample_ids)
