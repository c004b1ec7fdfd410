"""Writing zoo weights: export a training run as a Hub-ready folder, bundle it, publish it.

The folder layout is in :mod:`repspec_zoo.models.pretrained`. Example::

    export("runs/fmnist_rep", "runs/export/resnet_small_repspectral.fmnist")
    publish("runs/fmnist_rep", repo_id="me/resnet_small_repspectral.fmnist", endpoint="https://hub.example")
    bundle("runs/zoo/fmnist_slp_repspectral")   # into repspec_zoo/weights/<name>
"""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import tempfile
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterator

import safetensors.torch
import torch
from huggingface_hub import HfApi, constants as hf_constants
from huggingface_hub.errors import HfHubHTTPError
from timm.models import PretrainedCfg, get_pretrained_cfg
from timm.models._hub import save_config_for_hf

from ..errors import UserError
from .. import __version__
from ..data import DATASETS
from ..io import atomic_write_bytes, atomic_write_text, full_disk_is_user_error
from ..models.registry import base_pretrained_cfg
from ..regularizers.registry import REGULARIZERS, SPECTRAL_SETTINGS, get_spec
from ..runs import RUN_CONFIG_FILE, WEIGHTS_FILE, Run, RunError, read_run
from ..spectral import GAMMA_CONVENTION, select_layers
from .cards import render_card
from .provenance import Identity, portable, run_identity
from ..models.pretrained import CARD_FILE, HUB_CONFIG_FILE, EVAL_FILE, SHA_KEY, bundled_dir, read_config, sha256_hex

__all__ = ["ExportError", "PublishError", "Export", "export", "bundle", "update_bundled_evaluation", "publish"]

EVAL_DETAIL_KEYS = ("per_sample",)  # per-sample records stay in eval.json, out of config.json's summary


class ExportError(UserError, ValueError):
    """A training run directory cannot be exported: a file or key is missing or inconsistent."""


class PublishError(UserError, RuntimeError):
    """The Hub endpoint refused the upload (or cannot be used); nothing was written locally."""


def _build_checked(run: Run, pretrained_cfg: dict) -> torch.nn.Module:
    """The plain base timm model with the run's weights loaded strictly. The run's architecture kwargs
    go into config.json's model_args (timm records them), so that hf-hub: and zoo-name loading
    rebuild the same function."""
    try:
        return run.build_model(pretrained_cfg=pretrained_cfg)
    except RunError as err:
        raise ExportError(str(err)) from err


def _regularizer(run: Run, model: torch.nn.Module) -> dict:
    """The run's regularizer in the paper's convention, with the names of the regularized layers.

    Modes that regularize no layer (the Roth et al. baselines) record their spec's ``export_keys``
    instead of gamma.
    """
    given, spec = run.config["regularizer"], get_spec(run.mode)
    if spec.baseline:
        return {"mode": run.mode, "gamma": 0.0, "layers": []}
    where = run.path / RUN_CONFIG_FILE
    if not spec.spectral:
        missing = [k for k in spec.export_keys if given.get(k) is None]
        if missing:
            raise ExportError(f"{where}: {', '.join('regularizer.' + k for k in missing)} missing for mode={run.mode!r}")
        settings = {k: kind(given[k]) for k, kind in spec.export_keys.items()}
        burn_in = {"burn_in_epochs": given["burn_in_epochs"]} if "burn_in_epochs" in given else {}
        return {"mode": run.mode, **settings, "layers": [], **burn_in}
    if given.get("gamma") is None:
        raise ExportError(f"{where}: regularizer.gamma is missing for mode={run.mode!r}")
    layers = given.get("layers") or list(select_layers(model, spec.spectral_kwargs["mode"]))
    extra = {k: given[k] for k in SPECTRAL_SETTINGS if k in given}
    return {"mode": run.mode, "gamma": float(given["gamma"]), "convention": GAMMA_CONVENTION, "layers": layers, **extra}


