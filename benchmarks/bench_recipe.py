"""Training throughput of recipes/train.py vs a plain PyTorch loop: same config, model, data, one process.

    PYTHONPATH=. python benchmarks/bench_recipe.py            # small ResNet, rep-spectral, Fashion-MNIST
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_recipe.py --epochs 3 --repeats 4 \\
        dataset.train_limit=2560 dataset.test_limit=256 regularizer.burn_in_epochs=1

Both run in this process, alternating ``--repeats`` times. The recipe is ``recipes/train.py``'s
``main`` (Accelerate loop, running metrics, progress bar, tensorboard; each epoch's training is
timed, its evaluation and checkpoint are not). The plain loop: the same model and regularizer
(``build_model``), the same loader, ``loss = ce + penalty``, ``backward``, ``step``, nothing else.
The first epoch of each run is warm-up. Reported: optimizer steps per second of wall-clock time
and of process CPU time (CPU time is far less sensitive to other jobs on a shared machine), and
recipe / plain ratios of the medians. Goal: ratio >= 0.95.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate.state import AcceleratorState, GradientState
from accelerate.utils import set_seed

import repspec_zoo  # noqa: F401  (registers the zoo's architectures with timm)
from repspec_zoo.io import atomic_write_text
from repspec_zoo.training import (TrainingModule, build_model, build_optimizer, check_input, dataset_num_classes,
                                  load_config, recipe_split, loop, make_loaders)

ROOT = Path(__file__).resolve().parents[1]


class EpochClock:
    """Wall-clock and CPU seconds of the epochs after the first, and their optimizer steps."""

    def __init__(self, device: torch.device):
        self.device, self.wall, self.cpu, self.steps = device, 0.0, 0.0, 0

    @contextlib.contextmanager
    def epoch(self, index: int, steps: int):
        wall, cpu = time.perf_counter(), time.process_time()
        yield
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        if index > 0:
            self.wall += time.perf_counter() - wall
            self.cpu += time.process_time() - cpu
            self.steps += steps

    def rates(self) -> tuple[float, float]:
        """(steps per wall second, steps per CPU second)."""
        return self.steps / self.wall, self.steps / self.cpu


def _load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_train", ROOT / "recipes" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_recipe(config: Path, overrides: list[str], run_dir: Path, clock: EpochClock) -> None:
    """recipes/train.py's main with each Trainer epoch timed by ``clock``."""
    train_epoch = loop.Trainer._train_epoch

    def timed(trainer, epoch, bar):
        with clock.epoch(epoch, trainer.steps_per_epoch):
            train_epoch(trainer, epoch, bar)

    loop.Trainer._train_epoch = timed
    try:
        _load_recipe().main(["--config", str(config), "--output", str(run_dir), *overrides])
    finally:
        loop.Trainer._train_epoch = train_epoch
        AcceleratorState._reset_state(reset_partial_state=True)  # the next run builds its own Accelerator
        GradientState._reset_state()


def run_plain(config: Path, overrides: list[str], clock: EpochClock) -> None:
    """A plain loop on the recipe's model and data."""
    cfg = load_config(config, overrides)
    if cfg.grad_accum_steps != 1 or cfg.regularizer.mode == "bss":
        sys.exit("the plain loop covers grad_accum_steps=1 and regularizer.mode none/rep/ll")
    set_seed(cfg.seed)
    cfg.num_classes = cfg.num_classes or dataset_num_classes(cfg)
    model = build_model(cfg)
    train_set = recipe_split(cfg, model, "train")
    check_input(model, train_set[0][0], cfg)
    net = TrainingModule(model).to(clock.device).train()
    optimizer = build_optimizer(cfg, model)
    loader, _ = make_loaders(cfg, train_set, train_set, num_processes=1)
    spectral, burn_in = getattr(model, "spectral", None), cfg.regularizer.burn_in_epochs
    for epoch in range(cfg.epochs):
        if hasattr(train_set, "set_epoch"):
            train_set.set_epoch(epoch)
        with clock.epoch(epoch, len(loader)):
            for x, y in loader:
                x, y = x.to(clock.device, non_blocking=True), y.to(clock.device, non_blocking=True)
                loss = F.cross_entropy(net(x), y)
                if spectral is not None and epoch >= burn_in:
                    loss = loss + spectral.penalty()
                elif spectral is not None:
                    spectral.step()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, default=ROOT / "recipes/configs/fmnist_resnet_small_repspectral.yaml")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=2, help="alternating recipe/plain runs")
    parser.add_argument("--data-dir", help="local dataset directory (as recipes/train.py --data-dir)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results_recipe.json")
    parser.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides for both")
    args = parser.parse_args(argv)
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first epoch is warm-up)")
    overrides = [f"epochs={args.epochs}", *args.overrides]
    overrides += [f"dataset.data_dir={args.data_dir}"] if args.data_dir else []
    device = torch.device("cuda" if torch.cuda.is_available() and not os.environ.get("ACCELERATE_USE_CPU") else "cpu")
    rates = {"recipe": [], "plain": []}
    with tempfile.TemporaryDirectory() as tmp:
        for repeat in range(args.repeats):
            recipe, plain = EpochClock(device), EpochClock(device)
            run_recipe(args.config, overrides, Path(tmp) / f"run{repeat}", recipe)
            run_plain(args.config, overrides, plain)
            rates["recipe"].append(recipe.rates())
            rates["plain"].append(plain.rates())
            print(f"repeat {repeat + 1}: steps/s wall recipe {recipe.rates()[0]:.3f} plain {plain.rates()[0]:.3f}; "
                  f"per CPU second recipe {recipe.rates()[1]:.3f} plain {plain.rates()[1]:.3f}", flush=True)
    median = {name: [statistics.median(r[i] for r in runs) for i in (0, 1)] for name, runs in rates.items()}
    result = {"config": os.path.relpath(args.config.resolve(), ROOT), "overrides": overrides, "device": str(device),
              "torch_threads": torch.get_num_threads(), "steps_per_s_wall": {k: [r[0] for r in v] for k, v in rates.items()},
              "steps_per_cpu_s": {k: [r[1] for r in v] for k, v in rates.items()},
              "ratio_wall": median["recipe"][0] / median["plain"][0], "ratio_cpu": median["recipe"][1] / median["plain"][1]}
    print(json.dumps(result, indent=1))
    atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
