"""Pretrained weights of the zoo: where they are found, how they are checked, exported and published.

A zoo model's weights live in a folder laid out like its Hub repo::

    model.safetensors   plain timm state dict (no regularizer buffers)
    config.json         timm hub config (architecture = the base timm arch, pretrained_cfg, ...) plus
                        our metadata at the top level: zoo_name, dataset, regularizer (mode, gamma in
                        the paper's convention and layers; adv/ddsnr: eps, iters, ddsnr_lambda), recipe,
                        eval, training, weights_sha256
    README.md           model card (repspec_zoo.cards)
    eval.json           the run's evaluation summary

Resolution for ``pretrained=True`` (see repspec_zoo.models.zoo): the folder bundled in the
package (``repspec_zoo/weights/<arch>.<tag>/``), then the Hugging Face cache / Hub repo; the
sha256 in config.json is checked before the weights are used.

Example::

    export("runs/fmnist_rep", "model_cards/resnet_small_repspectral.fmnist")
    publish("runs/fmnist_rep", repo_id="me/resnet_small_repspectral.fmnist", endpoint="https://hub.example")
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import safetensors.torch
import timm
import torch
import yaml
from huggingface_hub import HfApi, constants as hf_constants, hf_hub_download, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError
from safetensors import SafetensorError
from timm.models import get_arch_pretrained_cfgs, get_pretrained_cfg, split_model_name_tag
from timm.models._hub import hf_split, save_config_for_hf

from . import __version__
from .cards import render_card
from .io import atomic_write_bytes, atomic_write_text
from .spectral import GAMMA_CONVENTION, select_layers

WEIGHTS_DIR = Path(__file__).with_name("weights")  # bundled weights: WEIGHTS_DIR / "<arch>.<tag>" / FILES
WEIGHTS_FILE, CONFIG_FILE, CARD_FILE, EVAL_FILE = "model.safetensors", "config.json", "README.md", "eval.json"
SHA_KEY = "weights_sha256"  # config.json key: sha256 hex digest of WEIGHTS_FILE
RUN_FILES = ("config.yaml", "model.safetensors", "eval.json", "run.json")  # a training run directory
REGULARIZER_KEYS = ("every", "estimator", "bn_aware", "burn_in_epochs")  # optional settings copied from a run
#: the required settings of the Roth et al. baselines and their types (adv: PGD radius and steps; ddsnr: eq. 13)
BASELINE_KEYS = {"adv": {"eps": float, "iters": int}, "ddsnr": {"ddsnr_lambda": float, "eps": float, "iters": int}}
EVAL_DETAIL_KEYS = ("per_sample",)  # per-sample records stay in eval.json, out of config.json's summary


class PretrainedWeightsUnavailable(RuntimeError):
    """pretrained=True found no weights: not bundled, not in the HF cache, not on the Hub."""


class PretrainedWeightsError(RuntimeError):
    """Weights were found but are unusable: sha256 mismatch, not safetensors, inconsistent head."""


class ExportError(ValueError):
    """A training run directory cannot be exported: a file or key is missing or inconsistent."""


class PublishError(RuntimeError):
    """The Hub endpoint refused the upload (or cannot be used); nothing was written locally."""


# ----------------------------------------------------------------------------- reading weights
def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def parse_safetensors(data: bytes, path: Path, fix: str) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file's bytes; a clear error naming ``path`` and ``fix`` if unreadable."""
    try:
        return safetensors.torch.load(data)
    except SafetensorError as err:
        raise PretrainedWeightsError(f"{path} is not a valid safetensors file ({err}); it may be truncated. "
                                     f"{fix}") from err


def _read_config(path: Path) -> dict:
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
    """Read config.json + model.safetensors and verify the weights against its sha256."""
    config = _read_config(config_path)
    data = weights_path.read_bytes()
    expected = config.get(SHA_KEY)
    if not expected:
        raise PretrainedWeightsError(f"{config_path} records no {SHA_KEY!r}, so {weights_path} cannot be verified; "
                                     "export the weights with repspec-zoo export")
    actual = sha256_hex(data)
    if actual != expected:
        raise PretrainedWeightsError(
            f"{weights_path}: sha256 {actual} does not match {expected} recorded in {config_path}: the file is "
            "corrupted or was modified. Delete it (a Hugging Face cache copy: `hf cache rm model/<repo id>`) and "
            "download or export it again")
    state_dict = parse_safetensors(data, weights_path, "Delete it and download or export it again")
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