def _metadata(run: Run, identity: Identity, model: torch.nn.Module, sha: str) -> dict:
    """Our top-level config.json keys (timm reads only its own keys and ignores these); no machine paths."""
    meta = {
        "zoo_name": identity.name, "repspec_zoo_version": __version__, "dataset": identity.dataset,
        **({"custom_data": True} if identity.custom else {}),
        "regularizer": _regularizer(run, model), "recipe": portable(run.config),
        "eval": portable({k: v for k, v in run.evaluation.items() if k not in EVAL_DETAIL_KEYS}),
        "training": portable(run.summary), SHA_KEY: sha,
    }
    if identity.class_names:
        meta["label_names"] = list(identity.class_names)  # a timm key: class names for plain timm users
    return meta


def _is_export(folder: Path) -> bool:
    config = folder / HUB_CONFIG_FILE
    return config.is_file() and "zoo_name" in read_config(config)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def recover_export(target: Path) -> bool:
    """Clean up after an export of ``target`` that was killed; returns whether the previous export was restored.

    A replacing export moves the old folder into a hidden ``.NAME.PID.XXXXXXXX.old/NAME``, then
    renames its finished ``.NAME.PID.XXXXXXXX.tmp`` to ``NAME``, then deletes the ``.old`` folder. A
    kill between the two renames leaves no ``NAME``: the old export is moved back. Every other
    leftover of a process that is gone (or of an older export without a pid) is deleted: a ``.tmp``
    is an unfinished new export, an ``.old`` beside a ``NAME`` a replaced one. Folders of a running
    export are left alone.
    """
    pattern = re.compile(rf"\.{re.escape(target.name)}\.(?:(\d+)\.)?[a-z0-9_]+\.(tmp|old)")  # not NAME.x's
    restored = False
    for leftover in sorted(target.parent.iterdir()):
        found = pattern.fullmatch(leftover.name)
        if not found or not leftover.is_dir() or (found[1] and _pid_alive(int(found[1]))):
            continue
        if found[2] == "old" and not target.exists() and (leftover / target.name).is_dir():
            os.replace(leftover / target.name, target)
            restored = True
        shutil.rmtree(leftover, ignore_errors=True)
    return restored


@contextlib.contextmanager
def _staged_dir(target: Path, force: bool) -> Iterator[Path]:
    """A temp folder beside ``target`` that replaces it on success and is deleted on error.

    An existing export in ``target`` is replaced only with ``force``; any other non-empty folder never.
    What a killed export of ``target`` left is cleaned up first (`recover_export`).
    """
    if target.parent.is_dir() and recover_export(target):
        warnings.warn(f"restored the previous export in {target}: an export that replaced it was killed between "
                      "its two renames", stacklevel=3)
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or _is_export(target))):
        raise ExportError(f"{target} exists and is not an exported zoo model; export to a new folder "
                          f"(e.g. runs/export/<name>) so nothing else is replaced")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise ExportError(f"{target} already holds an exported model; pass --force (force=True) to replace it, "
                          "or export to a new folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{target.name}.{os.getpid()}."  # the pid tells a later export whether this one is still running
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix, suffix=".tmp"))
    staged.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
    old = None
    try:
        with full_disk_is_user_error(target, f"free space, then export again ({target} is unchanged)"):
            yield staged
            if target.exists():
                old = Path(tempfile.mkdtemp(dir=target.parent, prefix=prefix, suffix=".old"))
                os.replace(target, old / target.name)
            os.replace(staged, target)
    except BaseException:
        if old is not None and not target.exists() and (old / target.name).is_dir():
            os.replace(old / target.name, target)  # the new export is not in place: the old one goes back
        shutil.rmtree(staged, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)


@dataclass
class Export:
    """An exported model folder."""

    folder: Path
    name: str            # arch.tag: a zoo name, or arch.SLUG for a run on custom data (hub/provenance.py)
    repo_id: str | None  # the Hub repo its card points at (None: a custom-data run exported without --repo-id)


def _read(run_dir: str | os.PathLike) -> Run:
    try:
        return read_run(run_dir)
    except RunError as err:
        raise ExportError(str(err)) from err


