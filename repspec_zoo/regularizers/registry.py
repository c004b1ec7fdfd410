"""The one table of training regularizers: a :class:`RegularizerSpec` per ``regularizer.mode``.

Everything that differs between modes lives here: the name people read, the Hub tags of its
models, the zoo arch suffix, the pretrained-cfg description, what its strength settings mean,
the config keys it reads, the run summary, the card sentence and how it acts on a training step
(:meth:`RegularizerSpec.step`, see :mod:`.steps`). Adding a regularizer is adding a spec here
(and its step class). Strength conventions:

* rep / ll (Yang et al. 2024, eq. 3): penalty = gamma/2 * sum_l sigma_max(W_l)^2, over the layers up
  to the features (rep) or every layer with the head (ll), raw kernels as the authors define it;
  ``apply: direct`` takes the authors' ResNet step W <- W - gamma/2 * grad_W sigma_max^2 after the
  optimizer's instead.
* repbn ("rep-spectral-bn"): rep's layers and strength, each conv measured with the BatchNorm after it
  folded in (batch statistics in training): sigma_max(diag(g / sqrt(var + eps)) W). BN undoes any
  scale of W, so rep's raw-kernel penalty can shrink W without changing the function; this cannot.
* convwd (a control, no zoo models): wd_lambda/2 * sum_l ||W_l||_F^2 on rep's layers: shrinks the raw
  kernels like rep does, through a penalty BatchNorm is as blind to.
* bss (Chen et al. 2019): bss_eta * sum of the bss_k smallest squared singular values of the batch
  feature matrix.
* ddsnr (Roth et al. 2020, eq. 13): ddsnr_lambda * mean_x ||f(x + ddsnr_eps v) - f(x)||^2, v from
  ddsnr_iters power-iteration steps on the input-output Jacobian.
* adv: L2-PGD training examples within pgd_eps, pgd_steps steps of 2 * pgd_eps / pgd_steps.

Lengths (ddsnr_eps, pgd_eps) are L2 lengths in [0, 1] pixel units.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from ..spectral.hooks import GAMMA_CONVENTION
from . import steps

__all__ = ["RegularizerSpec", "REGULARIZERS", "SPECTRAL_MODES", "BASELINE_MODE", "get_spec", "BSS_CONVENTION",
           "RECIPE_GAMMA_CONVENTION"]

BSS_CONVENTION = "penalty = bss_eta * sum of the bss_k smallest squared singular values of the batch features"
RECIPE_GAMMA_CONVENTION = f"{GAMMA_CONVENTION}; the authors' scripts' lam = gamma/2"
_DDSNR_CONVENTION = ("penalty = ddsnr_lambda * mean_x ||f(x + eps v) - f(x)||^2, v the top right singular vector of "
                     "the input-output Jacobian (Roth et al.); eps in [0,1] pixel L2")
_GAMMA_NOTE = "gamma follows the paper: penalty = gamma/2 * sum_l sigma_max(W_l)^2"
_CONVWD_CONVENTION = "penalty = wd_lambda/2 * sum_l ||W_l||_F^2 over the layers rep-spectral penalizes (head excluded)"
#: the optional spectral settings a run summary, an export and a card carry
SPECTRAL_SETTINGS = ("apply", "every", "estimator", "activation_term", "burn_in_epochs")


def _after(regularizer: Mapping) -> str:
    burn_in = regularizer.get("burn_in_epochs")
    return f", after {burn_in} burn-in epochs of plain training" if burn_in else ""


def _spectral_card(label: str, norm: str) -> Callable[[Mapping], str]:
    def card(r: Mapping) -> str:
        settings = ", ".join(f"{k}={r[k]}" for k in SPECTRAL_SETTINGS if r.get(k) is not None)
        return f"{label}, gamma={r['gamma']} ({GAMMA_CONVENTION}; {norm}) on {len(r['layers'])} layers; {settings}."
    return card


def _spectral_summary(r) -> dict:
    return {"mode": r.mode, "gamma": r.gamma, "convention": RECIPE_GAMMA_CONVENTION, "burn_in_epochs": r.burn_in_epochs,
            "apply": r.apply, "every": r.every, "estimator": r.estimator,
            "activation_term": r.activation_term, **({"layers": r.layers} if r.layers else {})}


def _convwd_card(r: Mapping) -> str:
    return (f"conv weight-decay control, wd_lambda={r['wd_lambda']} ({_CONVWD_CONVENTION}){_after(r)}: shrinks the raw "
            f"kernels without a spectral term, to separate rep-spectral's mechanism from its side effect.")


def _adv_card(r: Mapping) -> str:
    eps, steps_ = r["pgd_eps"], r["pgd_steps"]
    return (f"L2-PGD adversarial training (Roth et al. 2020 baseline), eps={eps}, {steps_} steps of "
            f"`2*eps/steps` = {2 * eps / steps_:.4g}, random start; lengths in [0,1] pixel units{_after(r)}.")


def _ddsnr_card(r: Mapping) -> str:
    return (f"data-dependent spectral norm regularization (Roth et al. 2020, eq. 13), penalty "
            f"`ddsnr_lambda * ||f(x + eps v) - f(x)||^2` with ddsnr_lambda={r['ddsnr_lambda']}, "
            f"eps={r['ddsnr_eps']} ([0,1] pixel units) and v from {r['ddsnr_iters']} power-iteration "
            f"steps on the input-output Jacobian{_after(r)}.")


@dataclass(frozen=True, kw_only=True)
class RegularizerSpec:
    """What one ``regularizer.mode`` is and does; built by keyword.

    Attributes:
        mode: the config value (``regularizer.mode``).
        label: the name people read (listings, cards).
        hub_tags: the model card tags of its models.
        arch_suffix: zoo arch name ``{base}_{arch_suffix}``; None: the zoo publishes no such models.
        description: pretrained-cfg description, with ``{base}`` and ``{dataset}`` fields.
        doc: docstring of its timm entrypoint, with a ``{base}`` field.
        note: what its strength settings mean (pretrained-cfg notes).
        keys: the ``regularizer.*`` settings it reads (besides mode and burn_in_epochs).
        export_keys: settings an export requires and records with their types (non-spectral modes).
        baseline: the unregularized baseline (no regularizer at all), which the other modes are compared against.
        spectral: its models carry a SpectralRegularizer as ``model.spectral``.
        summary: RegularizerConfig -> the run.json ``regularizer`` section.
        card: config.json ``regularizer`` section -> the card's one-sentence description.
        step_class: how it acts on a training step (:mod:`.steps`).
        needs_features: its step reads the batch's pre-logit features (the loop's forward returns them).
        spectral_kwargs: the SpectralRegularizer arguments that define a spectral mode (``attach_spectral``).
    """

    mode: str
    label: str
    hub_tags: tuple[str, ...]
    arch_suffix: str | None
    description: str
    doc: str
    note: str
    keys: tuple[str, ...]
    summary: Callable[[Any], dict]
    card: Callable[[Mapping], str]
    step_class: type
    export_keys: Mapping[str, type] = field(default_factory=dict)
    baseline: bool = False
    spectral: bool = False
    needs_features: bool = False
    spectral_kwargs: Mapping[str, Any] = field(default_factory=dict)

    def step(self, cfg, model):
        """The per-run training-step behaviour (a :class:`.steps.RegularizerStep`) for RegularizerConfig ``cfg``."""
        return self.step_class(cfg, model)


_RAW = "raw kernels, BatchNorm ignored, as the authors' paper and code"
_FOLDED = "each conv with its BatchNorm folded in, batch statistics in training"


def _spectral_spec(mode: str, layers: str, head: str, bn_folded: bool = False) -> RegularizerSpec:
    """rep / repbn / ll: the penalty gamma/2 * sum sigma_max^2 over different layers (``layers``), of the raw
    kernels or (``bn_folded``) of each conv with the BatchNorm after it folded in."""
    selection = "ll" if mode == "ll" else "rep"
    label = f"{selection}-spectral" + ("-bn" if bn_folded else "")
    norm = _FOLDED if bn_folded else _RAW
    return RegularizerSpec(
        mode=mode, label=label, hub_tags=(label, "spectral-regularization"),
        arch_suffix=f"{selection}spectral" + ("bn" if bn_folded else ""),
        description=f"{{base}} trained on {{dataset}} with {label} regularization ({layers}; {norm})",
        doc=f"timm ``{{base}}`` with {label} regularization ({head}; {norm}) as ``model.spectral``.",
        note=_GAMMA_NOTE, keys=("gamma", "apply", "every", "activation_term", "layers", "estimator"),
        summary=_spectral_summary, card=_spectral_card(label, norm), step_class=steps.SpectralStep, spectral=True,
        spectral_kwargs={"mode": selection, "bn_aware": bn_folded})


_SPECS = (
    RegularizerSpec(
        mode="none", label="none (baseline)", hub_tags=("baseline",), arch_suffix="baseline",
        description="{base} trained on {dataset} with the same recipe and no spectral regularizer (baseline)",
        doc="timm ``{base}``, the unregularized baseline of the zoo's spectral models (same recipe).",
        note=_GAMMA_NOTE, keys=(),
        summary=lambda r: {"mode": "none"},
        card=lambda r: "none: the unregularized baseline, trained with the same recipe as the regularized models.",
        step_class=steps.RegularizerStep, baseline=True),
    _spectral_spec("rep", "layers up to the features; head excluded", "head excluded"),
    _spectral_spec("repbn", "layers up to the features; head excluded", "head excluded", bn_folded=True),
    _spectral_spec("ll", "every layer, head included", "head included"),
    RegularizerSpec(
        mode="bss", label="bss (batch spectral shrinkage)", hub_tags=("batch-spectral-shrinkage",), arch_suffix=None,
        description="{base} trained on {dataset} with batch spectral shrinkage (Chen et al. 2019)",
        doc="timm ``{base}`` fine-tuned with batch spectral shrinkage (Chen et al. 2019); no regularizer.",
        note=BSS_CONVENTION, keys=("bss_eta", "bss_k"),
        summary=lambda r: {"mode": "bss", "bss_eta": r.bss_eta, "bss_k": r.bss_k, "convention": BSS_CONVENTION,
                           "burn_in_epochs": r.burn_in_epochs},
        card=lambda r: f"batch spectral shrinkage (Chen et al. 2019), {BSS_CONVENTION}, bss_eta={r['bss_eta']}, "
                       f"bss_k={r['bss_k']}{_after(r)}.",
        step_class=steps.BssStep, needs_features=True),
    RegularizerSpec(
        mode="ddsnr", label="ddsnr", hub_tags=("data-dependent-spectral-norm",), arch_suffix="ddsnr",
        description="{base} trained on {dataset} with data-dependent spectral norm regularization "
                    "(Roth et al. 2020, eq. 13)",
        doc="timm ``{base}`` trained with data-dependent spectral norm regularization (Roth et al. 2020); "
            "no regularizer.",
        note="penalty = ddsnr_lambda * ||f(x + ddsnr_eps v) - f(x)||^2, v from ddsnr_iters power-iteration steps on "
             "the input-output Jacobian, ddsnr_eps in [0, 1] pixel units",
        keys=("ddsnr_lambda", "ddsnr_eps", "ddsnr_iters"),
        summary=lambda r: {"mode": "ddsnr", "ddsnr_lambda": r.ddsnr_lambda, "ddsnr_eps": r.ddsnr_eps,
                           "ddsnr_iters": r.ddsnr_iters, "convention": _DDSNR_CONVENTION,
                           "burn_in_epochs": r.burn_in_epochs},
        card=_ddsnr_card, step_class=steps.DdsnrStep,
        export_keys={"ddsnr_lambda": float, "ddsnr_eps": float, "ddsnr_iters": int}),
    RegularizerSpec(
        mode="adv", label="adv (L2-PGD)", hub_tags=("adversarial-training",), arch_suffix="advtrained",
        description="{base} trained on {dataset} with L2-PGD adversarial training (Roth et al. 2020 baseline)",
        doc="timm ``{base}`` trained with L2-PGD adversarial training (Roth et al. 2020 baseline); no regularizer.",
        note="pgd_eps: L2-PGD radius in [0, 1] pixel units; pgd_steps steps of 2*pgd_eps/pgd_steps from a random "
             "start",
        keys=("pgd_eps", "pgd_steps"),
        summary=lambda r: {"mode": "adv", "pgd_eps": r.pgd_eps, "pgd_steps": r.pgd_steps,
                           "step_size": 2 * r.pgd_eps / r.pgd_steps,
                           "convention": "L2-PGD adversarial training, eps in [0,1] pixel L2",
                           "burn_in_epochs": r.burn_in_epochs},
        card=_adv_card, step_class=steps.AdversarialStep, export_keys={"pgd_eps": float, "pgd_steps": int}),
    RegularizerSpec(
        mode="convwd", label="convwd (conv weight-decay control)", hub_tags=("weight-decay",), arch_suffix=None,
        description="{base} trained on {dataset} with extra weight decay on its convs (a control)",
        doc="timm ``{base}`` trained with extra weight decay on the layers rep-spectral penalizes; no regularizer.",
        note=_CONVWD_CONVENTION, keys=("wd_lambda",),
        summary=lambda r: {"mode": "convwd", "wd_lambda": r.wd_lambda, "convention": _CONVWD_CONVENTION,
                           "burn_in_epochs": r.burn_in_epochs},
        card=_convwd_card, step_class=steps.ConvWeightDecayStep, export_keys={"wd_lambda": float}),
)

#: mode -> spec, in the order listings show them
REGULARIZERS: dict[str, RegularizerSpec] = {spec.mode: spec for spec in _SPECS}
SPECTRAL_MODES = tuple(mode for mode, spec in REGULARIZERS.items() if spec.spectral)
BASELINE_MODE = next(mode for mode, spec in REGULARIZERS.items() if spec.baseline)  # 'none'


def get_spec(mode: str) -> RegularizerSpec:
    """The spec of ``mode``; ValueError naming the known modes."""
    try:
        return REGULARIZERS[mode]
    except KeyError:
        raise ValueError(f"unknown regularizer mode {mode!r}; known: {', '.join(REGULARIZERS)}") from None
