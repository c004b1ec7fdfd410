"""What an attack returns, and its re-check: `AttackResult`, `verify`, `AttackVerificationError`.

Every attack (hard-label or white-box) packs its outcome as an `AttackResult` and re-checks each
returned point with `verify` before it does, without charging queries: in the box, classified
differently from the label, and at the distance it claims. Distances are L2 in pixel units.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .oracle import EVAL_BATCH_SIZE, Classifier, HardLabelOracle, predict_labels

__all__ = ["AttackResult", "AttackVerificationError", "verify", "warn_unverified"]

class AttackVerificationError(RuntimeError):
    """An attack returned a point that is not what it claims (out of bounds, correctly
    classified, or with a wrong reported distance)."""


def verify(model_or_oracle: Classifier | HardLabelOracle, x: torch.Tensor, x_adv: torch.Tensor,
           y: torch.Tensor, l2: torch.Tensor, *, bounds: Sequence[float] = (0.0, 1.0),
           batch_size: int = EVAL_BATCH_SIZE, raise_on_error: bool = True) -> torch.Tensor:
    """Re-check every returned point without charging queries.

    For each sample with finite ``l2`` (an ``inf`` marks a failed attack and is skipped):
    ``x_adv`` is finite and inside ``bounds``, the model's label differs from ``y``, and
    ``l2 == ||x_adv - x||_2`` (relative tolerance 1e-5). An oracle supplies its own model,
    bounds and batch size.

    Returns a bool tensor (N,), True where the sample passed; raises
    `AttackVerificationError` naming the failing samples if any failed and
    ``raise_on_error``.
    """
    if isinstance(model_or_oracle, HardLabelOracle):
        model = model_or_oracle.model
        bounds, batch_size = model_or_oracle.bounds, model_or_oracle.batch_size
    else:
        model = model_or_oracle
    device = x_adv.device
    x, y, l2 = x.to(device), torch.as_tensor(y, device=device), torch.as_tensor(l2, device=device)
    if x_adv.shape != x.shape or l2.shape != (len(x),) or y.shape != (len(x),):
        raise ValueError(f"verify needs x_adv shaped like x {tuple(x.shape)} and y, l2 of shape "
                         f"({len(x)},); got {tuple(x_adv.shape)}, {tuple(y.shape)}, "
                         f"{tuple(l2.shape)}")
    ok = torch.ones(len(x), dtype=torch.bool, device=device)
    problems = []
    check = l2 != math.inf
    flat = x_adv.flatten(1)
    in_box = torch.isfinite(flat).all(1) & (flat >= bounds[0]).all(1) & (flat <= bounds[1]).all(1)
    true_l2 = (x_adv - x).flatten(1).norm(dim=1).to(l2.dtype)
    l2_ok = (l2 - true_l2).abs() <= 1e-5 * true_l2.clamp_min(1e-6)
    mis = torch.ones_like(ok)
    rows = check.nonzero().flatten()
    if len(rows):
        labels = predict_labels(model, x_adv[rows], batch_size).to(device)
        mis[rows] = labels != y[rows]
    for name, good in (("outside bounds or not finite", in_box), ("not misclassified", mis),
                       ("reported l2 != ||x_adv - x||", l2_ok)):
        bad = check & ~good
        if bad.any():
            ok &= ~bad
            problems.append(f"{name}: samples {bad.nonzero().flatten()[:10].tolist()}")
    if problems and raise_on_error:
        raise AttackVerificationError(
            "attack result failed verification (" + "; ".join(problems) + "). If only "
            "'not misclassified' fails for points at the boundary, the model's outputs depend "
            "on batch composition (e.g. cuDNN autotuning); set "
            "torch.backends.cudnn.benchmark = False")
    return ok


@dataclass
class AttackResult:
    """Outcome of a decision-based attack on N samples. Distances are L2 in pixel units."""

    attack: str  # registry name: 'ta', 'gta', 'hsja', 'cgba', 'fmn', 'alma' or 'ddn'
    x_adv: torch.Tensor  # (N, ...) adversarial points inside bounds (= x where not success)
    l2: torch.Tensor  # (N,) ||x_adv - x||_2; inf where not success; 0 if x was misclassified
    queries: torch.Tensor  # (N,) long, queries spent per sample (never above the budget)
    success: torch.Tensor  # (N,) bool, an adversarial point was found
    verified: torch.Tensor  # (N,) bool, passed `verify` (bounds, label, l2) without queries
    trace_queries: torch.Tensor  # (N, T) long, queries spent when each iterate was recorded
    trace_l2: torch.Tensor  # (N, T) L2 of each recorded iterate (after init, every iteration)
    trace_mask: torch.Tensor  # (N, T) bool, which (sample, record) entries exist
    params: dict = field(default_factory=dict)  # resolved settings (budget, seed, theta_scale, ...)

    def l2_at_budgets(self, budgets: Sequence[int]) -> torch.Tensor:
        """(N, len(budgets)) distances under the TA paper's rule: for budget Q the L2 of the
        last recorded iterate with queries <= Q; inf where there is none."""
        q = torch.as_tensor(list(budgets), device=self.trace_queries.device)
        valid = self.trace_mask[:, :, None] & (self.trace_queries[:, :, None] <= q)
        pos = torch.arange(valid.shape[1], device=q.device)[None, :, None]
        last = torch.where(valid, pos, -1).amax(1)  # (N, len(budgets))
        l2 = self.trace_l2.gather(1, last.clamp_min(0))
        return torch.where(last >= 0, l2, torch.full_like(l2, math.inf))

    def trace(self, i: int) -> list[tuple[int, float]]:
        """(queries, l2) after each recorded iterate of sample ``i``."""
        m = self.trace_mask[i]
        return list(zip(self.trace_queries[i][m].tolist(), self.trace_l2[i][m].tolist()))

    def __repr__(self) -> str:
        ok = self.success
        med = self.l2[ok].median().item() if ok.any() else math.inf
        return (f"AttackResult(attack={self.attack!r}, n={len(self.l2)}, "
                f"success={int(ok.sum())}/{len(ok)}, median_l2={med:.4g}, "
                f"mean_queries={self.queries.float().mean().item():.1f})")


def warn_unverified(name: str, verified: torch.Tensor, consequence: str) -> None:
    """RuntimeWarning naming the samples whose returned point failed `verify` (``consequence``:
    what the attack did with them), rather than an error: a point at the boundary can change
    label when the model's outputs depend on the batch (BLAS/cuDNN kernels chosen by batch size)."""
    if not verified.all():
        bad = (~verified).nonzero().flatten()[:10].tolist()
        warnings.warn(f"{name}: {int((~verified).sum())} returned point(s) failed re-verification (samples {bad})"
                      f"{consequence}; see AttackResult.verified. Points at the boundary can change label when "
                      f"the model's outputs depend on the batch (BLAS/cuDNN kernels chosen by batch size)",
                      RuntimeWarning)

