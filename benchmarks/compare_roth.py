"""Roth et al. baselines vs rep-spectral on Fashion-MNIST at CPU scale (compact loop, not the recipe).

    PYTHONPATH=. python benchmarks/compare_roth.py --out runs/compare_roth            # defaults below
    PYTHONPATH=. python benchmarks/compare_roth.py --train-limit 512 --epochs 1 --n-eval 32 --out /tmp/smoke

Trains ``resnet_small`` (1x28x28, widths 16/32/64) once per method, same seed, data and SGD:
  standard   cross-entropy
  adv        cross-entropy on L2-PGD examples (eps=--eps, 10 steps of 2 eps/10, attacked in eval mode)
  ll         global spectral norm regularization, every layer incl. the head (attach_spectral mode='ll')
  ddsnr      data-dependent spectral norm regularization (Roth et al. eq. 13, lam=--ddsnr-lam, eps=--eps)
  rep        rep-spectral (attach_spectral mode='rep', head excluded)
then reports clean accuracy, PGD-L2 robust accuracy at two radii, the mean Tangent Attack distance
at --ta-budget queries, and runs the Jacobian analyses (repspec_zoo.analysis) per method; writes
results.json, table.md and analysis PNGs into --out. All lengths are L2 in [0, 1] pixel units.
The recipe (recipes/train.py) does not take these regularizers yet, hence the compact loop.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F

import repspec_zoo
from repspec_zoo import analysis, data
from repspec_zoo.attacks import NormalizedModel, robust_accuracy_curve
from repspec_zoo.plots import plot_analysis
from repspec_zoo.eval import evaluate
from repspec_zoo.regularizers import DataDependentSpectralNorm, adversarial_batch

METHODS = ("standard", "adv", "ll", "ddsnr", "rep")


def build(method: str, args) -> torch.nn.Module:
    torch.manual_seed(args.seed)
    net = timm.create_model("resnet_small", num_classes=10)
    if method in ("ll", "rep"):
        repspec_zoo.attach_spectral(net, mode=method, gamma=args.gamma)
    return net


def train(method: str, args, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.nn.Module, float]:
    """SGD (momentum 0.9) for --epochs over (x, y); returns the model in eval mode and the seconds spent."""
    net = build(method, args)
    model = NormalizedModel(net).train()  # resnet_small: mean 0 / std 1, images in [0, 1]
    reg = DataDependentSpectralNorm(args.ddsnr_lam, args.eps, iters=10) if method == "ddsnr" else None
    opt = torch.optim.SGD(net.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
    order = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for _ in range(args.epochs):
        perm = torch.randperm(len(x), generator=order)
        for i in range(0, len(x), args.batch_size):
            xb, yb = x[perm[i:i + args.batch_size]], y[perm[i:i + args.batch_size]]
            if method == "adv":
                loss = F.cross_entropy(model(adversarial_batch(model, xb, yb, eps=args.eps, steps=10)), yb)
            else:
                logits = model(xb)
                loss = F.cross_entropy(logits, yb)
                if reg is not None:
                    loss = loss + reg.penalty(model, xb, fx=logits)
                elif method in ("ll", "rep"):
                    loss = loss + net.spectral.penalty()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    seconds = time.perf_counter() - start
    if hasattr(net, "spectral"):
        net.spectral.remove()
    return model.eval(), seconds


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--train-limit", type=int, default=2000)
    p.add_argument("--test-limit", type=int, default=500)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--eps", type=float, default=1.0, help="adv-training / DD-SNR radius ([0,1] pixel L2)")
    p.add_argument("--ddsnr-lam", type=float, default=1e-2)
    p.add_argument("--gamma", type=float, default=1e-3, help="ll/rep gamma (penalty gamma/2 sum sigma^2)")
    p.add_argument("--robust-eps", default="1.0,2.0", help="two PGD radii for the table")
    p.add_argument("--n-eval", type=int, default=50, help="test points for TA and the analyses")
    p.add_argument("--ta-budget", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    methods = [m for m in args.methods.split(",") if m]
    if unknown := [m for m in methods if m not in METHODS]:
        p.error(f"unknown method(s) {unknown}; choose from {','.join(METHODS)}")
    robust_eps = [float(e) for e in args.robust_eps.split(",")]
    x_train, y_train = data.as_tensors(data.load_split("fashion_mnist", "train", limit=args.train_limit,
                                                       seed=args.seed))
    x_test, y_test = data.as_tensors(data.load_split("fashion_mnist", "test", limit=args.test_limit, seed=args.seed))
    args.out.mkdir(parents=True, exist_ok=True)
    results = {}
    for method in methods:
        model, seconds = train(method, args, x_train, y_train)
        ev = evaluate(model, (x_test, y_test), model_name=method, dataset_name="fashion_mnist", n=args.n_eval,
                      budgets=[args.ta_budget], seed=args.seed, lemma1=False, progress=False)
        robust = robust_accuracy_curve(model, x_test, y_test, robust_eps, generator=torch.Generator().manual_seed(0))
        result = analysis.analyze(model, x_test[:args.n_eval], y_test[:args.n_eval], attack_eps=args.eps,
                                  eps_list=[0.0, 0.5, 1.0, 1.5, 2.0, 3.0], norms=[0.0, 0.5, 1.0, 2.0, 3.0, 4.0],
                                  power_iters=20, seed=args.seed, progress=False)
        (args.out / method).mkdir(exist_ok=True)
        plot_analysis(result, args.out / method)
        results[method] = {"train_s": seconds, "clean_acc": ev.clean_acc,
                           "robust_acc": dict(zip(map(str, robust_eps), robust)),
                           "ta_l2_mean": ev.l2_mean.get(str(args.ta_budget)),
                           "sigma1_median": result["spectrum"]["median"][0],
                           "align_v1_median": result["alignment"]["adversarial"]["median"][0]}
        print(method, json.dumps(results[method]), flush=True)
    head = (f"| method | clean acc | PGD acc eps={robust_eps[0]:g} | PGD acc eps={robust_eps[1]:g} | "
            f"TA L2 mean @{args.ta_budget} | median sigma_1(J) | median cos(delta, v_1) | train s |")
    rows = [head, "|" + "---|" * 8]
    for m, r in results.items():
        acc = list(r["robust_acc"].values())
        ta = float("nan") if r["ta_l2_mean"] is None else r["ta_l2_mean"]
        rows.append(f"| {m} | {r['clean_acc']:.3f} | {acc[0]:.3f} | {acc[1]:.3f} | {ta:.3f} "
                    f"| {r['sigma1_median']:.3f} | {r['align_v1_median']:.3f} | {r['train_s']:.0f} |")
    table = "\n".join(rows)
    (args.out / "table.md").write_text(table + "\n")
    (args.out / "results.json").write_text(json.dumps({"settings": vars(args) | {"out": str(args.out)},
                                                       "results": results}, indent=1))
    print(table)
    return results


if __name__ == "__main__":
    main()
