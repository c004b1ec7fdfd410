"""The zoo: regularized architectures and their baselines as timm models, one entrypoint each at the
end of this file (``@zoo_model``: timm's ``@register_model``, documented by the regularizer spec),
named for the (base, mode) pairs of ``models.registry.ARCHS``, each with pretrained cfgs named
``arch.tag`` (the tag names data and recipe).

A regularized entry is a base timm architecture plus a SpectralRegularizer attached as
``model.spectral``; the regularizer settings are ``create_model`` kwargs::

    timm.create_model("resnet18_repspectral", num_classes=10, gamma=1e-3, every=1, estimator="power")

``*_repspectralbn`` (mode 'repbn') is rep-spectral with each conv's BatchNorm folded into its norm.

A baseline entry (``*_baseline``, mode 'none') is the base architecture with no regularizer, and
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
from dataclasses import dataclass
from typing import Callable

import timm
from timm.models import (PretrainedCfg, generate_default_cfgs, get_arch_pretrained_cfgs, get_pretrained_cfg,
                         register_model, resolve_pretrained_cfg, split_model_name_tag)
from timm.models import _factory
from timm.models._builder import pretrained_cfg_for_features
from torch import nn

from ..errors import UserError
from ..regularizers.registry import REGULARIZERS
from ..spectral import DEFAULT_GAMMA, attach_spectral
from . import timm_routes
from .pretrained import (PretrainedWeightsUnavailable, attack_label, attack_rows, load_weights,
                         local_config)
from .registry import ARCHS, TAGS, base_pretrained_cfg, pretrained_cfg, zoo_names

__all__ = ["ARCHS", "PretrainedWeightsUnavailable", "UnknownModelError", "PretrainedRow", "check_model_name",
           "create_model", "list_pretrained"]


timm_routes.install()  # hf-hub: / local-dir: weights are sha256-verified too


class UnknownModelError(UserError, ValueError):
    """A model name or pretrained tag that timm's registry does not know."""


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
        check_tag(arch, tag)
    return name


class UnknownTimmModelError(UnknownModelError, RuntimeError):
    """An unknown name given to ``timm.create_model`` (a RuntimeError, as timm's own, with close names)."""


_TIMM_IS_MODEL = _factory.is_model


def _is_model_or_suggest(name: str) -> bool:
    """timm.create_model's test of a name, which otherwise fails with a bare 'Unknown model (NAME)': an
    unknown name raises UnknownTimmModelError with the close names instead."""
    if _TIMM_IS_MODEL(name):
        return True
    try:
        check_model_name(name)
    except UnknownModelError as err:
        raise UnknownTimmModelError(str(err)) from None
    return False


_factory.is_model = _is_model_or_suggest


def check_tag(arch: str, tag: str) -> None:
    tagged = list(get_arch_pretrained_cfgs(arch))
    if f"{arch}.{tag}" not in tagged:
        listed = ", ".join(tagged) if tagged else "none (use the name without a tag)"
        raise UnknownModelError(f"unknown pretrained tag {tag!r} for {arch}; its pretrained names are: {listed}")


default_cfgs = generate_default_cfgs({name: pretrained_cfg(arch, tag) for name, arch, _, tag in zoo_names()})


def create_model(name: str, **kwargs):
    """``timm.create_model`` with clear errors for unknown names and tags (close matches listed)."""
    return timm.create_model(check_model_name(name), **kwargs)


@dataclass(frozen=True)
class PretrainedRow:
    """One zoo model name and what this machine knows about its weights."""

    name: str                  # arch.tag
    dataset: str               # repspec_zoo.data.DATASETS name
    gamma: float | None        # spectral strength, paper convention (0 for baselines); None: unknown here or adv/ddsnr
    clean_acc: float | None    # test accuracy (a headless backbone's: of a linear probe), 0..1; None: weights not here
    attack: str | None         # the evaluation's attack, e.g. 'TA' or 'best of TA+CGBA+FMN+ALMA'
    l2_mean: float | None      # its mean L2 distance in [0, 1] pixel space over the broken samples, at `queries`
    success_rate: float | None  # fraction 0..1 of the attacked samples broken, at `queries`
    queries: int | None        # the largest hard-label budget evaluated
    source: str                # 'bundled', 'hf-cache' or 'hub' (downloaded by the first pretrained=True)
    hf_hub_id: str


def _row(name: str, mode: str, tag: str) -> PretrainedRow:
    hf_hub_id = get_pretrained_cfg(name).hf_hub_id
    source, config = local_config(name, hf_hub_id)
    gamma = 0.0 if REGULARIZERS[mode].baseline else None  # a baseline has none; the others read it from config.json
    acc, attack, queries, l2, success = None, None, None, None, None
    headless = TAGS[tag].num_classes == 0  # a self-supervised backbone: its numbers are of a fitted linear probe
    if config is not None:
        evaluation = config.get("eval", {})
        gamma, acc = config["regularizer"].get("gamma"), evaluation.get("clean_acc")  # adv/ddsnr: no gamma
        queries, l2 = (attack_rows(evaluation) or [(None, None, None)])[-1][:2]
        if l2 is not None:
            attack = attack_label(evaluation)[1] + (" on backbone + linear probe" if headless else "")
            success = (evaluation.get("success_rate") or {}).get(str(queries))
    return PretrainedRow(name, TAGS[tag].dataset, gamma, acc, attack, l2, success, queries, source, hf_hub_id)


