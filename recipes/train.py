"""Train or fine-tune a timm model with rep-/ll-spectral (or BSS) regularization; resumable, multi-process.

    accelerate launch recipes/train.py --config recipes/configs/imagenet_resnet50_repspectral.yaml
    accelerate launch recipes/train.py --config recipes/configs/finetune_cifar10.yaml \\
        --init runs/imagenet_resnet50_repspectral --output runs/cifar10_from_rep
    accelerate launch recipes/train.py --config recipes/configs/fmnist_resnet_small_repspectral.yaml \\
        epochs=2 optim.lr=0.05          # overrides: KEY=VALUE or --set KEY=VALUE, dotted for sections
    accelerate launch recipes/train.py --config recipes/configs/fmnist_simclr_resnet_small_repspectral.yaml
                                        # self-supervised (ssl.method): saves the headless backbone

Killed? Run the same command again: it resumes from the newest checkpoint, mid-epoch included; a
checkpoint with a damaged file is set aside (step_N.corrupt, with a warning) for the one before it.
One training per run directory: a second one into the same --output stops at once, naming the first
(RUN_DIR/.lock; a killed training's lock is free again). A full disk stops the run in one line; free
space and run the same command again.
Branch a run: `--branch-from runs/base/checkpoints/step_0000464 regularizer.mode=rep` starts a new
run directory from another run's checkpoint (weights, optimizer, RNG, position in training), e.g.
regularized runs that share the unregularized burn-in of one baseline run.
The run directory (default runs/<config file name>) holds config.yaml (the resolved config),
checkpoints/, tensorboard/, metrics.jsonl (one line per epoch) and, at the end,
model.safetensors (plain timm weights), eval.json and run.json.
Several processes: `accelerate launch --multi_gpu --num_processes N recipes/train.py ...`
(on CPUs add ACCELERATE_USE_CPU=1); batch_size is the global batch whatever N is.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from accelerate.utils import set_seed

import repspec_zoo  # noqa: F401  (registers the zoo's architectures with timm)
from repspec_zoo.errors import UserError
from repspec_zoo.io import atomic_write_text, full_disk_is_user_error
from repspec_zoo.ssl import SSLModule, build_ssl_model
from repspec_zoo.ssl.trainer import SSLTrainer, probe_eval, ssl_train_split
from repspec_zoo.runs import CHECKPOINTS_DIR, METRICS_FILE, STATE_FILE, SUMMARY_FILE, WEIGHTS_FILE
from repspec_zoo.training import (CheckpointError, Checkpoints, Trainer, TrainingModule, build_model,
                                  build_optimizer, check_input, checkpoint_problem, data_summary, dataset_num_classes,
                                  load_config, recipe_split, make_accelerator, make_loaders, quick_eval, run_summary,
                                  save_run_config, save_weights, summary_table, unsynced_tensors)
from repspec_zoo.training.lock import lock_run_dir
from repspec_zoo.training.layer_check import check_regularizer_layers


class UsageError(UserError):
    """A command line argparse rejects."""


class Parser(argparse.ArgumentParser):
    """Raises `UsageError` instead of printing the usage block: a bad option reads as one line."""

    def error(self, message: str):
        raise UsageError(f"{message}; see '{self.prog} --help'")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = Parser(prog="recipes/train.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True, help="recipe YAML, e.g. recipes/configs/xor_toy.yaml")
    parser.add_argument("--output", type=Path, help="run directory (default: runs/<config file name>)")
    parser.add_argument("--init", help="fine-tune from this run directory or timm model name (sets init)")
    parser.add_argument("--branch-from", type=Path, metavar="CHECKPOINT",
                        help="start from another run's checkpoint folder (RUN/checkpoints/step_N); ignored once this "
                             "run has checkpoints of its own")
    parser.add_argument("--data-dir", help="read the dataset from this local directory (sets dataset.data_dir)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.lr=0.05 (repeatable)")
    parser.add_argument("more_overrides", nargs="*", metavar="KEY=VALUE", help="overrides, as --set")
    return parser.parse_args(argv)


def branch(checkpoint: Path, run_dir: Path, cfg, accelerator) -> None:
    """Seed RUN_DIR with a copy of another run's ``checkpoint`` (and its metrics.jsonl) so that the
    resume below continues from it; a run directory with checkpoints of its own is left alone."""
    if not (checkpoint / STATE_FILE).is_file():
        raise FileNotFoundError(f"--branch-from {checkpoint}: not a checkpoint folder (no {STATE_FILE}); "
                                f"pass one of RUN_DIR/checkpoints/step_*")
    problem = checkpoint_problem(checkpoint)
    if problem is not None:
        raise CheckpointError(f"--branch-from {checkpoint}: {problem}; branch from another checkpoint of that run")
    own = Checkpoints(run_dir / CHECKPOINTS_DIR, cfg.checkpoint.keep)
    if own.latest() is None and accelerator.is_main_process:
        staging = own.directory / f".{checkpoint.name}.tmp"  # a killed copy is discarded by resume()
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint, staging)
        source_metrics = checkpoint.parent.parent / METRICS_FILE
        if source_metrics.is_file():  # epochs the checkpoint does not cover are dropped on resume
            shutil.copy2(source_metrics, run_dir / METRICS_FILE)
        os.replace(staging, own.directory / checkpoint.name)
        accelerator.print(f"branching {run_dir} from {checkpoint}")
    accelerator.wait_for_everyone()


def main(argv: list[str] | None = None) -> dict | None:
    """Run the recipe; returns run.json's content on the main process (None elsewhere)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    started = time.time()
    overrides = [*args.overrides, *args.more_overrides]
    overrides += [f"init={args.init}"] if args.init else []
    overrides += [f"dataset.data_dir={args.data_dir}"] if args.data_dir else []
    cfg = load_config(args.config, overrides)
    run_dir = args.output or Path("runs") / args.config.stem
    check_regularizer_layers(cfg)  # before the run directory exists
    lock = lock_run_dir(run_dir)  # one training per run directory
    try:
        with full_disk_is_user_error(run_dir, "free space, then run the same command again: it resumes from the "
                                              "last complete checkpoint"):
            return train(args, cfg, run_dir, argv, started)
    finally:
        if lock is not None:
            lock.release()