def _download(hf_hub_id: str, cache_dir) -> tuple[Path, Path]:
    repo_id, revision = hf_split(hf_hub_id)
    return tuple(Path(hf_hub_download(repo_id, f, revision=revision, cache_dir=cache_dir))  # type: ignore[return-value]
                 for f in (CONFIG_FILE, WEIGHTS_FILE))


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
    if (folder / CONFIG_FILE).is_file() and (folder / WEIGHTS_FILE).is_file():
        return read_weights(folder / CONFIG_FILE, folder / WEIGHTS_FILE)
    tried = [f"bundled: {folder} (not shipped with this install)"]
    if hf_hub_id:
        try:
            return read_weights(*_download(hf_hub_id, cache_dir))
        except (HfHubHTTPError, EntryNotFoundError) as err:
            tried.append(f"Hugging Face Hub {hf_hub_id}: {_hub_reason(err, hf_hub_id)}")
    raise _unavailable(name, tried)


def local_config(name: str, hf_hub_id: str | None) -> tuple[str, dict | None]:
    """``(source, config.json or None)`` of ``name``'s weights without any network access.

    source: 'bundled', 'hf-cache', or 'hub' (fetched from ``hf_hub_id`` on first pretrained=True).
    """
    bundled = bundled_dir(name) / CONFIG_FILE
    if bundled.is_file():
        return "bundled", _read_config(bundled)
    if hf_hub_id:
        repo_id, revision = hf_split(hf_hub_id)
        cached = try_to_load_from_cache(repo_id, CONFIG_FILE, revision=revision)
        if isinstance(cached, str):
            return "hf-cache", _read_config(Path(cached))
    return "hub", None


# ------------------------------------------------------------------------------- export
@dataclass
class Run:
    """A training run directory, read and checked (see RUN_FILES)."""

    path: Path
    config: dict                           # config.yaml: the resolved recipe config
    state_dict: dict[str, torch.Tensor]    # final weights, regularizer buffers stripped
    evaluation: dict                       # eval.json
    summary: dict                          # run.json ({} if absent)

    @property
    def mode(self) -> str | None:
        mode = self.config["regularizer"]["mode"]
        return None if mode in (None, "none") else mode

    @property
    def dataset(self) -> str:
        dataset = self.config["dataset"]
        return dataset["name"] if isinstance(dataset, dict) else str(dataset)

    @property
    def img_size(self) -> int | None:
        """The image side the run trained at, if its config says (None: the model's default)."""
        dataset = self.config["dataset"]
        return dataset.get("img_size") if isinstance(dataset, dict) else None


def _run_file(run_dir: Path, name: str) -> Path:
    path = run_dir / name
    if not path.is_file():
        raise ExportError(f"{run_dir} has no {name}: is it a training run directory? recipes/train.py writes "
                          f"{', '.join(RUN_FILES)} into runs/<run>; run.json is optional, eval.json comes from "
                          "the recipe's final evaluation (or repspec-zoo eval)")
    return path


def _load_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ExportError(f"{path} is not valid JSON: {err}") from err


def _load_yaml(path: Path) -> dict:
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ExportError(f"{path} is not valid YAML: {err}") from err
    if not isinstance(config, dict):
        raise ExportError(f"{path} holds {type(config).__name__}, not a mapping of config keys")
    return config


def read_run(run_dir: str | os.PathLike) -> Run:
    """Read a training run directory; ExportError names a missing file or key."""
    run_dir = Path(run_dir)
    config = _load_yaml(_run_file(run_dir, "config.yaml"))
    missing = [k for k in ("model", "num_classes", "dataset", "regularizer") if k not in config]
    if missing or "mode" not in (config.get("regularizer") or {}):
        raise ExportError(f"{run_dir / 'config.yaml'} lacks {missing or ['regularizer.mode']}: a run config needs "
                          "model, num_classes, dataset and regularizer.mode (none|rep|ll|adv|ddsnr)")
    weights_path = _run_file(run_dir, WEIGHTS_FILE)
    try:
        tensors = parse_safetensors(weights_path.read_bytes(), weights_path,
                                    "The run's weights are damaged: train again or restore them")
    except PretrainedWeightsError as err:
        raise ExportError(str(err)) from err
    evaluation = _load_json(_run_file(run_dir, EVAL_FILE))
    if "clean_acc" not in evaluation:
        raise ExportError(f"{run_dir / EVAL_FILE} has no clean_acc, which every card reports: the recipe's "
                          "final evaluation writes it; evaluate the run before exporting it")
    summary = _load_json(run_dir / "run.json") if (run_dir / "run.json").is_file() else {}
    state_dict = {k: v for k, v in tensors.items() if not k.startswith("spectral.")}
    return Run(run_dir, config, state_dict, evaluation, summary)


