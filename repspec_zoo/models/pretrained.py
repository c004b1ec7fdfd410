"""Reading the zoo's pretrained weights: where they are found and how they are verified.

A zoo model's weights live in a folder laid out like its Hub repo (written by
:mod:`repspec_zoo.hub.exporting`)::

    model.safetensors   plain timm state dict (no regularizer buffers)
    config.json         timm hub config (architecture = the base timm arch, pretrained_cfg, ...) plus
                        our metadata at the top level: zoo_name, dataset, regularizer (mode and its
                        settings, see repspec_zoo.regularizers.registry), recipe, eval, training,
                        weights_sha256
    README.md           model card (repspec_zoo.hub.cards)
    eval.json           the run's evaluation summary

Resolution for ``pretrained=True`` (see repspec_zoo.models.zoo): the folder bundled in the
package (``repspec_zoo/weights/<arch>.<tag>/``), then the Hugging Face cache / Hub repo; the
sha256 in config.json is checked before the weights are used. timm's own ``hf-hub:ORG/NAME`` and
``local-dir:PATH`` names get the same check (:mod:`.timm_routes`). The evaluation summary a config
carries (its ``eval``) is read by `attack_rows` and `attack_label` (list_pretrained, the cards).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch
from huggingface_hub import constants as hf_constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from timm.models import get_arch_pretrained_cfgs, split_model_name_tag
from timm.models._hub import hf_split

from ..errors import UserError
from ..runs import EVAL_FILE, WEIGHTS_FILE, load_weights_file

__all__ = ["WEIGHTS_DIR", "WEIGHTS_FILE", "HUB_CONFIG_FILE", "CARD_FILE", "EVAL_FILE", "SHA_KEY", "Weights",
           "PretrainedWeightsUnavailable", "PretrainedWeightsError", "sha256_hex", "read_config",
           "read_weights", "hub_file", "bundled_dir", "load_weights", "local_config", "attack_rows", "attack_label"]

WEIGHTS_DIR = Path(__file__).parents[1] / "weights"  # bundled weights: WEIGHTS_DIR / "<arch>.<tag>" / files
HUB_CONFIG_FILE, CARD_FILE = "config.json", "README.md"  # beside WEIGHTS_FILE and EVAL_FILE in an export
SHA_KEY = "weights_sha256"  # config.json key: sha256 hex digest of WEIGHTS_FILE
REFETCH = ("Delete it (a Hugging Face cache copy: `hf cache rm model/<repo id>`) and download or export it again "
           "(repspec-zoo export RUN_DIR --to DIR)")


class PretrainedWeightsUnavailable(UserError, RuntimeError):
    """pretrained=True found no weights: not bundled, not in the HF cache, not on the Hub."""


class PretrainedWeightsError(UserError, RuntimeError):
    """Weights were found but are unusable: sha256 mismatch, not safetensors, inconsistent head."""


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_config(path: Path) -> dict:
    """An export's config.json; PretrainedWeightsError naming it if it is not JSON."""
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise PretrainedWeightsError(f"{path} is not valid JSON ({err}); export the weights again "
                                     "(repspec-zoo export RUN_DIR --to DIR)") from err


def _check_head(config: dict, state_dict: dict[str, torch.Tensor], path: Path) -> None:
    """The classifier's output size must be config.json's num_classes."""
    classifier = config.get("pretrained_cfg", {}).get("classifier")
    for name in [classifier] if isinstance(classifier, str) else classifier or []:
        weight = state_dict.get(f"{name}.weight")
        if weight is not None and weight.shape[0] != config["num_classes"]:
            raise PretrainedWeightsError(
                f"{path}: classifier {name!r} has {weight.shape[0]} outputs but config.json says "
                f"num_classes={config['num_classes']}; the checkpoint and its config do not belong together. "
                "Export them again (repspec-zoo export RUN_DIR --to DIR)")


@dataclass
class Weights:
    """Verified weights of one zoo model."""

    state_dict: dict[str, torch.Tensor]  # plain timm state dict
    config: dict                         # the config.json next to them
    source: str                          # where they were read from (a path)

    @property
    def num_classes(self) -> int:
        return int(self.config["num_classes"])


def read_weights(config_path: Path, weights_path: Path) -> Weights:
    """Read config.json + model.safetensors and verify the weights against its sha256.

    PretrainedWeightsError, naming the file and saying to delete it and fetch it again, when the
    file is unreadable (empty, truncated, an HTML page) or its sha256 is not the recorded one.
    """
    config = read_config(config_path)
    expected = config.get(SHA_KEY)
    if not expected:
        raise PretrainedWeightsError(f"{config_path} records no {SHA_KEY!r}, so {weights_path} cannot be verified; "
                                     "export the weights with repspec-zoo export")
    data = weights_path.read_bytes()
    state_dict = load_weights_file(data, weights_path, REFETCH, PretrainedWeightsError)
    actual = sha256_hex(data)
    if actual != expected:
        raise PretrainedWeightsError(f"{weights_path}: sha256 {actual} does not match {expected} recorded in "
                                     f"{config_path}: the file is corrupted or was modified. {REFETCH}")
    _check_head(config, state_dict, weights_path)
    return Weights(state_dict, config, str(weights_path))


