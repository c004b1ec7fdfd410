"""The one model loader: ``load_model(spec, checkpoint=None, num_classes=None)``.

``spec`` is a training run directory, a zoo or timm name, ``hf-hub:org/name`` or ``local-dir:PATH``;
``checkpoint`` a weights file for the architecture ``spec`` names. Whatever a user can get wrong
(an unknown or misspelled name, a path that is not a run, a step checkpoint for resuming, a damaged
file, weights of another architecture or head size) raises a `repspec_zoo.errors.UserError` whose
message names the input and the fix.
"""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import timm
import torch
from torch import nn

from .errors import UserError
from .models.zoo import check_model_name
from .models.registry import ARCHS
from .spectral import without_regularizer
from .runs import CHECKPOINTS_DIR, RUN_CONFIG_FILE, STATE_FILE, WEIGHTS_FILE, is_run_dir, load_weights_file, read_run

__all__ = ["ModelLoadError", "load_model"]


class ModelLoadError(UserError, ValueError):
    """A model (name, path or ``--checkpoint`` file) cannot be loaded as given; the message says what to pass."""


_PREFIXES = ("hf-hub:", "local-dir:")
_MODEL_FORMS = ("MODEL takes a zoo or timm name (e.g. slp_repspectral.fmnist, resnet18), hf-hub:org/name, "
                "local-dir:PATH or a training run directory")


def _step_folder(path: Path) -> Path | None:
    """The checkpoint folder (checkpoints/step_N, holding train_state.json) ``path`` is or lies in, if any."""
    for folder in (path, path.parent):
        if folder.is_dir() and (folder / STATE_FILE).is_file():
            return folder
    return None


def _step_error(step: Path, given: str) -> ModelLoadError:
    run = step.parent.parent
    finished = is_run_dir(run) and (run / WEIGHTS_FILE).is_file()
    fix = (f"pass the run directory {run} (or --checkpoint {run / WEIGHTS_FILE})" if finished else
           f"{run} has no final {WEIGHTS_FILE} yet: finish the run (its training command resumes from this "
           "checkpoint), then pass the run directory")
    return ModelLoadError(f"{given} is a training checkpoint ({CHECKPOINTS_DIR}/{step.name}/, kept for resuming; "
                          f"its weights carry the training wrapper's keys); to evaluate the run, {fix}")


def _check_path_spec(spec: str) -> None:
    """ModelLoadError for a MODEL that is a path but not a run directory: a step checkpoint, a
    weights file, another folder, or a path that does not exist."""
    path = Path(spec).expanduser()
    if path.exists():
        if (step := _step_folder(path)) is not None:
            raise _step_error(step, spec)
        if path.is_file() and is_run_dir(path.parent):
            raise ModelLoadError(f"{spec} is a run's weights file; pass the run directory {path.parent}, "
                                 "which also records the architecture")
        if path.is_file():
            raise ModelLoadError(f"{spec} is a weights file; pass its architecture as MODEL and the file as "
                                 f"--checkpoint, e.g. `repspec-zoo eval resnet_small --checkpoint {spec}`")
        raise ModelLoadError(f"{spec} is a folder without {RUN_CONFIG_FILE}, so not a training run directory; for a "
                             f"folder with a timm config.json and weights (e.g. an export) pass local-dir:{spec}")
    if spec.startswith(("/", ".", "~")) or spec.count("/") > 1 or path.suffix in (".safetensors", ".pth", ".bin"):
        raise ModelLoadError(f"{spec} does not exist; {_MODEL_FORMS}")
    raise ModelLoadError(f"unknown model {spec!r}: for the Hugging Face Hub repo {spec} pass hf-hub:{spec}; "
                         f"for a run directory give an existing path. {_MODEL_FORMS}")


