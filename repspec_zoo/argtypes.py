"""argparse types of the command lines (repspec-zoo and the benchmark scripts): one parser per kind of value."""
from __future__ import annotations

import argparse

from .attacks.oracle import check_budgets
from .evaluation.evaluate import resolve_attacks

__all__ = ["parse_budgets", "parse_attacks", "positive_int", "seed_int"]


def parse_budgets(text: str) -> list[int]:
    """argparse type of --budgets: comma-separated positive query counts, sorted, unique."""
    try:
        values = {int(v) for v in text.split(",") if v.strip()}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budgets takes comma-separated integers like 1000,5000, got {text!r}")
    try:
        return check_budgets(values)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budgets must be positive query counts, got {text!r}")


def parse_attacks(text: str) -> list[str]:
    """argparse type of --attack: `repspec_zoo.evaluation.evaluate.resolve_attacks` with argparse's error."""
    try:
        return resolve_attacks(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))


def _int_at_least(text: str, low: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
    return value


def positive_int(text: str) -> int:
    """argparse type of counts that must be >= 1 (--n, --limit, --batch-size, --max-iter, --workers, ...)."""
    return _int_at_least(text, 1)


def seed_int(text: str) -> int:
    """argparse type of --seed: an integer in [0, 2**32) (numpy's generators take no other seed)."""
    value = _int_at_least(text, 0)
    if value >= 2 ** 32:
        raise argparse.ArgumentTypeError(f"expected a seed in [0, 2**32), got {text!r}")
    return value
