"""`repspec-zoo eval MODEL`: accuracy and black-box robustness of any backbone.

MODEL is a zoo or timm name (optionally ``name.tag``), ``hf-hub:org/name``, ``local-dir:PATH``
or a training run directory; ``--checkpoint FILE`` loads your own weights (safetensors) into the
architecture. Distances are L2 in [0,1] pixel space (normalization lives inside the model).

Every attacked sample gets a start (noise, then correctly classified images of other classes
from the rest of the split); a sample no attack breaks is kept as distance +inf and shows in
the success rate. ``--attack`` takes one attack, a comma-separated list or ``ensemble``: with
several, each sample's distance is the best over them (an upper bound on the minimal distance).

The zoo's own architectures (slp, resnet_small and every *_repspectral / *_llspectral /
*_baseline / *_advtrained / *_ddsnr name) exist in timm only after ``import repspec_zoo``, which
this command does; in your own code import it before ``timm.create_model``, also for the
``hf-hub:repspec-zoo/`` repos of slp and resnet_small models. Plain timm architectures
(resnet18, ``hf-hub:timm/...``) need no import.

Runtime: the attacks dominate, up to n x budget model queries per hard-label attack. The command
prints that total up front and each attack's progress bar shows its ETA. resnet_small with TA at
10k queries took 3.7 CPU-minutes for --n 50 on a 2-core machine, so --n 500 runs for about 35
minutes there (docs/reference.md, "Command line").

Examples:
    repspec-zoo eval resnet_small_repspectral --checkpoint runs/x/model.safetensors \\
        --dataset fashion_mnist --n 500 --budgets 1000,5000,10000 --attack ensemble --out eval.json
    repspec-zoo eval slp_repspectral.fmnist --paper --n 1000   # the rep-spectral paper's TA (T = 40)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .. import data
from ..attacks import NormalizedModel
from ..eval import EVAL_BATCH_SIZE, PAPER, evaluate, resolve_attacks
from ..models.registry import ARCHS, TAGS
from ..loader import load_model
from ..model_checks import check_model, first_images
from ..argtypes import parse_attacks, parse_budgets, positive_int, seed_int
from . import Parser


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


def data_name(args: argparse.Namespace) -> str:
    """The data actually read, as results name it: --dataset, else the --data-dir folder, else fashion_mnist."""
    return args.dataset or args.data_dir or "fashion_mnist"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="repspec-zoo eval", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(p)
    p.add_argument("--split", default="test", choices=("train", "test"))
    add_attack_arguments(p)
    p.add_argument("--no-lemma1", action="store_true", help="skip the Lemma-1 local estimate")
    return p


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


def _warn_other_dataset(model, dataset: str | None) -> None:
    """One warning line when a zoo model tagged for one dataset is evaluated on another registry dataset."""
    cfg = model.pretrained_cfg
    tag = TAGS.get(cfg.get("tag")) if cfg.get("architecture") in ARCHS else None
    if tag is not None and dataset in data.DATASETS and dataset != tag.dataset:
        print(f"repspec-zoo eval: warning: {cfg['architecture']}.{cfg['tag']} was trained on {tag.dataset}, not "
              f"{dataset}: its accuracy and distances here say little about the model; pass --dataset "
              f"{tag.dataset} to evaluate it on its own data", file=sys.stderr)


def main(argv=None):
    args = resolve_defaults(build_parser().parse_args(argv))
    name = data_name(args)
    info = data.dataset_info(name, data_dir=args.data_dir)
    model = load_model(args.model, args.checkpoint, num_classes=info.num_classes if args.checkpoint else None)
    _warn_other_dataset(model, args.dataset or (None if args.data_dir else name))
    in_chans, height = model.pretrained_cfg["input_size"][:2]
    dataset = data.load_split(name, args.split, data_dir=args.data_dir, image_size=height,
                              channels=in_chans, limit=args.limit, seed=args.seed)

    from accelerate import Accelerator

    accelerator = Accelerator()
    if args.attack and accelerator.is_main_process:
        print(f"attacking {args.n} correctly classified images x {max(args.budgets)} queries with "
              f"{'+'.join(args.attack)}: up to {args.n * max(args.budgets):,} model queries per hard-label attack "
              "(each attack's progress bar shows its ETA)", flush=True)
    wrapped = NormalizedModel(model).to(accelerator.device).eval()
    check_model(wrapped, first_images(dataset, accelerator.device), args.model)  # before fast_eval's notes
    wrapped.fast_eval(compile=args.compile)
    result = evaluate(wrapped, dataset, model_name=args.model, dataset_name=name, split=args.split,
                      n=args.n, budgets=args.budgets, attack=args.attack or None, seed=args.seed,
                      batch_size=args.batch_size, max_iter=args.max_iter, lemma1=not args.no_lemma1,
                      accelerator=accelerator, start_pool=None if args.no_start_pool else "rest")
    if accelerator.is_main_process:
        if args.dataset and args.data_dir:  # the registry name described the folder: the title names both
            result.dataset = f"{args.dataset} ({args.data_dir})"
        result.settings.update(checkpoint=args.checkpoint, data_dir=args.data_dir, limit=args.limit, paper=args.paper)
        print(result.summary_table())
        if args.out:
            result.save(args.out)
            print(f"wrote {args.out}")
    # every process leaves the process group before exiting: gloo threads alive at interpreter exit
    # end in "terminate called without an active exception" (seen intermittently with 2 CPU processes)
    accelerator.end_training()
    return result
