"""Experiment 3 (the paper's transfer learning, Figs. 1, 7, 8) at CPU scale: Fashion-MNIST -> digits.

    python -m experiments.transfer_digits   # 2 seeds x {none, rep} pretraining x {none, ll, bss} fine-tuning: 45 min
                                            # on 2 cores shared with other jobs

Pretraining: ``recipes/configs/fmnist_resnet_small_{baseline,repspectral}.yaml`` (small ResNet, 10k
Fashion-MNIST images) with ``PRETRAIN`` overrides that give the penalty the share of training the
authors' ImageNet runs give it (their 40 of 120 epochs): 9 epochs, rep-spectral in the last 3 at
gamma 2e-3 (= 2 x their lam 1e-3) added to the loss, and a learning rate that is not decayed while
the penalty acts (0.05 up to epoch 8, x0.1 in the last epoch so that the BatchNorm statistics
settle). The rep run branches from the baseline's epoch-6 checkpoint, so both backbones share their
first two thirds. The conv sigmas (power iteration on each zero-padded conv at its input size, 300
steps) are measured at the branch point and at the end of both runs.
Fine-tuning: ``recipes/configs/digits_finetune_resnet_small.yaml`` (sklearn digits 8x8 resized to
28x28, 1437 train / 360 test, new head, backbone lr = head lr / 5, 15 epochs) without a
regularizer, with ll-spectral (gamma 2e-3 in the loss, every layer incl. the new head) or with Batch
Spectral Shrinkage (eta 1e-3, k 1), with the pretraining seed.
Evaluation: every fine-tuned model on the SAME ``--n`` test digits (correctly classified by all):
accuracy on the 360, the Tangent Attack (hard-label, every image gets a start) at ``--budgets``
and FMN (white-box minimal-norm, adv-lib) -- the best of both per image; L2 in [0,1] pixels of the
28x28 input. CGBA and ALMA of the full ensemble are left out for CPU time (the ResNet forward is
~20x the single-hidden-layer net's). Comparisons: rep- vs none-pretrained per fine-tuning arm,
and ll / bss vs none fine-tuning per pretraining arm; at the seed level (the evidence: one mean
distance per seed and model, paired by seed, Student-t CI over seeds and the sign count) and, as
secondary, per seed over the images of one pair of models (bootstrap CI + Wilcoxon).

Writes results/experiments/transfer_digits/: results.json, README.md and boxplots.png.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from pathlib import Path

import torch

from repspec_zoo.argtypes import parse_budgets
from repspec_zoo.loader import load_model
from repspec_zoo.evaluation.stats import format_interval

from .common import (RESULTS, ROOT, RUNS, PlannedRun, box_plot, burn_in_epochs, load_results, paired_rows, paired_table,
                     parallel_map, run_all, seed_level_rows, seed_table, split_tensors, table, weights_at_epoch,
                     write_json)

PRETRAIN_CONFIGS = {"none": "fmnist_resnet_small_baseline", "rep": "fmnist_resnet_small_repspectral"}
#: the penalty for the last third of pretraining, the lr undecayed while it acts, the authors' strength
PRETRAIN = ("epochs=9", "regularizer.burn_in_epochs=6", "regularizer.gamma=2e-3", "optim.schedule=step",
            "optim.step_epochs=8", "optim.decay=0.1", "checkpoint.keep=4")
FINETUNE = ("none", "ll", "bss")
FINETUNE_CONFIG = "digits_finetune_resnet_small"
FINETUNE_OVERRIDES = ("regularizer.gamma=2e-3",)  # ll in the loss at the authors' strength


def plan(seeds: list[int], runs_dir: Path, pretrain_overrides: list[str], finetune_overrides: list[str]) -> dict:
    """Pretraining runs (rep branched from the baseline's burn-in) and the fine-tuning runs on each."""
    burn_in = burn_in_epochs(PRETRAIN_CONFIGS["rep"], pretrain_overrides)
    runs = {}
    for seed in seeds:
        common = [f"seed={seed}", "eval.attack=none", *pretrain_overrides]
        base = PlannedRun(PRETRAIN_CONFIGS["none"], runs_dir / f"seed{seed}" / "pretrain_none", common)
        rep = PlannedRun(PRETRAIN_CONFIGS["rep"], runs_dir / f"seed{seed}" / "pretrain_rep", common, after=[base],
                  branch_from=(base.output, burn_in))
        for pre, source in (("none", base), ("rep", rep)):
            runs[seed, pre, None] = source
            for fine in FINETUNE:
                runs[seed, pre, fine] = PlannedRun(FINETUNE_CONFIG, runs_dir / f"seed{seed}" / f"{pre}_to_{fine}",
                                            [f"seed={seed}", f"regularizer.mode={fine}", "eval.attack=none",
                                             *finetune_overrides], init=source.output, after=[source])
    return runs


def conv_sigmas(model: torch.nn.Module, n_iter: int = 300) -> dict[str, float]:
    """sigma_max of every conv of ``model`` as the zero-padded operator at its 28x28-input size."""
    from repspec_zoo.spectral import attach_spectral

    reg = attach_spectral(model, mode="rep", warmup_iters=n_iter)
    with torch.no_grad():
        model.eval()(torch.zeros(1, 1, 28, 28))
    sigmas = reg.refresh(n_iter)
    reg.remove()
    return sigmas


def pretrain_sigmas(job: tuple) -> dict:
    """Worker: conv sigmas of one seed's backbones at the branch point and at the end."""
    seed, base_dir, rep_dir, burn_in = job
    import timm

    branch = timm.create_model("resnet_small", num_classes=10)
    branch.load_state_dict(weights_at_epoch(base_dir, burn_in))
    out = dict(seed=seed, branch=conv_sigmas(branch))
    for pre, run_dir in (("none", base_dir), ("rep", rep_dir)):
        out[pre] = conv_sigmas(load_model(run_dir))
    return out


def evaluate_run(job: tuple) -> dict:
    """Worker: accuracy and attack distances of one fine-tuned model on the shared test digits."""
    run_dir, seed, pre, fine, indices, budgets = job
    from repspec_zoo.evaluation.evaluate import evaluate

    model = load_model(run_dir)
    x, y = digits_test_split(model)
    result = evaluate(model, (x, y), model_name=f"{pre}->{fine}/seed{seed}", dataset_name="digits", n=len(indices),
                      indices=indices, budgets=budgets, attack="ta,fmn", seed=0, lemma1=False, progress=False)
    return dict(seed=seed, pretrain=pre, finetune=fine, run=Path(os.path.relpath(run_dir, ROOT)).as_posix(),
                clean_acc=result.clean_acc, n_test=result.n_test, n_samples=result.n_samples,
                success_rate=result.success_rate, l2_mean=result.l2_mean, l2_median=result.l2_median,
                distance=result.distance, by_attack={a: {k: v for k, v in part.items() if k != "params"}
                                                     for a, part in result.by_attack.items()},
                wall_time_s=result.wall_time_s, index=result.per_sample["index"], l2=result.per_sample["l2"])


def digits_test_split(model) -> tuple[torch.Tensor, torch.Tensor]:
    side = model.pretrained_cfg["input_size"][-1]
    return split_tensors("digits", "test", image_size=side, channels=1)


def _sum_sq(sigmas: dict) -> float:
    return sum(s * s for s in sigmas.values())


def report(saved: dict, out: Path) -> str:
    """README.md (tables, sigma drop, paired comparisons) and the box plots, from results.json."""
    from repspec_zoo.evaluation.stats import from_jsonable

    rows, command = from_jsonable(saved["rows"]), saved["command"]
    q = str(max(saved["budgets"]))
    lines = ["| pretrain | finetune | seed | test accuracy | success @" + q + " [95% CI] | median L2 [95% CI] | "
             "mean L2 (broken) [95% CI] |", "|" + "---|" * 7]
    for r in sorted(rows, key=lambda r: (r["pretrain"], FINETUNE.index(r["finetune"]), r["seed"])):
        d = r["distance"]
        lines.append(f"| {r['pretrain']} | {r['finetune']} | {r['seed']} | {r['clean_acc']:.4f} | "
                     f"{format_interval(d['success_rate'], 3)} ({d['n_success']}/{d['n_samples']}) | "
                     f"{format_interval(d['l2_median'], 3)} | {format_interval(d['l2_mean'], 3)} |")
    burn_in = burn_in_epochs(PRETRAIN_CONFIGS["rep"], saved["pretrain"])
    n_convs = len(saved["sigmas"][0]["none"])
    sig = [f"| seed | sum sigma^2 at the branch (epoch {burn_in}) | none at the end | rep at the end | rep / none (sum sigma^2) | "
           "layers where rep < none |", "|---|---|---|---|---|---|"]
    for s in saved["sigmas"]:
        lower = sum(s["rep"][k] < s["none"][k] for k in s["none"])
        sig.append(f"| {s['seed']} | {_sum_sq(s['branch']):.2f} | {_sum_sq(s['none']):.2f} | {_sum_sq(s['rep']):.2f} | "
                   f"{_sum_sq(s['rep']) / _sum_sq(s['none']):.3f} | {lower} of {len(s['none'])} |")
    best = {(r["pretrain"], r["finetune"], r["seed"]): [float(v) for v in r["l2"][q]] for r in rows}
    by_pretrain = paired_rows(best, "none", 0)  # rep- vs none-pretrained, same fine-tuning and seed
    by_finetune = paired_rows(best, "none", 1)  # ll / bss vs no fine-tuning regularizer, same backbone
    saved["paired"] = dict(pretrain=by_pretrain, finetune=by_finetune)
    seed_pretrain = sorted(seed_level_rows(best, "none", 0, 2), key=lambda r: FINETUNE.index(r["group"][0]))
    seed_finetune = sorted(seed_level_rows(best, "none", 1, 2),
                           key=lambda r: (list(PRETRAIN_CONFIGS).index(r["group"][0]), FINETUNE.index(r["arm"])))
    saved["seed_level"] = dict(pretrain=seed_pretrain, finetune=seed_finetune)
    seeds = sorted({r["seed"] for r in rows})
    few = (f" With {len(seeds)} seeds the one-sided sign test cannot go below {0.5 ** len(seeds):.2f} (p < 0.05 needs "
           f"5 seeds, all positive) and the t-CI rests on {len(seeds)} numbers; `--seeds 0 1 2 3 4` gives a test."
           if len(seeds) < 5 else "")
    flat = [dict(pretrain=r["pretrain"], finetune=r["finetune"], acc=r["clean_acc"]) for r in rows]
    acc = table(flat, ["pretrain", "finetune"], {"acc": "test accuracy"})
    combos = [(pre, fine) for pre in PRETRAIN_CONFIGS for fine in FINETUNE]
    box_plot({f"best of TA+FMN, L2 @{q} per test digit": {
                  f"{p}->{f}": [d for (pp, ff, _), v in best.items() if (pp, ff) == (p, f) for d in v if math.isfinite(d)]
                  for p, f in combos}},
             out / "boxplots.png", "Fashion-MNIST -> digits: pretraining regularizer -> fine-tuning regularizer")
    n = rows[0]["n_samples"]
    readme = (f"# Experiment 3: transfer, Fashion-MNIST small ResNet -> sklearn digits\n\nWritten by `{command}`.\n"
              f"{len({r['seed'] for r in rows})} seeds. Pretraining overrides: `{' '.join(saved['pretrain'])}`. "
              f"Every fine-tuned model is attacked on the same {n} test digits (correctly classified by all) with the "
              f"Tangent Attack (budgets {', '.join(map(str, saved['budgets']))}; every image gets a start) and FMN "
              f"(white-box); the best of both per image. L2 in [0,1] pixel units of the 28x28 input; medians count an "
              f"unbroken digit as +inf. 95% CIs: Clopper-Pearson (success), bootstrap (median, mean).\n\n"
              f"## Did the penalty lower the conv norms before fine-tuning?\n\nsum over the {n_convs} convs of sigma_max^2 "
              f"(zero-padded operator at the 28x28 input, 300 power steps):\n\n" + "\n".join(sig) +
              f"\n\n## Accuracy and distances\n\n{acc}\n\n" + "\n".join(lines) +
              f"\n\n## Seed-level comparisons (the evidence)\n\nThe seed is the unit of replication: per seed and "
              f"model one number, the mean distance over the shared digits (those broken for both models); a = the "
              f"baseline arm, b = the arm, paired by seed (same pretraining seed); positive = the arm needs larger "
              f"perturbations. Mean of the per-seed differences with a 95% Student-t CI over seeds, the sign count and "
              f"the one-sided sign test. The three fine-tuning rows of a seed share its two backbones: they are not "
              f"independent evidence.{few}\n\n"
              f"rep- vs none-pretrained backbone, per fine-tuning regularizer:\n\n"
              f"{seed_table(seed_pretrain, ['finetune'], 'none-pretrained')}\n\n"
              f"ll / bss vs no regularizer while fine-tuning, per backbone:\n\n"
              f"{seed_table(seed_finetune, ['pretrain'], 'none fine-tuning')}\n\n"
              f"## Image-level paired comparisons (secondary: the digits of one pair of models each)\n\n"
              f"Same digits; a positive difference = the arm needs larger perturbations. These resample digits, not "
              f"training runs: they say nothing about another seed.\n\n"
              f"rep- vs none-pretrained backbone, per fine-tuning regularizer and seed:\n\n"
              f"{paired_table(by_pretrain, ['finetune', 'seed'])}\n\nll / bss vs no regularizer while fine-tuning, "
              f"per backbone and seed:\n\n{paired_table(by_finetune, ['pretrain', 'seed'])}\n\n![box plots](boxplots.png)\n")
    (out / "README.md").write_text(readme)
    return readme


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.transfer_digits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--n", type=int, default=100, help="shared correctly classified test digits attacked")
    parser.add_argument("--budgets", type=parse_budgets, default="250,500,1000",
                        help="comma-separated query budgets; the largest is reported")
    parser.add_argument("--workers", type=int, default=2, help="parallel one-thread processes")
    parser.add_argument("--pretrain", nargs="*", default=list(PRETRAIN), metavar="KEY=VALUE",
                        help="pretraining overrides (default: the authors' share of penalized training)")
    parser.add_argument("--finetune", nargs="*", default=list(FINETUNE_OVERRIDES), metavar="KEY=VALUE",
                        help="fine-tuning overrides")
    parser.add_argument("--report-only", action="store_true", help="re-render README.md and the plots from results.json")
    parser.add_argument("--runs", type=Path, default=RUNS / "transfer_digits")
    parser.add_argument("--out", type=Path, default=RESULTS / "transfer_digits")
    args = parser.parse_args(argv)
    command = ("python -m experiments.transfer_digits " + " ".join(sys.argv[1:] if argv is None else argv)).strip()

    if args.report_only:
        print(report(load_results(args.out), args.out))
        return
    runs = plan(args.seeds, args.runs, args.pretrain, args.finetune)
    run_all(runs.values(), args.workers)
    burn_in = burn_in_epochs(PRETRAIN_CONFIGS["rep"], args.pretrain)
    sigmas = parallel_map(pretrain_sigmas, [(seed, runs[seed, "none", None].output, runs[seed, "rep", None].output,
                                             burn_in) for seed in args.seeds], args.workers, "conv sigmas")
    tuned = {k: run for k, run in runs.items() if k[2] is not None}
    from repspec_zoo.evaluation.leaderboard import common_indices

    models = {k: load_model(run.output) for k, run in tuned.items()}
    x, y = digits_test_split(next(iter(models.values())))
    indices = common_indices(models, x, y, args.n, seed=0, batch_size=512).tolist()
    jobs = [(run.output, *k, indices, args.budgets) for k, run in tuned.items()]
    rows = parallel_map(evaluate_run, jobs, args.workers, "evaluating")
    args.out.mkdir(parents=True, exist_ok=True)
    from repspec_zoo.evaluation.stats import to_jsonable

    saved = dict(command=command, budgets=args.budgets, pretrain=args.pretrain, finetune=args.finetune,
                 sigmas=sigmas, rows=to_jsonable(rows))
    report(saved, args.out)
    write_json(args.out / "results.json", saved)
    print((args.out / "README.md").read_text())


if __name__ == "__main__":
    main()
