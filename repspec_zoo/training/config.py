"""Recipe configuration: one dataclass per section, loaded from YAML, overridden from the command line.

A recipe YAML mirrors :class:`TrainConfig`: top-level keys plus the sections ``dataset``,
``optim``, ``regularizer``, ``checkpoint``, ``eval`` and ``ssl`` (self-supervised pretraining,
:mod:`repspec_zoo.ssl`). Overrides are ``key=value`` with dotted keys for
sections (``optim.lr=0.05``, ``dataset.train_limit=512``); values are read as YAML, except for
text fields, which take the value verbatim (so ``mixed_precision=no`` means the string ``'no'``).

The ``regularizer.mode`` values and what each strength setting means are in
:mod:`repspec_zoo.regularizers.registry` (rep/ll: the paper's gamma, penalty = gamma/2 * sum_l
sigma_max(W_l)^2; the authors' scripts' lam = gamma/2).

Example::

    cfg = load_config("recipes/configs/fmnist_slp_repspectral.yaml", ["epochs=2", "optim.lr=0.05"])
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import yaml

from ..errors import UserError
from ..models.registry import ARCHS, SSL_MODES
from ..regularizers.registry import REGULARIZERS, RegularizerSpec, get_spec
from ..runs import RUN_CONFIG_FILE, read_run_config
from ..spectral import DEFAULT_GAMMA
from ..spectral.estimators import ESTIMATORS

__all__ = ["ConfigError", "DataConfig", "EvalConfig", "OptimConfig", "RegularizerConfig", "CheckpointConfig", "SSLConfig",
           "TrainConfig",
           "load_config", "apply_overrides", "config_to_dict"]

SCHEDULES = ("constant", "step", "cosine")
OPTIMIZERS = ("sgd", "lars")
APPLY = ("loss", "direct")
QUICK_EVAL_ATTACKS = ("ta", "gta", "hsja", "none")  # eval.attack: the attack of a run's quick evaluation
MIXED_PRECISION = ("no", "fp16", "bf16")
SSL_METHODS = ("simclr", "barlow_twins")
SSL_REGULARIZERS = SSL_MODES  # the others read labels or logits, which self-supervised steps have not
_NULLS = ("null", "none", "~", "")


class ConfigError(UserError, ValueError):
    """A recipe config (file or override) has an unknown key, a badly typed value or an invalid setting."""


@dataclass
class DataConfig:
    name: str = "fashion_mnist"  # repspec_zoo.data name, local dir, Hub id ('org/name'), or 'xor' (the 4-point toy)
    data_dir: str | None = None  # read the dataset from this local directory instead (--data-dir)
    img_size: int | None = None  # image side in pixels; None = the model's pretrained_cfg input_size
    augment: bool = True  # random training augmentation (pad+crop+flip for small images, timm's RandomResizedCrop for large)
    train_limit: int | None = None  # seeded class-stratified subset of this many training images; None = all
    test_limit: int | None = None  # same for the test split (per-epoch test_acc and eval.json)
    num_workers: int = 0  # DataLoader worker processes per training process


@dataclass
class OptimConfig:
    lr: float = 0.1  # SGD learning rate of the head, and of the backbone unless backbone_lr is set
    backbone_lr: float | None = None  # learning rate of everything but the head; None = lr (paper fine-tuning: lr / 5)
    lr_base_batch: int | None = None  # lr values are per this many images and scale linearly with batch_size; None = as given
    momentum: float = 0.9  # SGD momentum
    weight_decay: float = 1e-4  # L2 weight decay on every parameter (as in the paper's scripts)
    schedule: str = "constant"  # lr schedule over epochs: 'constant', 'step' or 'cosine'
    step_epochs: int = 30  # 'step': multiply the lr by `decay` every this many epochs
    decay: float = 0.1  # 'step': factor per decay
    t_max: int = 200  # 'cosine': lr = lr0 * (1 + cos(pi * epoch / t_max)) / 2, torch's CosineAnnealingLR per epoch
    optimizer: str = "sgd"  # 'sgd' (momentum) or 'lars' (SimCLR / Barlow Twins: SGD with a per-layer trust ratio)


@dataclass
class RegularizerConfig:
    mode: str = "none"  # a repspec_zoo.regularizers.registry mode: 'none', 'rep', 'repbn', 'll', 'adv', 'ddsnr', 'bss', 'convwd'
    gamma: float = DEFAULT_GAMMA  # rep/ll strength, paper convention: penalty = gamma/2 * sum_l sigma_max(W_l)^2
    burn_in_epochs: int = 0  # penalty off for epochs < this (power iteration keeps running); 0 = on from the start
    apply: str = "loss"  # rep/ll (other modes ignore it): 'loss' (eq. 3 in the loss) or 'direct' (the authors' ResNet step)
    every: int = 1  # rep/ll: 'loss': a power-iteration update every this many optimizer steps; 'direct': a direct step
    activation_term: bool = False  # rep/ll, apply=loss: add the authors' eig-ub term mean_x max_j act'(z_j)^2
    layers: list | None = None  # rep/ll: penalize exactly these layer names, e.g. [head] (the authors' MLP "ll" walk)
    estimator: str = "power"  # rep/ll: 'power' (the zero-padded conv operator timm computes), 'fft' (circular padding)
    # or 'gram' (an upper bound on the zero-padded norm)
    bss_eta: float = 1e-3  # bss strength: penalty = bss_eta * sum of the bss_k smallest squared singular values
    bss_k: int = 1  # bss: how many of the smallest singular values of the (batch x features) matrix are penalized
    ddsnr_lambda: float = 1e-2  # ddsnr (Roth et al. eq. 13): penalty = ddsnr_lambda * mean ||f(x + ddsnr_eps v) - f(x)||^2
    ddsnr_eps: float = 0.5  # ddsnr step length along v: L2 in [0,1] pixel units
    ddsnr_iters: int = 10  # ddsnr: power-iteration steps on the input-output Jacobian for v
    pgd_eps: float = 0.5  # adv: L2-PGD radius in [0,1] pixel units
    pgd_steps: int = 10  # adv: PGD steps of 2 * pgd_eps / pgd_steps
    wd_lambda: float = 1e-3  # convwd (a control): penalty = wd_lambda/2 * sum ||W_l||_F^2 over the rep layers

    @property
    def spec(self) -> RegularizerSpec:
        """The registry's entry for ``mode``: the one place a run asks the registry what its regularizer is
        and does (the model builder, the loop, the report and the layer check read it here)."""
        return get_spec(self.mode)


@dataclass
class CheckpointConfig:
    every_epochs: int = 1  # accelerator.save_state every this many epochs (and after the last)
    every_steps: int = 0  # also every this many optimizer steps inside an epoch; 0 = only at epoch ends
    keep: int = 3  # keep the newest this many checkpoints in RUN_DIR/checkpoints


@dataclass
class EvalConfig:
    attack: str = "ta"  # end-of-run attack on a small sample: 'ta', 'gta', 'hsja' or 'none' (accuracy only)
    n: int = 20  # correctly classified test images attacked (repspec-zoo eval does the full benchmark)
    budget: int = 1000  # query budget per attacked image


@dataclass
class SSLConfig:
    method: str | None = None  # self-supervised pretraining: 'simclr' or 'barlow_twins'; None = supervised (labels)
    projector: list = field(default_factory=lambda: [512, 128])  # projection head dims after the backbone features
    temperature: float = 0.5  # simclr: NT-Xent temperature tau
    lambd: float = 5e-3  # barlow_twins: weight of the off-diagonal cross-correlation terms
    crop_scale_min: float = 0.08  # smallest random-resized-crop area (fraction of the image)
    color_strength: float = 1.0  # colour-jitter strength s (brightness/contrast/saturation 0.8 s, hue 0.2 s)


@dataclass
class TrainConfig:
    model: str = "resnet_small"  # base timm architecture (timm.list_models()); the regularizer is attached to it
    model_kwargs: dict = field(default_factory=dict)  # extra timm.create_model kwargs, e.g. {hidden_dim: 8}
    num_classes: int | None = None  # classes of the head; None = the dataset's (resolved into RUN_DIR/config.yaml)
    init: str | None = None  # fine-tune from a run directory (its model.safetensors) or a timm model name (--init)
    epochs: int = 10  # passes over the training set
    batch_size: int = 128  # global batch: images per optimizer step, summed over processes and accumulation steps
    grad_accum_steps: int = 1  # micro-batches per optimizer step, each of batch_size / grad_accum_steps images
    seed: int = 0  # seeds model init, data order and augmentation
    mixed_precision: str = "no"  # accelerate mixed precision: 'no', 'fp16' or 'bf16' (quote 'no' in YAML)
    compile: bool = False  # torch.compile the model (inductor, through Accelerate), as timm's train.py --torchcompile
    log_every_steps: int = 50  # tensorboard loss point every this many optimizer steps
    dataset: DataConfig = field(default_factory=DataConfig)  # what to train and test on
    optim: OptimConfig = field(default_factory=OptimConfig)  # SGD and its learning-rate schedule
    regularizer: RegularizerConfig = field(default_factory=RegularizerConfig)  # penalty and its schedule
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)  # when and how many checkpoints
    eval: EvalConfig = field(default_factory=EvalConfig)  # the quick evaluation written to RUN_DIR/eval.json
    ssl: SSLConfig = field(default_factory=SSLConfig)  # self-supervised pretraining (repspec_zoo.ssl)

    @property
    def micro_batch_size(self) -> int:
        """Images per forward pass, summed over processes (batch_size / grad_accum_steps)."""
        return self.batch_size // self.grad_accum_steps


# ----------------------------------------------------------------------------- typed values
def _allowed_types(hint: Any) -> tuple[tuple[type, ...], bool]:
    """(accepted python types, whether None is accepted) of a field annotation."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        args = typing.get_args(hint)
        return tuple(a for a in args if a is not type(None)), type(None) in args
    return (hint,), False