def _identity(run: Run) -> Identity:
    try:
        return run_identity(run)
    except ValueError as err:
        raise ExportError(f"{run.path}: {err}") from err


def _pretrained_cfg(run: Run, identity: Identity) -> PretrainedCfg:
    """The zoo name's pretrained cfg; for custom data the arch's, with the run's classes and data."""
    if identity.custom:
        cfg = get_pretrained_cfg(identity.arch)
        c, h, w = cfg.input_size
        size = (c, run.img_size, run.img_size) if run.img_size else (c, h, w)
        description = REGULARIZERS[run.mode].description.format(base=run.config["model"], dataset=identity.dataset)
        return replace(cfg, tag=identity.tag, hf_hub_id=None, num_classes=int(run.config["num_classes"]),
                       input_size=size, pool_size=cfg.pool_size if size == cfg.input_size else None,
                       description=description)
    cfg = get_pretrained_cfg(identity.name)
    if run.img_size not in (None, cfg.input_size[-1]):
        raise ExportError(f"{run.path}: trained at img_size={run.img_size}, but {identity.name} is defined at "
                          f"input_size={cfg.input_size}; its pretrained cfg must describe the weights "
                          "(add a tag in zoo.py)")
    return cfg


def export(run_dir: str | os.PathLike, to: str | os.PathLike, repo_id: str | None = None,
           force: bool = False) -> Export:
    """Write the Hub-ready folder of a training run (weights, config.json, README.md, eval.json).

    The name, dataset and class names come from what the run was trained on (hub/provenance.py):
    a zoo name for zoo data, ``arch.SLUG`` for custom data. ``repo_id`` defaults to the zoo's
    ``hf_hub_id`` for a zoo name and to none for custom data. An existing export in ``to`` is
    replaced only with ``force``. The folder is written to a temp folder and renamed into place, so
    ``to`` holds the old export or the new one, never a mix.
    """
    return _export(_read(run_dir), Path(to), repo_id, force)


def _export(run: Run, to: Path, repo_id: str | None, force: bool, evidence: str | None = None) -> Export:
    identity = _identity(run)
    cfg = _pretrained_cfg(run, identity)
    repo_id = repo_id or (None if identity.custom else cfg.hf_hub_id)
    model = _build_checked(run, base_pretrained_cfg(cfg, run.config["model"]))
    payload = safetensors.torch.save(run.state_dict, metadata={"format": "pt"})
    meta = _metadata(run, identity, model, sha256_hex(payload))
    if evidence:
        meta["evidence"] = evidence
    spec = None if identity.custom else DATASETS.get(identity.dataset)
    with _staged_dir(to, force) as staged:
        atomic_write_bytes(staged / WEIGHTS_FILE, payload)
        save_config_for_hf(model, str(staged / HUB_CONFIG_FILE), model_config=meta)
        config = read_config(staged / HUB_CONFIG_FILE)
        atomic_write_text(staged / CARD_FILE, str(render_card(config, repo_id, spec and spec.hub_id)))
        atomic_write_text(staged / EVAL_FILE, json.dumps(portable(run.evaluation), indent=2))
    return Export(to, identity.name, repo_id)


def update_bundled_evaluation(name: str, evaluation: dict) -> Path:
    """Replace the evaluation of a bundled zoo model: ``eval.json``, config.json's ``eval`` summary
    and the re-rendered card, in ``repspec_zoo/weights/<name>``. The weights and their sha256 are untouched.

    Returns the folder written. Each file is replaced atomically.
    """
    folder = bundled_dir(name)
    if not (folder / HUB_CONFIG_FILE).is_file():
        raise ExportError(f"{name} has no bundled folder {folder}; `repspec-zoo list-pretrained` shows the "
                          "bundled models")
    repo_id, evaluation = get_pretrained_cfg(name).hf_hub_id, portable(evaluation)
    config = read_config(folder / HUB_CONFIG_FILE)
    config["eval"] = {k: v for k, v in evaluation.items() if k not in EVAL_DETAIL_KEYS}
    spec = DATASETS.get(config["dataset"])
    atomic_write_text(folder / HUB_CONFIG_FILE, json.dumps(config, indent=2))
    atomic_write_text(folder / EVAL_FILE, json.dumps(evaluation, indent=2))
    atomic_write_text(folder / CARD_FILE, str(render_card(config, repo_id, spec and spec.hub_id)))
    return folder


