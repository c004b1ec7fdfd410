"""The paper's self-supervised setting at CPU scale: SimCLR on Fashion-MNIST with and without rep-/ll-spectral.

    python -m experiments.ssl_fmnist      # 2 seeds x {none, rep, ll}: about an hour, 2 one-thread workers on
                                          # 2 cores shared with 6 other jobs

Pretraining: ``recipes/configs/fmnist_simclr_resnet_small_{baseline,repspectral,llspectral}.yaml``
(small ResNet, SimCLR on 5,000 unlabelled Fashion-MNIST images, 9 epochs, batch 256, lr 0.3
undecayed until the last epoch; rep-spectral on the backbone's convs, ll-spectral on those and
the projector, gamma 2e-3, in the last third of the epochs). The rep and ll runs branch from the
baseline's checkpoint at the end of the burn-in, so the three backbones of a seed share their
first two thirds.
Linear probe (:mod:`repspec_zoo.evaluation.linear_probe`, scikit-learn logistic regression on the frozen, standardized
64 backbone features): fitted on ``--probe-train`` Fashion-MNIST training images, accuracy on
``--probe-test`` test images; the transfer probe is fitted on the 1,437 sklearn digits (8x8, resized to
28x28) and scored on the other 360. The probe-accuracy curve: the same Fashion-MNIST probe on the
baseline's checkpoints after each epoch of ``--curve-epochs`` and the burn-in epoch (epoch 0: a
random-init backbone). The fairness check (:func:`plateau_check`): the comparison tests a penalty on
learned features only if, before the penalty starts, the probe has plateaued well above what
random-init features give; the README says plainly when it has not.
Robustness of backbone + Fashion-MNIST probe: every final model on the SAME ``--n`` test images
(correctly classified by all), the Tangent Attack (hard-label, every image gets a start) at
``--budgets`` and FMN (white-box minimal-norm, adv-lib), the best of both per image; L2 in [0,1]
pixels of the 28x28 input. CGBA/ALMA, larger budgets and attacks on the digits transfer probe are
left out for CPU time (the machine's 2 cores are shared by several jobs). Comparisons, rep vs none and ll vs
none: at the seed level (the evidence: one mean distance per seed and arm, paired by seed, Student-t
CI over seeds, sign count) and, secondary, per seed over the images of one pair of models.

Writes results/experiments/ssl_fmnist/: results.json, README.md, probe_curve.png and boxplots.png.
Every step is resumable: finished runs are skipped, killed ones resume, and each model's probe and
attack results are cached in the runs folder (the attacks under the shared images' hash: when the
set of models, hence of shared images, changes, every model is attacked again on the new ones).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
from pathlib import Path

import timm
import torch

from repspec_zoo.argtypes import parse_budgets
from repspec_zoo.loader import load_model
from repspec_zoo.evaluation.stats import format_interval

from .common import (RESULTS, ROOT, RUNS, PlannedRun, box_plot, burn_in_epochs, load_results, paired_rows, paired_table,
                     parallel_map, run_all, seed_level_rows, seed_table, split_tensors, table, weights_at_epoch,
                     cached_json, write_json)

CONFIGS = {"none": "fmnist_simclr_resnet_small_baseline", "rep": "fmnist_simclr_resnet_small_repspectral",
           "ll": "fmnist_simclr_resnet_small_llspectral"}
ARMS = tuple(CONFIGS)
#: the fairness check: before the penalty, the Fashion-MNIST probe must gain at least this much test accuracy over
#: random-init features (epoch 0) ...
MIN_GAIN = 0.05
#: ... and have plateaued: the last recorded step before the penalty at most this share of that gain
MAX_LAST_STEP_SHARE = 0.25


def plan(seeds: list[int], runs_dir: Path, overrides: list[str]) -> dict:
    """{(seed, arm): PlannedRun}: the baseline, and rep / ll branched from its burn-in checkpoint."""
    burn_in = burn_in_epochs(CONFIGS["rep"], overrides)
    runs = {}
    for seed in seeds:
        common = [f"seed={seed}", "eval.attack=none", *overrides]
        base = runs[seed, "none"] = PlannedRun(CONFIGS["none"], runs_dir / f"seed{seed}" / "none", common)
        for arm in ("rep", "ll"):
            runs[seed, arm] = PlannedRun(CONFIGS[arm], runs_dir / f"seed{seed}" / arm, common, after=[base],
                                  branch_from=(base.output, burn_in))
    return runs


def backbone_at(run_dir: Path, epoch: int | None, seed: int) -> torch.nn.Module:
    """The run's backbone after ``epoch`` (None: the final weights; 0: a random init seeded by ``seed``)."""
    if epoch is None:
        return load_model(run_dir)
    torch.manual_seed(seed)
    backbone = timm.create_model("resnet_small", num_classes=0)
    if epoch:
        backbone.load_state_dict(weights_at_epoch(run_dir, epoch, module="model.backbone."))
    return backbone.eval()