def _check_type(value: Any, hint: Any, key: str) -> Any:
    kinds, nullable = _allowed_types(hint)
    if value is None and nullable:
        return None
    for kind in kinds:
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is float and isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as text
            try:
                return float(value)
            except ValueError:
                pass
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind not in (int, float) and isinstance(value, kind):
            return value
    expected = " or ".join(k.__name__ for k in kinds) + (" or null" if nullable else "")
    hint_no = " (YAML reads a bare no as false: write \"no\")" if value is False and str in kinds else ""
    raise ConfigError(f"{key}: expected {expected}, got {value!r}{hint_no}")


def _parse_cli_value(raw: str, hint: Any) -> Any:
    """A command-line value: verbatim for text fields, else parsed as YAML (numbers, booleans, null, {...})."""
    kinds, nullable = _allowed_types(hint)
    if nullable and raw.strip().lower() in _NULLS:
        return None
    if str in kinds:
        return raw
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse the value {raw!r}: {err}") from err


def _unknown_key(key: str, valid: Iterable[str], source: str) -> ConfigError:
    valid = list(valid)
    section, _, name = key.rpartition(".")
    close = difflib.get_close_matches(name, valid, n=1)
    where = f" of section '{section}'" if section else ""
    return ConfigError(f"unknown config key {key!r} in {source}. Valid keys{where}: {', '.join(valid)}"
                       + (f". Did you mean {(section + '.' if section else '') + close[0]!r}?" if close else ""))


