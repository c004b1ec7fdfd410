"""Experiment 6: does rep-spectral make a BatchNorm ResNet more robust, and does a BatchNorm-correct penalty?

    python -m experiments.bn_resnet_fmnist                 # 5 seeds x 5 arms, then transfer; resumable
    python -m experiments.bn_resnet_fmnist --report-only   # README.md and plots from results/

Why: every conv of the small ResNet is followed by BatchNorm, which undoes any scale of the conv's
weights. The authors' rep-spectral penalizes the raw kernels, so it can shrink W without changing the
function; the zoo's rep models were indistinguishable from their baselines. ``regularizer.mode: repbn``
penalizes sigma_max(diag(g / sqrt(var + eps)) W), the conv with its BatchNorm folded in (batch statistics
in training), which is invariant to the scale of W (repspec_zoo/spectral/hooks.py).

Design (fixed before the run). Fashion-MNIST, the small ResNet (recipes/configs/fmnist_resnet_small_*.yaml:
10k training images, batch 128, SGD momentum 0.9, weight decay 1e-4), 9 epochs: lr 0.05 up to epoch 8 and
x0.1 in the last (the transfer experiment's schedule, so the penalty acts at an undecayed lr). Per seed
(seeds 0-4; the seed also draws the 10k-image subset) one unregularized run trains 9 epochs; every other
arm branches from its epoch-6 checkpoint and trains epochs 7-9 with its regularizer (the last third):

* ``none``: the unregularized run itself;
* ``rep``: rep-spectral as the authors define it, raw kernels, gamma 2e-3 (= 2 x their lam 1e-3) in the loss;
* ``repbn``: the BatchNorm-correct rep-spectral at the same gamma;
* ``convwd``: a control with rep's side effect and not its mechanism: ``wd_lambda/2 sum ||W||_F^2`` on the
  same convs, wd_lambda calibrated on seed 0 so that the raw sum of conv sigma_max^2 at the end matches
  rep's (interpolated in log-log between trained strengths; the calibration runs are recorded);
* ``adv``: L2-PGD adversarial training (eps 0.5, 5 steps) in the same epochs, the robust reference;
  the zoo's ``resnet_small_advtrained.fmnist`` is attacked on the same images as a second reference.

Measured per model: clean accuracy on the 10k test images; the function-level numbers of
``repspec_zoo.evaluation.analysis.function_report`` (raw and BatchNorm-folded sums of conv sigma_max^2, the global
Lipschitz bound, the median certified radius, the median feature-Jacobian norm); the attack distance on
the same ``--n`` test images for every model (correctly classified by all): the ensemble (TA, CGBA, FMN,
ALMA; per-image best) at ``--budgets``, and the Tangent Attack's own distance at the largest budget
reported separately. The images are chosen among those every model of the first run classifies correctly;
a model added later (``--arms adv``, ``--sweep-gammas``) that misclassifies one of them gets distance 0 there. Transfer: every backbone fine-tuned on sklearn digits (new head, backbone lr = head
lr / 5, 15 epochs, no regularizer) and attacked (TA + FMN, best per image) on shared test digits.

Hypotheses and decision rule (written before the run). The seed is the unit of replication: per seed
one number per arm, the mean ensemble L2 over the shared images; d = arm - none per seed.
* H1 (repbn): repbn is more robust than none. Accepted iff the 95% Student-t CI over seeds of mean(d)
  excludes 0 on the positive side AND d > 0 in all 5 seeds (sign test p = 0.031 one-sided).
* H2 (rep, the authors'): the same rule for rep vs none. Expected to fail on a BN network.
* H3 (mechanism): repbn's gain is not rep's side effect: repbn - convwd passes the same rule.
* Folded norms: repbn's BN-folded sum of sigma^2 is lower than none's in all seeds; rep's is not
  (raw sums lower for rep and convwd).
* If an arm loses more than 1 point of clean accuracy against none (mean over seeds), its robustness is
  also read against clean accuracy, with repbn at the strengths ``--sweep-gammas`` on seeds 0-2.
Image-level paired CIs (bootstrap + Wilcoxon per seed) are reported as secondary.

Writes results/experiments/bn_resnet_fmnist/: one JSON per evaluated model in models/ (committed as they
complete, so a killed run loses nothing evaluated), results.json, README.md and the plot
(:mod:`experiments.bn_resnet_report` renders them).
Wall time on 2 cores (2 one-thread workers): in the README, measured.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import torch

from repspec_zoo.argtypes import parse_budgets

from .common import (RESULTS, ROOT, RUNS, PlannedRun, burn_in_epochs, cached_json, parallel_map, run_all,
                     split_tensors, write_json)
from .transfer_digits import conv_sigmas, digits_test_split

BASE_CONFIG = "fmnist_resnet_small_baseline"
#: the penalty for the last third, at an undecayed lr (the transfer experiment's pretraining schedule)
SCHEDULE = ("epochs=9", "regularizer.burn_in_epochs=6", "optim.schedule=step", "optim.step_epochs=8",
            "optim.decay=0.1", "checkpoint.keep=4", "eval.attack=none", "dataset.test_limit=10000")
GAMMA = 2e-3  # = 2 x the authors' lam 1e-3
#: arm -> (recipe config, overrides); convwd's strength is filled in by the calibration
ARMS = {
    "none": (BASE_CONFIG, ()),
    "rep": ("fmnist_resnet_small_repspectral", (f"regularizer.gamma={GAMMA}",)),
    "repbn": ("fmnist_resnet_small_repspectral", ("regularizer.mode=repbn", f"regularizer.gamma={GAMMA}")),
    "convwd": (BASE_CONFIG, ("regularizer.mode=convwd",)),
    "adv": ("fmnist_resnet_small_advtrained", ("regularizer.pgd_eps=0.5", "regularizer.pgd_steps=5")),
}
#: seed 0 only, not part of the test: the zoo's other small-ResNet models, trained on the same schedule so that
#: every bundled resnet_small_*.fmnist comes from one recipe (python recipes/build_zoo.py bundles seed 0)
ZOO_ARMS = {
    "ll": ("fmnist_resnet_small_llspectral", (f"regularizer.gamma={GAMMA}",)),
    "ddsnr": ("fmnist_resnet_small_ddsnr", ()),
}
CALIBRATION_WD = (5e-4, 2e-3, 8e-3)  # convwd strengths trained on seed 0 to match rep's raw norms
REFERENCE = "resnet_small_advtrained.fmnist"  # the zoo's adversarially trained model, attacked on the same images


def base_run(seed: int, runs_dir: Path) -> PlannedRun:
    return PlannedRun(BASE_CONFIG, runs_dir / f"seed{seed}" / "none", [f"seed={seed}", *SCHEDULE])


def branch(seed: int, runs_dir: Path, name: str, config: str, overrides, base: PlannedRun) -> PlannedRun:
    burn_in = burn_in_epochs(config, SCHEDULE)
    return PlannedRun(config, runs_dir / f"seed{seed}" / name, [f"seed={seed}", *SCHEDULE, *overrides], after=[base],
               branch_from=(base.output, burn_in))


def plan(seeds: list[int], runs_dir: Path, wd_lambda: float | None, sweep: list[float], sweep_seeds: list[int],
         zoo_seed: int | None = None) -> dict:
    """{(seed, arm): PlannedRun}; convwd only once its strength is known; repbn_g{gamma} for the sweep; the
    `ZOO_ARMS` for ``zoo_seed``."""
    runs = {}
    for seed in seeds:
        base = runs[seed, "none"] = base_run(seed, runs_dir)
        for arm, (config, overrides) in list(ARMS.items())[1:]:
            if arm == "convwd":
                if wd_lambda is None:
                    continue
                overrides = (*overrides, f"regularizer.wd_lambda={wd_lambda:.6g}")
            runs[seed, arm] = branch(seed, runs_dir, arm, config, overrides, base)
        if seed in sweep_seeds:
            config, overrides = ARMS["repbn"]
            for gamma in sweep:
                runs[seed, f"repbn_g{gamma:g}"] = branch(seed, runs_dir, f"repbn_g{gamma:g}", config,
                                                         (overrides[0], f"regularizer.gamma={gamma}"), base)
        if seed == zoo_seed:
            for arm, (config, overrides) in ZOO_ARMS.items():
                runs[seed, arm] = branch(seed, runs_dir, arm, config, overrides, base)
    return runs


# ------------------------------------------------------------------------------------- calibration
def _raw_sum_of_run(run_dir: Path) -> float:
    """sum over the convs of sigma_max^2 of the raw kernels (zero-padded operators at the 28x28 input)."""
    from repspec_zoo.loader import load_model

    return sum(s * s for s in conv_sigmas(load_model(run_dir)).values())


def calibrate_wd(runs_dir: Path, workers: int, out: Path) -> dict:
    """convwd strength whose raw conv sum sigma^2 at the end matches rep's, from seed 0 (cached in out)."""
    return cached_json(out / "calibration.json", lambda: _calibrate_wd(runs_dir, workers))


