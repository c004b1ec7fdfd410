"""L2 attacks in [0, 1] pixel space, batched over samples: decision-based (hard-label) TA, G-TA,
HSJA and CGBA, white-box minimal-norm FMN, ALMA and DDN (adv-lib), and white-box L2 PGD.

Attacks reach the model only through `HardLabelOracle` (hard per-sample query budget);
`run_attack` is the single entry point::

    from repspec_zoo.attacks import NormalizedModel, run_attack
    res = run_attack("ta", NormalizedModel(net).eval(), x, y, budget=10_000)
    res.l2_at_budgets([1000, 5000, 10000])
"""
from __future__ import annotations

from typing import Callable

import torch

from .cgba import cgba
from .hsja import hop_skip_jump
from .normalize import NormalizedModel
from .oracle import Classifier, HardLabelOracle, OracleAnswer, predict_labels
from .pgd import pgd_l2, robust_accuracy_curve
from .result import AttackResult, AttackVerificationError, verify
from .starts import StartPool
from .tangent import generalized_tangent_attack, tangent_attack, tangent_point
from .whitebox import WHITE_BOX_ATTACKS

__all__ = [
    "ATTACKS", "AttackResult", "HARD_LABEL_ATTACKS", "WHITE_BOX_ATTACKS", "AttackVerificationError", "HardLabelOracle", "NormalizedModel",
    "OracleAnswer", "StartPool", "generalized_tangent_attack", "hop_skip_jump", "pgd_l2", "predict_labels",
    "robust_accuracy_curve", "run_attack", "tangent_attack", "tangent_point", "verify",
]

#: decision-based: every query through HardLabelOracle, hard per-sample budget
HARD_LABEL_ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "ta": tangent_attack,  # Tangent Attack, hemisphere
    "gta": generalized_tangent_attack,  # Tangent Attack, semi-ellipsoid
    "hsja": hop_skip_jump,  # HopSkipJump
    "cgba": cgba,  # Curvature-aware Geometric Black-box Attack
}
#: every attack; the white-box minimal-norm ones (adv-lib: fmn, alma, ddn) use gradients and their
#: own step counts, and ignore the query budget
ATTACKS: dict[str, Callable[..., AttackResult]] = {**HARD_LABEL_ATTACKS, **WHITE_BOX_ATTACKS}


def run_attack(name: str, model: Classifier, x: torch.Tensor, y: torch.Tensor,
               budget: int | torch.Tensor, batch_size: int = 256, seed: int = 0,
               **kw) -> AttackResult:
    """Run the attack registered as ``name`` (see `ATTACKS`); ``kw`` go to it (gamma, max_iter,
    starts (a `StartPool`), sample_ids, bounds, progress; 'gta' also ratio)."""
    try:
        attack = ATTACKS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown attack {name!r}; valid names: "
                         f"{', '.join(map(repr, sorted(ATTACKS)))}") from None
    return attack(model, x, y, budget, batch_size=batch_size, seed=seed, **kw)