# ----------------------------------------------------------------------------- dict <-> dataclass
def _build(cls: type, data: Any, prefix: str, source: str):
    """Instantiate dataclass ``cls`` from a mapping; unknown keys and wrong types raise ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'the config'} in {source} must be a mapping of keys to values, "
                          f"got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise _unknown_key(prefix + str(key), names, source)
        hint = hints[key]
        if dataclasses.is_dataclass(hint):
            kwargs[key] = _build(hint, value, f"{prefix}{key}.", source)
        else:
            kwargs[key] = _check_type(value, hint, prefix + key)
    return cls(**kwargs)


def config_to_dict(cfg: TrainConfig) -> dict:
    """Plain nested dict of a config (what RUN_DIR/config.yaml holds)."""
    return dataclasses.asdict(cfg)


def apply_overrides(cfg: TrainConfig, overrides: Iterable[str]) -> TrainConfig:
    """Return ``cfg`` with ``key=value`` overrides applied (dotted keys address sections)."""
    data = config_to_dict(cfg)
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value (e.g. optim.lr=0.05 or epochs=2)")
        node, cls, parts = data, TrainConfig, key.split(".")
        for depth, part in enumerate(parts):
            names = [f.name for f in dataclasses.fields(cls)]
            if part not in names:
                raise _unknown_key(".".join(parts[:depth + 1]), names, "the command line")
            hint = typing.get_type_hints(cls)[part]
            if depth < len(parts) - 1:
                if not dataclasses.is_dataclass(hint):
                    raise ConfigError(f"{'.'.join(parts[:depth + 1])} is a value, not a section; override it as "
                                      f"{'.'.join(parts[:depth + 1])}=VALUE")
                node, cls = node[part], hint
            elif dataclasses.is_dataclass(hint):
                raise ConfigError(f"{key} is a section; override one of its keys, e.g. {key}."
                                  f"{dataclasses.fields(hint)[0].name}=VALUE")
            else:
                node[part] = _parse_cli_value(raw, hint)
    return validate(_build(TrainConfig, data, "", "the command line"))


def load_config(path: str | os.PathLike, overrides: Iterable[str] = ()) -> TrainConfig:
    """Read a recipe YAML, apply overrides, validate; ConfigError names the bad key and the fix."""
    path = Path(path)
    if not path.is_file():
        configs = sorted(p.name for p in Path(__file__).parents[2].joinpath("recipes", "configs").glob("*.yaml"))
        raise ConfigError(f"config file {path} does not exist" + (f"; shipped configs: {', '.join(configs)}"
                                                                   if configs else ""))
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from err
    cfg = _build(TrainConfig, data, "", str(path))
    return apply_overrides(cfg, overrides)


# ----------------------------------------------------------------------------- validation
def _choice(value: str, choices: tuple[str, ...], key: str) -> list[str]:
    return [] if value in choices else [f"{key}={value!r}: choose one of {', '.join(choices)}"]


def _at_least(value: int | float | None, low: int | float, key: str) -> list[str]:
    return [] if value is None or value >= low else [f"{key}={value!r}: must be >= {low}"]


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check value ranges and combinations; raises one ConfigError listing every problem."""
    d, o, r, c = cfg.dataset, cfg.optim, cfg.regularizer, cfg.checkpoint
    problems = [
        *_choice(cfg.mixed_precision, MIXED_PRECISION, "mixed_precision"),
        *_choice(o.schedule, SCHEDULES, "optim.schedule"), *_choice(o.optimizer, OPTIMIZERS, "optim.optimizer"),
        *_choice(r.mode, tuple(REGULARIZERS), "regularizer.mode"),
        *_choice(r.estimator, tuple(ESTIMATORS), "regularizer.estimator"),
        *_choice(r.apply, APPLY, "regularizer.apply"),
        *_at_least(cfg.seed, 0, "seed"), *_at_least(cfg.epochs, 1, "epochs"), *_at_least(cfg.batch_size, 1, "batch_size"),
        *_at_least(cfg.grad_accum_steps, 1, "grad_accum_steps"), *_at_least(cfg.num_classes, 1, "num_classes"),
        *_at_least(cfg.log_every_steps, 1, "log_every_steps"),
        *_at_least(d.img_size, 1, "dataset.img_size"), *_at_least(d.train_limit, 1, "dataset.train_limit"),
        *_at_least(d.test_limit, 1, "dataset.test_limit"), *_at_least(d.num_workers, 0, "dataset.num_workers"),
        *_at_least(o.lr_base_batch, 1, "optim.lr_base_batch"), *_at_least(o.step_epochs, 1, "optim.step_epochs"),
        *_at_least(o.t_max, 1, "optim.t_max"), *_at_least(o.momentum, 0, "optim.momentum"),
        *_at_least(o.weight_decay, 0, "optim.weight_decay"),
        *_at_least(r.gamma, 0, "regularizer.gamma"), *_at_least(r.burn_in_epochs, 0, "regularizer.burn_in_epochs"),
        *_at_least(r.every, 1, "regularizer.every"), *_at_least(r.bss_eta, 0, "regularizer.bss_eta"),
        *_at_least(r.bss_k, 1, "regularizer.bss_k"), *_at_least(r.ddsnr_lambda, 0, "regularizer.ddsnr_lambda"),
        *_at_least(r.ddsnr_iters, 1, "regularizer.ddsnr_iters"), *_at_least(r.pgd_steps, 1, "regularizer.pgd_steps"),
        *_at_least(r.wd_lambda, 0, "regularizer.wd_lambda"),
        *_at_least(c.every_epochs, 1, "checkpoint.every_epochs"), *_at_least(c.every_steps, 0, "checkpoint.every_steps"),
        *_at_least(c.keep, 1, "checkpoint.keep"),
        *_choice(cfg.eval.attack, QUICK_EVAL_ATTACKS, "eval.attack"), *_at_least(cfg.eval.n, 0, "eval.n"),
        *_at_least(cfg.eval.budget, 1, "eval.budget"),
    ]
    problems += [f"regularizer.{key}={getattr(r, key)!r}: must be > 0 (an L2 length in [0,1] pixel units)"
                 for key in ("ddsnr_eps", "pgd_eps") if not getattr(r, key) > 0]
    if not o.lr > 0 or (o.backbone_lr is not None and not o.backbone_lr > 0):
        problems.append(f"optim.lr={o.lr!r} and optim.backbone_lr={o.backbone_lr!r} must be > 0 (backbone_lr may be null)")
    if cfg.batch_size % cfg.grad_accum_steps:
        problems.append(f"batch_size={cfg.batch_size} is not a multiple of grad_accum_steps={cfg.grad_accum_steps}; "
                        "each optimizer step sums grad_accum_steps equal micro-batches")
    spec = REGULARIZERS.get(r.mode)  # None: an unknown mode, listed above
    if not (spec and spec.baseline) and r.burn_in_epochs >= cfg.epochs:
        problems.append(f"regularizer.burn_in_epochs={r.burn_in_epochs} >= epochs={cfg.epochs}: the {r.mode} penalty "
                        "would never be applied; lower burn_in_epochs or set regularizer.mode=none")
    if cfg.model in ARCHS:
        base, mode = ARCHS[cfg.model]
        problems.append(f"model={cfg.model!r} is a zoo architecture (the name of {base} trained with regularizer.mode="
                        f"{mode}; spectral ones attach their own regularizer); train the base architecture "
                        f"instead: model={base} regularizer.mode={mode}")
    if r.apply == "direct" and spec and spec.spectral_kwargs.get("bn_aware"):
        problems.append(f"regularizer.mode={r.mode} with apply=direct: the BatchNorm-folded norm depends on the batch "
                        "statistics of the forward pass, so it is added to the loss; use apply=loss (or mode=rep for the "
                        "authors' direct step on raw kernels)")
    if r.apply == "direct" and r.activation_term:
        problems.append("regularizer.apply=direct with activation_term=true: the direct step updates the weights from "
                        "their singular vectors alone and has no data term; use apply=loss for the eig-ub term")
    if r.layers is not None and (not r.layers or not all(isinstance(name, str) for name in r.layers)):
        problems.append(f"regularizer.layers={r.layers!r}: a non-empty list of layer names, e.g. [head] or [fc1, head]")
    if r.activation_term and spec and not spec.spectral:
        problems.append(f"regularizer.activation_term=true needs a spectral mode (rep, repbn, ll), not {r.mode!r}")
    problems += _ssl_problems(cfg)
    if problems:
        raise ConfigError("invalid recipe config:\n  " + "\n  ".join(problems))
    return cfg


