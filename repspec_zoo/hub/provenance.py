"""What an export says about its weights' origin: the run's identity, and paths fit to publish.

A run's identity comes from what it was trained on (its config.yaml and run.json), never from
the recipe it started from:

* zoo data (no ``dataset.data_dir``, and a dataset that is one of the base arch's zoo tags, of the
  run's ``ssl.method`` for a self-supervised run: ``.fmnist_simclr``): the zoo name ``arch.tag``,
  registered with timm; its card points at the zoo's Hub repo;
* custom data (a ``--data-dir`` folder, a Hub dataset, a registry dataset the arch has no tag
  for): the custom name ``arch.SLUG``, SLUG being the folder's (dataset's) name in lower case with
  every run of other characters than ``a-z0-9`` as ``_`` (plus ``_custom`` where that is a zoo tag,
  so a custom name never looks like a zoo one). A custom name is not registered with timm, its card
  points at no zoo repo, and it is published only to a repo the user names (``--repo-id``).

Class names are the ones the run recorded (run.json ``class_names``, written since training
recorded them); an older run falls back to the registry's names for zoo data, and to none for
custom data (never another dataset's names).

Published files hold no paths of the machine that trained: :func:`portable` rewrites absolute paths
in the recipe, the command line and the evaluation settings (relative to the working directory
when inside it, else the bare file or folder name).
"""
from __future__ import annotations

import os
import re
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import DATASETS
from ..models.registry import ARCHS, TAGS, arch_tags
from ..runs import Run

__all__ = ["Identity", "run_identity", "portable"]

_HUB_PREFIXES = ("hf-hub:", "local-dir:")


@dataclass(frozen=True)
class Identity:
    """Who an exported run is."""

    arch: str                            # zoo arch, e.g. slp_repspectral
    tag: str                             # zoo tag (fmnist) or custom SLUG
    dataset: str                         # what it was trained on: registry name, Hub id or local folder name
    class_names: tuple[str, ...] | None  # index -> name, None when unknown
    custom: bool                         # custom data: a name outside the zoo's registry

    @property
    def name(self) -> str:
        return f"{self.arch}.{self.tag}"


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_") or "custom"
    return f"{slug}_custom" if slug in TAGS else slug


def run_identity(run: Run) -> Identity:
    """The identity of ``run`` (see the module docstring). ValueError if the zoo has no arch for its
    (model, regularizer mode)."""
    base, mode = run.config["model"], run.mode
    archs = [arch for arch, entry in ARCHS.items() if entry == (base, mode)]
    if not archs:
        raise ValueError(f"the zoo has no arch for model={base!r} with regularizer mode={mode!r}; zoo (model, mode) "
                         f"pairs: {sorted(set(ARCHS.values()))}. Add one to _BASE_MODES in "
                         "repspec_zoo/models/registry.py")
    recorded = run.summary.get("class_names")
    class_names = tuple(recorded) if recorded else None
    data_dir = run.data_dir
    ssl = (run.config.get("ssl") or {}).get("method")  # a self-supervised run: a headless backbone's tag
    tags = [tag for tag in arch_tags(archs[0]) if (TAGS[tag].dataset, TAGS[tag].ssl) == (run.dataset, ssl)]
    if data_dir is None and tags:
        spec = DATASETS[run.dataset]
        return Identity(archs[0], tags[0], run.dataset, class_names or spec.class_names, custom=False)
    dataset = Path(data_dir).name if data_dir is not None else run.dataset
    for prefix in _HUB_PREFIXES:
        dataset = dataset.removeprefix(prefix)
    return Identity(archs[0], _slug(dataset.rstrip("/").rsplit("/", 1)[-1]), dataset, class_names, custom=True)


def _portable_path(token: str, root: Path) -> str:
    path = Path(token)
    if not path.is_absolute():
        return token
    try:
        return path.relative_to(root).as_posix() or "."
    except ValueError:
        return path.name


def _portable_text(text: str, root: Path) -> str:
    """Absolute paths in a value or command line (also as ``--opt=/path``) made portable."""
    if "/" not in text:
        return text
    if os.path.isabs(text) and " -" not in text:  # one path (spaces and all), not a command line
        return _portable_path(text, root)
    try:
        tokens = shlex.split(text)
    except ValueError:  # not a command line (unbalanced quotes): one value
        tokens = [text]
    parts = [key + sep + _portable_path(value, root) for key, sep, value in
             (t.rpartition("=") if t.startswith("-") and "=" in t else ("", "", t) for t in tokens)]
    if parts == tokens:
        return text
    return shlex.join(parts) if len(tokens) > 1 else parts[0]


def portable(value: Any, root: str | os.PathLike | None = None) -> Any:
    """``value`` (nested dicts / lists / strings) with absolute paths relative to ``root`` (default: the
    working directory) when inside it, else reduced to their last component."""
    root = Path(root or os.getcwd()).resolve()
    if isinstance(value, str):
        return _portable_text(value, root)
    if isinstance(value, dict):
        return {k: portable(v, root) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(portable(v, root) for v in value)
    return value