def train(args: argparse.Namespace, cfg, run_dir: Path, argv: list[str], started: float) -> dict | None:
    """The recipe's steps in the locked ``run_dir``; run.json's content on the main process (None elsewhere)."""
    # 1. processes, seed, the resolved config in the run directory
    accelerator = make_accelerator(cfg, run_dir)
    set_seed(cfg.seed)
    if args.branch_from is not None:
        branch(args.branch_from, run_dir, cfg, accelerator)
    ssl = cfg.ssl.method is not None
    cfg.num_classes = 0 if ssl else cfg.num_classes or dataset_num_classes(cfg)  # SSL: a backbone without head
    resuming = Checkpoints(run_dir / "checkpoints", cfg.checkpoint.keep).latest() is not None
    save_run_config(cfg, run_dir, resuming, write=accelerator.is_main_process)

    # 2. model (init weights + new head when fine-tuning, regularizer attached), data shaped for it
    if ssl:  # backbone + projection head on two views per image (repspec_zoo.ssl)
        model = build_ssl_model(cfg)
        train_set, test_set = ssl_train_split(cfg, model), recipe_split(cfg, model, "test")
        check_input(model, test_set[0][0], cfg)
        net = SSLModule(model)
    else:
        model = build_model(cfg)
        train_set, test_set = recipe_split(cfg, model, "train"), recipe_split(cfg, model, "test")
        check_input(model, train_set[0][0], cfg)
        net = TrainingModule(model, return_features=cfg.regularizer.spec.needs_features)
    accelerator.print(data_summary(cfg, train_set, test_set))
    optimizer = build_optimizer(cfg, model)
    train_loader, test_loader = make_loaders(cfg, train_set, test_set, accelerator.num_processes)
    net, optimizer, train_loader, test_loader = accelerator.prepare(net, optimizer, train_loader, test_loader)

    # 3. train, resuming from the newest checkpoint of the run directory
    trainer = (SSLTrainer if ssl else Trainer)(accelerator, cfg, net, optimizer, train_loader, test_loader, run_dir)
    resumed = trainer.resume()
    if resumed is not None:
        accelerator.print(f"resuming {run_dir} from {resumed.name}: epoch {trainer.state.epoch + 1}, "
                          f"{trainer.state.batches_done} batches done")
    records = trainer.fit()

    # 4. final weights (plain timm state dict), quick evaluation, run summary
    unsynced = unsynced_tensors(accelerator, trainer.model)
    summary = None
    if accelerator.is_main_process:
        final = trainer.model.backbone if ssl else trainer.model  # SSL: the projection head is not published
        save_weights(final, run_dir / WEIGHTS_FILE)
        evaluation = probe_eval(final, cfg, run_dir) if ssl else quick_eval(final, cfg, run_dir)
        summary = run_summary(cfg, records, evaluation, ["recipes/train.py", *argv], time.time() - started,
                              accelerator.num_processes, unsynced)
        atomic_write_text(run_dir / SUMMARY_FILE, json.dumps(summary, indent=2))
        accelerator.print(summary_table(records, evaluation))
        accelerator.print(f"run directory: {run_dir}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    try:
        main()
    except (UserError, FileNotFoundError) as err:  # ConfigError, CheckpointError, DatasetUnavailableError, ...
        print(f"recipes/train.py: error: {err}", file=sys.stderr)
        sys.exit(2)  # the status of argparse's usage errors, as the repspec-zoo CLI
