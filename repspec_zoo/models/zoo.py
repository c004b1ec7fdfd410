"""The zoo: regularized architectures and their baselines, registered as timm models from one
table, each with pretrained cfgs named ``arch.tag`` (the tag names data and recipe).

A regularized entry is a base timm architecture plus a SpectralRegularizer attached as
``model.spectral``; the regularizer settings are ``create_model`` kwargs::

    timm.create_model("resnet18_repspectral", num_classes=10, gamma=1e-3, every=1,
                      estimator="power", bn_aware=False)

A baseline entry (``*_baseline``, mode None) is the base architecture with no regularizer, and
``features_only=True`` gives timm's plain feature extractor of the base architecture (its
wrappers run every child module, so no regularizer is attached). The Roth et al. (2020) baselines
(``*_advtrained``, mode 'adv': L2-PGD adversarial training; ``*_ddsnr``, mode 'ddsnr':
data-dependent spectral norm regularization) are plain base architectures too: their training
method lives in the recipe, not in the model.

``pretrained=True`` loads the weights of ``arch.tag`` (the arch's first tag without one) from,
first match wins:

1. the package: ``repspec_zoo/weights/<arch>.<tag>/`` (so a fresh install works offline);
2. the Hugging Face cache, then the Hub, repo ``hf_hub_id`` (``repspec-zoo/<arch>.<tag>``);
3. nothing: :class:`PretrainedWeightsUnavailable` lists the tags and how to get weights.

Loading verifies the sha256 recorded in the weights' config.json. A ``num_classes`` other than
the checkpoint's re-initializes the classifier with a warning (timm's fine-tuning behaviour);
every other layer is loaded. ``pretrained_cfg_overlay=dict(file=...)`` or ``checkpoint_path=``
load your own weights instead, as in timm.
"""
from __future__ import annotations

import difflib
import warnings
from dataclasses import dataclass, replace

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import (PretrainedCfg, generate_default_cfgs, get_arch_pretrained_cfgs, get_pretrained_cfg,
                         register_model, resolve_pretrained_cfg, split_model_name_tag)
from timm.models._builder import pretrained_cfg_for_features

from .. import hub
from ..cards import attack_label, attack_rows
from ..hub import PretrainedWeightsUnavailable  # noqa: F401  (re-exported: the error of pretrained=True)
from ..spectral import attach_spectral

HF_ORG = "repspec-zoo"  # the one Hub namespace of the zoo's weights: repo = f"{HF_ORG}/{arch}.{tag}"
PAPER_IDS = ("arXiv:2405.17181", "arXiv:2111.07492")  # rep-spectral (Yang et al. 2024), Tangent Attack (Ma et al. 2021)
PAPER_NAME = "Spectral regularization for adversarially-robust representation learning"

SPECTRAL_MODES = ("rep", "ll")  # the modes whose models carry a SpectralRegularizer as model.spectral

#: zoo arch name -> (base timm arch, regularizer mode), mode as the recipe's regularizer.mode.
#: Spectral models (``model.spectral`` attached): 'rep' (head excluded), 'll' (head included).
#: Plain timm models: None, the unregularized baseline trained with the same recipe, and the
#: Roth et al. 2020 baselines 'adv' (L2-PGD adversarial training) and 'ddsnr' (data-dependent
#: spectral norm regularization), whose training method lives in the recipe alone.
ARCHS: dict[str, tuple[str, str | None]] = {
    "resnet18_repspectral": ("resnet18", "rep"),
    "resnet18_llspectral": ("resnet18", "ll"),
    "resnet18_baseline": ("resnet18", None),
    "resnet50_repspectral": ("resnet50", "rep"),
    "resnet50_llspectral": ("resnet50", "ll"),
    "resnet50_baseline": ("resnet50", None),
    "slp_repspectral": ("slp", "rep"),
    "slp_llspectral": ("slp", "ll"),
    "slp_baseline": ("slp", None),
    "resnet_small_repspectral": ("resnet_small", "rep"),
    "resnet_small_llspectral": ("resnet_small", "ll"),
    "resnet_small_baseline": ("resnet_small", None),
    "resnet_small_advtrained": ("resnet_small", "adv"),
    "resnet_small_ddsnr": ("resnet_small", "ddsnr"),
}


