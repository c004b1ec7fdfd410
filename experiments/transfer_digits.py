"""Experiment 3 (the paper's transfer learning, Figs. 1, 7, 8) at CPU scale: Fashion-MNIST -> digits.

    python -m experiments.transfer_digits          # 3 seeds x {none, rep} pretraining x {none, ll, bss} fine-tuning

Pretraining: ``recipes/configs/fmnist_resnet_small_{baseline,repspectral}.yaml`` (small ResNet,
10k Fashion-MNIST images, 5 epochs, rep-spectral gamma 1e-3 in the last epoch). As in
experiment 2 the rep run branches from the baseline's end of burn-in (epoch 4), so each seed's
two backbones share their first 80% of training.
Fine-tuning: ``recipes/configs/digits_finetune_resnet_small.yaml`` (sklearn digits 8x8 resized to
28x28, 1437 train / 360 test, new head, backbone lr = head lr / 5, 15 epochs) without a
regularizer, with ll-spectral (gamma 1e-3, every layer incl. the new head) or with Batch Spectral
Shrinkage (eta 1e-3, k 1), with the pretraining seed.
Evaluation of every fine-tuned model: accuracy on the 360 test digits and the Tangent Attack
(L2 in [0,1] pixels of the 28x28 input) on ``--n`` correctly classified test digits.

Writes results/experiments/transfer_digits/: results.json, README.md (mean ± std over seeds) and
boxplots.png (per-sample distances and accuracies per pretraining x fine-tuning combination).
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from .common import (RESULTS, ROOT, RUNS, Run, attack_summary, distance_rule, box_plot, burn_in_epochs, load_results, load_trained,
                     parallel_map, run_all, split_tensors, table, write_json)

PRETRAIN = {"none": "fmnist_resnet_small_baseline", "rep": "fmnist_resnet_small_repspectral"}
FINETUNE = ("none", "ll", "bss")
FINETUNE_CONFIG = "digits_finetune_resnet_small"


def plan(seeds: list[int], runs_dir: Path, pretrain_overrides: list[str], finetune_overrides: list[str]) -> dict:
    """Pretraining runs (rep branched from the baseline's burn-in) and the fine-tuning runs on each."""
    burn_in = burn_in_epochs(PRETRAIN["rep"], pretrain_overrides)
    runs = {}
    for seed in seeds:
        common = [f"seed={seed}", "eval.attack=none", "checkpoint.keep=3", *pretrain_overrides]
        base = Run(PRETRAIN["none"], runs_dir / f"seed{seed}" / "pretrain_none", common)
        rep = Run(PRETRAIN["rep"], runs_dir / f"seed{seed}" / "pretrain_rep", common, after=[base],
                  branch_from=(base.output, burn_in))
        for pre, source in (("none", base), ("rep", rep)):
            runs[seed, pre, None] = source
            for fine in FINETUNE:
                runs[seed, pre, fine] = Run(FINETUNE_CONFIG, runs_dir / f"seed{seed}" / f"{pre}_to_{fine}",
                                            [f"seed={seed}", f"regularizer.mode={fine}", "eval.attack=none",
                                             *finetune_overrides], init=source.output, after=[source])
    return runs


def evaluate_run(job: tuple) -> dict:
    """Accuracy and Tangent Attack distances of one fine-tuned model on the digits test split."""
    run_dir, seed, pre, fine, n, budgets = job
    from repspec_zoo.eval import evaluate

    model = load_trained(run_dir)
    side = model.pretrained_cfg["input_size"][-1]
    x, y = split_tensors("digits", "test", image_size=side, channels=1)
    result = evaluate(model, (x, y), model_name=f"{pre}->{fine}/seed{seed}", dataset_name="digits", n=n,
                      budgets=budgets, attack="ta", seed=0, lemma1=False, progress=False)
    return dict(seed=seed, pretrain=pre, finetune=fine, run=run_dir.relative_to(ROOT).as_posix(), **attack_summary(result))


def report(saved: dict, out: Path) -> str:
    """README.md table (mean ± std over seeds) and the box plots, from the content of results.json."""
    rows, command, budget = saved["rows"], saved["command"], max(saved["budgets"])
    q = str(budget)
    flat = [dict(pretrain=r["pretrain"], finetune=r["finetune"], acc=r["clean_acc"], l2=r["l2_mean"][q],
                 median=r["l2_median"][q], success=r["success_rate"][q]) for r in rows]
    text = table(flat, ["pretrain", "finetune"], {"acc": "test accuracy", "success": f"attack success @{budget}",
                                                  "l2": f"mean TA L2 @{budget}",
                                                  "median": f"median TA L2 @{budget}"})
    combos = [(pre, fine) for pre in PRETRAIN for fine in FINETUNE]
    box_plot({f"TA L2 @{budget} per test digit": {f"{p}->{f}": [d for r in rows if (r["pretrain"], r["finetune"]) == (p, f)
                                                                for d in r["per_sample"]["l2"][q] if math.isfinite(d)]
                                                  for p, f in combos},
              "test accuracy per seed": {f"{p}->{f}": [r["clean_acc"] for r in rows
                                                       if (r["pretrain"], r["finetune"]) == (p, f)] for p, f in combos}},
             out / "boxplots.png", "Fashion-MNIST -> digits: pretraining regularizer -> fine-tuning regularizer")
    n = rows[0]["n_samples"]
    (out / "README.md").write_text(
        f"# Experiment 3: transfer, Fashion-MNIST small ResNet -> sklearn digits\n\nWritten by `{command}`.\n"
        f"{len({r['seed'] for r in rows})} seeds; Tangent Attack on {n} correctly classified test digits per model, "
        f"budget {budget} queries; L2 in [0,1] pixel units of the 28x28 input, {distance_rule(rows[0])}.\n\n{text}\n\n"
        f"![box plots](boxplots.png)\n")
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.transfer_digits", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=100, help="correctly classified test digits attacked per model")
    parser.add_argument("--budgets", type=int, nargs="+", default=[250, 500, 1000], help="the last is reported")
    parser.add_argument("--workers", type=int, default=2, help="parallel one-thread processes")
    parser.add_argument("--pretrain", nargs="*", default=[], metavar="KEY=VALUE", help="pretraining overrides")
    parser.add_argument("--finetune", nargs="*", default=[], metavar="KEY=VALUE", help="fine-tuning overrides")
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
    jobs = [(run.output, seed, pre, fine, args.n, sorted(args.budgets))
            for (seed, pre, fine), run in runs.items() if fine is not None]
    rows = parallel_map(evaluate_run, jobs, args.workers, "evaluating")
    args.out.mkdir(parents=True, exist_ok=True)
    saved = dict(command=command, budgets=sorted(args.budgets), rows=rows)
    write_json(args.out / "results.json", saved)
    print(report(saved, args.out))


if __name__ == "__main__":
    main()
