"""Experiment 2 (the paper's MNIST MLP, Figs. 5-6) at the authors' settings, on Fashion-MNIST.

    python -m experiments.slp_fmnist     # 3 seeds x none/ll/ll_head/rep

Training: ``recipes/configs/fmnist_slp_{baseline,llspectral,repspectral}.yaml``, the authors' MNIST
recipe (784-2000-10 GELU, their N(0, 0.01^2) init and 1/sqrt(2000) logit scaling, SGD batch 1024,
lr 0.1, 200 epochs, the penalty from epoch 160, gamma 2e-3 = 2 x their lam). Arms: none, rep, ll
(every layer, the paper's definition) and ll_head (the head alone: what the authors' MLP code
applied as "ll", its layer walk skipping the feature block). The arms of one
seed share the unregularized first 160 epochs: the baseline trains all 200 and the other runs
branch from its epoch-160 checkpoint (``recipes/train.py --branch-from``), as the authors' script
loads the base model's epoch-160 weights.

Evaluation, per model and head (the trained head, and a logistic regression refit on the frozen,
standardized features of the 60k training images: sklearn's default C=1, the paper's Fig. 6
protocol; its iterations and convergence are reported):
* test accuracy; sigma_max of the hidden layer W1 and of the head (dense SVD; the head's also times
  the logit scale 1/sqrt(2000), the readout the logits see);
* every model and head attacked on the SAME ``--n`` test images (correctly classified by all), so
  that the comparisons are paired: the ensemble (``repspec_zoo.evaluation.evaluate.ENSEMBLE``; every image gets a start) at
  ``--budgets``, and the paper's Tangent Attack (40 iterations, ~17k queries) on the first
  ``--n-paper`` of those images, read at 1k/2k/5k/10k/20k queries;
* seed-level comparisons (the evidence; the seed is the unit of replication): per head, every arm
  against the baseline and rep against ll and ll_head, one mean distance per seed and arm, paired by
  seed (Student-t CI over seeds, sign count, sign test);
* image-level paired comparisons (secondary: bootstrap CI of the mean difference + Wilcoxon over the
  images of ONE pair of trained networks), per seed and head.

Writes results/experiments/slp_fmnist/: results.json (every number, per-image distances),
README.md and boxplots.png.
"""
from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from repspec_zoo.argtypes import parse_budgets
from repspec_zoo.loader import load_model
from repspec_zoo.evaluation.stats import format_interval

from .common import (RESULTS, ROOT, RUNS, PlannedRun, box_plot, burn_in_epochs, load_results,
                     paired_rows, paired_table, parallel_map, run_all, seed_level_rows, seed_table,
                     sigma_max, split_tensors, cached_json, write_json)

#: arm -> (recipe config, extra overrides); ll_head is the authors' MLP "ll" (their layer walk reached the head only)
MODES = {"none": ("fmnist_slp_baseline", ()), "ll": ("fmnist_slp_llspectral", ()),
         "ll_head": ("fmnist_slp_llspectral", ("regularizer.layers=[head]",)), "rep": ("fmnist_slp_repspectral", ())}
HEADS = ("trained", "logreg")
#: lbfgs iterations the logistic refit may take (standardized features converge in far fewer)
LOGREG_MAX_ITER = 5000
#: the refit's cache in a run folder; renamed with the standardization so that an old (unstandardized) fit is not reused
LOGREG_CACHE = "logreg_head_standardized.safetensors"


def plan(seeds: list[int], runs_dir: Path, overrides: list[str]) -> dict[tuple[int, str], PlannedRun]:
    """The training runs: a baseline per seed, ll/rep branched from its end of burn-in."""
    burn_in = burn_in_epochs(MODES["rep"][0], overrides)
    runs = {}
    for seed in seeds:
        # a checkpoint every 10 epochs, 5 kept: the epoch-160 one the branches start from survives to the end
        common = [f"seed={seed}", "eval.attack=none", "checkpoint.every_epochs=10", "checkpoint.keep=5", *overrides]
        base = PlannedRun(MODES["none"][0], runs_dir / f"seed{seed}" / "none", common)
        runs[seed, "none"] = base
        for mode, (config, extra) in list(MODES.items())[1:]:
            branch = PlannedRun(config, runs_dir / f"seed{seed}" / mode, [*common, *extra], after=[base],
                         branch_from=(base.output, burn_in))
            runs[seed, mode] = branch
    return runs


def _features(model, x: torch.Tensor, batch: int = 2048) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([model.forward_features(x[i:i + batch]) for i in range(0, len(x), batch)])