def _read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a --checkpoint file (safetensors, or a torch state dict via timm), regularizer buffers dropped."""
    given = f"--checkpoint {path}"
    if path.is_dir():
        fix = ("it is a run directory: pass it as MODEL instead" if is_run_dir(path) else
               f"pass a weights file such as runs/<name>/{WEIGHTS_FILE}")
        raise ModelLoadError(f"{given} is a folder, not a weights file; {fix}")
    if not path.is_file():
        raise ModelLoadError(f"{given} does not exist; pass the {WEIGHTS_FILE} of a training run "
                             f"(runs/<name>/{WEIGHTS_FILE}) or the run directory itself as MODEL")
    if (step := _step_folder(path)) is not None:
        raise _step_error(step, given)
    fix = "Pass a safetensors weights file that a training run or `repspec-zoo export` wrote"
    if path.suffix == ".safetensors":
        tensors = load_weights_file(path.read_bytes(), path, fix)
    else:
        try:
            tensors = timm.models.load_state_dict(str(path), weights_only=True)
        except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as err:
            raise ModelLoadError(f"{given} is neither a safetensors file nor a torch state dict ({err}). "
                                 f"{fix}") from err
    return without_regularizer(tensors)


def _guess_arch(keys: set[str]) -> str | None:
    """The zoo base architecture whose tensor names are exactly ``keys``, if one is (built on the meta device)."""
    for base in dict.fromkeys(base for base, _ in ARCHS.values()):
        with torch.device("meta"):
            if set(timm.create_model(base).state_dict()) == keys:
                return base
    return None


def _misfit(model: nn.Module, state: dict[str, torch.Tensor], spec: str, path: Path, err: Exception) -> str:
    """Why ``state`` does not load into ``model`` (built as ``spec``), in one sentence with the fix."""
    want = model.state_dict()
    if sum(k.startswith("model.") for k in state) > len(state) // 2 and not any(k.startswith("model.") for k in want):
        return (f"--checkpoint {path} holds the training wrapper's keys (model.*): it is a checkpoint for resuming; "
                f"pass the run directory (or its final {WEIGHTS_FILE}) instead")
    missing, extra = [k for k in want if k not in state], [k for k in state if k not in want]
    if missing or extra:
        guess = _guess_arch(set(state))
        found = (f"its tensors are those of {guess}" if guess else
                 f"{len(missing)} of {spec}'s tensors are missing from it (e.g. {missing[:2]}) and "
                 f"{len(extra)} are not {spec}'s (e.g. {extra[:2]})")
        return (f"--checkpoint {path} is not a {spec} checkpoint: {found}; pass the architecture it was trained as "
                f"(the run's {RUN_CONFIG_FILE} says model: ...) or the run directory itself")
    wrong = [k for k in want if state[k].shape != want[k].shape]
    if not wrong:
        return f"--checkpoint {path} does not load into {spec}: {err}"
    head, key = model.pretrained_cfg.get("classifier") or "", wrong[0]
    if all(k.startswith(f"{head}.") for k in wrong):
        return (f"--checkpoint {path} has a {state[key].shape[0]}-class head ({key} {tuple(state[key].shape)}) but "
                f"{spec} was built for {want[key].shape[0]} classes ({tuple(want[key].shape)}; repspec-zoo eval takes "
                f"the data's class count); evaluate it on the {state[key].shape[0]}-class data it was trained on "
                "(--dataset / --data-dir)")
    return (f"--checkpoint {path} does not fit {spec}: {key} is {tuple(state[key].shape)} in the file and "
            f"{tuple(want[key].shape)} in the model, so it was trained with other model settings (model_kwargs); "
            "pass the run directory, whose config records them")


def load_model(spec: str | os.PathLike, checkpoint: str | os.PathLike | None = None,
               num_classes: int | None = None) -> nn.Module:
    """The one model loader: a timm model in eval mode, without regularizer hooks (evaluation needs none).

    Args:
        spec: a training run directory (its final weights), a zoo or timm name (``arch`` or
            ``arch.tag``: pretrained weights, sha256-verified for zoo names), ``hf-hub:org/name``
            or ``local-dir:PATH``.
        checkpoint: a weights file (.safetensors or a torch state dict) loaded into the architecture
            of the name ``spec`` instead of its pretrained weights.
        num_classes: head size of the architecture built for ``checkpoint`` (default: the name's).

    Raises:
        UserError subclasses naming the input and the fix: ModelLoadError (unknown path, a step
        checkpoint, a weights file that does not fit), RunError, UnknownModelError (with close
        names), the pretrained-weights errors.

    Example::

        model = load_model("runs/fmnist_rep")                          # a run directory
        model = load_model("slp_repspectral.fmnist")                   # bundled / Hub zoo weights
        model = load_model("slp_repspectral", checkpoint="w.safetensors")
    """
    spec = str(spec)
    if is_run_dir(spec):
        if checkpoint is not None:
            raise ModelLoadError(f"{spec} is a training run directory, which holds its own weights; pass it alone, "
                                 f"or an architecture name with --checkpoint {checkpoint}")
        return _plain(read_run(spec).build_model())
    if not spec.startswith(_PREFIXES) and ("/" in spec or os.sep in spec or Path(spec).exists()):
        _check_path_spec(spec)
    if spec.startswith("local-dir:") and not (Path(spec[len("local-dir:"):]).expanduser() / "config.json").is_file():
        raise ModelLoadError(f"{spec}: no config.json there; local-dir: takes a folder with a timm config.json "
                             "and weights, e.g. one `repspec-zoo export` wrote")
    check_model_name(spec)
    if checkpoint is None:
        cfg = None if spec.startswith(_PREFIXES) else timm.models.get_pretrained_cfg(spec)
        if cfg is not None and not cfg.has_weights:
            raise ModelLoadError(f"{spec} has no pretrained weights; pass your weights with --checkpoint FILE, a "
                                 "training run directory, or a tagged zoo name (`repspec-zoo list-pretrained`)")
        try:
            return _plain(timm.create_model(spec, pretrained=True))
        except OSError as err:  # huggingface_hub: offline and not cached, unreachable, missing repo
            raise ModelLoadError(f"cannot load {spec}: {err} Check the repo id, or download it once while online "
                                 "(HF_HUB_OFFLINE unset) to read it from the cache later") from err
    path = Path(checkpoint).expanduser()
    state = _read_checkpoint(path)
    model = _plain(timm.create_model(spec, pretrained=False, **({} if num_classes is None else
                                                                 dict(num_classes=num_classes))))
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise ModelLoadError(_misfit(model, state, spec, path, err)) from err
    return model


def _plain(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with its regularizer hooks removed."""
    if hasattr(model, "spectral"):
        model.spectral.remove()
    return model.eval()
