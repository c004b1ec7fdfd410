"""sha256 verification on plain timm's ``hf-hub:ORG/NAME``, ``local-dir:PATH`` and ``file=`` routes.

For these names timm reads the repo's (folder's) config.json, builds its ``architecture`` and reads
the weights with safetensors; it has no hook to check them. So importing repspec_zoo wraps the three
timm functions that read those weights (``timm.models._builder.load_state_dict_from_hf`` and
``load_state_dict_from_path``, which timm looks up at call time; and ``load_state_dict``, which
reads ``pretrained_cfg_overlay=dict(file=PATH)``): when config.json records
``weights_sha256`` (every zoo export does), the weights go through :func:`.weights.read_weights`,
the check the zoo-name route makes (sha256, readable file, head size). Other repos and folders
load as timm loads them, except that an unreadable ``model.safetensors`` is named with the fix.
"""
from __future__ import annotations

from pathlib import Path

import torch
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError
from timm.models import _builder, _factory

from .pretrained import (HUB_CONFIG_FILE, REFETCH, SHA_KEY, WEIGHTS_FILE, PretrainedWeightsError,
                         PretrainedWeightsUnavailable, _hub_reason, bundled_dir, hub_file, read_config, read_weights)
from ..runs import load_weights_file

__all__ = ["install"]

_TIMM_FROM_HF, _TIMM_FROM_PATH = _builder.load_state_dict_from_hf, _builder.load_state_dict_from_path
_TIMM_FROM_FILE = _builder.load_state_dict
_TIMM_CONFIG_FROM_HF = _factory.load_model_config_from_hf
_TIMM_DEFAULT_FILES = ("pytorch_model.bin", WEIGHTS_FILE)  # timm's default name (it prefers model.safetensors)


def _verified(config: Path, weights: Path) -> dict[str, torch.Tensor]:
    """A zoo export's verified weights; any other safetensors file read with its path in the error."""
    if SHA_KEY in read_config(config):
        return read_weights(config, weights).state_dict
    return load_weights_file(weights.read_bytes(), weights, REFETCH, PretrainedWeightsError)


def _state_dict_from_hf(model_id: str, filename: str = "pytorch_model.bin", weights_only: bool = True,
                        cache_dir=None) -> dict[str, torch.Tensor]:
    if filename in _TIMM_DEFAULT_FILES:
        try:
            return _verified(hub_file(model_id, HUB_CONFIG_FILE, cache_dir),
                             hub_file(model_id, WEIGHTS_FILE, cache_dir))
        except EntryNotFoundError:  # no config.json or no model.safetensors (e.g. pytorch_model.bin): timm's way
            pass
    return _TIMM_FROM_HF(model_id, filename, weights_only=weights_only, cache_dir=cache_dir)


def _state_dict_from_path(path, weights_only: bool = True) -> dict[str, torch.Tensor]:
    config, weights = Path(path) / HUB_CONFIG_FILE, Path(path) / WEIGHTS_FILE
    if config.is_file() and weights.is_file():
        return _verified(config, weights)
    return _TIMM_FROM_PATH(path, weights_only=weights_only)


def _state_dict_from_file(checkpoint_path, *args, **kwargs) -> dict[str, torch.Tensor]:
    """timm's ``pretrained_cfg_overlay=dict(file=PATH)``: a safetensors file beside a zoo export's config.json
    (which records its sha256) is verified like the other routes; any other file loads as timm loads it."""
    path = Path(checkpoint_path)
    config = path.parent / HUB_CONFIG_FILE
    if path.suffix == ".safetensors" and path.is_file() and config.is_file() and SHA_KEY in read_config(config):
        return read_weights(config, path).state_dict
    return _TIMM_FROM_FILE(checkpoint_path, *args, **kwargs)


def _config_from_hf(model_id: str, *args, **kwargs):
    """timm's read of an ``hf-hub:`` repo's config.json; a Hub that cannot answer (offline and not cached, no
    such repo) raises PretrainedWeightsUnavailable saying why and what loads instead."""
    try:
        return _TIMM_CONFIG_FROM_HF(model_id, *args, **kwargs)
    except (HfHubHTTPError, EntryNotFoundError) as err:
        name = model_id.split("/")[-1].split("@")[0]
        fix = (f"the zoo model {name} ships with repspec_zoo and loads offline: timm.create_model({name!r}, "
               "pretrained=True) after `import repspec_zoo`" if bundled_dir(name).is_dir() else
               "check the repo id, or go online once (HF_HUB_OFFLINE unset) so that it is cached for offline use")
        raise PretrainedWeightsUnavailable(f"cannot load hf-hub:{model_id}: {_hub_reason(err, model_id)}; "
                                           f"{fix}") from err


def install() -> None:
    """Route timm's hf-hub:, local-dir: and file= weight reading through the checks above (idempotent)."""
    _factory.load_model_config_from_hf = _config_from_hf
    _builder.load_state_dict_from_hf = _state_dict_from_hf
    _builder.load_state_dict_from_path = _state_dict_from_path
    _builder.load_state_dict = _state_dict_from_file
