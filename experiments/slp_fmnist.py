"""Experiment 2 (the paper's MNIST MLP, Figs. 5-6) at CPU scale on Fashion-MNIST.

    python -m experiments.slp_fmnist                          # 3 seeds x none/ll/rep, n=500 attacked images

Training: ``recipes/configs/fmnist_slp_{baseline,llspectral,repspectral}.yaml`` (784-2000-10 GELU,
SGD batch 1024, lr 0.1, gamma 1e-3; 10 epochs instead of the paper's 200, the penalty in the
last 20% = epochs 9-10). The three modes of one seed share the unregularized first 8 epochs:
the baseline run trains all 10 and the ll/rep runs branch from its epoch-8 checkpoint
(``recipes/train.py --branch-from``). That is what three separate runs compute, except that the
power iteration starts at the branch (10 warm-up steps) instead of running through the burn-in.

Per model (``--workers`` processes of one thread):
* test accuracy on the 10k test images; sigma_max of the hidden layer W1 and of the head (dense SVD);
* Tangent Attack (hard label, L2 in [0,1] pixels) on ``--n`` correctly classified test images,
  mean/median distance at each budget (the TA paper's per-budget rule), and the certified radius
  of the single-hidden-layer net;
* the same with the head replaced by a logistic regression fit on the frozen features of the
  60k training images (sklearn's default C=1, the paper's Fig. 6 protocol).

Writes results/experiments/slp_fmnist/: results.json (every number, per-sample distances),
README.md (mean ± std over seeds) and boxplots.png (per-sample distances by mode and head).
"""
from __future__ import annotations

import argparse
import math
import copy
import time
from pathlib import Path

import torch

from .common import (RESULTS, ROOT, RUNS, Run, attack_summary, distance_rule, box_plot, burn_in_epochs, load_results, load_trained,
                     parallel_map, run_all, sigma_max, split_tensors, table, write_json)

MODES = {"none": "fmnist_slp_baseline", "ll": "fmnist_slp_llspectral", "rep": "fmnist_slp_repspectral"}


def plan(seeds: list[int], runs_dir: Path, overrides: list[str]) -> dict[tuple[int, str], Run]:
    """The training runs: a baseline per seed, ll/rep branched from its end of burn-in."""
    burn_in = burn_in_epochs(MODES["rep"], overrides)
    runs = {}
    for seed in seeds:
        common = [f"seed={seed}", "eval.attack=none", "checkpoint.keep=3", *overrides]
        base = Run(MODES["none"], runs_dir / f"seed{seed}" / "none", common)
        runs[seed, "none"] = base
        for mode in ("ll", "rep"):
            branch = Run(MODES[mode], runs_dir / f"seed{seed}" / mode, common, after=[base],
                         branch_from=(base.output, burn_in))
            runs[seed, mode] = branch
    return runs


def _features(model, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.forward_features(x[i:i + batch]) for i in range(0, len(x), batch)])


def logistic_head(model, x_train: torch.Tensor, y_train: torch.Tensor, seed: int) -> tuple[torch.nn.Module, dict]:
    """``model`` with its head replaced by sklearn's LogisticRegression (C=1) fit on frozen features."""
    from sklearn.linear_model import LogisticRegression

    features = _features(model, x_train).numpy()
    start = time.perf_counter()
    fit = LogisticRegression(C=1.0, max_iter=1000, random_state=seed).fit(features, y_train.numpy())
    refit = copy.deepcopy(model)
    with torch.no_grad():
        refit.head.weight.copy_(torch.as_tensor(fit.coef_, dtype=torch.float32))
        refit.head.bias.copy_(torch.as_tensor(fit.intercept_, dtype=torch.float32))
    info = dict(train_acc=float(fit.score(features, y_train.numpy())), iterations=int(fit.n_iter_.max()),
                converged=bool(fit.n_iter_.max() < fit.max_iter), fit_s=time.perf_counter() - start)
    return refit.eval(), info


