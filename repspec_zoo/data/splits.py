"""Split names: ours (``'train'``, ``'test'``) and which split of a source serves each."""
from __future__ import annotations

from typing import Sequence

SPLITS = ("train", "test")
# Our split -> the source split names that can serve it, in order of preference
# ('test' is the held-out labelled split: ImageNet-1k's test labels are not public, so its validation).
SPLIT_CANDIDATES = {"train": ("train",), "test": ("test", "validation")}


def match_splits(available: Sequence[str], where: str) -> dict[str, str]:
    """Our split -> the first source split that can serve it."""
    available = [str(s) for s in available]
    matched = {ours: next((c for c in options if c in available), None) for ours, options in SPLIT_CANDIDATES.items()}
    matched = {ours: theirs for ours, theirs in matched.items() if theirs is not None}
    if not matched:
        raise ValueError(f"{where} has no train, test or validation split (found: {', '.join(available) or 'none'})")
    return matched