def _calibrate_wd(runs_dir: Path, workers: int) -> dict:
    base = base_run(0, runs_dir)
    rep = branch(0, runs_dir, "rep", *ARMS["rep"], base)
    trials = {wd: branch(0, runs_dir / "calibration", f"convwd_{wd:g}", ARMS["convwd"][0],
                         (*ARMS["convwd"][1], f"regularizer.wd_lambda={wd:g}"), base) for wd in CALIBRATION_WD}
    run_all([base, rep, *trials.values()], workers)
    sums = parallel_map(_raw_sum_of_run, [base.output, rep.output, *(r.output for r in trials.values())], workers,
                        "raw conv norms")
    none_sum, rep_sum, wd_sums = sums[0], sums[1], dict(zip(CALIBRATION_WD, sums[2:]))
    wd = _interpolate_log(wd_sums, rep_sum)
    result = dict(seed=0, target="raw sum of conv sigma_max^2 of the rep arm at the end", none=none_sum, rep=rep_sum,
                  trials={f"{k:g}": v for k, v in wd_sums.items()}, wd_lambda=wd,
                  rule="log(wd_lambda) linear in log(raw sum) between the two bracketing trials (end points: "
                       "extrapolated from the nearest two)")
    return result


def _interpolate_log(values: dict[float, float], target: float) -> float:
    """The x where log(y) reaches log(target), linear in (log x, log y) between bracketing points."""
    xs = sorted(values)
    pairs = list(zip(xs, xs[1:]))
    lo, hi = next(((a, b) for a, b in pairs if (values[a] - target) * (values[b] - target) <= 0),
                  pairs[0] if target > values[xs[0]] else pairs[-1])
    la, lb = math.log(lo), math.log(hi)
    ya, yb = math.log(values[lo]), math.log(values[hi])
    if ya == yb:
        return lo
    return math.exp(la + (math.log(target) - ya) * (lb - la) / (yb - ya))


