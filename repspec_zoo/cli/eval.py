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

from .. import data
from ..models.normalize import NormalizedModel
from ..evaluation.evaluate import evaluate
from ..models.registry import ARCHS, TAGS
from ..evaluation.model_checks import check_model, first_images
from . import Parser
from .common import add_attack_arguments, add_input_arguments, evaluate_kwargs, read_inputs, report


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="repspec-zoo eval", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(p)
    p.add_argument("--split", default="test", choices=("train", "test"))
    add_attack_arguments(p)
    p.add_argument("--no-lemma1", action="store_true", help="skip the Lemma-1 local estimate")
    return p


def _warn_other_dataset(model, dataset: str | None) -> None:
    """One warning line when a zoo model tagged for one dataset is evaluated on another registry dataset."""
    cfg = model.pretrained_cfg
    tag = TAGS.get(cfg.get("tag")) if cfg.get("architecture") in ARCHS else None
    if tag is not None and dataset in data.DATASETS and dataset != tag.dataset:
        print(f"repspec-zoo eval: warning: {cfg['architecture']}.{cfg['tag']} was trained on {tag.dataset}, not "
              f"{dataset}: its accuracy and distances here say little about the model; pass --dataset "
              f"{tag.dataset} to evaluate it on its own data", file=sys.stderr)


def main(argv=None):
    inputs = read_inputs(build_parser(), argv, head_size=lambda info: info.num_classes)
    args, name, model = inputs.args, inputs.name, inputs.model
    _warn_other_dataset(model, args.dataset or (None if args.data_dir else name))
    dataset = inputs.split(args.split, args.limit)

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
                      lemma1=not args.no_lemma1, accelerator=accelerator, **evaluate_kwargs(args))
    if accelerator.is_main_process:
        if args.dataset and args.data_dir:  # the registry name described the folder: the title names both
            result.dataset = f"{args.dataset} ({args.data_dir})"
        report(result, args)
    # every process leaves the process group before exiting: gloo threads alive at interpreter exit
    # end in "terminate called without an active exception" (seen intermittently with 2 CPU processes)
    accelerator.end_training()
    return result