def list_pretrained() -> list[PretrainedRow]:
    """Every zoo model with a pretrained cfg, with what this machine knows about its weights.

    No network access: numbers come from the config.json of bundled or cached weights.
    """
    return [_row(name, mode, tag) for name, _, mode, tag in zoo_names()]


def _resolve_cfg(arch: str, pretrained_cfg, overlay) -> PretrainedCfg:
    """timm's cfg resolution (tag, dict or PretrainedCfg, plus overlay), after checking a tag."""
    if isinstance(pretrained_cfg, str) and pretrained_cfg:
        check_tag(arch, pretrained_cfg)
    return resolve_pretrained_cfg(arch, pretrained_cfg=pretrained_cfg, pretrained_cfg_overlay=overlay)


def _pretrained_base_cfg(name: str, cfg: PretrainedCfg, base: str, cache_dir, kwargs) -> dict:
    """The base cfg carrying the verified zoo weights as its state_dict, for timm's own loader.

    The weights' architecture kwargs (config.json ``model_args``) are added to ``kwargs`` in place."""
    if cfg.file or cfg.state_dict:  # the caller pointed at weights (timm semantics): timm loads them
        return base_pretrained_cfg(cfg, base)
    weights = load_weights(name, cfg.hf_hub_id, cache_dir=cache_dir)
    asked = kwargs.get("num_classes")
    if asked is not None and asked != weights.num_classes and not kwargs.get("features_only"):
        warnings.warn(f"{name}: the checkpoint ({weights.source}) has {weights.num_classes} classes and "
                      f"num_classes={asked} was asked: its classifier {cfg.classifier!r} is newly initialized "
                      "(random), every other layer is loaded", UserWarning, stacklevel=3)
    for key, value in (weights.config.get("model_args") or {}).items():  # as timm's hf-hub: route applies them
        if key != "num_classes":
            kwargs.setdefault(key, value)
    return base_pretrained_cfg(cfg, base, state_dict=weights.state_dict, num_classes=weights.num_classes)


def _create(name: str, pretrained: bool = False, gamma: float = DEFAULT_GAMMA, every: int = 1, estimator: str = "power",
            pretrained_cfg=None, pretrained_cfg_overlay=None, cache_dir=None, **kwargs):
    """Build zoo arch ``name`` (an ARCHS key): its base timm model, weights verified when ``pretrained``, and a
    SpectralRegularizer as ``model.spectral`` for a spectral mode (strength ``gamma``, paper convention)."""
    base, mode = ARCHS[name]
    cfg = _resolve_cfg(name, pretrained_cfg, pretrained_cfg_overlay)
    tagged = f"{name}.{cfg.tag}" if cfg.tag else name
    build_cfg = (_pretrained_base_cfg(tagged, cfg, base, cache_dir, kwargs) if pretrained
                 else base_pretrained_cfg(cfg, base))
    model = timm.create_model(base, pretrained=pretrained, pretrained_cfg=build_cfg, cache_dir=cache_dir, **kwargs)
    features_only = kwargs.get("features_only", False)
    own_cfg = cfg.to_dict()
    model.pretrained_cfg = model.default_cfg = pretrained_cfg_for_features(own_cfg) if features_only else own_cfg
    if REGULARIZERS[mode].spectral and not features_only:  # timm's feature wrappers call every child module
        attach_spectral(model, **REGULARIZERS[mode].spectral_kwargs, gamma=gamma, every=every, estimator=estimator)
    return model


def zoo_model(entrypoint: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
    """timm's ``@register_model`` for a zoo arch's entrypoint, which is named for its ARCHS key; its
    docstring is its regularizer spec's ``doc``."""
    base, mode = ARCHS[entrypoint.__name__]
    entrypoint.__doc__ = REGULARIZERS[mode].doc.format(base=base)
    return register_model(entrypoint)


@zoo_model
def resnet18_repspectral(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet18_repspectral", pretrained, **kwargs)


@zoo_model
def resnet18_repspectralbn(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet18_repspectralbn", pretrained, **kwargs)


@zoo_model
def resnet18_llspectral(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet18_llspectral", pretrained, **kwargs)


@zoo_model
def resnet18_baseline(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet18_baseline", pretrained, **kwargs)


@zoo_model
def resnet50_repspectral(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet50_repspectral", pretrained, **kwargs)


@zoo_model
def resnet50_repspectralbn(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet50_repspectralbn", pretrained, **kwargs)


@zoo_model
def resnet50_llspectral(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet50_llspectral", pretrained, **kwargs)


@zoo_model
def resnet50_baseline(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet50_baseline", pretrained, **kwargs)


@zoo_model
def slp_repspectral(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("slp_repspectral", pretrained, **kwargs)


@zoo_model
def slp_llspectral(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("slp_llspectral", pretrained, **kwargs)


@zoo_model
def slp_baseline(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("slp_baseline", pretrained, **kwargs)


@zoo_model
def resnet_small_repspectral(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet_small_repspectral", pretrained, **kwargs)


@zoo_model
def resnet_small_repspectralbn(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet_small_repspectralbn", pretrained, **kwargs)


@zoo_model
def resnet_small_llspectral(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet_small_llspectral", pretrained, **kwargs)


@zoo_model
def resnet_small_baseline(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet_small_baseline", pretrained, **kwargs)


@zoo_model
def resnet_small_advtrained(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet_small_advtrained", pretrained, **kwargs)


@zoo_model
def resnet_small_ddsnr(pretrained: bool = False, **kwargs) -> nn.Module:
    return _create("resnet_small_ddsnr", pretrained, **kwargs)
