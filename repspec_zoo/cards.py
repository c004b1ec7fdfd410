"""Model cards of exported zoo models: Hub metadata (model-index) + a short human-readable card.

The card is rendered from the exported config.json alone (timm config + our top-level
metadata), so a card always describes exactly the weights next to it::

    card = render_card(config, repo_id="repspec-zoo/slp_repspectral.fmnist", dataset_hub_id=...)
    card.data.eval_results   # accuracy and Tangent Attack distances, as the Hub reads them
"""
from __future__ import annotations

import math
from typing import Mapping

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .spectral.hooks import GAMMA_CONVENTION

TASK = "image-classification"
_REGULARIZER_TAGS = {"rep": "rep-spectral", "ll": "ll-spectral"}
_BASELINE_TAGS = {"adv": "adversarial-training", "ddsnr": "data-dependent-spectral-norm"}  # Roth et al. baselines


def attack_rows(evaluation: Mapping) -> list[tuple[int | None, float, float | None]]:
    """``(queries, l2_mean, l2_median)`` per attack budget of an eval summary, by budget.

    ``l2_mean``/``l2_median`` are ``{budget: distance}`` (or one number without budgets);
    an eval summary without attack statistics gives ``[]``.
    """
    means, medians = evaluation.get("l2_mean"), evaluation.get("l2_median")
    if isinstance(means, (int, float)):
        return [(None, float(means), float(medians) if isinstance(medians, (int, float)) else None)]
    if not isinstance(means, Mapping):
        return []
    medians = medians if isinstance(medians, Mapping) else {}
    rows = [(int(q), float(m), None if medians.get(q) is None else float(medians[q])) for q, m in means.items()]
    return sorted(rows, key=lambda row: row[0])


def _eval_results(config: Mapping, dataset_hub_id: str | None) -> list[EvalResult]:
    evaluation, dataset = config["eval"], config["dataset"]
    common = dict(task_type=TASK, dataset_type=dataset_hub_id or dataset, dataset_name=dataset, dataset_split="test")
    results = [EvalResult(metric_type="accuracy", metric_value=float(evaluation["clean_acc"]), **common)]
    attack = str(evaluation.get("attack", "ta"))
    for queries, mean, median in attack_rows(evaluation):
        metric_config = None if queries is None else f"queries={queries}"
        at = "" if queries is None else f", {queries} queries"
        for stat, value in (("mean", mean), ("median", median)):
            if value is not None and math.isfinite(value):  # no successful attack: no number for the Hub
                results.append(EvalResult(metric_type=f"{attack}_l2_{stat}", metric_value=value, **common,
                                          metric_config=metric_config,
                                          metric_name=f"{attack.upper()} {stat} L2 distance ([0,1] pixels{at})"))
    return results


def _mode_tags(mode: str) -> list[str]:
    """Hub tags of a regularizer mode: spectral, a Roth et al. baseline, or the unregularized baseline."""
    if mode in _REGULARIZER_TAGS:
        return [_REGULARIZER_TAGS[mode], "spectral-regularization"]
    return [_BASELINE_TAGS[mode]] if mode in _BASELINE_TAGS else ["baseline"]


def _card_data(config: Mapping, dataset_hub_id: str | None) -> ModelCardData:
    tags = [TASK, "timm", "repspec-zoo", "adversarial-robustness", *_mode_tags(config["regularizer"]["mode"])]
    return ModelCardData(
        model_name=config["zoo_name"], license=config["pretrained_cfg"].get("license"), library_name="timm",
        pipeline_tag=TASK, tags=tags, datasets=[dataset_hub_id] if dataset_hub_id else None,
        eval_results=_eval_results(config, dataset_hub_id),
    )


def _evaluation_table(evaluation: Mapping) -> str:
    lines = ["| metric | value |", "|---|---|", f"| clean accuracy | {float(evaluation['clean_acc']):.4f} |"]
    attack = str(evaluation.get("attack", "ta")).upper()
    for queries, mean, median in attack_rows(evaluation):
        at = "" if queries is None else f" @ {queries} queries"
        lines += [f"| {attack} {stat} L2{at} | {value:.4f} |" for stat, value in (("mean", mean), ("median", median))
                  if value is not None]
    if "n_samples" in evaluation:
        lines.append(f"| attacked samples | {evaluation['n_samples']} |")
    return "\n".join(lines)


