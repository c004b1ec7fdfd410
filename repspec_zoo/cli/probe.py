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
from pathlib import Path

from .. import data
from ..argtypes import parse_attacks, parse_budgets
from ..eval import evaluate
from ..probe import PROBE_METHODS, fit_probe
from ..loader import load_model


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="repspec-zoo probe", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="zoo/timm name, hf-hub:org/name, local-dir:PATH or a training run directory")
    p.add_argument("--checkpoint", help="weights file for MODEL's architecture (.safetensors)")
    p.add_argument("--dataset", default="fashion_mnist",
                   help="registry name (fashion_mnist, digits, cifar10, ...), a Hub dataset id or a local folder")
    p.add_argument("--data-dir", help="read the dataset from this local folder (image folder or parquet)")
    p.add_argument("--train-limit", type=int, help="fit the probe on a seeded class-stratified subset of this many "
                                                   "training images (default: all)")
    p.add_argument("--limit", type=int, help="evaluate on a seeded subset of this many test images (default: all)")
    p.add_argument("--method", default="logistic", choices=PROBE_METHODS, help="how the linear head is fitted")
    p.add_argument("--C", type=float, default=1.0, help="inverse L2 strength of the head (sklearn's C)")
    p.add_argument("--n", type=int, default=100, help="correctly classified test images to attack")
    p.add_argument("--budgets", type=parse_budgets, default=[1000, 5000, 10000], help="comma-separated query budgets")
    p.add_argument("--attack", type=parse_attacks, default=["ta"],
                   help="ta, gta, hsja, cgba, fmn, alma, ddn, a comma-separated list, 'ensemble' or 'none'")
    p.add_argument("--seed", type=int, default=0, help="seeds the subsets, the attacked images and the attacks")
    p.add_argument("--batch-size", type=int, default=256, help="rows per model call")
    p.add_argument("--out", type=Path, help="write the EvalResult JSON here")
    return p


def main(argv=None):
    args = build_parser().parse_args(argv)
    info = data.dataset_info(args.dataset, data_dir=args.data_dir)
    backbone = load_model(args.model, args.checkpoint, num_classes=0 if args.checkpoint else None)
    in_chans, height = backbone.pretrained_cfg["input_size"][:2]

    def split(name: str, limit: int | None):
        return data.load_split(args.dataset, name, data_dir=args.data_dir, image_size=height, channels=in_chans,
                               limit=limit, seed=args.seed)

    probe = fit_probe(backbone, split("train", args.train_limit), method=args.method, C=args.C,
                      batch_size=args.batch_size, seed=args.seed)
    result = evaluate(probe.model, split("test", args.limit), model_name=f"{args.model} + linear probe",
                      dataset_name=args.dataset, n=args.n, budgets=args.budgets, attack=args.attack or None,
                      seed=args.seed, batch_size=args.batch_size, lemma1=False)
    result.settings.update(checkpoint=args.checkpoint, data_dir=args.data_dir, limit=args.limit,
                           probe=dict(probe.info(), classes=info.num_classes))
    print(f"linear probe ({probe.method}, C={probe.C:g}) on {probe.n_train} training images: "
          f"train accuracy {probe.train_acc:.4f}")
    print(result.summary_table())
    if args.out:
        result.save(args.out)
        print(f"wrote {args.out}")
    return result