# -------------------------------------------------------------------------------------- evaluation
def model_key(seed: int | None, arm: str) -> str:
    return arm if seed is None else f"seed{seed}_{arm}"


def _load(source: str | Path):
    from repspec_zoo.loader import load_model

    return load_model(str(source) if isinstance(source, str) else source)


def evaluate_model(job: tuple) -> dict:
    """Worker: accuracy and attack distances of one model on the shared images, saved to ``path`` (skipped
    if it exists: a killed experiment keeps what it evaluated)."""
    path, *rest = job
    return cached_json(path, lambda: _evaluate_model(*rest))


def _evaluate_model(source, seed: int, arm: str, indices: list[int], budgets: list[int]) -> dict:
    from repspec_zoo.evaluation.evaluate import evaluate
    from repspec_zoo.evaluation.stats import to_jsonable

    x, y = split_tensors("fashion_mnist", "test")
    model = _load(source)
    correct = _classified(model, x, y, indices)
    result = evaluate(model, (x, y), model_name=model_key(seed, arm), dataset_name="fashion_mnist", n=len(indices),
                      indices=[i for i, ok in zip(indices, correct) if ok], budgets=budgets, attack="ensemble", seed=0,
                      lemma1=False, progress=False)
    top = str(max(budgets))
    row = to_jsonable(dict(
        seed=seed, arm=arm, source=source if isinstance(source, str) else Path(os.path.relpath(source, ROOT)).as_posix(),
        clean_acc=result.clean_acc, n_test=result.n_test, n_samples=result.n_samples, budgets=result.budgets,
        success_rate=result.success_rate, l2_mean=result.l2_mean, l2_median=result.l2_median, distance=result.distance,
        robust_accuracy=result.robust_accuracy, certified=result.certified, bracket=result.bracket,
        by_attack={a: {k: v for k, v in part.items() if k != "params"} for a, part in result.by_attack.items()},
        wall_time_s=result.wall_time_s, index=indices, n_misclassified=correct.count(False),
        l2=_aligned(result.per_sample["l2"][top], correct), l2_ta=_aligned(result.per_sample["l2_by_attack"]["ta"][top],
                                                                           correct)))
    return row