def _cached(path: Path, compute):
    """`cached_json` of ``compute()`` through the JSON sanitizer (inf and NaN kept)."""
    from repspec_zoo.evaluation.stats import from_jsonable, to_jsonable

    return from_jsonable(cached_json(path, lambda: to_jsonable(compute())))


def probe_accuracies(backbone, splits: dict) -> dict:
    """Fashion-MNIST and digits probe accuracies of one backbone (probes fitted on each training split)."""
    from repspec_zoo.evaluation.linear_probe import fit_probe

    out = {}
    for name, (train, test) in splits.items():
        probe = fit_probe(backbone, train)
        with torch.no_grad():
            out[name] = float((probe.model(test[0]).argmax(1) == test[1]).double().mean())
        out[f"{name}_train"] = probe.train_acc
    return out


def conv_sigma_sq(backbone) -> float:
    """sum over the backbone's convs of sigma_max^2 (zero-padded operator at the 28x28 input, 300 power steps)."""
    from .transfer_digits import conv_sigmas

    return sum(s * s for s in conv_sigmas(backbone).values())


def attack_cache(cache: Path, seed: int, arm: str, indices: list[int]) -> Path:
    """Where one model's attack results are kept: named by the shared test images (a hash of their
    indices), so that an attack on other images is never reused."""
    tag = hashlib.sha256(json.dumps([int(i) for i in indices]).encode()).hexdigest()[:12]
    return cache / f"attack_seed{seed}_{arm}_{len(indices)}img_{tag}.json"


def shared_indices(attacks: list[dict]) -> list[int] | None:
    """The test-image indices every attacked model shares (in the same order), None if they differ."""
    first = [int(i) for i in attacks[0]["index"]]
    return first if all([int(i) for i in r["index"]] == first for r in attacks) else None


def plateau_check(curve: list[dict], burn_in: int, key: str = "fashion_mnist") -> list[dict]:
    """Per seed: did the baseline's probe plateau well above random-init features before the penalty?

    From the probe accuracies at the recorded epochs e <= ``burn_in`` (the penalty acts after it):
    ``gain`` = acc(last such epoch) - acc(epoch 0, random init); ``last_step`` = acc(last) -
    acc(the one before). ``fair`` = gain >= MIN_GAIN and |last_step| <= MAX_LAST_STEP_SHARE * gain.
    ``fair`` is None when the curve lacks epoch 0 or two later epochs up to the burn-in."""
    out = []
    for seed in sorted({r["seed"] for r in curve}):
        acc = {r["epoch"]: r[key] for r in curve if r["seed"] == seed and r["epoch"] <= burn_in}
        trained = sorted(e for e in acc if e > 0)
        if 0 not in acc or len(trained) < 2:
            out.append(dict(seed=seed, epochs=sorted(acc), fair=None))
            continue
        last, before = trained[-1], trained[-2]
        gain, step = acc[last] - acc[0], acc[last] - acc[before]
        out.append(dict(seed=seed, random_init=acc[0], epoch=last, acc=acc[last], gain=gain, previous_epoch=before,
                        last_step=step, well_above=gain >= MIN_GAIN, plateaued=abs(step) <= MAX_LAST_STEP_SHARE * gain,
                        fair=bool(gain >= MIN_GAIN and abs(step) <= MAX_LAST_STEP_SHARE * gain)))
    return out