def logistic_head(model, x_train: torch.Tensor, y_train: torch.Tensor, seed: int,
                  max_iter: int = LOGREG_MAX_ITER) -> tuple[torch.nn.Module, dict]:
    """``model`` with its head replaced by sklearn's LogisticRegression (C=1) fit on frozen, standardized features.

    The regression sees z = (f - mu) / s (per feature: training mean and standard deviation; s = 1
    for a constant feature, as StandardScaler does), logits W z + b. That is linear in f, so it folds
    into the head: W' = W / s, b' = b - W' mu. The net multiplies its head's output by ``logit_scale``
    (1/sqrt(width) in the authors' MLP), so the head gets W' and b' divided by it: the network's logits
    equal the fitted model's decision_function. ``info``: training accuracy, lbfgs iterations, whether it
    converged (no ConvergenceWarning) within ``max_iter``, fit seconds."""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    start = time.perf_counter()
    scaler = StandardScaler(copy=False)  # in place: 60k x 2000 float64 features are ~1 GB
    z, labels = scaler.fit_transform(_features(model, x_train).double().numpy()), y_train.numpy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ConvergenceWarning)
        fit = LogisticRegression(C=1.0, max_iter=max_iter, random_state=seed).fit(z, labels)
    weight = fit.coef_ / scaler.scale_
    bias = fit.intercept_ - weight @ scaler.mean_
    refit = copy.deepcopy(model)
    scale = getattr(model, "logit_scale", 1.0)
    with torch.no_grad():
        refit.head.weight.copy_(torch.as_tensor(weight / scale, dtype=torch.float32))
        refit.head.bias.copy_(torch.as_tensor(bias / scale, dtype=torch.float32))
    iterations = int(fit.n_iter_.max())
    converged = not any(issubclass(w.category, ConvergenceWarning) for w in caught) and iterations < max_iter
    info = dict(standardized=True, train_acc=float(fit.score(z, labels)),
                iterations=iterations, max_iter=max_iter, converged=converged, fit_s=time.perf_counter() - start)
    return refit.eval(), info


def heads_of(run_dir: Path, seed: int) -> tuple[dict, dict]:
    """{head: model} of one run and the logistic fit's info; the refit is cached in the run folder."""
    import safetensors.torch

    model = load_model(run_dir)
    cached = run_dir / LOGREG_CACHE
    if cached.is_file():
        refit = copy.deepcopy(model)
        refit.head.load_state_dict(safetensors.torch.load_file(cached))
        info = dict(safetensors.torch.safe_open(cached, "pt").metadata())
        info = {k: (v == "True" if v in ("True", "False") else float(v)) for k, v in info.items()}
    else:
        refit, info = logistic_head(model, *split_tensors("fashion_mnist", "train"), seed)
        safetensors.torch.save_file({k: v.contiguous() for k, v in refit.head.state_dict().items()}, cached,
                                    metadata={k: str(v) for k, v in info.items()})
    return {"trained": model, "logreg": refit.eval()}, info


def fit_heads(job: tuple) -> tuple:
    """Worker: the logistic refit of one run (cached) and which test images each head gets right."""
    run_dir, seed = job
    heads, info = heads_of(run_dir, seed)
    x, y = split_tensors("fashion_mnist", "test")
    with torch.no_grad():
        correct = {h: (torch.cat([m(x[i:i + 2048]).argmax(1) for i in range(0, len(x), 2048)]) == y)
                   for h, m in heads.items()}
    return info, correct


def evaluate_head(job: tuple) -> dict:
    """Worker: every number of one (run, head) on the shared images; cached in the run folder under a
    hash of the images, budgets and ensemble (`cached_json`), so that a killed run resumes."""
    run_dir, seed, mode, head, indices, n_paper, budgets = job
    from repspec_zoo.evaluation.evaluate import ENSEMBLE, PAPER, evaluate

    def compute() -> dict:
        model = heads_of(run_dir, seed)[0][head]
        x, y = split_tensors("fashion_mnist", "test")
        name = f"{mode}/seed{seed}/{head}"
        common = dict(dataset_name="fashion_mnist", seed=0, lemma1=False, progress=False)
        ensemble = evaluate(model, (x, y), model_name=name, n=len(indices), indices=indices, budgets=budgets,
                            attack="ensemble", **common)
        paper = evaluate(model, (x, y), model_name=name, n=n_paper, indices=indices[:n_paper],
                         budgets=PAPER["budgets"], attack=PAPER["attack"], max_iter=PAPER["max_iter"], **common)
        return dict(seed=seed, mode=mode, head=head, run=Path(os.path.relpath(run_dir, ROOT)).as_posix(),
                    sigma_w1=sigma_max(model.fc1.weight), sigma_head=sigma_max(model.head.weight),
                    logit_scale=getattr(model, "logit_scale", 1.0),
                    ensemble=_summary(ensemble), paper_ta=_summary(paper))

    key = json.dumps([list(map(int, indices)), n_paper, list(budgets), list(ENSEMBLE)])
    tag = hashlib.sha256(key.encode()).hexdigest()[:12]
    return cached_json(Path(run_dir) / f"eval_{head}_{tag}.json", compute)


