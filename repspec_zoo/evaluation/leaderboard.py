"""The leaderboard: the zoo's bundled backbones side by side (the main job, `repspec-zoo leaderboard`,
whose command line is :mod:`repspec_zoo.cli.leaderboard`).

For every zoo model whose weights ship with the package and were trained on ``--dataset`` (or
the ``--models`` named; a headless self-supervised backbone gets a linear probe, see
`load_zoo_model`): clean accuracy on the whole test split, then the attacks (``--attack``, default the ensemble of
hard-label and white-box attacks) on the SAME ``--n`` test images for every model (drawn with
``--seed`` among the images every listed model classifies correctly), so that two models are
compared pairwise: the change of mean distance against the unregularized baseline of the same
family with a paired-bootstrap 95% CI and a Wilcoxon signed-rank test. Each model's distance is
the per-sample best over the attacks (an upper bound on the minimal distance), reported with its
success rate and bootstrap CIs, next to the certified radius where the model admits one (the
bracket) and the robust accuracy it implies.

Writes, into ``--out``: one EvalResult JSON per model, ``leaderboard.json``, ``leaderboard.md``,
``distance_vs_queries.png`` and ``robust_accuracy.png``. Distances are L2 in [0,1] pixel space
(Fashion-MNIST has 784 pixels: a distance of 1 is e.g. 0.036 per pixel on average).

The demo (``make demo``) runs small n and budgets; ``make leaderboard`` the published settings.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .. import data
from . import stats
from ..models.normalize import NormalizedModel
from .stats import format_interval
from .evaluate import evaluate, predict_split
from ..errors import UserError
from .result import EvalResult
from ..io import atomic_write_text
from ..models.registry import ARCHS, TAGS, zoo_model_name
from ..models.zoo import list_pretrained
from ..regularizers.registry import BASELINE_MODE, REGULARIZERS
from ..loader import load_model
from .model_checks import check_model
from .plots import plot_distance_curves, plot_robust_accuracy


def bundled_models(dataset: str) -> list[str]:
    """Zoo names of classifiers whose weights ship inside the package and were trained on ``dataset``
    (headless self-supervised backbones have no classifier to attack: `repspec-zoo probe` evaluates them)."""
    return [row.name for row in list_pretrained() if row.source == "bundled" and row.dataset == dataset
            and TAGS[row.name.split(".")[1]].num_classes > 0]


def family_baseline(name: str, dataset: str) -> str | None:
    """The unregularized zoo model of the same base arch, dataset and training (supervised or the same
    self-supervised method) as ``name`` (None for a baseline itself or a name outside the zoo)."""
    arch, _, tag = name.partition(".")
    base, mode = ARCHS.get(arch, (None, BASELINE_MODE))
    if base is None or REGULARIZERS[mode].baseline:
        return None
    try:
        return zoo_model_name(base, BASELINE_MODE, dataset, TAGS[tag].ssl if tag in TAGS else None)
    except ValueError:
        return None


#: a headless backbone's linear probe: logistic regression (sklearn, C = 1) on this many seeded,
#: class-stratified training images, the zoo's SimCLR recipes' ``train_limit``
PROBE_TRAIN_LIMIT = 5000


def default_device() -> torch.device:
    """Where the leaderboard runs: the GPU if torch sees one (as Accelerate's default), else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def load_zoo_model(name: str, compile: bool = False, images: torch.Tensor | None = None,
                   seed: int = 0, device: torch.device | str | None = None) -> NormalizedModel:
    """A bundled / cached zoo model in [0,1] input space, eval mode, without regularizer hooks, with
    the fast evaluation forward (`NormalizedModel.fast_eval`; ``compile=True`` adds torch.compile).
    A headless self-supervised backbone becomes backbone + a linear probe fitted by
    `repspec_zoo.evaluation.linear_probe.fit_probe` (logistic, C = 1) on `PROBE_TRAIN_LIMIT` training images of its
    tag's dataset drawn with ``seed``, as ``repspec-zoo probe --train-limit 5000`` does; the fit is
    in ``model.probe_info`` (recorded in the evaluation's settings; None for a classifier). The
    model ends on ``device`` (default `default_device`); `evaluate` then runs every attack there.
    Given a few test ``images``, `check_model` refuses a non-finite model first."""
    backbone = load_model(name)
    probe_info = None
    if getattr(backbone, "num_classes", 1) == 0:
        from .linear_probe import fit_probe

        dataset = TAGS[name.partition(".")[2]].dataset
        in_chans, height = backbone.pretrained_cfg["input_size"][:2]
        train = data.load_split(dataset, "train", image_size=height, channels=in_chans, limit=PROBE_TRAIN_LIMIT,
                                seed=seed)
        probe = fit_probe(backbone, train, seed=seed)
        model = probe.model.eval()
        probe_info = dict(probe.info(), classes=data.dataset_info(dataset).num_classes)
    else:
        model = NormalizedModel(backbone).eval()
    device = torch.device(device) if device is not None else default_device()
    model = model.to(device)
    if images is not None:
        check_model(model, images.to(device), name)
    model = model.fast_eval(compile=compile)
    model.probe_info = probe_info
    return model


