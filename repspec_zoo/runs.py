"""The training run directory: its file names and reading it back (`repspec_zoo.loader` loads models).

``recipes/train.py`` writes, into ``runs/<run>``::

    config.yaml         the resolved recipe config (repspec_zoo.training.TrainConfig)
    model.safetensors   final weights: plain timm state dict (regularizer buffers stripped)
    eval.json           the final evaluation (an EvalResult)
    run.json            summary: regularizer settings, epochs, timings, command
    metrics.jsonl       one record per epoch
    checkpoints/        accelerate save_state folders, step_NNNNNNN/ with train_state.json
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import safetensors.torch
import timm
import torch
import yaml
from safetensors import SafetensorError
from torch import nn
from .errors import UserError
from .spectral import without_regularizer

__all__ = ["RUN_CONFIG_FILE", "WEIGHTS_FILE", "EVAL_FILE", "SUMMARY_FILE", "METRICS_FILE", "CHECKPOINTS_DIR",
           "STATE_FILE", "RUN_FILES", "Run", "RunError", "read_run_config", "read_trained", "read_run", "load_weights_file", "is_run_dir"]

RUN_CONFIG_FILE, WEIGHTS_FILE, EVAL_FILE, SUMMARY_FILE = "config.yaml", "model.safetensors", "eval.json", "run.json"
METRICS_FILE, CHECKPOINTS_DIR, STATE_FILE = "metrics.jsonl", "checkpoints", "train_state.json"
RUN_FILES = (RUN_CONFIG_FILE, WEIGHTS_FILE, EVAL_FILE, SUMMARY_FILE)  # what a finished run holds


class RunError(UserError, ValueError):
    """A training run directory cannot be read: a file or key is missing or damaged."""


def _damage(data: bytes) -> str:
    """What an unreadable weights file most likely is: the usual failed downloads and killed writes."""
    if not data:
        return "it is empty (0 bytes)"
    if data.lstrip()[:1] == b"<":
        return "it is an HTML/XML page, not weights (a login or error page saved by a failed download)"
    return f"it is truncated or damaged ({len(data)} bytes)"


def load_weights_file(data: bytes, path: Path, fix: str, error: type[UserError] | None = None) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file's bytes.

    An unreadable file (empty, truncated, an HTML page) raises ``error`` (default RunError): one
    sentence naming ``path``, what the file looks like, and ``fix``.
    """
    try:
        return safetensors.torch.load(data)
    except SafetensorError as err:
        raise (error or RunError)(f"{path} is not a valid safetensors file: {_damage(data)} ({err}). {fix}") from err


@dataclass
class Run:
    """A training run directory, read and checked (see RUN_FILES)."""

    path: Path
    config: dict                           # config.yaml: the resolved recipe config
    state_dict: dict[str, torch.Tensor]    # final weights, regularizer buffers stripped
    evaluation: dict                       # eval.json
    summary: dict                          # run.json ({} if absent)

    @property
    def mode(self) -> str:
        """The regularizer mode (a repspec_zoo.regularizers.registry key)."""
        return self.config["regularizer"]["mode"]

    @property
    def dataset(self) -> str:
        dataset = self.config["dataset"]
        return dataset["name"] if isinstance(dataset, dict) else str(dataset)

    def build_model(self, **timm_kwargs) -> nn.Module:
        """The trained timm model: the run's architecture, head size and model_kwargs (e.g. slp's
        scale_logits), its final weights loaded strictly; RunError if they do not fit."""
        base, num_classes = self.config["model"], int(self.config["num_classes"])
        model = timm.create_model(base, num_classes=num_classes, **timm_kwargs, **(self.config.get("model_kwargs") or {}))
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as err:
            raise RunError(f"{self.path / WEIGHTS_FILE} does not fit timm {base!r} with num_classes={num_classes} "
                           f"({RUN_CONFIG_FILE}): {err}") from err
        return model

    @property
    def data_dir(self) -> str | None:
        """The local folder the run read its data from instead of its dataset's source (--data-dir), if any."""
        dataset = self.config["dataset"]
        return dataset.get("data_dir") if isinstance(dataset, dict) else None

    @property
    def img_size(self) -> int | None:
        """The image side the run trained at, if its config says (None: the model's default)."""
        dataset = self.config["dataset"]
        return dataset.get("img_size") if isinstance(dataset, dict) else None


_MISSING = {  # what a run directory without the file is, and the fix
    RUN_CONFIG_FILE: f"is it a training run directory? recipes/train.py writes {', '.join(RUN_FILES)} into runs/<run>",
    WEIGHTS_FILE: "that run has not finished. Finish it by running its command again (it resumes from its last "
                  "checkpoint)",
    EVAL_FILE: "the recipe's final evaluation writes it (or repspec-zoo eval --out RUN_DIR/eval.json)",
}


def _run_file(run_dir: Path, name: str) -> Path:
    path = run_dir / name
    if not path.is_file():
        raise RunError(f"{run_dir} has no {name}: {_MISSING[name]}")
    return path


def _lacks(run_dir: Path, keys: list[str]) -> RunError:
    return RunError(f"{run_dir / RUN_CONFIG_FILE} lacks {keys}: a run config needs model, num_classes, dataset and "
                    "regularizer.mode (none|rep|ll|adv|ddsnr)")


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise RunError(f"{path} is not valid JSON: {err}") from err


def _load_yaml(path: Path) -> dict:
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise RunError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise RunError(f"{path} holds {type(config).__name__}, not a mapping of config keys")
    return config


def read_run_config(run_dir: str | os.PathLike) -> dict:
    """A run directory's config.yaml, a mapping; RunError if it is missing or not a YAML mapping."""
    return _load_yaml(_run_file(Path(run_dir), RUN_CONFIG_FILE))


def read_trained(run_dir: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """A finished run's config.yaml (with model and num_classes) and final weights (regularizer
    buffers stripped): what building its model needs. RunError names a missing file or key."""
    run_dir = Path(run_dir)
    config, weights_path = read_run_config(run_dir), _run_file(run_dir, WEIGHTS_FILE)
    if missing := [k for k in ("model", "num_classes") if k not in config]:
        raise _lacks(run_dir, missing)
    tensors = load_weights_file(weights_path.read_bytes(), weights_path,
                                "The run's weights are damaged: train again or restore them")
    return config, without_regularizer(tensors)


def read_run(run_dir: str | os.PathLike) -> Run:
    """Read a training run directory: :func:`read_trained` plus its dataset, regularizer mode and
    evaluation (which cards report); RunError names a missing file or key."""
    run_dir = Path(run_dir)
    config, state_dict = read_trained(run_dir)
    missing = [k for k in ("dataset", "regularizer") if k not in config]
    if missing or "mode" not in (config.get("regularizer") or {}):
        raise _lacks(run_dir, missing or ["regularizer.mode"])
    evaluation = _load_json(_run_file(run_dir, EVAL_FILE))
    if "clean_acc" not in evaluation:
        raise RunError(f"{run_dir / EVAL_FILE} has no clean_acc, which every card reports: the recipe's "
                       "final evaluation writes it; evaluate the run before exporting it")
    summary = _load_json(run_dir / SUMMARY_FILE) if (run_dir / SUMMARY_FILE).is_file() else {}
    return Run(run_dir, config, state_dict, evaluation, summary)


def is_run_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a training run directory (it holds config.yaml)."""
    return (Path(path) / RUN_CONFIG_FILE).is_file()
