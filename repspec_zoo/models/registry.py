"""The zoo's pure tables: architectures, pretrained tags, names and pretrained cfgs (no I/O).

A zoo arch is a base timm architecture trained with one regularizer mode
(:mod:`repspec_zoo.regularizers.registry`), named ``{base}_{spec.arch_suffix}``
(``resnet50_repspectral``); a pretrained tag names the data the weights were trained on
(``.in1k``, ``.fmnist``). So a zoo model name is ``arch.tag``. A self-supervised tag
(``.fmnist_simclr``) names a headless backbone (``num_classes: 0``) pretrained without labels by
its ``ssl`` method, published for linear probing (``repspec-zoo probe``).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import PretrainedCfg, get_pretrained_cfg

from ..regularizers.registry import REGULARIZERS

__all__ = ["HF_ORG", "ARCHS", "TAGS", "BASE_TAGS", "SSL_MODES", "Tag", "arch_tags", "zoo_names", "zoo_model_name", "pretrained_cfg",
           "base_pretrained_cfg"]

HF_ORG = "repspec-zoo"  # the one Hub namespace of the zoo's weights: repo = f"{HF_ORG}/{arch}.{tag}"
PAPER_IDS = ("arXiv:2405.17181", "arXiv:2111.07492")  # rep-spectral (Yang et al. 2024), Tangent Attack (Ma et al. 2021)
PAPER_NAME = "Spectral regularization for adversarially-robust representation learning"

#: base timm arch -> the regularizer modes the zoo trains it with (listing order). The Roth et al.
#: baselines (adv, ddsnr) are plain timm models whose training method lives in the recipe alone.
_BASE_MODES: dict[str, tuple[str, ...]] = {
    "resnet18": ("rep", "repbn", "ll", "none"),
    "resnet50": ("rep", "repbn", "ll", "none"),
    "slp": ("rep", "ll", "none"),
    "resnet_small": ("rep", "repbn", "ll", "none", "adv", "ddsnr"),
}

#: zoo arch name -> (base timm arch, regularizer mode)
ARCHS: dict[str, tuple[str, str]] = {f"{base}_{REGULARIZERS[mode].arch_suffix}": (base, mode)
                                     for base, modes in _BASE_MODES.items() for mode in modes}


@dataclass(frozen=True)
class Tag:
    """What a pretrained tag stands for: the data the weights were trained and evaluated on."""

    dataset: str                      # a repspec_zoo.data.DATASETS name
    num_classes: int                  # classifier outputs
    input_size: tuple[int, int, int]  # (C, H, W) the weights were trained at, pixels in [0, 1]
    mean: tuple[float, ...]           # normalization inside the model wrapper
    std: tuple[float, ...]
    crop_pct: float = 1.0             # eval center-crop fraction
    ssl: str | None = None            # self-supervised method (ssl.method) of a headless backbone; None: supervised


TAGS: dict[str, Tag] = {
    "fmnist": Tag("fashion_mnist", 10, (1, 28, 28), (0.0,), (1.0,)),
    "digits": Tag("digits", 10, (1, 8, 8), (0.0,), (1.0,)),
    "cifar10": Tag("cifar10", 10, (3, 32, 32), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD),
    "in1k": Tag("imagenet1k", 1000, (3, 224, 224), IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, crop_pct=0.875),
    "fmnist_simclr": Tag("fashion_mnist", 0, (1, 28, 28), (0.0,), (1.0,), ssl="simclr"),
}

#: the regularizer modes a self-supervised step can train with (the others read labels or logits)
SSL_MODES = ("none", "rep", "ll")

#: base arch -> its tags, the first is the default. slp flattens a fixed input size (its cfg in
#: tiny.py marks fixed_input_size, and its zoo cfgs carry the mark), so it has only the 28x28 tag.
BASE_TAGS: dict[str, tuple[str, ...]] = {
    "slp": ("fmnist",),
    "resnet_small": ("fmnist", "digits", "fmnist_simclr"),
    "resnet18": ("cifar10",),
    "resnet50": ("in1k",),
}


def arch_tags(arch: str) -> tuple[str, ...]:
    """The pretrained tags of a zoo arch: its base's, less the self-supervised ones for modes SSL cannot train."""
    base, mode = ARCHS[arch]
    return tuple(tag for tag in BASE_TAGS[base] if TAGS[tag].ssl is None or mode in SSL_MODES)