def _ssl_problems(cfg: TrainConfig) -> list[str]:
    s = cfg.ssl
    if s.method is None:
        return []
    problems = [*_choice(s.method, SSL_METHODS, "ssl.method"), *_choice(cfg.regularizer.mode, SSL_REGULARIZERS,
                                                                          "regularizer.mode (with ssl.method)")]
    if not s.projector or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in s.projector):
        problems.append(f"ssl.projector={s.projector!r}: a non-empty list of layer widths, e.g. [512, 128]")
    problems += [f"ssl.{key}={getattr(s, key)!r}: must be > 0" for key in ("temperature", "lambd", "color_strength")
                 if not getattr(s, key) > 0]
    if not 0 < s.crop_scale_min <= 1:
        problems.append(f"ssl.crop_scale_min={s.crop_scale_min!r}: a fraction of the image area in (0, 1]")
    if cfg.batch_size // cfg.grad_accum_steps < 2:
        problems.append("ssl.method needs at least 2 images per forward pass (other images are the negatives / "
                        "the batch statistics); raise batch_size")
    return problems


# ----------------------------------------------------------------------------- run directory
#: keys that may differ when a run is resumed (where the data lives, how it is read, training longer)
RESUME_MAY_CHANGE = ("epochs", "dataset.data_dir", "dataset.num_workers")