def _summary(result) -> dict:
    """What the report needs of an EvalResult: accuracy, per-budget numbers, CIs, per-image distances."""
    from repspec_zoo.evaluation.stats import to_jsonable

    return to_jsonable(dict(clean_acc=result.clean_acc, n_test=result.n_test, n_samples=result.n_samples,
                           attacks=result.attacks, budgets=result.budgets, success_rate=result.success_rate,
                           l2_mean=result.l2_mean, l2_median=result.l2_median, distance=result.distance,
                           robust_accuracy=result.robust_accuracy, certified=result.certified,
                           by_attack={a: {k: v for k, v in part.items() if k != "params"}
                                      for a, part in result.by_attack.items()},
                           queries_mean=result.queries_mean, wall_time_s=result.wall_time_s,
                           index=result.per_sample["index"], l2=result.per_sample["l2"]))


def _floats(values) -> list[float]:
    return [float(v) for v in values]


def _refit_table(rows: list[dict]) -> str:
    """One line per (seed, mode): how the logistic refit was fitted and whether it converged."""
    lines = ["| mode | seed | features | lbfgs iterations | converged | train acc (60k) | fit s |", "|" + "---|" * 7]
    for r in sorted((r for r in rows if r["head"] == "logreg"), key=lambda r: (list(MODES).index(r["mode"]), r["seed"])):
        fit = r.get("logreg_fit") or {}
        if not fit:
            lines.append(f"| {r['mode']} | {r['seed']} | - | - | not recorded | - | - |")
            continue
        limit = f" of max {int(fit['max_iter'])}" if "max_iter" in fit else ""
        lines.append(f"| {r['mode']} | {r['seed']} | {'standardized' if fit.get('standardized') else 'raw (unstandardized)'} | "
                     f"{int(fit['iterations'])}{limit} | {'yes' if fit.get('converged') else '**NO**'} | "
                     f"{fit['train_acc']:.4f} | {fit['fit_s']:.0f} |")
    fits = [r.get("logreg_fit") or {} for r in rows if r["head"] == "logreg"]
    failed = sum(not f.get("converged") for f in fits)
    if failed:
        lines.append(f"\n**{failed} of the {len(fits)} refits did not converge**: their logreg-head numbers are not "
                     "those of the fitted optimum.")
    return "\n".join(lines)


def _dof(seeds: int) -> str:
    return f"{seeds - 1} degree{'' if seeds == 2 else 's'} of freedom"


def _provenance(saved: dict) -> str:
    """What of the README comes from the run that wrote results.json, and what is computed now."""
    fits = [r.get("logreg_fit") or {} for r in saved["rows"] if r["head"] == "logreg"]
    seeds = len({r["seed"] for r in saved["rows"]})
    notes = []
    if seeds < 3:
        notes.append(f"it has {seeds} seeds (the command now defaults to 3: with {seeds} the t-CI over seeds has "
                     f"{_dof(seeds)} and the one-sided sign test cannot go below {0.5 ** seeds:.2f})")
    raw = sum(not f.get("standardized") for f in fits)
    if raw:
        notes.append(f"{raw} of its {len(fits)} logistic refits were fitted on unstandardized features and "
                     f"{sum(not f.get('converged') for f in fits)} of {len(fits)} did not converge (table below): its "
                     "logreg-head numbers are not those of the converged refit the protocol asks for")
    if not notes:
        return ""
    return ("**From an earlier run.** Every trained-model number below comes from the run that wrote results.json (`"
            + saved["command"] + "`); the seed-level comparisons are computed from its per-image distances by "
            "`python -m experiments.slp_fmnist --report-only`. That run predates the present protocol: "
            + "; ".join(notes) + ". A re-run (the command above, 3 seeds, standardized refits) replaces them.\n\n")