def zoo_names() -> list[tuple[str, str, str, str]]:
    """``(name arch.tag, arch, mode, tag)`` of every zoo model with a pretrained cfg, in listing order."""
    return [(f"{arch}.{tag}", arch, mode, tag) for arch, (base, mode) in ARCHS.items() for tag in arch_tags(arch)]


def _description(arch: str, tag: str) -> str:
    base, mode = ARCHS[arch]
    data = TAGS[tag]
    description = REGULARIZERS[mode].description.format(base=base, dataset=data.dataset)
    if data.ssl is None:
        return description
    return (f"{description}: a {data.ssl} self-supervised backbone without a classifier head (features only), "
            f"for linear probing with `repspec-zoo probe {arch}.{tag} --dataset {data.dataset}`")


def pretrained_cfg(arch: str, tag: str) -> dict:
    """Pretrained cfg of ``arch.tag``: the tag's data fields + the base arch's structural fields."""
    base, mode = ARCHS[arch]
    data, base_cfg, spec = TAGS[tag], get_pretrained_cfg(base), REGULARIZERS[mode]
    return dict(
        hf_hub_id=f"{HF_ORG}/{arch}.{tag}", num_classes=data.num_classes, input_size=data.input_size,
        mean=data.mean, std=data.std, crop_pct=data.crop_pct, interpolation="bilinear",
        pool_size=base_cfg.pool_size if base_cfg.input_size == data.input_size else None,
        fixed_input_size=base_cfg.fixed_input_size,
        first_conv=base_cfg.first_conv, classifier=base_cfg.classifier, license="apache-2.0",
        description=_description(arch, tag),
        paper_ids=PAPER_IDS, paper_name=PAPER_NAME,
        notes=(spec.note, "inputs in [0, 1]; attack distances are L2 distances in [0, 1] pixel space"),
    )


def zoo_model_name(base: str, mode: str, dataset: str, ssl: str | None = None) -> str:
    """The zoo name ``arch.tag`` of weights of ``base`` trained with regularizer ``mode`` on ``dataset``
    (self-supervised by ``ssl``, an ``ssl.method``; None: supervised).

    Raises ValueError naming the tables to extend when the zoo has no such model.
    """
    archs = [arch for arch, entry in ARCHS.items() if entry == (base, mode)]
    if not archs:
        known = sorted(set(ARCHS.values()))
        raise ValueError(f"the zoo has no arch for model={base!r} with regularizer mode={mode!r}; "
                         f"zoo (model, mode) pairs: {known}. Add one to _BASE_MODES in repspec_zoo/models/registry.py")
    tags = [tag for tag in arch_tags(archs[0]) if (TAGS[tag].dataset, TAGS[tag].ssl) == (dataset, ssl)]
    if not tags:
        known = {tag: TAGS[tag].dataset + (f" ({TAGS[tag].ssl})" if TAGS[tag].ssl else "") for tag in arch_tags(archs[0])}
        how = f" self-supervised by ssl.method={ssl!r}" if ssl else ""
        raise ValueError(f"the zoo has no tag for {base} trained{how} on dataset={dataset!r}; its tags (tag: dataset) are "
                         f"{known}. Add one to TAGS / BASE_TAGS in repspec_zoo/models/registry.py")
    return f"{archs[0]}.{tags[0]}"


def base_pretrained_cfg(cfg: PretrainedCfg, base: str, **changes) -> dict:
    """``cfg`` for building the plain ``base`` model: no Hub/URL source (a caller's file/state_dict stays)."""
    return replace(cfg, architecture=base, hf_hub_id=None, url=None, source=None, **changes).to_dict()