def _build_checked(run: Run, pretrained_cfg: dict) -> torch.nn.Module:
    """The plain base timm model with the run's weights loaded strictly."""
    base = run.config["model"]
    # the run's architecture kwargs (e.g. slp's scale_logits) go into config.json's model_args (timm
    # records them), so that hf-hub: and zoo-name loading rebuild the same function
    model = timm.create_model(base, pretrained_cfg=pretrained_cfg, num_classes=int(run.config["num_classes"]),
                              **(run.config.get("model_kwargs") or {}))
    try:
        model.load_state_dict(run.state_dict)
    except RuntimeError as err:
        raise ExportError(f"{run.path / WEIGHTS_FILE} does not fit timm {base!r} with num_classes="
                          f"{run.config['num_classes']} (config.yaml): {err}") from err
    return model


def _regularizer(run: Run, model: torch.nn.Module) -> dict:
    """The run's regularizer in the paper's convention, with the names of the regularized layers.

    adv/ddsnr (Roth et al.) regularize no layer: their settings (BASELINE_KEYS) are recorded instead of gamma.
    """
    given = run.config["regularizer"]
    if run.mode is None:
        return {"mode": "none", "gamma": 0.0, "layers": []}
    if run.mode in BASELINE_KEYS:
        missing = [k for k in BASELINE_KEYS[run.mode] if given.get(k) is None]
        if missing:
            raise ExportError(f"{run.path / 'config.yaml'}: {', '.join('regularizer.' + k for k in missing)} "
                              f"missing for mode={run.mode!r}")
        settings = {k: kind(given[k]) for k, kind in BASELINE_KEYS[run.mode].items()}
        burn_in = {"burn_in_epochs": given["burn_in_epochs"]} if "burn_in_epochs" in given else {}
        return {"mode": run.mode, **settings, "layers": [], **burn_in}
    if given.get("gamma") is None:
        raise ExportError(f"{run.path / 'config.yaml'}: regularizer.gamma is missing for mode={run.mode!r}")
    layers = given.get("layers") or list(select_layers(model, run.mode))
    extra = {k: given[k] for k in REGULARIZER_KEYS if k in given}
    return {"mode": run.mode, "gamma": float(given["gamma"]), "convention": GAMMA_CONVENTION, "layers": layers, **extra}


def _metadata(run: Run, name: str, model: torch.nn.Module, sha: str, label_names) -> dict:
    """Our top-level config.json keys (timm reads only its own keys and ignores these)."""
    meta = {
        "zoo_name": name, "repspec_zoo_version": __version__, "dataset": run.dataset,
        "regularizer": _regularizer(run, model), "recipe": run.config,
        "eval": {k: v for k, v in run.evaluation.items() if k not in EVAL_DETAIL_KEYS},
        "training": run.summary, SHA_KEY: sha,
    }
    if label_names:
        meta["label_names"] = list(label_names)  # a timm key: class names for plain timm users
    return meta


def _is_export(folder: Path) -> bool:
    config = folder / CONFIG_FILE
    return config.is_file() and "zoo_name" in _load_json(config)


@contextlib.contextmanager
def _staged_dir(target: Path) -> Iterator[Path]:
    """A temp folder beside ``target`` that replaces it on success and is deleted on error."""
    if target.exists() and not (target.is_dir() and (not any(target.iterdir()) or _is_export(target))):
        raise ExportError(f"{target} exists and is not an exported zoo model; export to a new folder "
                          f"(e.g. model_cards/<name>) so nothing else is replaced")
    target.parent.mkdir(parents=True, exist_ok=True)
    staged = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    staged.chmod(0o755)  # mkdtemp makes it private; the export is meant to be shared
    try:
        yield staged
        if target.exists():
            old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".old"))
            os.replace(target, old / target.name)
            os.replace(staged, target)
            shutil.rmtree(old)
        else:
            os.replace(staged, target)
    except BaseException:
        shutil.rmtree(staged, ignore_errors=True)
        raise


@dataclass
class Export:
    """An exported zoo model folder."""

    folder: Path
    name: str     # zoo name arch.tag
    repo_id: str  # the Hub repo its card points at


