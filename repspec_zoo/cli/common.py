"""What `eval` and `probe` share: their input and attack arguments, the model and splits they read,
the keyword arguments evaluate() takes from them, and the printed / saved result. `leaderboard`
shares the forward arguments."""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from torch import nn

from .. import data
from ..argtypes import parse_attacks, parse_budgets, positive_int, seed_int
from ..evaluation.evaluate import EVAL_BATCH_SIZE, PAPER, resolve_attacks
from ..evaluation.result import EvalResult
from ..loader import load_model


def add_input_arguments(p: argparse.ArgumentParser) -> None:
    """MODEL, --checkpoint, --dataset, --data-dir, --limit: what `eval` and `probe` read."""
    p.add_argument("model", help="zoo/timm name, hf-hub:org/name, local-dir:PATH or a training run directory")
    p.add_argument("--checkpoint", help="weights file for MODEL's architecture (.safetensors)")
    p.add_argument("--dataset", help="registry name (fashion_mnist, digits, cifar10, ...), a Hub dataset id or a "
                                     "local folder (default: fashion_mnist, or the --data-dir folder)")
    p.add_argument("--data-dir", help="read the dataset from this local folder (image folder or parquet); with "
                                      "--dataset NAME, NAME only supplies column names, size and class names")
    p.add_argument("--limit", type=positive_int, help="evaluate clean accuracy on a seeded subset of this many images")


def add_attack_arguments(p: argparse.ArgumentParser) -> None:
    """The robustness evaluation's options, shared by `eval` and `probe` (see resolve_defaults)."""
    p.add_argument("--n", type=positive_int, default=100, help="correctly classified samples to attack")
    p.add_argument("--budgets", type=parse_budgets, help="comma-separated query budgets (default 1000,5000,10000)")
    p.add_argument("--attack", type=parse_attacks, help="ta, gta, hsja, cgba, fmn, alma, ddn, a comma-separated list, "
                                                   "'ensemble' or 'none' (default ta)")
    p.add_argument("--max-iter", type=positive_int,
                   help="hard-label attack iteration cap (the rep-spectral paper used 40)")
    p.add_argument("--paper", action="store_true",
                   help=f"the rep-spectral paper's evaluation: attack {PAPER['attack']}, --max-iter {PAPER['max_iter']}, "
                        f"budgets {','.join(map(str, PAPER['budgets']))} (explicit flags still win)")
    p.add_argument("--no-start-pool", action="store_true",
                   help="noise starts only, as the reference attacks (samples noise cannot start on go unattacked)")
    p.add_argument("--seed", type=seed_int, default=0, help="seeds the subsets, the attacked images and the attacks")
    add_forward_arguments(p)
    p.add_argument("--out", type=Path, help="write the EvalResult JSON here")


def add_forward_arguments(p: argparse.ArgumentParser) -> None:
    """--batch-size and --compile: how the model's forward runs (eval, probe and leaderboard)."""
    p.add_argument("--batch-size", type=positive_int, default=EVAL_BATCH_SIZE,
                   help=f"rows per model call (default {EVAL_BATCH_SIZE}: the fastest measured, at half the "
                        "activation memory of 256; benchmarks/README.md)")
    p.add_argument("--compile", action="store_true",
                   help="also torch.compile the no-grad forward (no faster than the default folded forward on the "
                        "CPU models measured in benchmarks/README.md; may pay off on a GPU)")


def resolve_defaults(args: argparse.Namespace) -> argparse.Namespace:
    """Fill --attack / --budgets / --max-iter from --paper, else from the plain defaults."""
    base = PAPER if args.paper else dict(attack="ta", max_iter=None, budgets=(1000, 5000, 10000))
    if args.attack is None:
        args.attack = resolve_attacks(base["attack"])
    if args.budgets is None:
        args.budgets = list(base["budgets"])
    if args.max_iter is None:
        args.max_iter = base["max_iter"]
    return args


@dataclass
class Inputs:
    """The parsed arguments of `eval` / `probe`, the data they name and the model they load."""

    args: argparse.Namespace
    name: str               # the data actually read, as results name it
    info: data.DatasetInfo
    model: nn.Module

    def split(self, which: str, limit: int | None) -> data.ImageClassificationDataset:
        """A split of the data at the model's input channels and size, seeded subset of ``limit`` images."""
        in_chans, height = self.model.pretrained_cfg["input_size"][:2]
        return data.load_split(self.name, which, data_dir=self.args.data_dir, image_size=height, channels=in_chans,
                               limit=limit, seed=self.args.seed)


def read_inputs(parser: argparse.ArgumentParser, argv,
                head_size: Callable[[data.DatasetInfo], int | None]) -> Inputs:
    """Parse ``argv`` (defaults resolved), name the data (--dataset, else the --data-dir folder, else
    fashion_mnist) and load MODEL; a --checkpoint file gets ``head_size(info)`` classes."""
    args = resolve_defaults(parser.parse_args(argv))
    name = args.dataset or args.data_dir or "fashion_mnist"
    info = data.dataset_info(name, data_dir=args.data_dir)
    model = load_model(args.model, args.checkpoint, num_classes=head_size(info) if args.checkpoint else None)
    return Inputs(args, name, info, model)


def evaluate_kwargs(args: argparse.Namespace) -> dict:
    """evaluate()'s keyword arguments set by the attack and forward options."""
    return dict(n=args.n, budgets=args.budgets, attack=args.attack or None, seed=args.seed, batch_size=args.batch_size,
                max_iter=args.max_iter, start_pool=None if args.no_start_pool else "rest")


def report(result: EvalResult, args: argparse.Namespace, **settings) -> None:
    """Record the inputs (and ``settings``) in the result, print its table, write it to --out."""
    result.settings.update(checkpoint=args.checkpoint, data_dir=args.data_dir, limit=args.limit, paper=args.paper,
                           **settings)
    print(result.summary_table())
    if args.out:
        result.save(args.out)
        print(f"wrote {args.out}")
