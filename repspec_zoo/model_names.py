"""Model names timm can create, checked up front: an unknown name or tag is an UnknownModelError that lists
the close matches (or the architecture's tags). Outside repspec_zoo.models so that the run loader
(repspec_zoo.runs) can check names without importing the zoo."""
from __future__ import annotations

import difflib

import timm
from timm.models import get_arch_pretrained_cfgs, split_model_name_tag

from .errors import UserError

__all__ = ["UnknownModelError", "check_model_name", "check_tag"]


class UnknownModelError(UserError, ValueError):
    """A model name or pretrained tag that timm's registry does not know."""


def check_model_name(name: str) -> str:
    """Return ``name`` if timm can create it; else raise UnknownModelError with close matches.

    ``hf-hub:`` and ``local-dir:`` names pass through (timm resolves them). An unknown tag of a
    known architecture lists that architecture's tags.
    """
    if ":" in name:
        return name
    arch, tag = split_model_name_tag(name)
    if arch not in timm.list_models():
        known = dict.fromkeys(timm.list_models() + timm.list_pretrained())
        close = difflib.get_close_matches(name, list(known), n=5, cutoff=0.6)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise UnknownModelError(f"unknown model {name!r}{hint} Zoo models: repspec_zoo.list_pretrained(); "
                                "all architectures: timm.list_models()")
    if tag:
        check_tag(arch, tag)
    return name


def check_tag(arch: str, tag: str) -> None:
    tagged = list(get_arch_pretrained_cfgs(arch))
    if f"{arch}.{tag}" not in tagged:
        listed = ", ".join(tagged) if tagged else "none (use the name without a tag)"
        raise UnknownModelError(f"unknown pretrained tag {tag!r} for {arch}; its pretrained names are: {listed}")
