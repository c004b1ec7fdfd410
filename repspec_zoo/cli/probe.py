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

from ..evaluation.evaluate import evaluate
from ..argtypes import positive_int
from ..evaluation.linear_probe import PROBE_METHODS, fit_probe
from . import Parser
from .common import add_attack_arguments, add_input_arguments, evaluate_kwargs, read_inputs, report


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
    inputs = read_inputs(build_parser(), argv, head_size=lambda info: 0)  # the backbone's head is discarded
    args = inputs.args
    probe = fit_probe(inputs.model, inputs.split("train", args.train_limit), method=args.method, C=args.C,
                      batch_size=args.batch_size, seed=args.seed)
    model = probe.model.eval().fast_eval(compile=args.compile)
    result = evaluate(model, inputs.split("test", args.limit), model_name=f"{args.model} + linear probe",
                      dataset_name=inputs.name, lemma1=False, **evaluate_kwargs(args))
    print(f"linear probe ({probe.method}, C={probe.C:g}) on {probe.n_train} training images: "
          f"train accuracy {probe.train_acc:.4f}")
    report(result, args, probe=dict(probe.info(), classes=inputs.info.num_classes))
    return result
