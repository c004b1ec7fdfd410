"""`EvalResult`: what `repspec_zoo.evaluation.evaluate.evaluate` measured, as a JSON-able record and a summary table.

Distances are L2 in [0,1] pixel units; fractions are 0..1. In JSON, infinite distances (unbroken
samples) are the strings 'inf' / '-inf' and NaN is null (`stats.to_jsonable`); `EvalResult.load` reads
them back as floats (`stats.from_jsonable`).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .bounds import VACUOUS_FRACTION
from ..errors import UserError
from ..io import atomic_write_text
from .stats import format_interval, from_jsonable, to_jsonable

__all__ = ["EvalResult", "EvalResultError"]


class EvalResultError(UserError, ValueError):
    """An EvalResult JSON file is missing, truncated or not an EvalResult; the message names the file."""


@dataclass
class EvalResult:
    """Everything `repspec_zoo.evaluation.evaluate.evaluate` measured; JSON-able. Distances are L2 in [0,1] pixel units."""

    model: str  # name or source of the evaluated model
    dataset: str  # dataset name/path
    split: str  # evaluated split
    n_test: int  # images in the split used for clean accuracy
    clean_acc: float  # fraction 0..1 of the split classified correctly
    attack: str | None = None  # the attack, or 'a+b+...' for the per-sample best of several; None: accuracy only
    attacks: list[str] = field(default_factory=list)  # the attacks run, in order
    budgets: list[int] = field(default_factory=list)  # query budgets Q reported
    n_requested: int = 0  # samples asked for
    n_samples: int = 0  # correctly classified samples attacked (all kept, broken or not)
    success_rate: dict[str, float] = field(default_factory=dict)  # per budget: fraction broken by any attack
    l2_mean: dict[str, float] = field(default_factory=dict)  # per budget: mean best L2 over the broken samples
    l2_median: dict[str, float] = field(default_factory=dict)  # per budget: median best L2, unbroken = +inf
    queries_mean: float = 0.0  # mean hard-label queries per sample, summed over the attacks
    wall_time_s: float = 0.0  # attack wall time in seconds, all attacks
    by_attack: dict = field(default_factory=dict)  # per attack: success_rate, l2_mean, l2_median, queries, wall, params
    black_box: dict | None = None  # the same per budget for the best over the hard-label attacks alone
    distance: dict | None = None  # stats.distance_summary of the best L2 at the largest budget (CIs)
    robust_accuracy: dict | None = None  # at the dataset's standard eps and a curve; upper bounds
    convergence: dict | None = None  # relative change of the (hard-label) best mean / median between the last two budgets
    lemma1: dict | None = None  # Lemma-1 local estimate: mean, median, per_sample
    certified: dict | None = None  # certified radius (where it holds): mean, median, per_sample
    bracket: dict | None = None  # certified <= true <= best attack: ratio statistics (bounds.bracket)
    per_sample: dict = field(default_factory=dict)  # index, label, best l2 per budget, per attack l2 per budget, queries
    settings: dict = field(default_factory=dict)  # seed, batch size, start pool, versions, attack params

    def to_json(self) -> str:
        return json.dumps(to_jsonable(asdict(self)), indent=2)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "EvalResult":
        """An EvalResult from its JSON (`save`), with 'inf' strings back as floats; EvalResultError names a
        missing or damaged file."""
        path = Path(path)
        if not path.is_file():
            raise EvalResultError(f"{path} does not exist (or is not a file)")
        try:
            return cls(**from_jsonable(json.loads(path.read_text())))
        except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as err:
            raise EvalResultError(f"{path} is not an EvalResult JSON file: truncated or damaged ({err})") from err

    def summary_table(self) -> str:
        """Markdown summary: per budget and attack, then the best distance with CIs, the bracket
        and robust accuracy (or one line of accuracy when no attack ran)."""
        head = f"{self.model} on {self.dataset}/{self.split}: clean_acc {self.clean_acc:.4f} ({self.n_test} images)"
        if not self.attack:
            return head
        rows = [head, f"attacks {', '.join(self.attacks)} on {self.n_samples} correctly classified samples, "
                      f"wall {self.wall_time_s:.1f} s", "",
                "| attack | budget | success | mean L2 (broken) | median L2 (all) |", "|---|---:|---:|---:|---:|"]
        table = dict(self.by_attack)
        if self.black_box and len(self.black_box["attacks"]) > 1:
            table["best hard-label"] = self.black_box
        if len(self.attacks) > 1:
            table["best of all"] = self.__dict__
        for name, part in table.items():
            for q in self.budgets:
                k = str(q)
                rows.append(f"| {name} | {q} | {part['success_rate'][k]:.3f} | {part['l2_mean'][k]:.4f} | "
                            f"{part['l2_median'][k]:.4f} |")
        if self.distance:
            d, top = self.distance, self.budgets[-1]
            rows += ["", f"best over {', '.join(self.attacks)} at {top} queries, 95% CIs: success rate "
                         f"{format_interval(d['success_rate'])} ({d['n_success']}/{d['n_samples']}), mean L2 "
                         f"(broken) {format_interval(d['l2_mean'])}, median L2 (all) "
                         f"{format_interval(d['l2_median'])}"]
        if self.convergence:
            c = self.convergence
            if c["mean_change"] is not None:
                rows.append(f"hard-label mean changed by {100 * c['mean_change']:+.1f}% from {c['budgets'][0]} to "
                            f"{c['budgets'][1]} queries")
        if self.robust_accuracy and self.robust_accuracy.get("at_eps"):
            r = self.robust_accuracy["at_eps"]
            rows.append(f"robust accuracy at L2 eps {r['eps']}: {format_interval(r['robust_accuracy_upper'])} of "
                        f"the test set (an upper bound: attacks only upper-bound distances)")
        vacuous = (f" (vacuous: median below {VACUOUS_FRACTION:g} of the median attack distance)"
                   if (self.bracket or {}).get("vacuous") else "")
        for label, part, note in (("Lemma-1 local estimate", self.lemma1, ""),
                                  ("certified radius", self.certified, vacuous)):
            if part:
                rows.append(f"{label}: mean {part['mean']:.4g}, median {part['median']:.4g}{note}")
        if self.bracket and not self.bracket.get("lower"):
            rows.append("certified radius: none (no Lipschitz bound for this architecture, or no linear head)")
        if self.bracket and self.bracket.get("upper_over_certified", {}).get("n"):
            b = self.bracket["upper_over_certified"]
            rows.append(f"bracket best attack / certified: median {b['median']:.2f}, max {b['max']:.2f} "
                        f"({b['n']} samples, {self.bracket['violations']} below the certificate)")
        return "\n".join(rows)

