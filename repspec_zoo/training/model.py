"""The model side of a recipe: timm model + regularizer, fine-tuning init, optimizer and lr schedule.

``build_model``: ``timm.create_model(cfg.model)`` (or the weights of ``cfg.init`` with a new
head), then ``attach_spectral(model, mode='rep'|'ll', ...)`` so it works for any timm
architecture. The optimizer has two parameter groups, ``backbone`` and ``head``: the head of a
fine-tuned model is always trained (the authors' scripts once left it out of the optimizer).
"""
from __future__ import annotations

import math
from pathlib import Path

import timm
import torch
from timm.models import is_model
from timm.optim import Lars
from torch import nn

from ..errors import UserError
from ..models.normalize import NormalizedModel
from ..models.registry import ARCHS
from ..runs import RUN_CONFIG_FILE, WEIGHTS_FILE, RunError, is_run_dir, read_trained
from ..spectral import attach_spectral, without_regularizer
from .config import ConfigError, OptimConfig, TrainConfig

__all__ = ["InitError", "build_model", "attach_regularizer", "load_init", "TrainingModule", "build_optimizer", "lr_factor", "check_input",
           "plain_state_dict", "head_parameters"]

_TIMM_PREFIXES = ("hf-hub:", "local-dir:")


class InitError(UserError, ValueError):
    """``init`` (--init) cannot be used: missing run, unfinished run, or another architecture."""


# ----------------------------------------------------------------------------- building
def build_model(cfg: TrainConfig) -> nn.Module:
    """The timm model to train, with init weights and a new head when fine-tuning, regularizer attached.

    ``cfg.num_classes`` must be resolved. For 'rep'/'ll' the regularizer's power-update period
    is ``regularizer.every`` optimizer steps, i.e. ``every * grad_accum_steps`` forward passes.
    """
    if cfg.init is None:
        model = timm.create_model(cfg.model, num_classes=cfg.num_classes, **cfg.model_kwargs)
    else:
        model = load_init(cfg)
        model.reset_classifier(cfg.num_classes)
    return attach_regularizer(model, cfg)


def attach_regularizer(model: nn.Module, cfg: TrainConfig) -> nn.Module:
    """``model`` with the configured rep/ll regularizer attached as ``model.spectral`` (other modes: as is)."""
    r = cfg.regularizer
    spec = r.spec
    if spec.spectral:
        attach_spectral(model, **spec.spectral_kwargs, gamma=r.gamma, every=r.every * cfg.grad_accum_steps,
                        estimator=r.estimator, activation_term=r.activation_term, layers=r.layers)
    return model


def _is_timm_name(name: str) -> bool:
    return name.startswith(_TIMM_PREFIXES) or is_model(name)


def load_init(cfg: TrainConfig) -> nn.Module:
    """``cfg.model`` with the weights of ``cfg.init``: a run directory or a timm model name.

    The returned model still has the source's head; never falls back to random weights.
    """
    init = cfg.init
    if Path(init).is_dir():
        return _from_run_dir(cfg, Path(init))
    if _is_timm_name(init):
        return _from_timm(cfg, init)
    raise InitError(f"init (--init) {init!r}: no such run directory, and not a timm model name. Give the directory of "
                    f"a finished recipe run (it holds {WEIGHTS_FILE}; train it first with "
                    f"`accelerate launch recipes/train.py --config ... --output {init}`) or a timm name such as "
                    "resnet50.a1_in1k or hf-hub:org/name. The recipe does not fall back to training from scratch.")


def _arch_mismatch(init: str, source_arch: str, cfg: TrainConfig) -> InitError:
    return InitError(f"init (--init) {init!r} holds a {source_arch!r} model but this config trains {cfg.model!r} "
                     f"(model: {cfg.model}). Fine-tune with model={source_arch}, or point --init at a {cfg.model} run")


def _from_run_dir(cfg: TrainConfig, run_dir: Path) -> nn.Module:
    if not is_run_dir(run_dir):
        raise InitError(f"init (--init) {run_dir} is not a recipe run directory: it has no {RUN_CONFIG_FILE}. "
                        "Give a directory written by recipes/train.py, or a timm model name")
    try:
        source, state = read_trained(run_dir)
    except RunError as err:
        raise InitError(f"init (--init) {err}") from err
    if source["model"] != cfg.model:
        raise _arch_mismatch(str(run_dir), source["model"], cfg)
    model = timm.create_model(cfg.model, num_classes=source["num_classes"], **cfg.model_kwargs)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise InitError(f"{run_dir / WEIGHTS_FILE} does not fit {cfg.model} with num_classes={source['num_classes']} "
                        f"and model_kwargs={cfg.model_kwargs} (the run used model_kwargs={source.get('model_kwargs')}): "
                        f"{str(err).splitlines()[0]}") from err
    return model