def _classified(model, x: torch.Tensor, y: torch.Tensor, indices: list[int]) -> list[bool]:
    """Which shared images ``model`` classifies correctly (the main arms: all, by the choice of images)."""
    with torch.no_grad():
        return (model.eval()(x[indices]).argmax(1) == y[indices]).tolist()


def _aligned(l2: list[float], correct: list[bool]) -> list[float]:
    """Per shared image: the attack distance, or 0 where the model misclassifies it (no perturbation needed)."""
    found = iter(l2)
    return [next(found) if ok else 0.0 for ok in correct]


def function_numbers(job: tuple) -> dict:
    """Worker: the function-level numbers of one model (cached at ``path``)."""
    path, source, indices = job

    def compute() -> dict:
        from repspec_zoo.evaluation.analysis import function_report
        from repspec_zoo.evaluation.stats import to_jsonable

        x, y = split_tensors("fashion_mnist", "test")
        index = torch.as_tensor(indices)
        return to_jsonable(function_report(_load(source).eval(), x[index], y[index]))

    return cached_json(path, compute)


# ---------------------------------------------------------------------------------------- transfer
FINETUNE_CONFIG = "digits_finetune_resnet_small"


def transfer_plan(runs: dict, runs_dir: Path) -> dict:
    """A digits fine-tuning run (no regularizer) on every backbone of ``runs``."""
    return {key: PlannedRun(FINETUNE_CONFIG, runs_dir / f"seed{key[0]}" / f"{key[1]}_to_digits",
                     [f"seed={key[0]}", "regularizer.mode=none", "eval.attack=none"], init=run.output, after=[run])
            for key, run in runs.items()}


def evaluate_transfer(job: tuple) -> dict:
    """Worker: a fine-tuned model on the shared test digits: TA + FMN, best per image (cached at ``path``)."""
    path, *rest = job
    return cached_json(path, lambda: _evaluate_transfer(*rest))


def _evaluate_transfer(run_dir: Path, seed: int, arm: str, indices: list[int], budgets: list[int]) -> dict:
    from repspec_zoo.evaluation.evaluate import evaluate
    from repspec_zoo.evaluation.stats import to_jsonable

    model = _load(run_dir)
    x, y = digits_test_split(model)
    result = evaluate(model, (x, y), model_name=f"{model_key(seed, arm)}->digits", dataset_name="digits",
                      n=len(indices), indices=indices, budgets=budgets, attack="ta,fmn", seed=0, lemma1=False,
                      progress=False)
    top = str(max(budgets))
    row = to_jsonable(dict(seed=seed, arm=arm, clean_acc=result.clean_acc, n_test=result.n_test,
                          n_samples=result.n_samples, success_rate=result.success_rate, distance=result.distance,
                          wall_time_s=result.wall_time_s, index=result.per_sample["index"],
                          l2=result.per_sample["l2"][top]))
    return row


