"""`repspec-zoo probe MODEL`: linear probe on a frozen backbone, then accuracy and robustness of backbone + probe.

MODEL is anything `repspec-zoo eval` takes (a zoo or timm name, ``hf-hub:org/name``,
``local-dir:PATH``, a training run directory such as a self-supervised recipe's, whose backbone has
no head); ``--checkpoint FILE`` loads your own weights into the architecture. Its head, if any, is
discarded: a linear head is fitted on the frozen pre-logit features of ``--train-limit`` training
images (``--method logistic``: scikit-learn's logistic regression, the paper's; ``linear``: a torch
linear layer trained by Adam, for large sets), then backbone + head is evaluated as by `eval`
(clean accuracy on the test split, attacks on ``--n`` correctly classified test images; L2 in
[0,1] pixel space). The JSON (``--out``) is an EvalResult whose settings carry the probe's fit.

Examples:
    repspec-zoo probe runs/fmnist_simclr_resnet_small_repspectral --dataset fashion_mnist \\
        --train-limit 10000 --n 200 --attack ta,fmn --out probe.json
    repspec-zoo probe resnet18.a1_in1k --dataset cifar10 --method linear --attack none
"""
from __future__ import annotations

import argparse

from .. import data
from ..eval import evaluate
from ..loader import load_model
from ..argtypes import positive_int
from ..probe import PROBE_METHODS, fit_probe
from . import Parser
from .eval import add_attack_arguments, add_input_arguments, data_name, resolve_defaults


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="repspec-zoo probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(p)
    p.add_argument("--train-limit", type=positive_int, help="fit the probe on a seeded class-stratified subset of this many "
                                                   "training images (default: all)")
    p.add_argument("--method", default="logistic", choices=PROBE_METHODS, help="how the linear head is fitted")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the head (sklearn's C)")
    add_attack_arguments(p)
    return p


def main(argv=None):
    args = resolve_defaults(build_parser().parse_args(argv))
    name = data_name(args)
    info = data.dataset_info(name, data_dir=args.data_dir)
    backbone = load_model(args.model, args.checkpoint, num_classes=0 if args.checkpoint else None)
    in_chans, height = backbone.pretrained_cfg["input_size"][:2]

    def split(which: str, limit: int | None):
        return data.load_split(name, which, data_dir=args.data_dir, image_size=height, channels=in_chans,
                               limit=limit, seed=args.seed)

    probe = fit_probe(backbone, split("train", args.train_limit), method=args.method, C=args.C,
                      batch_size=args.batch_size, seed=args.seed)
    model = probe.model.eval().fast_eval(compile=args.compile)
    result = evaluate(model, split("test", args.limit), model_name=f"{args.model} + linear probe",
                      dataset_name=name, n=args.n, budgets=args.budgets, attack=args.attack or None,
                      seed=args.seed, batch_size=args.batch_size, max_iter=args.max_iter, lemma1=False,
                      start_pool=None if args.no_start_pool else "rest")
    result.settings.update(checkpoint=args.checkpoint, data_dir=args.data_dir, limit=args.limit, paper=args.paper,
                           probe=dict(probe.info(), classes=info.num_classes))
    print(f"linear probe ({probe.method}, C={probe.C:g}) on {probe.n_train} training images: "
          f"train accuracy {probe.train_acc:.4f}")
    print(result.summary_table())
    if args.out:
        result.save(args.out)
        print(f"wrote {args.out}")
    return result