def export(run_dir: str | os.PathLike, to: str | os.PathLike, repo_id: str | None = None) -> Export:
    """Write the Hub-ready folder of a training run (weights, config.json, README.md, eval.json).

    The zoo name comes from the run's config (model + regularizer.mode + dataset); ``repo_id``
    defaults to the zoo's ``hf_hub_id`` for that name. The folder is written to a temp folder
    and renamed into place, so ``to`` holds the old export or the new one, never a mix.
    """
    from .data import DATASETS  # imports `datasets`: only exporting needs it
    from .models.zoo import base_pretrained_cfg, zoo_model_name  # the zoo imports this module

    run = read_run(run_dir)
    try:
        name = zoo_model_name(run.config["model"], run.mode, run.dataset)
    except ValueError as err:
        raise ExportError(f"{run.path}: {err}") from err
    cfg = get_pretrained_cfg(name)
    if run.img_size not in (None, cfg.input_size[-1]):
        raise ExportError(f"{run.path}: trained at img_size={run.img_size}, but {name} is defined at input_size="
                          f"{cfg.input_size}; its pretrained cfg must describe the weights (add a tag in zoo.py)")
    repo_id = repo_id or cfg.hf_hub_id
    model = _build_checked(run, base_pretrained_cfg(cfg, run.config["model"]))
    payload = safetensors.torch.save(run.state_dict, metadata={"format": "pt"})
    spec = DATASETS.get(run.dataset)
    meta = _metadata(run, name, model, sha256_hex(payload), spec and spec.class_names)
    with _staged_dir(Path(to)) as staged:
        atomic_write_bytes(staged / WEIGHTS_FILE, payload)
        save_config_for_hf(model, str(staged / CONFIG_FILE), model_config=meta)
        config = _load_json(staged / CONFIG_FILE)
        atomic_write_text(staged / CARD_FILE, str(render_card(config, repo_id, spec and spec.hub_id)))
        atomic_write_text(staged / EVAL_FILE, json.dumps(run.evaluation, indent=2))
    return Export(Path(to), name, repo_id)


def update_bundled_evaluation(name: str, evaluation: dict) -> list[Path]:
    """Replace the evaluation of a bundled zoo model: ``eval.json``, config.json's ``eval`` summary
    and the re-rendered card, in ``repspec_zoo/weights/<name>`` and, where it exists, the
    repository's ``model_cards/<name>``. The weights and their sha256 are untouched.

    Returns the folders written. Each file is replaced atomically.
    """
    from .data import DATASETS

    folders = [bundled_dir(name)]
    cards = WEIGHTS_DIR.parent.parent / "model_cards" / name  # a source checkout keeps copies of the cards
    folders += [cards] if (cards / CONFIG_FILE).is_file() else []
    if not (folders[0] / CONFIG_FILE).is_file():
        raise ExportError(f"{name} has no bundled folder {folders[0]}; `repspec-zoo list-pretrained` shows the "
                          "bundled models")
    for folder in folders:
        config = _load_json(folder / CONFIG_FILE)
        config["eval"] = {k: v for k, v in evaluation.items() if k not in EVAL_DETAIL_KEYS}
        spec = DATASETS.get(config["dataset"])
        repo_id = get_pretrained_cfg(name).hf_hub_id
        atomic_write_text(folder / CONFIG_FILE, json.dumps(config, indent=2))
        atomic_write_text(folder / EVAL_FILE, json.dumps(evaluation, indent=2))
        atomic_write_text(folder / CARD_FILE, str(render_card(config, repo_id, spec and spec.hub_id)))
    return folders


# ------------------------------------------------------------------------------ publish
def publish(run_dir: str | os.PathLike, repo_id: str | None = None, endpoint: str | None = None,
            private: bool = False, token: str | None = None) -> str:
    """Export a run to a temp folder and upload it to a Hub repo (created if needed).

    Args:
        run_dir: the training run directory.
        repo_id: ``org/name``; default the zoo's ``hf_hub_id`` for the run.
        endpoint: Hub URL; default ``HF_ENDPOINT`` or huggingface.co.
        private: create the repo private (an existing repo keeps its visibility).
        token: write token; default the saved login / ``HF_TOKEN``.

    Returns the commit URL. PublishError if the endpoint refuses; nothing is left locally.
    """
    if hf_constants.HF_HUB_OFFLINE:
        raise PublishError("HF_HUB_OFFLINE=1 is set, so nothing can be uploaded: unset it to publish "
                           "(or use repspec-zoo export to write the folder locally)")
    api = HfApi(endpoint=endpoint, token=token)
    with tempfile.TemporaryDirectory(prefix="repspec-publish-") as tmp:
        exported = export(run_dir, Path(tmp) / "model", repo_id=repo_id)
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
    return commit.commit_url