# -------------------------------------------------------------------------------------------- main
def _commit_point(out: Path, saved: dict) -> None:
    """results.json and README.md from what is evaluated so far (the report reads only finished models)."""
    from .bn_resnet_report import report

    write_json(out / "results.json", saved)  # first: --report-only can re-render whatever happens below
    if saved["rows"]:
        report(saved, out)
        write_json(out / "results.json", saved)  # with the seed-level comparisons the report adds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m experiments.bn_resnet_fmnist", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS), help="arms to train and attack")
    parser.add_argument("--n", type=int, default=50, help="shared correctly classified test images attacked")
    parser.add_argument("--budgets", type=parse_budgets, default="500,1000",
                        help="comma-separated ensemble budgets; the largest is reported")
    parser.add_argument("--sweep-gammas", type=float, nargs="*", default=[], help="extra repbn strengths (seeds 0-2)")
    parser.add_argument("--zoo-arms", action="store_true", help=f"also train and attack {', '.join(ZOO_ARMS)} on seed 0 "
                                                                  "(the zoo's other models on this schedule)")
    parser.add_argument("--no-transfer", action="store_true", help="skip the digits fine-tuning stage")
    parser.add_argument("--workers", type=int, default=2, help="parallel one-thread processes")
    parser.add_argument("--runs", type=Path, default=RUNS / "bn_resnet_fmnist")
    parser.add_argument("--out", type=Path, default=RESULTS / "bn_resnet_fmnist")
    parser.add_argument("--report-only", action="store_true", help="re-render README.md and the plot from results.json")
    args = parser.parse_args(argv)
    command = ("python -m experiments.bn_resnet_fmnist " + " ".join(sys.argv[1:] if argv is None else argv)).strip()
    out = args.out
    if args.report_only:
        from .common import load_results

        from .bn_resnet_report import report

        saved = load_results(out)
        print(report(saved, out))
        write_json(out / "results.json", saved)
        return

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    calibration = calibrate_wd(args.runs, args.workers, out) if "convwd" in args.arms else None
    runs = plan(args.seeds, args.runs, calibration and calibration["wd_lambda"], args.sweep_gammas, [0, 1, 2],
                zoo_seed=0 if args.zoo_arms else None)
    runs = {k: r for k, r in runs.items() if k[1] in args.arms or k[1].startswith("repbn_g") or k[1] in ZOO_ARMS}
    # adversarial training costs ~6x a plain epoch: the other arms of every seed first
    run_all(sorted(runs.values(), key=lambda r: r.output.name == "adv"), args.workers)

    from repspec_zoo.evaluation.leaderboard import common_indices
    from repspec_zoo.loader import load_model

    sources = {model_key(*k): r.output for k, r in runs.items()}
    sources[REFERENCE] = REFERENCE
    x, y = split_tensors("fashion_mnist", "test")
    index_file = out / "indices.json"
    if index_file.is_file():  # fixed once: a resumed run attacks the same images
        indices = json.loads(index_file.read_text())
    else:
        models = {k: load_model(str(s) if isinstance(s, str) else s) for k, s in sources.items()}
        indices = common_indices(models, x, y, args.n, seed=0, batch_size=512).tolist()
        write_json(index_file, indices)
    budgets = args.budgets
    keyed = {model_key(*k): k for k in runs} | {REFERENCE: (None, REFERENCE)}
    jobs = [(out / "models" / f"{key}.json", sources[key], *keyed[key], indices, budgets) for key in sources]
    saved = dict(command=command, seeds=args.seeds, budgets=budgets, n=len(indices), schedule=list(SCHEDULE),
                 calibration=calibration, rows={}, functions={})
    for row in parallel_map(evaluate_model, jobs, args.workers, "attacking"):
        saved["rows"][model_key(row["seed"], row["arm"])] = row
    functions = parallel_map(function_numbers, [(out / "functions" / f"{key}.json", sources[key], indices)
                                                for key in sources], args.workers, "function-level numbers")
    saved["functions"] = dict(zip(sources, functions))
    saved["wall_time_min"] = round((time.perf_counter() - start) / 60, 1)
    _commit_point(out, saved)

    if not args.no_transfer:
        tuned = transfer_plan({k: r for k, r in runs.items() if k[1] in ARMS}, args.runs)
        run_all(tuned.values(), args.workers)
        first = load_model(next(iter(tuned.values())).output)
        dx, dy = digits_test_split(first)
        digit_file = out / "digit_indices.json"
        if digit_file.is_file():
            digit_indices = json.loads(digit_file.read_text())
        else:
            digit_indices = common_indices({k: load_model(r.output) for k, r in tuned.items()}, dx, dy, args.n,
                                           seed=0, batch_size=512).tolist()
            write_json(digit_file, digit_indices)
        jobs = [(out / "transfer" / f"{model_key(*k)}.json", r.output, *k, digit_indices, budgets)
                for k, r in tuned.items()]
        saved["transfer"] = {model_key(r["seed"], r["arm"]): r
                             for r in parallel_map(evaluate_transfer, jobs, args.workers, "attacking (digits)")}
        saved["wall_time_min"] = round((time.perf_counter() - start) / 60, 1)
        _commit_point(out, saved)
    print((out / "README.md").read_text())


if __name__ == "__main__":
    main()
