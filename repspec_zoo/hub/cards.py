"""Model cards of exported zoo models: Hub metadata (model-index) + a short human-readable card.

The card is rendered from the exported config.json alone (timm config + our top-level
metadata), so a card always describes exactly the weights next to it::

    card = render_card(config, repo_id="repspec-zoo/slp_repspectral.fmnist", dataset_hub_id=...)
    card.data.eval_results   # accuracy and Tangent Attack distances, as the Hub reads them
"""
from __future__ import annotations

import math
from typing import Mapping

import timm
from huggingface_hub import EvalResult as CardMetric, ModelCard, ModelCardData  # one metric row of a card

from ..models.pretrained import attack_label, attack_rows
from ..regularizers.registry import get_spec
from ..evaluation.stats import format_interval

TASK = "image-classification"
FEATURES_TASK = "image-feature-extraction"  # the Hub pipeline of a headless backbone


def ssl_method(config: Mapping) -> str | None:
    """The self-supervised method (``ssl.method``) an export's recipe pretrained with; None: supervised."""
    return ((config.get("recipe") or {}).get("ssl") or {}).get("method")


def probe_settings(evaluation: Mapping) -> Mapping | None:
    """The linear probe an evaluation fitted on frozen features (``repspec-zoo probe``), None for a model's own head."""
    return (evaluation.get("settings") or {}).get("probe")


def _eval_results(config: Mapping, dataset_hub_id: str | None) -> list[CardMetric]:
    evaluation, dataset = config["eval"], config["dataset"]
    common = dict(task_type=TASK, dataset_type=dataset_hub_id or dataset, dataset_name=dataset, dataset_split="test")
    accuracy = "linear-probe accuracy" if probe_settings(evaluation) else None
    results = [CardMetric(metric_type="accuracy", metric_value=float(evaluation["clean_acc"]), **common,
                          metric_name=accuracy)]
    prefix, label = attack_label(evaluation)
    for queries, mean, median in attack_rows(evaluation):
        metric_config = None if queries is None else f"queries={queries}"
        at = "" if queries is None else f", {queries} queries"
        for stat, value in (("mean", mean), ("median", median)):
            if value is not None and math.isfinite(value):  # no successful attack: no number for the Hub
                results.append(CardMetric(metric_type=f"{prefix}_l2_{stat}", metric_value=value, **common,
                                          metric_config=metric_config,
                                          metric_name=f"{label} {stat} L2 distance ([0,1] pixels{at})"))
        rate = (evaluation.get("success_rate") or {}).get(str(queries))
        if rate is not None:
            results.append(CardMetric(metric_type=f"{prefix}_success_rate", metric_value=float(rate), **common,
                                      metric_config=metric_config, metric_name=f"{label} success rate{at}"))
    at_eps = (evaluation.get("robust_accuracy") or {}).get("at_eps")
    if at_eps:
        results.append(CardMetric(metric_type="robust_accuracy_upper_bound",
                                  metric_value=float(at_eps["robust_accuracy_upper"]["estimate"]), **common,
                                  metric_config=f"l2_eps={at_eps['eps']}",
                                  metric_name=f"robust accuracy at L2 eps {at_eps['eps']} (upper bound, {label})"))
    return results


