"""`repspec-zoo analyze MODEL`: Jacobian analyses of any backbone (Roth et al. 2019, Sec. 5).

MODEL is a zoo or timm name, ``hf-hub:org/name`` or ``local-dir:PATH`` (``--checkpoint FILE``
loads your weights into the architecture). On N test points it writes to ``--out DIR``:
``analysis.json`` and one PNG per analysis: ``spectrum.png`` (singular values of the logit
Jacobian by rank), ``alignment.png`` (|cos| of PGD perturbations with the right singular
vectors, vs a random baseline), ``linearity.png`` (deviation from linearity of the pre-logit
features and sigma_max(J) vs ||z||) and ``robustness.png`` (PGD-L2 accuracy vs eps); ``function``
prints the raw and BatchNorm-folded layer norms, the global Lipschitz bound, the certified radius
and the median feature-Jacobian norm (``analysis.function_report``). Lengths are L2 in [0, 1]
pixel units (normalization lives inside the model).

Example:
    repspec-zoo analyze resnet_small --checkpoint runs/x/model.safetensors --dataset fashion_mnist \\
        --n 50 --attack-eps 1.0 --eps-list 0,0.5,1,2 --out analysis/resnet_small
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from ..evaluation import analysis
from .. import data
from ..models.normalize import NormalizedModel
from ..io import atomic_write_text
from ..evaluation.plots import plot_analysis
from ..argtypes import positive_int, seed_int
from ..loader import load_model
from . import Parser


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like 0,0.5,1, got {text!r}") from None
    if not values or any(not (math.isfinite(v) and v >= 0) for v in values):
        raise argparse.ArgumentTypeError(f"expected finite numbers >= 0 like 0,0.5,1, got {text!r}")
    return values


def _analyses(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in analysis.ANALYSES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown analysis {unknown or text!r}; choose from "
                                         f"{','.join(analysis.ANALYSES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="repspec-zoo analyze", description=__doc__,
               formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="zoo/timm name, hf-hub:org/name or local-dir:PATH")
    p.add_argument("--checkpoint", help="weights file for MODEL's architecture (.safetensors)")
    p.add_argument("--dataset", default="fashion_mnist", help="registry name, Hub dataset id or local folder")
    p.add_argument("--data-dir", help="read the dataset from this local folder")
    p.add_argument("--split", default="test", choices=data.SPLITS)
    p.add_argument("--n", type=positive_int, default=20, help="test points (seeded, class-stratified subset)")
    p.add_argument("--analyses", type=_analyses, default=list(analysis.ANALYSES),
                   help=f"comma-separated subset of {','.join(analysis.ANALYSES)}")
    p.add_argument("--top-k", type=positive_int, default=10, help="singular values/vectors kept per point")
    p.add_argument("--method", default="auto", choices=("auto", "full", "topk"),
                   help="full SVD of the extracted Jacobian, top-k subspace iteration, or auto by d*K")
    p.add_argument("--attack-eps", type=float, default=1.0, help="PGD radius of the perturbations analysed")
    p.add_argument("--eps-list", type=_floats, default=[0.0, 0.5, 1.0, 1.5, 2.0, 3.0],
                   help="radii of the robust-accuracy curve")
    p.add_argument("--norms", type=_floats, default=[0.0, 0.5, 1.0, 2.0, 3.0, 4.0], help="||z|| grid for linearity")
    p.add_argument("--pgd-steps", type=positive_int, default=10)
    p.add_argument("--power-iters", type=positive_int, default=30, help="power/subspace iteration steps")
    p.add_argument("--batch-size", type=positive_int, default=64)
    p.add_argument("--seed", type=seed_int, default=0)
    p.add_argument("--out", type=Path, required=True, help="output folder for analysis.json and the PNGs")
    return p


def summary(result: dict) -> str:
    """A few lines: top singular values, alignment at rank 1, linearity at the largest ||z||, accuracies."""
    rows = []
    if "spectrum" in result:
        r = result["spectrum"]
        rows.append(f"spectrum ({r['method']}): median sigma_1 {r['median'][0]:.4g}, "
                    f"sigma_{len(r['median'])} {r['median'][-1]:.4g}")
    if "alignment" in result:
        a = result["alignment"]
        rows.append(f"alignment |cos(delta, v_1)|: PGD {a['adversarial']['median'][0]:.3f}, "
                    f"random {a['random']['median'][0]:.3f}")
    if "linearity" in result:
        r = result["linearity"]
        for name in ("random", "adversarial"):
            rows.append(f"linearity {name} at ||z||={r['norms'][-1]:g}: "
                        f"deviation {r[name]['deviation']['median'][-1]:.4g}, "
                        f"sigma_max {r[name]['sigma_max']['median'][-1]:.4g}")
    if "robustness" in result:
        r = result["robustness"]
        rows.append("PGD accuracy: " + ", ".join(f"eps={e:g}: {a:.3f}" for e, a in zip(r["eps"], r["accuracy"])))
    if "function" in result:
        rows += function_summary(result["function"])
    return "\n".join(rows)


def _g(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def function_summary(r: dict) -> list[str]:
    """Lines for `analysis.function_report`: norm sums, the Lipschitz bound, the certified radius, the Jacobian."""
    rows = [f"layer norms ({len(r['layers'])} layers): sum raw sigma^2 {_g(r['raw_sum_sq'])}, sum BN-folded sigma^2 "
            f"{_g(r['folded_sum_sq'])}, product of BN-folded sigma {_g(r['folded_prod'])}"]
    if r["lipschitz_upper"] is None:
        rows.append(f"Lipschitz bound: none ({r['no_bound_reason']})")
    else:
        rows.append(f"Lipschitz upper bound: features {_g(r['feature_lipschitz_upper'])}, logits "
                    f"{_g(r['lipschitz_upper'])} (per [0,1] pixel L2)")
    if r.get("certified_median") is not None:
        rows.append(f"certified L2 radius on {r['n_correct']} correct points: median {_g(r['certified_median'])}, "
                    f"mean {_g(r['certified_mean'])}{' (vacuous)' if r['vacuous'] else ''}; nearest other-class "
                    f"point: median {_g(r['reference_distance'])}")
    if r.get("jacobian_median") is not None:
        rows.append(f"feature-Jacobian sigma_max, median over {r['jacobian_points']} points: "
                    f"{_g(r['jacobian_median'])}")
    return rows


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    torch.manual_seed(args.seed)
    info = data.dataset_info(args.dataset, data_dir=args.data_dir)
    model = load_model(args.model, args.checkpoint, num_classes=info.num_classes if args.checkpoint else None)
    in_chans, height = model.pretrained_cfg["input_size"][:2]
    dataset = data.load_split(args.dataset, args.split, data_dir=args.data_dir, image_size=height,
                              channels=in_chans, limit=args.n, seed=args.seed)
    x, y = data.as_tensors(dataset)
    wrapped = NormalizedModel(model).eval()
    result = analysis.analyze(wrapped, x, y, args.analyses, top_k=args.top_k, method=args.method,
                              eps_list=args.eps_list, attack_eps=args.attack_eps, pgd_steps=args.pgd_steps,
                              norms=args.norms, power_iters=args.power_iters, batch_size=args.batch_size,
                              seed=args.seed)
    result = {"model": args.model, "checkpoint": args.checkpoint, "dataset": args.dataset, "split": args.split,
              "n": len(x), "seed": args.seed, **result}
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "analysis.json", json.dumps(result, indent=1))
    plots = plot_analysis(result, args.out)
    print(summary(result))
    print(f"wrote {args.out / 'analysis.json'}" + (f" and {', '.join(p.name for p in plots)}" if plots else ""))
    return result
