"""L2 attacks in [0, 1] pixel space, batched over samples: decision-based (hard-label) TA, G-TA,
HSJA and CGBA, white-box minimal-norm FMN, DDN and ALMA, and white-box L2 PGD.

Attacks reach the model only through `HardLabelOracle` (hard per-sample query budget) and share
their hyper-parameters through one frozen `AttackSettings`; `run_attack` is the single entry point::

    from repspec_zoo.attacks import AttackSettings, run_attack
    from repspec_zoo.models.normalize import NormalizedModel
    res = run_attack("ta", NormalizedModel(net).eval(), x, y, 10_000, AttackSettings(seed=0))
    res.l2_at_budgets([1000, 5000, 10000])
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch

from .cgba import cgba
from .hsja import hop_skip_jump
from .oracle import Classifier, HardLabelOracle, OracleAnswer, predict_labels
from .pgd import pgd_l2, robust_accuracy_curve
from .result import AttackResult, AttackVerificationError, verify
from .settings import AttackSettings
from .starts import StartPool
from .tangent import generalized_tangent_attack, tangent_attack, tangent_point
from .whitebox import WHITE_BOX_ATTACKS

__all__ = [
    "ATTACKS", "AttackResult", "AttackSettings", "AttackVerificationError", "HARD_LABEL_ATTACKS", "HardLabelOracle",
    "OracleAnswer", "StartPool", "WHITE_BOX_ATTACKS", "generalized_tangent_attack", "hop_skip_jump",
    "pgd_l2", "predict_labels", "robust_accuracy_curve", "run_attack", "tangent_attack", "tangent_point", "verify",
]

#: decision-based: every query through HardLabelOracle, hard per-sample budget
HARD_LABEL_ATTACKS: dict[str, Callable[..., AttackResult]] = {
    "ta": tangent_attack,  # Tangent Attack, hemisphere
    "gta": generalized_tangent_attack,  # Tangent Attack, semi-ellipsoid
    "hsja": hop_skip_jump,  # HopSkipJump
    "cgba": cgba,  # Curvature-aware Geometric Black-box Attack
}
#: every attack; the white-box minimal-norm ones (fmn, ddn, alma) use gradients and their
#: own step counts, and ignore the query budget
ATTACKS: dict[str, Callable[..., AttackResult]] = {**HARD_LABEL_ATTACKS, **WHITE_BOX_ATTACKS}


def run_attack(name: str, model: Classifier, x: torch.Tensor, y: torch.Tensor, budget: int | torch.Tensor,
               settings: AttackSettings = AttackSettings(), *, starts: StartPool | torch.Tensor | None = None,
               sample_ids: Sequence[int] | torch.Tensor | None = None, **options) -> AttackResult:
    """Run the attack registered as ``name`` (see `ATTACKS`) with the shared ``settings`` on the
    per-call data (``budget``, ``starts``, ``sample_ids``: see `tangent_attack`); ``options`` are
    that attack's own keywords ('gta': ratio; 'cgba': variant, dim_reduc_factor, initial_normal_queries;
    white-box: steps, warm_start, the loop's own keywords)."""
    try:
        attack = ATTACKS[name.lower()]
    except (KeyError, AttributeError):
        raise ValueError(f"unknown attack {name!r}; valid names: "
                         f"{', '.join(map(repr, sorted(ATTACKS)))}") from None
    if not isinstance(settings, AttackSettings):
        raise TypeError(f"settings must be an AttackSettings, got {type(settings).__name__}; pass "
                        f"AttackSettings(seed=..., batch_size=...)")
    return attack(model, x, y, budget, settings, starts=starts, sample_ids=sample_ids, **options)