def _evaluation_table(evaluation: Mapping) -> str:
    probe = probe_settings(evaluation)
    lines = ["| metric | value |", "|---|---|"]
    if probe:
        lines += [f"| linear probe: {probe['method']}, C={probe['C']:g}, fitted on training images | {probe['n_train']} |",
                  f"| linear probe training accuracy | {float(probe['train_acc']):.4f} |"]
    lines.append(f"| {'linear-probe ' if probe else ''}clean accuracy | {float(evaluation['clean_acc']):.4f} |")
    _, label = attack_label(evaluation)
    if "n_samples" in evaluation:
        lines.append(f"| attacked samples (correctly classified) | {evaluation['n_samples']} |")
    # per budget: the hard-label attacks' best when white-box ones ran too (theirs ignore the budget)
    hard = evaluation.get("black_box") if len(evaluation.get("attacks") or []) > 1 else None
    per_budget, per_label = (hard, "best of " + "+".join(a.upper() for a in hard["attacks"])) if hard else \
        (evaluation, label)
    rates = per_budget.get("success_rate") or {}
    for queries, mean, median in attack_rows(per_budget):
        at = "" if queries is None else f" @ {queries} queries"
        if rates.get(str(queries)) is not None:
            lines.append(f"| {per_label} success rate{at} | {rates[str(queries)]:.3f} |")
        lines += [f"| {per_label} {stat} L2{at} | {value:.4f} |" for stat, value in
                  (("mean (broken samples)", mean), ("median (all samples)", median)) if value is not None]
    distance = evaluation.get("distance")
    if distance:
        lines += [f"| {label} mean L2 (broken samples), 95% bootstrap CI | {format_interval(distance.get('l2_mean'))} |",
                  f"| {label} median L2 (all samples), 95% bootstrap CI | {format_interval(distance.get('l2_median'))} |",
                  f"| {label} success rate, 95% Clopper-Pearson CI | {format_interval(distance.get('success_rate'))} |"]
    at_eps = (evaluation.get("robust_accuracy") or {}).get("at_eps")
    if at_eps:
        lines.append(f"| robust accuracy at L2 eps {at_eps['eps']} (upper bound), 95% CI | "
                     f"{format_interval(at_eps['robust_accuracy_upper'])} |")
    for key, name in (("certified", "certified radius (a lower bound), mean"),
                      ("lemma1", "Lemma-1 local estimate (not a bound), mean")):
        if evaluation.get(key):
            vacuous = (" (vacuous: far below the attack distances)"
                       if key == "certified" and (evaluation.get("bracket") or {}).get("vacuous") else "")
            lines.append(f"| {name} | {evaluation[key]['mean']:.4f}{vacuous} |")
    ratio = (evaluation.get("bracket") or {}).get("upper_over_certified") or {}
    if ratio.get("median") is not None:
        lines.append(f"| best attack / certified radius, median over samples | {ratio['median']:.2f} |")
    paired = (evaluation.get("settings") or {}).get("paired_vs_baseline")
    if paired:  # the leaderboard's comparison on the same images (one trained network each)
        diff = paired["mean_difference"]
        lines.append(f"| mean L2 change against `{paired['baseline']}` on the same {paired['n_pairs']} images, "
                     f"95% paired bootstrap CI (Wilcoxon p) | {diff['estimate']:+.4f} [{diff['low']:+.4f}, "
                     f"{diff['high']:+.4f}] (p = {paired['wilcoxon']['p_value']:.2g}; "
                     f"{'beyond noise' if paired['beyond_noise'] else 'within noise'}) |")
    return "\n".join(lines)


def _card_data(config: Mapping, dataset_hub_id: str | None) -> ModelCardData:
    tags = [TASK, "timm", "repspec-zoo", "adversarial-robustness", *get_spec(config["regularizer"]["mode"]).hub_tags]
    tags += ["self-supervised", ssl_method(config)] if ssl_method(config) else []
    return ModelCardData(
        model_name=config["zoo_name"], license=config["pretrained_cfg"].get("license"), library_name="timm",
        pipeline_tag=FEATURES_TASK if config["num_classes"] == 0 else TASK, tags=tags, datasets=[dataset_hub_id] if dataset_hub_id else None,
        eval_results=_eval_results(config, dataset_hub_id),
    )


def _commands(config: Mapping, repo_id: str | None) -> str:
    """Training, evaluation (with the settings eval.json records) and export commands."""
    training = config.get("training") or {}
    command = training.get("command")
    if isinstance(command, (list, tuple)):
        command = " ".join(map(str, command))
    train = command or "accelerate launch recipes/train.py --config CONFIG.yaml  # CONFIG: config.json's `recipe`"
    evaluation = config.get("eval") or {}
    settings = ""
    if evaluation.get("budgets") and evaluation.get("n_requested"):  # an EvalResult from repspec-zoo eval
        local = f" --data-dir PATH/TO/{config['dataset']}" if config.get("custom_data") else ""  # the folder it read
        settings = (f" --dataset {evaluation.get('dataset', config.get('dataset'))}{local} "
                    f"--n {evaluation['n_requested']} --budgets {','.join(map(str, evaluation['budgets']))} "
                    f"--attack {','.join(evaluation.get('attacks') or [evaluation.get('attack') or 'none'])} "
                    f"--seed {evaluation.get('settings', {}).get('seed', 0)}")
    produced_by = (evaluation.get("settings") or {}).get("command")  # e.g. the leaderboard that wrote it
    probe = probe_settings(evaluation)
    if probe and settings:  # backbone + a fitted probe: `repspec-zoo probe` with the fit's settings
        limit = (evaluation.get("settings") or {}).get("limit")
        settings += (f" --train-limit {probe['n_train']} --method {probe['method']} --C {probe['C']:g}"
                     + (f" --limit {limit}" if limit else ""))
    evaluate = (f"{produced_by}  # wrote this card's evaluation" if produced_by
                else f"repspec-zoo {'probe' if probe else 'eval'} {_hub_name(repo_id)}{settings}")
    lines = [train, evaluate, f"repspec-zoo export RUN_DIR --to runs/export/{config['zoo_name']}"]
    if not config.get("custom_data"):
        lines.append("# all of the above for every bundled model: python recipes/build_zoo.py")
    return "\n".join(lines)


def _hub_name(repo_id: str | None) -> str:
    """How timm names these weights: the Hub repo, or (not published) this folder."""
    return f"hf-hub:{repo_id}" if repo_id else "local-dir:PATH/TO/THIS/FOLDER"


def needs_repspec_zoo(arch: str) -> bool:
    """Whether plain timm needs ``import repspec_zoo`` to build ``arch``: repspec_zoo registers it (slp,
    resnet_small)."""
    return timm.is_model(arch) and timm.models.model_entrypoint(arch).__module__.startswith("repspec_zoo.")