def _plateau_section(checks: list[dict], burn_in: int) -> str:
    lines = ["| seed | random-init probe acc (epoch 0) | probe acc before the penalty | gain | last step | plateaued | "
             "well above random init |", "|" + "---|" * 7]
    for c in checks:
        if c["fair"] is None:
            lines.append(f"| {c['seed']} | - | - | - | - | - | - (recorded epochs up to {burn_in}: {c['epochs']}) |")
            continue
        lines.append(f"| {c['seed']} | {c['random_init']:.4f} | {c['acc']:.4f} (epoch {c['epoch']}) | {c['gain']:+.4f} | "
                     f"{c['last_step']:+.4f} (epoch {c['previous_epoch']} to {c['epoch']}) | "
                     f"{'yes' if c['plateaued'] else 'no'} | {'yes' if c['well_above'] else 'no'} |")
    rule = (f"The rule: before the penalty starts (after epoch {burn_in}) the Fashion-MNIST probe must gain at least "
            f"{MIN_GAIN:.2f} test accuracy over random-init features and have plateaued (its last recorded step at most "
            f"{MAX_LAST_STEP_SHARE:.0%} of that gain). The thresholds are this check's choice, not a standard.")
    if any(c["fair"] is None for c in checks):
        verdict = ("**The check cannot be made from this run**: its curve lacks epoch 0 or two epochs up to the burn-in. "
                   "The comparison below is not known to be fair.")
    elif all(c["fair"] for c in checks):
        verdict = "Every seed passes: the penalty acts on features SimCLR has learned."
    else:
        failed = [str(c["seed"]) for c in checks if not c["fair"]]
        verdict = (f"**The comparison is not fair** ({'seeds' if len(failed) > 1 else 'seed'} {', '.join(failed)} "
                   f"{'fail' if len(failed) > 1 else 'fails'} the rule): before the penalty, SimCLR had not moved the probe well above what random-init features give, "
                   "so the arms compare penalties on nearly random features, not on learned ones. Do not read the "
                   "robustness differences below as the effect of rep-/ll-spectral on a self-supervised backbone.")
    return "\n".join(lines) + "\n\n" + rule + "\n\n" + verdict


def evaluate_attacks(job: tuple) -> dict:
    """Worker: TA + FMN distances of one backbone + probe on the shared test images."""
    probe_model, indices, budgets, name = job
    from repspec_zoo.evaluation.evaluate import evaluate

    test = split_tensors("fashion_mnist", "test")
    result = evaluate(probe_model, test, model_name=name, dataset_name="fashion_mnist", n=len(indices),
                      indices=indices, budgets=budgets, attack="ta,fmn", seed=0, lemma1=False, progress=False)
    return dict(clean_acc=result.clean_acc, n_samples=result.n_samples, distance=result.distance,
                by_attack={a: {k: v for k, v in part.items() if k != "params"} for a, part in result.by_attack.items()},
                wall_time_s=result.wall_time_s, index=result.per_sample["index"], l2=result.per_sample["l2"])


