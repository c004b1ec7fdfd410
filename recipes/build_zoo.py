"""Build the zoo's bundled CPU-scale models: train, evaluate, export. One command:

    python recipes/build_zoo.py            # = make zoo

For each Fashion-MNIST config (slp and resnet_small; baseline, ll-spectral, rep-spectral; the slp ones are
the ``*_zoo`` configs, the 10-epoch settings the bundled slp models record; and the SimCLR backbones
``fmnist_simclr_resnet_small_*``, headless, the ``.fmnist_simclr`` tag):
1. train with recipes/train.py into runs/zoo/<config> (resumes / skips a finished run);
2. benchmark it with `repspec-zoo eval` (clean accuracy on the whole test split, Tangent
   Attack on N correctly classified test images) -> runs/zoo/<config>/eval.json; a self-supervised
   backbone with `repspec-zoo probe` (a logistic-regression probe fitted on the run's training
   images, then the same evaluation of backbone + probe, with FMN besides the Tangent Attack);
3. export the Hub-ready folder into repspec_zoo/weights/<arch>.<tag> (bundled: loads offline)
   and the card, config and eval into model_cards/<arch>.<tag> (weights stay in the package).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [f"fmnist_{arch}_{mode}{suffix}" for arch, suffix in (("slp", "_zoo"), ("resnet_small", ""))
           for mode in ("baseline", "llspectral", "repspectral")]
SSL_CONFIGS = [f"fmnist_simclr_resnet_small_{mode}" for mode in ("baseline", "llspectral", "repspectral")]


def run(*command: str) -> None:
    print("+", " ".join(command), flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=CONFIGS + SSL_CONFIGS)
    parser.add_argument("--n", type=int, default=50, help="test images attacked per model")
    parser.add_argument("--budgets", default="250,500,1000")
    args = parser.parse_args()

    from repspec_zoo.hub.exporting import bundle
    from repspec_zoo.models.registry import zoo_model_name
    from repspec_zoo.runs import EVAL_FILE, SUMMARY_FILE, WEIGHTS_FILE, read_run

    for config in args.configs:
        run_dir = ROOT / "runs" / "zoo" / config
        if not (run_dir / SUMMARY_FILE).is_file():
            run(sys.executable, "recipes/train.py", "--config", f"recipes/configs/{config}.yaml", "--output",
                os.path.relpath(run_dir, ROOT))
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
                "--checkpoint", os.path.relpath(run_dir / WEIGHTS_FILE, ROOT),
                "--dataset", trained.dataset, "--n", str(args.n), "--budgets", args.budgets, *out)
        bundle(run_dir)
        print(f"{name}: bundled in repspec_zoo/weights/{name}, card in model_cards/{name}")


if __name__ == "__main__":
    main()