def report(saved: dict, out: Path) -> str:
    """README.md (seed-level comparisons, the refits, every model, image-level comparisons) and the box
    plots, from the content of results.json (also one written before the standardized refit: what a row
    lacks is shown as such)."""
    rows, command = saved["rows"], saved["command"]
    top = str(max(saved["budgets"]))
    lines = ["| head | mode | seed | test acc | sigma_max(W1) | sigma_max(head) [x logit scale] | ensemble success @" + top +
             " | ensemble median L2 [95% CI] | ensemble mean L2 (broken) [95% CI] | paper TA median L2 @5k / @20k |",
             "|" + "---|" * 10]
    for r in sorted(rows, key=lambda r: (r["head"], list(MODES).index(r["mode"]), r["seed"])):
        e, p = r["ensemble"], r["paper_ta"]
        d = e["distance"]
        lines.append(f"| {r['head']} | {r['mode']} | {r['seed']} | {e['clean_acc']:.4f} | {r['sigma_w1']:.3f} | "
                     f"{r['sigma_head']:.2f} [{r['sigma_head'] * r['logit_scale']:.3f}] | {format_interval(d['success_rate'], 3)} ({d['n_success']}/{d['n_samples']}) | "
                     f"{format_interval(d['l2_median'], 3)} | {format_interval(d['l2_mean'], 3)} | "
                     f"{float(p['l2_median']['5000']):.3f} / {float(p['l2_median']['20000']):.3f} |")
    best = {(r["mode"], r["head"], r["seed"]): _floats(r["ensemble"]["l2"][top]) for r in rows}
    paper = {(r["mode"], r["head"], r["seed"]): _floats(r["paper_ta"]["l2"]["20000"]) for r in rows}

    def ordered(found):  # by head, then arm
        return sorted(found, key=lambda r: (HEADS.index(r["group"][0]), list(MODES).index(r["arm"])))
    seed_level = {"ensemble": ordered(seed_level_rows(best, "none", 0, 2)),
                  "paper_ta": ordered(seed_level_rows(paper, "none", 0, 2)),
                  "rep_vs_ll": ordered(r for r in seed_level_rows(best, "ll", 0, 2) if r["arm"] == "rep"),
                  "rep_vs_ll_head": ordered(r for r in seed_level_rows(best, "ll_head", 0, 2) if r["arm"] == "rep")}
    comparisons = {"ensemble": paired_rows(best, "none", 0), "paper_ta": paired_rows(paper, "none", 0),
                   "rep_vs_ll": [r for r in paired_rows(best, "ll", 0) if r["arm"] == "rep"],
                   "rep_vs_ll_head": [r for r in paired_rows(best, "ll_head", 0) if r["arm"] == "rep"]}
    saved["seed_level"], saved["paired"] = seed_level, comparisons
    box_plot({f"{head} head: ensemble L2 @{top}": {
                  mode: [d for (m, h, _), v in best.items() if (m, h) == (mode, head) for d in v if math.isfinite(d)]
                  for mode in MODES} for head in HEADS},
             out / "boxplots.png", "single-hidden-layer net, Fashion-MNIST, authors' recipe: per-image distance "
                                   "(seeds pooled)")
    n, n_paper = rows[0]["ensemble"]["n_samples"], rows[0]["paper_ta"]["n_samples"]
    seeds = sorted({r["seed"] for r in rows})
    readme = (f"# Experiment 2: single-hidden-layer net on Fashion-MNIST, the authors' recipe\n\n"
              f"Written by `{command}`.\n{len(seeds)} seeds x {'/'.join(MODES)} x (trained head, "
              f"logistic-regression refit). Every model and head is attacked on the same {n} test images "
              f"(correctly classified by all): the ensemble {'+'.join(rows[0]['ensemble']['attacks'])} at "
              f"{', '.join(map(str, saved['budgets']))} queries (TA and CGBA hard-label, the others white-box), every image "
              f"with a start; the paper's Tangent Attack (40 iterations) on the first {n_paper}. L2 in [0,1] pixel "
              f"units; medians count an unbroken image as +inf, means are over the broken ones. 95% CIs: "
              f"Clopper-Pearson (success), bootstrap (median, mean).\n\n" + _provenance(saved) +
              f"## Seed-level comparisons (the evidence)\n\n"
              f"The seed is the unit of replication of a training method. Per seed, head and arm one number: the mean "
              f"distance over the shared images (those broken for both arms); a = the baseline arm, b = the arm, paired "
              f"by seed (the arms of a seed share its first epochs); positive = the arm needs larger perturbations. "
              f"Mean of the per-seed differences with a 95% Student-t CI over the {len(seeds)} seeds ({_dof(len(seeds))}), "
              f"the sign count and the one-sided sign test.\n\n"
              f"Ensemble, best L2 at {top} queries, against the unregularized baseline:\n\n"
              f"{seed_table(seed_level['ensemble'], ['head'], 'none')}\n\n"
              f"Paper-mode Tangent Attack at 20k queries (first {n_paper} images):\n\n"
              f"{seed_table(seed_level['paper_ta'], ['head'], 'none')}\n\n"
              f"rep against ll (every layer, the paper's definition) and against ll_head (the head-only penalty the "
              f"authors' MLP code applied as ll), ensemble at {top} queries:\n\n"
              f"{seed_table(seed_level['rep_vs_ll'], ['head'], 'll')}\n\n"
              f"{seed_table(seed_level['rep_vs_ll_head'], ['head'], 'll_head')}\n\n"
              f"## The logistic-regression refit (the logreg head)\n\nsklearn LogisticRegression, C = 1, lbfgs, on "
              f"the frozen features of the 60k training images. Standardized fits: the standardization is folded into "
              f"the head, so the network's logits are the fitted model's decision function. A fit that did not "
              f"converge is marked **NO**.\n\n{_refit_table(rows)}\n\n"
              f"## Every model and head\n\n" + "\n".join(lines) +
              f"\n\n## Image-level paired comparisons (secondary: the images of one pair of trained networks)\n\n"
              f"b = the regularized arm, a = the baseline of the same seed and head; a positive difference means "
              f"the arm needs larger perturbations. Beyond noise = the CI excludes 0 and Wilcoxon p < 0.05. These "
              f"resample images, not training runs: they say nothing about another seed.\n\n"
              f"Ensemble, best L2 at {top} queries:\n\n{paired_table(comparisons['ensemble'], ['head', 'seed'])}\n\n"
              f"Paper-mode Tangent Attack at 20k queries:\n\n"
              f"{paired_table(comparisons['paper_ta'], ['head', 'seed'])}\n\n"
              f"rep against ll (a = ll), ensemble at {top} queries:\n\n"
              f"{paired_table(comparisons['rep_vs_ll'], ['head', 'seed'])}\n\n"
              f"rep against ll_head (a = ll_head), ensemble at "
              f"{top} queries:\n\n{paired_table(comparisons['rep_vs_ll_head'], ['head', 'seed'])}\n\n"
              f"![box plots](boxplots.png)\n")
    (out / "README.md").write_text(readme)
    return readme


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.slp_fmnist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--n", type=int, default=300, help="shared correctly classified test images attacked")
    parser.add_argument("--n-paper", type=int, default=100, help="of those, how many get the paper-mode TA")
    parser.add_argument("--budgets", type=parse_budgets, default=[1000, 2000],
                        help="comma-separated ensemble budgets")
    parser.add_argument("--workers", type=int, default=2, help="parallel one-thread processes")
    parser.add_argument("--runs", type=Path, default=RUNS / "slp_fmnist")
    parser.add_argument("--out", type=Path, default=RESULTS / "slp_fmnist")
    parser.add_argument("--report-only", action="store_true", help="re-render README.md and the plots from results.json")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="recipe overrides for every run")
    args = parser.parse_args(argv)

    if args.report_only:
        saved = load_results(args.out)
        print(report(saved, args.out))
        write_json(args.out / "results.json", saved)  # with the comparisons the report computes (build_zoo reads them)
        return
    runs = plan(args.seeds, args.runs, args.overrides)
    run_all(runs.values(), args.workers)

    keys = list(runs)
    fitted = parallel_map(fit_heads, [(runs[k].output, k[0]) for k in keys], args.workers, "logistic refits")
    correct = torch.stack([c[h] for _, c in fitted for h in HEADS]).all(0)
    pool = correct.nonzero().flatten()
    indices = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:args.n]].sort().values
    jobs = [(runs[k].output, k[0], k[1], head, indices.tolist(), args.n_paper, sorted(args.budgets))
            for k in keys for head in HEADS]
    rows = parallel_map(evaluate_head, jobs, args.workers, "evaluating")
    for row in rows:
        row["logreg_fit"] = fitted[keys.index((row["seed"], row["mode"]))][0]
    args.out.mkdir(parents=True, exist_ok=True)
    command = "python -m experiments.slp_fmnist " + " ".join(sys.argv[1:] if argv is None else argv)
    saved = dict(command=command.strip(), budgets=sorted(args.budgets), shared_images=len(pool), rows=rows)
    report(saved, args.out)
    write_json(args.out / "results.json", saved)
    print((args.out / "README.md").read_text())


if __name__ == "__main__":
    main()