def evaluate_run(job: tuple) -> dict:
    """Every number of one trained model (runs in a worker process with one thread)."""
    run_dir, seed, mode, n, budgets = job
    from repspec_zoo.eval import evaluate

    model = load_trained(run_dir)
    x_test, y_test = split_tensors("fashion_mnist", "test")
    row = dict(seed=seed, mode=mode, run=run_dir.relative_to(ROOT).as_posix(), sigma_w1=sigma_max(model.fc1.weight),
               sigma_head=sigma_max(model.head.weight))
    heads = {"trained": model}
    heads["logreg"], row["logreg_fit"] = logistic_head(model, *split_tensors("fashion_mnist", "train"), seed)
    for head, net in heads.items():
        result = evaluate(net, (x_test, y_test), model_name=f"{mode}/seed{seed}/{head}", dataset_name="fashion_mnist",
                          n=n, budgets=budgets, attack="ta", seed=0, lemma1=False, progress=False)
        row[head] = attack_summary(result)
    return row


def report(saved: dict, out: Path) -> str:
    """README.md table (mean ± std over seeds) and the box plots, from the content of results.json."""
    rows, command, budget = saved["rows"], saved["command"], max(saved["budgets"])
    q = str(budget)
    flat = [dict(mode=r["mode"], head=head, acc=r[head]["clean_acc"], l2=r[head]["l2_mean"][q],
                 median=r[head]["l2_median"][q], success=r[head]["success_rate"][q], sigma_w1=r["sigma_w1"],
                 sigma_head=r["sigma_head"])
            for r in rows for head in ("trained", "logreg")]
    text = table(flat, ["head", "mode"], {"acc": "test accuracy", "success": f"attack success @{budget}",
                                          "l2": f"mean TA L2 @{budget}",
                                          "median": f"median TA L2 @{budget}", "sigma_w1": "sigma_max(W1)",
                                          "sigma_head": "sigma_max(head)"})
    panels = {}
    for head, title in (("trained", "trained head"), ("logreg", "logistic-regression head")):
        panels[f"{title}: TA L2 @{budget}"] = {
            mode: [d for r in rows if r["mode"] == mode for d in r[head]["per_sample"]["l2"][q] if math.isfinite(d)]
            for mode in MODES}
    box_plot(panels, out / "boxplots.png", "single-hidden-layer net, Fashion-MNIST: per-sample TA distance "
                                           "(all seeds pooled)")
    n = rows[0]["trained"]["n_samples"]
    readme = (f"# Experiment 2: single-hidden-layer net on Fashion-MNIST\n\nWritten by `{command}`.\n"
              f"{len({r['seed'] for r in rows})} seeds; Tangent Attack on {n} correctly classified test images "
              f"per model, budget {budget} queries; L2 in [0,1] pixel units, {distance_rule(rows[0]['trained'])}."
              f"\n\n{text}\n\n![box plots](boxplots.png)\n")
    (out / "README.md").write_text(readme)
    return text


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.slp_fmnist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=500, help="correctly classified test images attacked per model")
    parser.add_argument("--budgets", type=int, nargs="+", default=[500, 1000, 2000], help="the last is reported")
    parser.add_argument("--workers", type=int, default=2, help="parallel one-thread processes")
    parser.add_argument("--runs", type=Path, default=RUNS / "slp_fmnist")
    parser.add_argument("--out", type=Path, default=RESULTS / "slp_fmnist")
    parser.add_argument("--report-only", action="store_true", help="re-render README.md and the plots from results.json")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides for every run")
    args = parser.parse_args(argv)

    if args.report_only:
        print(report(load_results(args.out), args.out))
        return
    runs = plan(args.seeds, args.runs, args.overrides)
    run_all(runs.values(), args.workers)

    jobs = [(run.output, seed, mode, args.n, sorted(args.budgets)) for (seed, mode), run in runs.items()]
    rows = parallel_map(evaluate_run, jobs, args.workers, "evaluating")
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m experiments.slp_fmnist " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    saved = dict(command=command.strip(), budgets=sorted(args.budgets), rows=rows)
    write_json(args.out / "results.json", saved)
    print(report(saved, args.out))


if __name__ == "__main__":
    main()