def _transport_errors() -> tuple[type[Exception], ...]:
    """The network failures (no connection, timeout) of the HTTP client huggingface_hub uses: httpx2,
    httpx or requests, depending on its version."""
    found = []
    for module, name in (("httpx2", "TransportError"), ("httpx", "TransportError"), ("requests", "RequestException")):
        try:
            found.append(getattr(importlib.import_module(module), name))
        except ImportError:
            continue
    return tuple(found)


def publish(run_dir: str | os.PathLike, repo_id: str | None = None, endpoint: str | None = None,
            private: bool = False, token: str | None = None) -> str:
    """Export a run to a temp folder and upload it to a Hub repo (created if needed).

    Args:
        run_dir: the training run directory.
        repo_id: ``org/name``; default the zoo's ``hf_hub_id`` for a zoo-data run. A run on custom
            data (hub/provenance.py) needs one: it is not the zoo's model.
        endpoint: Hub URL; default ``HF_ENDPOINT`` or huggingface.co.
        private: create the repo private (an existing repo keeps its visibility).
        token: write token; default the saved login / ``HF_TOKEN``.

    Returns the commit URL. PublishError if the endpoint refuses or cannot be reached; nothing is left locally.
    """
    if hf_constants.HF_HUB_OFFLINE:
        raise PublishError("HF_HUB_OFFLINE=1 is set, so nothing can be uploaded: unset it to publish "
                           "(or use repspec-zoo export to write the folder locally)")
    run = _read(run_dir)
    identity = _identity(run)
    if identity.custom and not repo_id:
        raise PublishError(f"{run.path} was trained on custom data ({identity.dataset}), so it is {identity.name}, "
                           "not a zoo model, and has no zoo repo: pass --repo-id ORG/NAME (repo_id=) to publish it")
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="repspec-publish-") as tmp:
        exported = _export(run, Path(tmp) / "model", repo_id, force=False)
        try:
            api.create_repo(exported.repo_id, private=private, exist_ok=True)
            commit = api.upload_folder(repo_id=exported.repo_id, folder_path=exported.folder,
                                       commit_message=f"{exported.name} (repspec-zoo {__version__})")
        except HfHubHTTPError as err:
            namespace = exported.repo_id.split("/")[0]
            raise PublishError(
                f"{api.endpoint} refused to publish {exported.name} to {exported.repo_id}: {err}\nCheck that "
                f"your token (HF_TOKEN or `hf auth login`) may write to {namespace!r}, or pass another "
                "--repo-id / --endpoint. Nothing was written locally.") from err
        except _transport_errors() as err:
            raise PublishError(f"cannot reach the Hub endpoint {api.endpoint} ({type(err).__name__}: {err}); check "
                               "--endpoint (or HF_ENDPOINT) and the network, then publish again (nothing was "
                               "uploaded or written locally)") from err
    return commit.commit_url


def bundle(run_dir: str | os.PathLike, evidence: str | None = None) -> str:
    """Export a finished run as a bundled zoo model into ``repspec_zoo/weights/<name>``: weights (load
    offline with ``pretrained=True``), card, config and eval.json. ``evidence``: what the experiment
    behind the model showed across training seeds (markdown), kept in config.json and shown on the card.

    Returns the zoo name ``arch.tag``. The folder is replaced atomically (the old export or the new one).
    """
    run = _read(run_dir)
    identity = _identity(run)
    if identity.custom:
        raise ExportError(f"{run.path} was trained on custom data ({identity.dataset}); only zoo-data runs are "
                          "bundled with the package: use repspec-zoo export instead")
    return _export(run, bundled_dir(identity.name), None, force=True, evidence=evidence).name