def common_indices(models: dict[str, NormalizedModel], x: torch.Tensor, y: torch.Tensor, n: int, seed: int,
                   batch_size: int) -> torch.Tensor:
    """``n`` test positions every model classifies correctly, drawn with ``seed`` (ascending)."""
    correct = torch.ones(len(y), dtype=torch.bool)
    for model in models.values():
        correct &= predict_split(model, (x, y), batch_size, next(model.parameters()).device)[0]
    pool = correct.nonzero().flatten()
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]].sort().values


def _floats(values: list) -> list[float]:
    """Per-sample distances as floats ('inf' strings of a JSON round trip included)."""
    return [float(v) for v in values]


def paired_deltas(results: dict[str, EvalResult], dataset: str, seed: int) -> dict[str, dict]:
    """Per model with its family baseline in ``results``: `stats.paired_comparison` of the best
    per-sample distance at the largest budget (baseline = a, model = b, same images)."""
    out = {}
    for name, result in results.items():
        base = family_baseline(name, dataset)
        if base not in results:
            continue
        a, b = results[base].per_sample, result.per_sample
        if a["index"] != b["index"]:
            raise ValueError(f"{name} and {base} were attacked on different images; a paired comparison needs the "
                             "same ones (leaderboard attacks every model on common_indices)")
        q = str(result.budgets[-1])
        out[name] = dict(baseline=base, **stats.to_jsonable(stats.paired_comparison(
            _floats(a["l2"][q]), _floats(b["l2"][q]), seed=seed)))
    return out


def best_attack_counts(l2_by_attack: dict[str, list[float]]) -> dict[str, int]:
    """How many samples each attack found the smallest distance for (ties go to the first listed)."""
    names = list(l2_by_attack)
    winner = torch.tensor([l2_by_attack[a] for a in names]).argmin(0)
    return {a: int((winner == i).sum()) for i, a in enumerate(names)}