def flatten_config(data: dict, prefix: str = "") -> dict:
    """{'optim.lr': 0.1, ...}: a nested config dict with dotted keys (model_kwargs stays one value)."""
    flat = {}
    for key, value in data.items():
        if isinstance(value, dict) and key != "model_kwargs":
            flat.update(flatten_config(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def save_run_config(cfg: TrainConfig, run_dir: str | os.PathLike, resuming: bool, write: bool) -> None:
    """Save the resolved config as RUN_DIR/config.yaml; a resumed run must keep its settings.

    Args:
        resuming: the run directory has a checkpoint; its config.yaml must then match ``cfg``
            except for RESUME_MAY_CHANGE. Before the first checkpoint the config may change freely.
        write: whether this process writes the file (the main process); every process checks.

    Raises:
        ConfigError: the checkpointed run was started with other settings (lists them).
    """
    from ..io import atomic_write_text

    path = Path(run_dir) / RUN_CONFIG_FILE
    new = config_to_dict(cfg)
    if resuming and path.is_file():
        old_flat, new_flat = flatten_config(read_run_config(run_dir)), flatten_config(new)
        # a key the saved config lacks (added by a later version) counts as its default value
        old_flat = {**flatten_config(config_to_dict(TrainConfig())), **old_flat}
        changed = sorted(k for k in old_flat.keys() | new_flat.keys()
                         if old_flat.get(k) != new_flat.get(k) and k not in RESUME_MAY_CHANGE)
        if changed:
            diffs = ", ".join(f"{k}: {old_flat.get(k)!r} -> {new_flat.get(k)!r}" for k in changed)
            raise ConfigError(f"{run_dir} holds a checkpointed run started with other settings ({diffs}). Resume it "
                              f"with its own settings, or train into a new directory with --output")
    if write:
        atomic_write_text(path, yaml.safe_dump(new, sort_keys=False))