def bundled_dir(name: str) -> Path:
    """Folder of the weights of ``arch.tag`` shipped inside the package (may not exist)."""
    return WEIGHTS_DIR / name


def _hub_reason(err: Exception, repo_id: str) -> str:
    """Why the Hub route gave nothing, in the words a user can act on."""
    cache = hf_constants.HF_HUB_CACHE
    if isinstance(err, LocalEntryNotFoundError):
        if hf_constants.HF_HUB_OFFLINE:
            return f"offline (HF_HUB_OFFLINE=1) and not in the Hugging Face cache {cache}"
        return f"the Hub ({hf_constants.ENDPOINT}) could not be reached and the files are not in the cache {cache}"
    if isinstance(err, RepositoryNotFoundError):
        return (f"no repo {repo_id} on {hf_constants.ENDPOINT} (not published yet, or private: log in with "
                "`hf auth login`)")
    return f"{type(err).__name__}: {str(err).splitlines()[0]}"


def hub_file(hf_hub_id: str, filename: str, cache_dir=None) -> Path:
    """Local path of ``filename`` of Hub repo ``hf_hub_id`` (``org/name[@revision]``): HF cache, else downloaded."""
    repo_id, revision = hf_split(hf_hub_id)
    return Path(hf_hub_download(repo_id, filename, revision=revision, cache_dir=cache_dir))


def _unavailable(name: str, tried: list[str]) -> PretrainedWeightsUnavailable:
    arch = split_model_name_tag(name)[0]
    tags = ", ".join(get_arch_pretrained_cfgs(arch)) or "none"
    lines = "\n".join(f"  - {t}" for t in tried)
    return PretrainedWeightsUnavailable(
        f"{name}: no pretrained weights found. Tried, in order:\n{lines}\n"
        f"Pretrained names of {arch}: {tags} (what is on this machine: repspec_zoo.list_pretrained()).\n"
        "To get weights: go online once if they are published (unset HF_HUB_OFFLINE); or train them "
        "(accelerate launch recipes/train.py --config recipes/configs/<recipe>.yaml), export them "
        "(repspec-zoo export RUN_DIR --to DIR) and load them with "
        f"timm.create_model({arch!r}, checkpoint_path='DIR/{WEIGHTS_FILE}'); or create the model with "
        "pretrained=False.")


def load_weights(name: str, hf_hub_id: str | None, cache_dir: str | os.PathLike | None = None) -> Weights:
    """Verified weights of zoo model ``name`` (``arch.tag``): bundled folder, then HF cache/Hub.

    Raises PretrainedWeightsUnavailable (what was tried, the tags, how to get weights) when
    neither has them; with HF_HUB_OFFLINE=1 and nothing cached that is immediate.
    """
    folder = bundled_dir(name)
    if (folder / HUB_CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return read_weights(folder / HUB_CONFIG_FILE, folder / WEIGHTS_FILE)
    tried = [f"bundled: {folder} (not shipped with this install)"]
    if hf_hub_id:
        try:
            return read_weights(hub_file(hf_hub_id, HUB_CONFIG_FILE, cache_dir),
                                hub_file(hf_hub_id, WEIGHTS_FILE, cache_dir))
        except (HfHubHTTPError, EntryNotFoundError) as err:
            tried.append(f"Hugging Face Hub {hf_hub_id}: {_hub_reason(err, hf_hub_id)}")
    raise _unavailable(name, tried)


def local_config(name: str, hf_hub_id: str | None) -> tuple[str, dict | None]:
    """``(source, config.json or None)`` of ``name``'s weights without any network access.

    source: 'bundled', 'hf-cache', or 'hub' (fetched from ``hf_hub_id`` on first pretrained=True).
    """
    bundled = bundled_dir(name) / HUB_CONFIG_FILE
    if bundled.is_file():
        return "bundled", read_config(bundled)
    if hf_hub_id:
        repo_id, revision = hf_split(hf_hub_id)
        cached = try_to_load_from_cache(repo_id, HUB_CONFIG_FILE, revision=revision)
        if isinstance(cached, str):
            return "hf-cache", read_config(Path(cached))
    return "hub", None


def attack_rows(evaluation: Mapping) -> list[tuple[int | None, float, float | None]]:
    """``(queries, l2_mean, l2_median)`` per attack budget of an eval summary, by budget.

    ``l2_mean``/``l2_median`` are ``{budget: distance}`` (or one number without budgets);
    an eval summary without attack statistics gives ``[]``.
    """
    means, medians = evaluation.get("l2_mean"), evaluation.get("l2_median")
    if isinstance(means, (int, float)):
        return [(None, float(means), float(medians) if isinstance(medians, (int, float)) else None)]
    if not isinstance(means, Mapping):
        return []
    medians = medians if isinstance(medians, Mapping) else {}
    rows = [(int(q), float(m), None if medians.get(q) is None else float(medians[q])) for q, m in means.items()]
    return sorted(rows, key=lambda row: row[0])


def attack_label(evaluation: Mapping) -> tuple[str, str]:
    """(metric-type prefix, human name) of an evaluation's attack: one attack, or the per-sample best
    of several ('ensemble')."""
    attacks = evaluation.get("attacks") or [str(evaluation.get("attack", "ta"))]
    if len(attacks) > 1:
        return "ensemble", "best of " + "+".join(a.upper() for a in attacks)
    return attacks[0], attacks[0].upper()