def _from_timm(cfg: TrainConfig, name: str) -> nn.Module:
    try:
        model = timm.create_model(name, pretrained=True, **cfg.model_kwargs)
    except (OSError, RuntimeError) as err:  # offline and not cached, unknown Hub repo, no published weights
        raise InitError(f"init (--init) {name!r}: could not load its pretrained weights: {err}") from err
    arch = model.pretrained_cfg.get("architecture") or name
    if arch in ARCHS:  # a zoo model: its base architecture, without its training-time regularizer
        arch = ARCHS[arch][0]
        if hasattr(model, "spectral"):
            model.spectral.remove()
    if arch != cfg.model:
        raise _arch_mismatch(name, arch, cfg)
    return model


def check_input(model: nn.Module, sample: torch.Tensor, cfg: TrainConfig) -> None:
    """Run one eval-mode forward on one sample (C, H, W): fail early on a wrong input size.

    Also records each conv's input size for the regularizer, so its buffers have their final
    shapes before Accelerate/DDP first synchronizes them.
    """
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            model(sample.unsqueeze(0))
    except RuntimeError as err:
        raise ConfigError(f"model {cfg.model} (model_kwargs={cfg.model_kwargs}) cannot take inputs of shape "
                          f"{tuple(sample.shape)}: {str(err).splitlines()[0]}. Set dataset.img_size, or the model's "
                          "own input size in model_kwargs (e.g. img_size for slp)") from err
    finally:
        model.train(was_training)


class TrainingModule(NormalizedModel):
    """What the loop trains: the evaluation wrapper ``model((x - mean) / std)`` for images x in [0, 1],
    mean/std from the model's timm data config.

    With ``return_features`` (BSS) the forward returns ``(logits, features)``, where features are
    :meth:`~repspec_zoo.models.normalize.NormalizedModel.features` (B, num_features) and logits are the
    classifier applied to them: one forward, so DDP sees every parameter.
    """

    def __init__(self, model: nn.Module, return_features: bool = False):
        super().__init__(model)
        self.return_features = return_features
        if return_features and not isinstance(model.get_classifier(), nn.Module):
            raise ConfigError(f"{type(model).__name__}.get_classifier() is not a module; BSS needs one head applied "
                              "to pre-logit features")

    def forward(self, x: torch.Tensor):
        if not self.return_features:
            return super().forward(x)
        features = self.features(x)
        logits = self.model.get_classifier()(features) * getattr(self.model, "logit_scale", 1.0)  # slp's scale_logits
        return logits, features


def plain_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's weights as a plain timm state dict (regularizer buffers ``spectral.*`` stripped), on CPU."""
    return {k: v.detach().cpu().contiguous() for k, v in without_regularizer(model.state_dict()).items()}


# ----------------------------------------------------------------------------- optimization
def head_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters of the classifier head (``get_classifier()``)."""
    head = model.get_classifier()
    heads = head if isinstance(head, (tuple, list)) else (head,)
    return [p for h in heads if isinstance(h, nn.Module) for p in h.parameters()]


def build_optimizer(cfg: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    """SGD (or ``optim.optimizer: lars``, timm's LARS) with parameter groups 'backbone' (lr = backbone_lr or lr) and 'head' (lr), both linearly scaled.

    With ``optim.lr_base_batch`` set, the configured lrs are per that many images and are
    multiplied by batch_size / lr_base_batch. Each group keeps its scaled lr as ``base_lr``;
    :func:`lr_factor` multiplies it per epoch.
    """
    o = cfg.optim
    scale = cfg.batch_size / o.lr_base_batch if o.lr_base_batch else 1.0
    head_ids = {id(p) for p in head_parameters(model)}
    groups = [
        dict(name="backbone", params=[p for p in model.parameters() if id(p) not in head_ids],
             lr=(o.backbone_lr or o.lr) * scale),
        dict(name="head", params=[p for p in model.parameters() if id(p) in head_ids], lr=o.lr * scale),
    ]
    if o.optimizer == "lars":
        # LARS as SimCLR and Barlow Twins train with it: biases and norm parameters (1-d) get neither weight
        # decay nor the trust ratio (timm's Lars adapts only groups with weight decay), trust coefficient 1e-3
        groups = [dict(g, name=g["name"] + ("_1d" if flat else ""), weight_decay=0.0 if flat else o.weight_decay,
                       params=[p for p in g["params"] if (p.ndim <= 1) == flat])
                  for g in groups for flat in (False, True)]
    for group in groups:
        group["base_lr"] = group["lr"]
    groups = [g for g in groups if g["params"]]
    if o.optimizer == "lars":
        return Lars(groups, momentum=o.momentum, weight_decay=o.weight_decay, trust_coeff=1e-3)
    return torch.optim.SGD(groups, momentum=o.momentum, weight_decay=o.weight_decay)


def lr_factor(optim: OptimConfig, epoch: int) -> float:
    """Multiplier of the base lrs during ``epoch`` (0-based), constant within an epoch as in the paper's scripts.

    'cosine' is torch's ``CosineAnnealingLR(T_max=t_max)`` stepped once per epoch: (1 + cos(pi * epoch / t_max)) / 2,
    which rises again after ``t_max`` epochs (periodic, as in the 1000-epoch Oxford Flowers run with T_max 200).
    """
    if optim.schedule == "step":
        return optim.decay ** (epoch // optim.step_epochs)
    if optim.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / optim.t_max))
    return 1.0