def _regularizer_text(regularizer: Mapping) -> str:
    mode, burn_in = regularizer["mode"], regularizer.get("burn_in_epochs")
    after = f", after {burn_in} burn-in epochs of plain training" if burn_in else ""
    if mode == "adv":
        eps, steps = regularizer["eps"], regularizer["iters"]
        return (f"L2-PGD adversarial training (Roth et al. 2020 baseline), eps={eps}, {steps} steps of "
                f"`2*eps/steps` = {2 * eps / steps:.4g}, random start; lengths in [0,1] pixel units{after}.")
    if mode == "ddsnr":
        return (f"data-dependent spectral norm regularization (Roth et al. 2020, eq. 13), penalty "
                f"`ddsnr_lambda * ||f(x + eps v) - f(x)||^2` with ddsnr_lambda={regularizer['ddsnr_lambda']}, "
                f"eps={regularizer['eps']} ([0,1] pixel units) and v from {regularizer['iters']} power-iteration "
                f"steps on the input-output Jacobian{after}.")
    if mode not in _REGULARIZER_TAGS:
        return "none: the unregularized baseline, trained with the same recipe as the regularized models."
    settings = ", ".join(f"{k}={regularizer[k]}" for k in ("every", "estimator", "bn_aware", "burn_in_epochs")
                         if regularizer.get(k) is not None)
    return (f"{_REGULARIZER_TAGS[regularizer['mode']]}, gamma={regularizer['gamma']} "
            f"({GAMMA_CONVENTION}) on {len(regularizer['layers'])} layers; {settings}.")


def _commands(config: Mapping, repo_id: str) -> str:
    """Training, evaluation (with the settings eval.json records) and export commands."""
    training = config.get("training") or {}
    command = training.get("command")
    if isinstance(command, (list, tuple)):
        command = " ".join(map(str, command))
    train = command or "accelerate launch recipes/train.py --config CONFIG.yaml  # CONFIG: config.json's `recipe`"
    evaluation = config.get("eval") or {}
    settings = ""
    if evaluation.get("budgets") and evaluation.get("n_requested"):  # an EvalResult from repspec-zoo eval
        settings = (f" --dataset {evaluation.get('dataset', config.get('dataset'))} --n {evaluation['n_requested']} "
                    f"--budgets {','.join(map(str, evaluation['budgets']))} --attack {evaluation.get('attack', 'ta')} "
                    f"--seed {evaluation.get('settings', {}).get('seed', 0)}")
    return "\n".join([train, f"repspec-zoo eval hf-hub:{repo_id}{settings}",
                      f"repspec-zoo export RUN_DIR --to model_cards/{config['zoo_name']}",
                      "# all of the above for every bundled model: python recipes/build_zoo.py"])


def _body(config: Mapping, repo_id: str) -> str:
    cfg, name = config["pretrained_cfg"], config["zoo_name"]
    c, h, w = cfg["input_size"]
    return f"""
# {name}

{cfg.get("description", name)}. Part of [repspec_zoo](https://arxiv.org/abs/2405.17181): backbones
trained with the rep-spectral regularizer and their recipe-matched baselines, evaluated for black-box
robustness with the Tangent Attack.

## Model details

- Architecture: timm `{config["architecture"]}`, {config["num_classes"]} classes, {config["num_features"]} features.
- Input: {c}x{h}x{w} images with pixels in [0, 1], normalized inside the model wrapper with
  mean {tuple(cfg["mean"])}, std {tuple(cfg["std"])}.
- Dataset: `{config["dataset"]}`.
- Regularizer: {_regularizer_text(config["regularizer"])}
- Weights: `model.safetensors`, sha256 `{config["weights_sha256"]}` (verified on load by repspec_zoo).
- Papers: {", ".join(cfg.get("paper_ids", ()))} (rep-spectral; Tangent Attack).

## Evaluation

{_evaluation_table(config["eval"])}

Distances are L2 distances in [0, 1] pixel space, over correctly classified test samples.

## Usage

```python
import timm
import repspec_zoo  # registers the zoo (needed for its small architectures)

model = timm.create_model("hf-hub:{repo_id}", pretrained=True)  # plain timm loading
model = timm.create_model("{name}", pretrained=True)  # by zoo name, weights verified by sha256
```

## Reproduce

```bash
{_commands(config, repo_id)}
```
"""


def render_card(config: Mapping, repo_id: str, dataset_hub_id: str | None = None) -> ModelCard:
    """The model card of an exported zoo model.

    Args:
        config: the export's config.json (timm keys + zoo metadata: zoo_name, dataset,
            regularizer, eval, weights_sha256, optional training with a ``command``).
        repo_id: the Hub repo the card's usage snippet loads from.
        dataset_hub_id: the Hub id of the dataset, for the card's ``datasets`` metadata.
    """
    data = _card_data(config, dataset_hub_id)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{_body(config, repo_id)}")