def _fmt(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _verdict(delta: dict) -> str:
    return f"yes: {delta['direction']}" if delta["beyond_noise"] else "no"


def markdown_tables(results: dict[str, EvalResult], budgets: list[int], deltas: dict[str, dict]) -> str:
    """Three tables: the best distance with CIs, robust accuracy and the hard-label curve; the bracket
    and the paired change against the family baseline; each attack alone."""
    top = str(budgets[-1])
    first = next(iter(results.values()))
    hard = "+".join(first.black_box["attacks"]) if first.black_box else None
    eps = first.robust_accuracy["eps"] if first.robust_accuracy else None
    curve = " | ".join(f"{hard} mean L2 @{q}" for q in budgets) if hard else ""
    lines = [f"| model | clean acc | success | mean L2 [95% CI] | median L2 [95% CI] | robust acc @{eps} (upper bound) | "
             f"{curve}{' | ' if hard else ''}hard-label mean change {budgets[-2] if len(budgets) > 1 else ''}->{top} |",
             "|---" * (7 + (len(budgets) if hard else 0)) + "|"]
    for name, r in results.items():
        d = r.distance
        robust = format_interval(r.robust_accuracy["at_eps"]["robust_accuracy_upper"], 3) if eps else "-"
        means = " | ".join(f"{r.black_box['l2_mean'][str(q)]:.3f}" for q in budgets) + " | " if hard else ""
        change = r.convergence and r.convergence["mean_change"]
        lines.append(f"| `{name}` | {r.clean_acc:.4f} | {format_interval(d['success_rate'], 3)} | "
                     f"{format_interval(d['l2_mean'], 3)} | {format_interval(d['l2_median'], 3)} | {robust} | {means}"
                     f"{'-' if change is None else f'{100 * change:+.1f}%'} |")
    lines += ["", "| model | certified radius (mean) | best / certified (median) | Lemma-1 est. (mean) | "
                  "vs family baseline: mean L2 change [95% CI] | Wilcoxon p | beyond noise |", "|---" * 7 + "|"]
    for name, r in results.items():
        ratio = (r.bracket or {}).get("upper_over_certified") or {}
        delta = deltas.get(name)
        change, p_value, verdict = "-", "-", "-"
        if delta:
            diff, p = delta["mean_difference"], delta["wilcoxon"]["p_value"]
            if diff:  # a CI bound is None (JSON of nan) when the bootstrap had too few pairs
                bounds = "" if None in (diff["low"], diff["high"]) else f" [{diff['low']:+.3f}, {diff['high']:+.3f}]"
                change = f"{diff['estimate']:+.3f}{bounds}"
            p_value, verdict = "-" if p is None else f"{p:.2g}", _verdict(delta)
        vacuous = " (vacuous)" if (r.bracket or {}).get("vacuous") else ""
        lines.append(f"| `{name}` | {_fmt(r.certified and r.certified['mean'])}{vacuous} | {_fmt(ratio.get('median'), 2)} | "
                     f"{_fmt(r.lemma1 and r.lemma1['mean'])} | {change} | {p_value} | {verdict} |")
    names = first.attacks
    if len(names) > 1:
        lines += ["", "| model | " + " | ".join(f"{a}: mean L2 @{top} (success)" for a in names) +
                  " | best attack per sample |", "|---" * (len(names) + 2) + "|"]
        for name, r in results.items():
            cells = " | ".join(f"{r.by_attack[a]['l2_mean'][top]:.3f} ({r.by_attack[a]['success_rate'][top]:.2f})"
                               for a in names)
            wins = best_attack_counts({a: r.per_sample["l2_by_attack"][a][top] for a in names})
            lines.append(f"| `{name}` | {cells} | {', '.join(f'{a} {c}' for a, c in wins.items())} |")
    return "\n".join(lines)


class LeaderboardError(UserError, ValueError):
    """An input of the leaderboard (the README to fill, the folder to re-render) is missing or unusable."""


def check_readme(readme: Path, section: str = "leaderboard") -> str:
    """The text of ``readme``; LeaderboardError if it is missing or lacks the section's markers (checked
    before any model is attacked, so a typo does not cost the whole run)."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    if not readme.is_file():
        raise LeaderboardError(f"--update-readme {readme} does not exist; pass the README that holds the "
                               f"{start} ... {end} markers (e.g. README.md)")
    try:
        text = readme.read_text()
    except UnicodeDecodeError as err:
        raise LeaderboardError(f"--update-readme {readme} is not a text file ({err})") from err
    if start not in text or end not in text:
        raise LeaderboardError(f"--update-readme {readme} has no {start} ... {end} markers to fill; add them "
                               "where the tables should go")
    return text


def update_readme(readme: Path, block: str, section: str = "leaderboard") -> None:
    """Replace the text between the README's ``<!-- {section}:start -->`` and ``:end`` markers with ``block``."""
    start, end = f"<!-- {section}:start -->", f"<!-- {section}:end -->"
    text = check_readme(readme, section)
    head, rest = text.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{start}\n{block}\n{end}{tail}")


def report(results: dict[str, EvalResult], out: Path, meta: dict,
           readme: Path | None = None) -> tuple[str, dict[str, dict]]:
    """Tables, JSON summary and plots of ``results`` into ``out``; optionally the README block (the
    bundled cards are the command line's ``--update-cards``). ``meta``: dataset, index, budgets,
    attacks, seed, wall_time_s, command. Returns the markdown tables and the `paired_deltas` they show."""
    budgets, attacks = meta["budgets"], meta["attacks"]
    deltas = paired_deltas(results, meta["dataset"], meta["seed"])
    tables = markdown_tables(results, budgets, deltas)
    eps = next(iter(results.values())).robust_accuracy["eps"]
    block = (f"{tables}\n\nAttacks {'+'.join(attacks)} on the same {len(meta['index'])} {meta['dataset']} test images for "
             f"every model (seed {meta['seed']}; images all models classify correctly); hard-label attacks at budgets "
             f"{','.join(map(str, budgets))} queries each, white-box attacks with their own step counts. Distance = "
             f"per-sample best over all attacks at the largest budget, L2 in [0,1] pixel space, an upper bound on the "
             f"minimal distance; success rate with a Clopper-Pearson CI; mean over the broken samples, median over all "
             f"(unbroken = inf), 95% bootstrap CIs; robust accuracy at L2 eps {eps} = clean acc x fraction with "
             f"distance > eps, an upper bound. 'beyond noise': the paired bootstrap CI of the mean change (same images) "
             f"excludes 0 and Wilcoxon p < 0.05. Written by `{meta['command']}` in {meta['wall_time_s']:.0f} s."
             f"\n\n![best L2 vs queries]({(out / 'distance_vs_queries.png').as_posix()})"
             f"\n\n![robust accuracy]({(out / 'robust_accuracy.png').as_posix()})")
    atomic_write_text(out / "leaderboard.md", block + "\n")
    models = {name: {k: getattr(r, k) for k in ("clean_acc", "n_samples", "success_rate", "l2_mean", "l2_median",
                                                "distance", "black_box", "convergence", "bracket", "wall_time_s")}
              | {"robust_accuracy_at_eps": r.robust_accuracy["at_eps"],
                 "by_attack": {a: {k: v for k, v in part.items() if k != "params"} for a, part in r.by_attack.items()}}
              for name, r in results.items()}
    atomic_write_text(out / "leaderboard.json", json.dumps(stats.to_jsonable(
        dict(meta, paired_vs_baseline=deltas, models=models)), indent=2))
    plot_distance_curves(results, out / "distance_vs_queries.png")
    plot_robust_accuracy(results, out / "robust_accuracy.png")
    if readme:
        update_readme(readme, block)
    return tables, deltas


def finished(path: Path, settings: dict) -> EvalResult | None:
    """The saved EvalResult at ``path`` if it was made with the same images, budgets, attacks and seed
    (a killed leaderboard continues where it stopped), else None."""
    if not path.is_file():
        return None
    result = EvalResult.load(path)
    same = (result.per_sample.get("index") == settings["index"] and result.budgets == settings["budgets"]
            and result.attacks == settings["attacks"] and result.settings.get("seed") == settings["seed"])
    return result if same else None


def evaluate_job(job: dict, model: NormalizedModel | None = None, test=None) -> str:
    """Evaluate one model on the leaderboard's images and save its EvalResult JSON; in a worker
    process (model and test split not given) with one torch thread and no progress bars."""
    worker = model is None
    if worker:
        torch.set_num_threads(1)
        model = load_zoo_model(job["name"], job["compile"], seed=job["seed"])
        test = data.as_tensors(data.load_split(job["dataset"], "test"))
    result = evaluate(model, test, model_name=job["name"], dataset_name=job["dataset"], budgets=job["budgets"],
                      attack=job["attacks"], seed=job["seed"], batch_size=job["batch_size"], indices=job["index"],
                      progress=not worker)
    if model.probe_info:
        result.settings["probe"] = model.probe_info
    result.save(job["out"] / f"{job['name']}.json")
    return job["name"]
