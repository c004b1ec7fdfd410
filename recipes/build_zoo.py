"""Build the zoo's bundled CPU-scale models: evaluate and export what the experiments trained. One command:

    python recipes/build_zoo.py            # = make zoo

The supervised Fashion-MNIST models are the seed-0 runs of the experiments that measured their method, so
that a card's recipe is the experiment's and its evidence is the experiment's test across seeds:
* ``slp_{baseline,repspectral,llspectral}.fmnist``: ``python -m experiments.slp_fmnist`` (the authors' MLP
  recipe: 200 epochs, the penalty from epoch 160);
* ``resnet_small_{baseline,repspectral,repspectralbn,advtrained,llspectral,ddsnr}.fmnist``:
  ``python -m experiments.bn_resnet_fmnist --arms none rep repbn convwd adv --zoo-arms`` (9 epochs, the
  regularizer in the last third).
The SimCLR backbones (``.fmnist_simclr``, headless) are trained here from ``fmnist_simclr_resnet_small_*``.

For each model:
1. a missing experiment run is an error naming the command that trains it; an SSL config is trained with
   recipes/train.py into runs/zoo/<config> (resumes / skips a finished run);
2. benchmark it with `repspec-zoo eval` (clean accuracy on the whole test split, the attack ensemble on N
   correctly classified test images) -> <run>/eval.json; a self-supervised backbone with `repspec-zoo probe`
   (a logistic-regression probe fitted on the run's training images, then backbone + probe, TA + FMN);
3. export the Hub-ready folder (weights, config, eval and the card README.md) into
   repspec_zoo/weights/<arch>.<tag> (bundled: loads offline), with the experiment's seed-level comparison
   against the unregularized arm as the card's evidence.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: experiment -> its seed-0 arms bundled in the zoo (results/experiments/<experiment>/, runs/experiments/<experiment>/)
EXPERIMENT_ARMS = {
    "slp_fmnist": ("none", "rep", "ll"),
    "bn_resnet_fmnist": ("none", "rep", "repbn", "adv", "ll", "ddsnr"),
}
EXPERIMENT_COMMANDS = {"slp_fmnist": "python -m experiments.slp_fmnist",
                       "bn_resnet_fmnist": "python -m experiments.bn_resnet_fmnist --arms none rep repbn convwd adv "
                                           "--zoo-arms"}
SSL_CONFIGS = [f"fmnist_simclr_resnet_small_{mode}" for mode in ("baseline", "llspectral", "repspectral")]


def evidence(experiment: str, arm: str) -> str | None:
    """The card sentence of the experiment's seed-level comparison of ``arm`` against its unregularized arm,
    from results/experiments/<experiment>/results.json (None if the experiment has not reported one)."""
    import json

    path = ROOT / "results" / "experiments" / experiment / "results.json"
    if arm == "none" or not path.is_file():
        return None
    saved = json.loads(path.read_text())
    seed_level = saved.get("seed_level") or []
    if isinstance(seed_level, dict):  # slp_fmnist: per attack, rows per head (the trained head is the model's)
        seed_level = seed_level.get("ensemble", [])
    rows = [r for r in seed_level if r.get("b", r.get("arm")) == arm and r.get("a", "none") == "none"
            and r.get("group", ["trained"]) in (["trained"], [])]
    if not rows:
        return (f"`{EXPERIMENT_COMMANDS[experiment]}` trained this model as seed 0 of its `{arm}` arm; the arm was not "
                f"tested across seeds (see results/experiments/{experiment}/README.md).")
    r = rows[0]
    rule = {True: " The experiment's decision rule (written before the run) is met.",
            False: " The experiment's decision rule (written before the run) is not met."}.get(r.get("accepted"), "")
    # slp_fmnist also refits the head by logistic regression on the frozen features (the paper's Fig. 6)
    refit = [r for r in seed_level if r.get("arm") == arm and r.get("group") == ["logreg"]]
    refit_text = (f" With the head refit by logistic regression on this model's frozen features (a new head on the "
                  f"representation): {_seed_difference(refit[0])}." if refit else "")
    return (f"Seed 0 of `{EXPERIMENT_COMMANDS[experiment]}`. Across its {r['n_seeds']} training seeds, the mean attack "
            f"distance of the `{arm}` arm minus the unregularized arm's (same images, one number per seed): "
            f"{_seed_difference(r)}.{rule}{refit_text} Details: results/experiments/{experiment}/README.md.")


def _seed_difference(row: dict) -> str:
    """'+0.097 [+0.093, +0.102] (95% t-interval over seeds), 3 of 3 seeds positive (one-sided sign test p = 0.125)'."""
    d = row["mean_difference"]
    ci = f" [{d['low']:+.3f}, {d['high']:+.3f}] (95% t-interval over seeds)" if d.get("low") is not None else ""
    return (f"{d['estimate']:+.3f}{ci}, {row['n_positive']} of {row['n_seeds']} seeds positive (one-sided sign test "
            f"p = {row['sign_test_p_one_sided']:.3g})")


def run(*command: str) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--experiments", nargs="*", default=list(EXPERIMENT_ARMS), choices=list(EXPERIMENT_ARMS))
    parser.add_argument("--ssl-configs", nargs="*", default=SSL_CONFIGS)
    parser.add_argument("--n", type=int, default=50, help="test images attacked per model")
    parser.add_argument("--budgets", default="500,1000")
    args = parser.parse_args()

    from repspec_zoo.hub.exporting import bundle
    from repspec_zoo.models.registry import zoo_model_name
    from repspec_zoo.runs import EVAL_FILE, SUMMARY_FILE, WEIGHTS_FILE, read_run

    runs = [(ROOT / "runs" / "experiments" / experiment / "seed0" / arm, experiment, arm)
            for experiment in args.experiments for arm in EXPERIMENT_ARMS[experiment]]
    missing = [f"{run_dir.relative_to(ROOT)} (train it: {EXPERIMENT_COMMANDS[experiment]})"
               for run_dir, experiment, _ in runs if not (run_dir / SUMMARY_FILE).is_file()]
    if missing:
        sys.exit("build_zoo: error: experiment runs missing: " + "; ".join(missing))
    for config in args.ssl_configs:
        run_dir = ROOT / "runs" / "zoo" / config
        if not (run_dir / SUMMARY_FILE).is_file():
            run(sys.executable, "recipes/train.py", "--config", f"recipes/configs/{config}.yaml", "--output",
                os.path.relpath(run_dir, ROOT))
        runs.append((run_dir, None, None))

    for run_dir, experiment, arm in runs:
        trained = read_run(run_dir)
        ssl = (trained.config.get("ssl") or {}).get("method")
        name = zoo_model_name(trained.config["model"], trained.mode, trained.dataset, ssl)
        arch = name.split(".")[0]
        out = ("--out", os.path.relpath(run_dir / EVAL_FILE, ROOT))  # eval.json records it: no machine paths
        if ssl:  # a headless backbone: backbone + a probe fitted on the images it was pretrained on
            run(sys.executable, "-m", "repspec_zoo.cli", "probe", os.path.relpath(run_dir, ROOT),
                "--dataset", trained.dataset, "--train-limit", str(trained.config["dataset"]["train_limit"]),
                "--n", str(args.n), "--budgets", args.budgets, "--attack", "ta,fmn", "--seed", "0", *out)
        else:
            run(sys.executable, "-m", "repspec_zoo.cli", "eval", arch,
                "--checkpoint", os.path.relpath(run_dir / WEIGHTS_FILE, ROOT), "--attack", "ensemble",
                "--dataset", trained.dataset, "--n", str(args.n), "--budgets", args.budgets, *out)
        bundle(run_dir, evidence=evidence(experiment, arm) if experiment else None)
        print(f"{name}: bundled in repspec_zoo/weights/{name} (card: repspec_zoo/weights/{name}/README.md)")


if __name__ == "__main__":
    main()