def _usage(config: Mapping, repo_id: str | None) -> str:
    """The card's Python snippet: which import timm needs, and the names that load these weights."""
    arch, name = config["architecture"], config["zoo_name"]
    if needs_repspec_zoo(arch):
        why = f"import repspec_zoo  # required: registers `{arch}` (a repspec_zoo architecture plain timm lacks)"
    else:
        why = (f"import repspec_zoo  # optional: `{arch}` is a timm architecture; the import adds sha256 "
               "verification and the zoo names")
    lines = ["import timm", why, "",
             f'model = timm.create_model("{_hub_name(repo_id)}", pretrained=True)  # plain timm loading']
    if config.get("custom_data"):
        lines.append(f"# {name} was trained on custom data: it is not a zoo name, load it by its repo or folder")
        if not repo_id:
            lines.append(f"# publish it with: repspec-zoo publish RUN_DIR --repo-id ORG/{name}")
    else:
        lines.append(f'model = timm.create_model("{name}", pretrained=True)  # by zoo name, weights verified by sha256')
    if config["num_classes"] == 0:
        lines.append(f"features = model(images)  # (B, {config['num_features']}): a backbone without a head, for probing")
    return "\n".join(lines)


def _ssl_section(config: Mapping) -> str:
    """What a headless self-supervised backbone is for, and how its evaluation was made."""
    method = ssl_method(config)
    if config["num_classes"] != 0 or not method:
        return ""
    name, dataset = config["zoo_name"], config["dataset"]
    return f"""
## Self-supervised backbone (no trained head)

These weights are a {method} backbone pretrained without labels: the projection head of the
pretraining is not included, and no classifier was trained, so the model outputs its
{config["num_features"]} features. Use it by fitting a linear probe on the frozen features:
`repspec-zoo probe {name} --dataset {dataset} --out probe.json` fits a logistic-regression head,
then measures clean accuracy and attacks backbone + probe (the settings of this card's evaluation
are under Reproduce). The evaluation below is of such a probe{", and its robustness numbers are of backbone + probe" if config["eval"].get("n_samples") else ""}.
"""


def _evidence_section(config: Mapping) -> str:
    """What the experiment that trained this model showed across training seeds (config.json ``evidence``)."""
    evidence = config.get("evidence")
    return f"\n## Evidence across training seeds\n\n{evidence}\n" if evidence else ""


def _body(config: Mapping, repo_id: str | None) -> str:
    cfg, name = config["pretrained_cfg"], config["zoo_name"]
    c, h, w = cfg["input_size"]
    return f"""
# {name}

{cfg.get("description", name)}. Part of [repspec_zoo](https://arxiv.org/abs/2405.17181): backbones
trained with the rep-spectral regularizer and their recipe-matched baselines, evaluated for robustness
with hard-label (Tangent Attack, CGBA) and white-box minimal-norm attacks.

## Model details

- Architecture: timm `{config["architecture"]}`, {f'{config["num_classes"]} classes' if config["num_classes"] else
                                                   "no classifier head"}, {config["num_features"]} features.
- Input: {c}x{h}x{w} images with pixels in [0, 1], normalized inside the model wrapper with
  mean {tuple(cfg["mean"])}, std {tuple(cfg["std"])}.
- Dataset: `{config["dataset"]}`{" (custom data, not one of the zoo's datasets)" if config.get("custom_data") else ""}.
- Regularizer: {get_spec(config["regularizer"]["mode"]).card(config["regularizer"])}
- Weights: `model.safetensors`, sha256 `{config["weights_sha256"]}` (verified on load by repspec_zoo).
- Papers: {", ".join(cfg.get("paper_ids", ()))} (rep-spectral; Tangent Attack).
{_ssl_section(config)}{_evidence_section(config)}
## Evaluation

{_evaluation_table(config["eval"])}

Distances are L2 distances in [0, 1] pixel space over correctly classified test samples, each the
best an attack found: an upper bound on the minimal adversarial distance. Means are over the samples
an attack broke, medians over all of them (an unbroken sample counts as infinitely far).

## Usage

```python
{_usage(config, repo_id)}
```

## Reproduce

```bash
{_commands(config, repo_id)}
```
"""


def render_card(config: Mapping, repo_id: str | None, dataset_hub_id: str | None = None) -> ModelCard:
    """The model card of an exported zoo model.

    Args:
        config: the export's config.json (timm keys + zoo metadata: zoo_name, dataset,
            regularizer, eval, weights_sha256, optional training with a ``command``).
        repo_id: the Hub repo the card's usage snippet loads from (None: not published; a custom-data
            run exported without --repo-id).
        dataset_hub_id: the Hub id of the dataset, for the card's ``datasets`` metadata.
    """
    data = _card_data(config, dataset_hub_id)
    return ModelCard(f"---\n{data.to_yaml()}\n---\n{_body(config, repo_id)}")