def _curve_plot(curve: list[dict], finals: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
    for ax, key, title in zip(axes, ("fashion_mnist", "digits"), ("Fashion-MNIST probe", "digits transfer probe")):
        for seed in sorted({r["seed"] for r in curve}):
            points = sorted((r["epoch"], r[key]) for r in curve if r["seed"] == seed)
            ax.plot(*zip(*points), marker="o", label=f"none, seed {seed}")
        for arm, marker in (("rep", "s"), ("ll", "^")):
            last = [(r["epoch"], r[key]) for r in finals if r["arm"] == arm]
            ax.scatter(*zip(*last), marker=marker, s=45, zorder=3, label=f"{arm} (end)")
        ax.set_xlabel("SimCLR epoch (0 = random init)")
        ax.set_ylabel("probe test accuracy")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(saved: dict, out: Path) -> str:
    """README.md (tables, curve, paired comparisons) and the plots, from results.json."""
    from repspec_zoo.evaluation.stats import from_jsonable

    finals, curve, attacks = saved["finals"], saved["curve"], from_jsonable(saved["attacks"])
    epochs = saved["epochs"]
    q = str(max(saved["budgets"]))
    acc = table([dict(r, arm=r["arm"]) for r in sorted(finals, key=lambda r: ARMS.index(r["arm"]))], ["arm"],
                {"fashion_mnist": "Fashion-MNIST probe acc", "digits": "digits transfer probe acc",
                 "sigma_sq": "sum conv sigma^2"}, digits=3)
    seeds = sorted({r["seed"] for r in attacks})
    curve_epochs = sorted({r["epoch"] for r in curve})
    by = {(r["seed"], r["epoch"]): r for r in curve}
    curve_seeds = sorted({r["seed"] for r in curve})
    curve_lines = ["| epoch | " + " | ".join(f"seed {s}: FMNIST / digits" for s in curve_seeds) + " |",
                   "|---|" + "---|" * len(curve_seeds)]
    for e in curve_epochs:
        curve_lines.append(f"| {e} | " + " | ".join(f"{by[s, e]['fashion_mnist']:.4f} / {by[s, e]['digits']:.4f}"
                                                    if (s, e) in by else "-" for s in curve_seeds) + " |")
    lines = ["| arm | seed | probe acc (10k test images) | success @" + q + " [95% CI] | median L2 [95% CI] | "
             "mean L2 (broken) [95% CI] |", "|" + "---|" * 6]
    for r in sorted(attacks, key=lambda r: (ARMS.index(r["arm"]), r["seed"])):
        d = r["distance"]
        lines.append(f"| {r['arm']} | {r['seed']} | {r['clean_acc']:.4f} | "
                     f"{format_interval(d['success_rate'], 3)} ({d['n_success']}/{d['n_samples']}) | "
                     f"{format_interval(d['l2_median'], 3)} | {format_interval(d['l2_mean'], 3)} |")
    best = {(r["arm"], r["seed"]): [float(v) for v in r["l2"][q]] for r in attacks}
    shared = shared_indices(attacks)
    if shared is None:  # distances on different images do not pair
        paired, by_seed = [], []
        comparisons = ("**The models were not attacked on the same images**: no comparison is made. Re-run the "
                       "command: it attacks every model on one set of shared images.")
    else:
        paired = paired_rows(best, "none", 0)
        by_seed = sorted(seed_level_rows(best, "none", 0, 1), key=lambda r: ARMS.index(r["arm"]))
        few = (f" With {len(seeds)} seeds the one-sided sign test cannot go below {0.5 ** len(seeds):.2f} (p < 0.05 "
               f"needs 5 seeds, all positive) and the t-CI rests on {len(seeds)} numbers." if len(seeds) < 5 else "")
        comparisons = (
            f"## Seed-level comparisons (the evidence)\n\nThe seed is the unit of replication: per seed and arm one "
            f"number, the mean distance over the shared images (those broken for both models); a = none, b = the arm, "
            f"paired by seed (the arms of a seed share its first {saved['burn_in']} epochs); positive = the arm needs "
            f"larger perturbations. Mean of the per-seed differences with a 95% Student-t CI over seeds, the sign count "
            f"and the one-sided sign test.{few}\n\n{seed_table(by_seed, [], 'none')}\n\n"
            f"## Image-level paired comparisons (secondary: the images of one pair of models each)\n\n"
            f"Same images; positive = the arm needs larger perturbations. These resample images, not training runs: "
            f"they say nothing about another seed.\n\n{paired_table(paired, ['seed'])}")
    checks = plateau_check(curve, saved["burn_in"])
    saved["paired"], saved["seed_level"], saved["plateau_check"] = paired, by_seed, checks
    box_plot({f"best of TA+FMN, L2 @{q} per test image": {
                 arm: [d for (a, _), v in best.items() if a == arm for d in v if math.isfinite(d)] for arm in ARMS}},
             out / "boxplots.png", "SimCLR backbone + linear probe, Fashion-MNIST: pretraining regularizer")
    _curve_plot(curve, finals, out / "probe_curve.png")
    last_two = [e for e in curve_epochs if e > 0][-2:]
    gain = [by[s, last_two[1]]["fashion_mnist"] - by[s, last_two[0]]["fashion_mnist"] for s in curve_seeds
            if (s, last_two[0]) in by and (s, last_two[1]) in by]
    n = attacks[0]["n_samples"]
    readme = (
        f"# SimCLR on Fashion-MNIST with rep-/ll-spectral: linear probe and its robustness\n\n"
        f"Written by `{saved['command']}`. {len(seeds)} seeds; {epochs} SimCLR epochs on "
        f"{saved['train_limit']} unlabelled images, rep/ll in the last {epochs - saved['burn_in']} (branched from the "
        f"baseline's epoch-{saved['burn_in']} checkpoint). Extra overrides: `{' '.join(saved['overrides']) or 'none'}`. "
        f"Linear probe: logistic regression (scikit-learn, C = 1) on the frozen, standardized backbone features, fitted on "
        f"{saved['probe_train']} Fashion-MNIST training images and scored on {saved['probe_test']} test images; the transfer "
        f"probe is "
        f"fitted on the 1,437 sklearn digits and scored on the other 360. Attacks on backbone + Fashion-MNIST probe: the "
        f"same {n} test images (correctly classified by all {len(attacks)} models"
        f"{'' if shared is not None else '; NOT the case in this run'}), the Tangent Attack (budgets "
        f"{', '.join(map(str, saved['budgets']))}; every image gets a start) and FMN (white-box), the best of both per "
        f"image; L2 in [0,1] pixel units of the 28x28 input; medians count an unbroken image as +inf. 95% CIs: "
        f"Clopper-Pearson (success), bootstrap (median, mean, paired differences).\n\n"
        f"## Probe accuracy and conv norms (mean ± std over seeds)\n\n{acc}\n\n"
        f"sum conv sigma^2: over the 9 backbone convs, zero-padded operator at the 28x28 input, 300 power steps.\n\n"
        f"## Is the comparison fair? The probe before the penalty (the baseline's checkpoints)\n\n"
        f"{_plateau_section(checks, saved['burn_in'])}\n\n" + "\n".join(curve_lines) +
        f"\n\nFashion-MNIST probe gain from epoch {last_two[0]} to {last_two[1]}: "
        f"{', '.join(f'{g:+.4f}' for g in gain)} (per seed).\n\n![probe accuracy over epochs](probe_curve.png)\n\n"
        f"## Robustness of backbone + probe\n\n" + "\n".join(lines) +
        f"\n\n{comparisons}\n\n![box plots](boxplots.png)\n")
    (out / "README.md").write_text(readme)
    return readme


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.ssl_fmnist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n", type=int, default=40, help="shared correctly classified test images attacked")
    parser.add_argument("--budgets", type=parse_budgets, default="250,500",
                        help="comma-separated query budgets; the largest is reported")
    parser.add_argument("--probe-train", type=int, default=5000, help="Fashion-MNIST images the probe is fitted on")
    parser.add_argument("--probe-test", type=int, default=5000, help="Fashion-MNIST test images the probe is scored on")
    parser.add_argument("--curve-epochs", type=int, nargs="+", default=[0, 1, 3, 5, 7, 9],
                        help="baseline epochs the probe curve reads (0: random init; 0 and the burn-in epoch are added)")
    parser.add_argument("--workers", type=int, default=2, help="parallel one-thread processes (training, attacks)")
    parser.add_argument("--overrides", nargs="*", default=[], metavar="KEY=VALUE", help="recipe overrides of every run")
    parser.add_argument("--report-only", action="store_true", help="re-render README.md and the plots from results.json")
    parser.add_argument("--runs", type=Path, default=RUNS / "ssl_fmnist")
    parser.add_argument("--out", type=Path, default=RESULTS / "ssl_fmnist")
    args = parser.parse_args(argv)
    command = ("python -m experiments.ssl_fmnist " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    if args.report_only:
        print(report(load_results(args.out), args.out))
        return
    torch.set_num_threads(1)
    runs = plan(args.seeds, args.runs, args.overrides)
    run_all(runs.values(), args.workers)

    from repspec_zoo.evaluation.leaderboard import common_indices
    from repspec_zoo.evaluation.linear_probe import fit_probe
    from repspec_zoo.training import load_config

    cfg = load_config(ROOT / "recipes" / "configs" / f"{CONFIGS['rep']}.yaml", args.overrides)
    fmnist_test = split_tensors("fashion_mnist", "test")
    probe_test = split_tensors("fashion_mnist", "test", limit=args.probe_test, seed=0)
    splits = {"fashion_mnist": (split_tensors("fashion_mnist", "train", limit=args.probe_train, seed=0), probe_test),
              "digits": (split_tensors("digits", "train", image_size=28, channels=1),
                         split_tensors("digits", "test", image_size=28, channels=1))}
    cache = args.runs / "cache"
    finals, probes = [], {}
    for (seed, arm), run in runs.items():
        backbone = backbone_at(run.output, None, seed)
        finals.append(dict(seed=seed, arm=arm, epoch=cfg.epochs, run=Path(os.path.relpath(run.output, ROOT)).as_posix(),
                           **_cached(cache / f"final_seed{seed}_{arm}.json", lambda: dict(
                               probe_accuracies(backbone, splits), sigma_sq=conv_sigma_sq(backbone_at(run.output, None, seed))))))
        probes[seed, arm] = fit_probe(backbone, splits["fashion_mnist"][0]).model
    final_of = {(r["seed"], r["arm"]): r for r in finals}
    curve = [dict(seed=seed, epoch=e, **(
                 {k: final_of[seed, "none"][k] for k in splits} if e == cfg.epochs else  # the final backbone
                 _cached(cache / f"curve_seed{seed}_epoch{e}.json", lambda: probe_accuracies(
                     backbone_at(runs[seed, "none"].output, e, seed), splits))))
             for seed in args.seeds for e in sorted({0, cfg.regularizer.burn_in_epochs, *args.curve_epochs})
             if e <= cfg.epochs]
    indices = common_indices(probes, *fmnist_test, args.n, seed=0, batch_size=512).tolist()
    budgets = args.budgets
    todo = [key for key in probes if not attack_cache(cache, *key, indices).is_file()]
    computed = dict(zip(todo, parallel_map(evaluate_attacks, [(probes[k], indices, budgets, f"{k[1]}/seed{k[0]}")
                                                              for k in todo], args.workers, "attacking")))
    attacks = [dict(seed=seed, arm=arm, **_cached(attack_cache(cache, seed, arm, indices), lambda: computed[seed, arm]))
               for seed, arm in probes]
    from repspec_zoo.evaluation.stats import to_jsonable

    saved = dict(command=command, budgets=budgets, overrides=args.overrides, epochs=cfg.epochs,
                 burn_in=cfg.regularizer.burn_in_epochs, train_limit=cfg.dataset.train_limit,
                 probe_train=args.probe_train, probe_test=args.probe_test, curve=curve, finals=finals, attacks=to_jsonable(attacks))
    args.out.mkdir(parents=True, exist_ok=True)
    report(saved, args.out)
    write_json(args.out / "results.json", saved)
    print((args.out / "README.md").read_text())


if __name__ == "__main__":
    main()