@dataclass(frozen=True)
class Tag:
    """What a pretrained tag stands for: the data the weights were trained and evaluated on."""

    dataset: str                      # a repspec_zoo.data.DATASETS name
    num_classes: int                  # classifier outputs
    input_size: tuple[int, int, int]  # (C, H, W) the weights were trained at, pixels in [0, 1]
    mean: tuple[float, ...]           # normalization inside the model wrapper
    std: tuple[float, ...]
    crop_pct: float = 1.0             # eval center-crop fraction


TAGS: dict[str, Tag] = {
    "fmnist": Tag("fashion_mnist", 10, (1, 28, 28), (0.0,), (1.0,)),
    "digits": Tag("digits", 10, (1, 8, 8), (0.0,), (1.0,)),
    "cifar10": Tag("cifar10", 10, (3, 32, 32), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "in1k": Tag("imagenet1k", 1000, (3, 224, 224), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, crop_pct=0.875),
}

#: base arch -> its tags, the first is the default. slp flattens a fixed input size, so it has
#: only the 28x28 tag (tiny.py's slp cfg does not mark fixed_input_size).
BASE_TAGS: dict[str, tuple[str, ...]] = {
    "slp": ("fmnist",),
    "resnet_small": ("fmnist", "digits"),
    "resnet18": ("cifar10",),
    "resnet50": ("in1k",),
}

_DESCRIPTIONS = {
    "rep": "{base} trained on {dataset} with rep-spectral regularization (layers up to the features; head excluded)",
    "ll": "{base} trained on {dataset} with ll-spectral regularization (every layer, head included)",
    None: "{base} trained on {dataset} with the same recipe and no spectral regularizer (baseline)",
    "adv": "{base} trained on {dataset} with L2-PGD adversarial training (Roth et al. 2020 baseline)",
    "ddsnr": "{base} trained on {dataset} with data-dependent spectral norm regularization (Roth et al. 2020, eq. 13)",
}


_DOCS = {
    "rep": "timm ``{base}`` with rep-spectral regularization (head excluded) as ``model.spectral``.",
    "ll": "timm ``{base}`` with ll-spectral regularization (head included) as ``model.spectral``.",
    None: "timm ``{base}``, the unregularized baseline of the zoo's spectral models (same recipe).",
    "adv": "timm ``{base}`` trained with L2-PGD adversarial training (Roth et al. 2020 baseline); no regularizer.",
    "ddsnr": "timm ``{base}`` trained with data-dependent spectral norm regularization (Roth et al. 2020); "
             "no regularizer.",
}

#: what the recipe's strength settings of the Roth et al. baselines mean (the spectral ones: gamma)
_STRENGTH_NOTES = {
    "adv": "eps: L2-PGD radius in [0, 1] pixel units; iters steps of 2*eps/iters from a random start",
    "ddsnr": "penalty = ddsnr_lambda * ||f(x + eps v) - f(x)||^2, v from iters power-iteration steps on the "
             "input-output Jacobian, eps in [0, 1] pixel units",
}


class UnknownModelError(ValueError):
    """A model name or pretrained tag that timm's registry does not know."""


def _cfg(arch: str, base: str, mode: str | None, tag: str) -> dict:
    """Pretrained cfg of ``arch.tag``: the tag's data fields + the base arch's structural fields."""
    data, base_cfg = TAGS[tag], get_pretrained_cfg(base)
    return dict(
        hf_hub_id=f"{HF_ORG}/{arch}.{tag}", num_classes=data.num_classes, input_size=data.input_size,
        mean=data.mean, std=data.std, crop_pct=data.crop_pct, interpolation="bilinear",
        pool_size=base_cfg.pool_size if base_cfg.input_size == data.input_size else None,
        first_conv=base_cfg.first_conv, classifier=base_cfg.classifier, license="apache-2.0",
        description=_DESCRIPTIONS[mode].format(base=base, dataset=data.dataset),
        paper_ids=PAPER_IDS, paper_name=PAPER_NAME,
        notes=(_STRENGTH_NOTES.get(mode, "gamma follows the paper: penalty = gamma/2 * sum_l sigma_max(W_l)^2"),
               "inputs in [0, 1]; attack distances are L2 distances in [0, 1] pixel space"),
    )


default_cfgs = generate_default_cfgs({
    f"{arch}.{tag}": _cfg(arch, base, mode, tag) for arch, (base, mode) in ARCHS.items() for tag in BASE_TAGS[base]
})


def zoo_model_name(base: str, mode: str | None, dataset: str) -> str:
    """The zoo name ``arch.tag`` of weights of ``base`` trained with ``mode`` on ``dataset``.

    ``mode`` is 'rep', 'll', 'adv', 'ddsnr' or None/'none' (baseline). Raises ValueError naming the tables to
    extend when the zoo has no such model.
    """
    mode = None if mode in (None, "none") else mode
    archs = [arch for arch, entry in ARCHS.items() if entry == (base, mode)]
    if not archs:
        known = sorted({(b, m or "none") for b, m in ARCHS.values()})
        raise ValueError(f"the zoo has no arch for model={base!r} with regularizer mode={mode or 'none'!r}; "
                         f"zoo (model, mode) pairs: {known}. Add one to ARCHS in repspec_zoo/models/zoo.py")
    tags = [tag for tag in BASE_TAGS[base] if TAGS[tag].dataset == dataset]
    if not tags:
        known = {tag: TAGS[tag].dataset for tag in BASE_TAGS[base]}
        raise ValueError(f"the zoo has no tag for {base} trained on dataset={dataset!r}; its tags (tag: dataset) are "
                         f"{known}. Add one to TAGS / BASE_TAGS in repspec_zoo/models/zoo.py")
    return f"{archs[0]}.{tags[0]}"


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
        _check_tag(arch, tag)
    return name


def _check_tag(arch: str, tag: str) -> None:
    tagged = list(get_arch_pretrained_cfgs(arch))
    if f"{arch}.{tag}" not in tagged:
        listed = ", ".join(tagged) if tagged else "none (use the name without a tag)"
        raise UnknownModelError(f"unknown pretrained tag {tag!r} for {arch}; its pretrained names are: {listed}")


def create_model(name: str, **kwargs):
    """``timm.create_model`` with clear errors for unknown names and tags (close matches listed)."""
    return timm.create_model(check_model_name(name), **kwargs)


@dataclass(frozen=True)
class PretrainedRow:
    """One zoo model name and what this machine knows about its weights."""

    name: str                  # arch.tag
    dataset: str               # repspec_zoo.data.DATASETS name
    gamma: float | None        # spectral strength, paper convention (0 for baselines); None: unknown here or adv/ddsnr
    clean_acc: float | None    # test accuracy, fraction 0..1; None: weights not on this machine
    attack: str | None         # the evaluation's attack, e.g. 'TA' or 'best of TA+CGBA+FMN+ALMA'
    l2_mean: float | None      # its mean L2 distance in [0, 1] pixel space over the broken samples, at `queries`
    success_rate: float | None  # fraction 0..1 of the attacked samples broken, at `queries`
    queries: int | None        # the largest hard-label budget evaluated
    source: str                # 'bundled', 'hf-cache' or 'hub' (downloaded by the first pretrained=True)
    hf_hub_id: str


def _row(name: str, mode: str | None, tag: str) -> PretrainedRow:
    hf_hub_id = get_pretrained_cfg(name).hf_hub_id
    source, config = hub.local_config(name, hf_hub_id)
    gamma, acc, attack, queries, l2, success = (0.0 if mode is None else None), None, None, None, None, None
    if config is not None:
        evaluation = config.get("eval", {})
        gamma, acc = config["regularizer"].get("gamma"), evaluation.get("clean_acc")  # adv/ddsnr: no gamma
        queries, l2 = (attack_rows(evaluation) or [(None, None, None)])[-1][:2]
        if l2 is not None:
            attack = attack_label(evaluation)[1]
            success = (evaluation.get("success_rate") or {}).get(str(queries))
    return PretrainedRow(name, TAGS[tag].dataset, gamma, acc, attack, l2, success, queries, source, hf_hub_id)


def list_pretrained() -> list[PretrainedRow]:
    """Every zoo model with a pretrained cfg, with what this machine knows about its weights.

    No network access: numbers come from the config.json of bundled or cached weights.
    """
    return [_row(f"{arch}.{tag}", mode, tag) for arch, (base, mode) in ARCHS.items() for tag in BASE_TAGS[base]]


def _resolve_cfg(arch: str, pretrained_cfg, overlay) -> PretrainedCfg:
    """timm's cfg resolution (tag, dict or PretrainedCfg, plus overlay), after checking a tag."""
    if isinstance(pretrained_cfg, str) and pretrained_cfg:
        _check_tag(arch, pretrained_cfg)
    return resolve_pretrained_cfg(arch, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)


def base_pretrained_cfg(cfg: PretrainedCfg, base: str, **changes) -> dict:
    """``cfg`` for building the plain ``base`` model: no Hub/URL source (a caller's file/state_dict stays)."""
    return replace(cfg, architecture=base, hf_hub_id=None, url=None, source=None, **changes).to_dict()


def _pretrained_base_cfg(name: str, cfg: PretrainedCfg, base: str, cache_dir, kwargs) -> dict:
    """The base cfg carrying the verified zoo weights as its state_dict, for timm's own loader.

    The weights' architecture kwargs (config.json ``model_args``) are added to ``kwargs`` in place."""
    if cfg.file or cfg.state_dict:  # the caller pointed at weights (timm semantics): timm loads them
        return base_pretrained_cfg(cfg, base)
    weights = hub.load_weights(name, cfg.hf_hub_id, cache_dir=cache_dir)
    asked = kwargs.get("num_classes")
    if asked is not None and asked != weights.num_classes and not kwargs.get("features_only"):
        warnings.warn(f"{name}: the checkpoint ({weights.source}) has {weights.num_classes} classes and "
                      f"num_classes={asked} was asked: its classifier {cfg.classifier!r} is newly initialized "
                      "(random), every other layer is loaded", UserWarning, stacklevel=3)
    for key, value in (weights.config.get("model_args") or {}).items():  # as timm's hf-hub: route applies them
        if key != "num_classes":
            kwargs.setdefault(key, value)
    return base_pretrained_cfg(cfg, base, state_dict=weights.state_dict, num_classes=weights.num_classes)


def _entrypoint(name: str, base: str, mode: str | None):
    def create(pretrained: bool = False, gamma: float = 1e-3, every: int = 1, estimator: str = "power",
               bn_aware: bool = False, pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
        cfg = _resolve_cfg(name, pretrained_cfg, pretrained_cfg_overlay)
        tagged = f"{name}.{cfg.tag}" if cfg.tag else name
        build_cfg = (_pretrained_base_cfg(tagged, cfg, base, cache_dir, kwargs) if pretrained
                     else base_pretrained_cfg(cfg, base))
        model = timm.create_model(base, pretrained=pretrained, pretrained_cfg=build_cfg, cache_dir=cache_dir, **kwargs)
        features_only = kwargs.get("features_only", False)
        own_cfg = cfg.to_dict()
        model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(own_cfg) if features_only else own_cfg
        if mode in SPECTRAL_MODES and not features_only:  # timm's feature wrappers call every child module
            attach_spectral(model, gamma=gamma, mode=mode, every=every, estimator=estimator, bn_aware=bn_aware)
        return model

    create.__name__ = create.__qualname__ = name
    create.__module__ = __name__
    create.__doc__ = _DOCS[mode].format(base=base)
    return register_model(create)


for _name, (_base, _mode) in ARCHS.items():
    globals()[_name] = _entrypoint(_name, _base, _mode)
