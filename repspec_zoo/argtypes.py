"""argparse types of the command lines (repspec-zoo and the benchmark scripts): one parser per kind of value."""
from __future__ import annotations

import argparse

from .eval import resolve_attacks

__all__ = ["parse_budgets", "parse_attacks"]


def parse_budgets(text: str) -> list[int]:
    """argparse type of --budgets: comma-separated positive query counts, sorted, unique."""
    try:
        values = sorted({int(v) for v in text.split(",") if v.strip()})
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budgets takes comma-separated integers like 1000,5000, got {text!r}")
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"--budgets must be positive query counts, got {text!r}")
    return values


def parse_attacks(text: str) -> list[str]:
    """argparse type of --attack: `repspec_zoo.eval.resolve_attacks` with argparse's error."""
    try:
        return resolve_attacks(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))
