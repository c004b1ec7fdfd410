"""Gram-iteration bound vs exact FFT, power iteration and dense SVD on every ResNet-18 and ResNet-50 conv; and the
warm-started power-step outlier of bench_spectral.py, reproduced and taken apart.

1. Per conv of timm resnet18 / resnet50 at 224x224 (random init, seed 0: the norms are of random kernels) and
   resnet18 at 32x32 (small enough for the dense SVD on most layers), all on the zero-padded operator timm
   computes, float32, one thread, the methods interleaved layer by layer so machine-load swings hit all alike:
   * gram: :func:`conv_gram_bound` (``GRAM_ITERS`` steps), an upper bound; also its time with autograd + backward;
   * fft: :func:`conv_fft_upper_bound`, the exact circular norm on the grid N >= n + 2p that gram converges to;
   * power: 100 steps of :func:`conv_power_iteration` from a random start (the paper's reference), a lower bound;
   * dense: the SVD of the dense operator (float64), where it has at most --dense-max inputs: the true norm;
   * gram on the circular conv of the layer's own grid, the paper's setting (not a bound on the zero-padded norm).
   Network products over the convs, as in the paper: prod(gram) / prod(power).
2. Gram convergence: bound / fft - 1 per Gram step count, over the resnet18 32x32 convs.
3. The warm-start outlier: bench_spectral.py's exact setup (resnet18, 8 random 32x32 images, one SGD step, lr 0.05),
   per layer the relative kernel change and the error of one warm step; for the worst layer its singular values,
   overlaps and the error after k warm steps, and a sweep W0 + s * dW that shows the singular value crossing;
   then the same with ``zero_init_last=False`` (every conv moves).

Usage:  OMP_NUM_THREADS=1 python benchmarks/bench_gram.py [--out benchmarks/results_gram.json]
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from dataclasses import replace
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch import nn

import repspec_zoo  # noqa: F401
from repspec_zoo.io import atomic_write_text
from repspec_zoo.spectral import ConvGeometry, conv_fft_upper_bound, conv_power_iteration
from repspec_zoo.spectral.gram import GRAM_ITERS, conv_gram_bound
from repspec_zoo.spectral.operator import conv_adjoint, conv_apply

from bench_spectral import conv_input_shapes

POWER_STEPS = 100
SETTINGS = (("resnet18", 224), ("resnet50", 224), ("resnet18", 32))


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def dense_matrix(weight: torch.Tensor, geom: ConvGeometry) -> torch.Tensor:
    d = math.prod(geom.in_shape)
    basis = torch.eye(d, dtype=weight.dtype).reshape(d, *geom.in_shape)
    return conv_apply(weight, geom, basis).reshape(d, -1).T


def gram_with_backward(weight: torch.Tensor, geom: ConvGeometry) -> float:
    w = weight.detach().requires_grad_()
    bound = conv_gram_bound(w, geom)
    bound.backward()
    return bound.item()


def layer_norms(model_name: str, size: int, dense_max: int) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    shapes = conv_input_shapes(model, torch.rand(1, 3, size, size))
    layers = []
    for name, conv in model.named_modules():
        if not isinstance(conv, nn.Conv2d):
            continue
        w = conv.weight.detach()
        geom = ConvGeometry.from_module(conv, shapes[name])
        row = {"name": name, "in_shape": list(geom.in_shape), "kernel": list(w.shape), "stride": geom.stride[0]}
        with torch.no_grad():
            row["gram"], row["gram_s"] = timed(lambda: float(conv_gram_bound(w, geom)))
            row["fft"], row["fft_s"] = timed(lambda: float(conv_fft_upper_bound(w, geom)))
            row["power"], row["power_s"] = timed(lambda: float(conv_power_iteration(
                w, geom, n_iter=POWER_STEPS, generator=torch.Generator().manual_seed(0))[0]))
            row["gram_circular_own_grid"] = float(conv_gram_bound(w, replace(geom, padding_mode="circular")))
            if math.prod(geom.in_shape) <= dense_max:
                row["dense"], row["dense_s"] = timed(lambda: float(torch.linalg.matrix_norm(
                    dense_matrix(w.double(), geom), 2)))
        _, row["gram_backward_s"] = timed(lambda: gram_with_backward(w, geom))
        layers.append(row)
        print(f"{model_name}@{size} {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()
                                                       if isinstance(v, float)), flush=True)
    return {"model": model_name, "size": size, "layers": layers, "totals": totals(layers)}


def totals(layers: list[dict]) -> dict:
    def log_prod(key):
        return sum(math.log(r[key]) for r in layers)
    out = {f"{k}_s": sum(r[f"{k}_s"] for r in layers) for k in ("gram", "gram_backward", "fft", "power")}
    out.update({f"product_{k}_over_power": math.exp(log_prod(k) - log_prod("power"))
                for k in ("gram", "fft", "gram_circular_own_grid")})
    ratio = [r["gram"] / r["fft"] for r in layers]
    out["gram_over_fft_median"], out["gram_over_fft_max"] = statistics.median(ratio), max(ratio)
    ratio = [r["gram"] / r["power"] for r in layers]
    out["gram_over_power_median"], out["gram_over_power_max"] = statistics.median(ratio), max(ratio)
    dense = [r for r in layers if "dense" in r]
    out["n_convs"], out["n_dense"] = len(layers), len(dense)
    if dense:
        for k in ("gram", "fft", "power"):
            ratio = [r[k] / r["dense"] for r in dense]
            out[f"{k}_over_dense_min"], out[f"{k}_over_dense_max"] = min(ratio), max(ratio)
    return out


def convergence(model_name: str = "resnet18", size: int = 32, steps=range(9)) -> dict:
    torch.manual_seed(0)
    model = timm.create_model(model_name).eval()
    shapes = conv_input_shapes(model, torch.rand(1, 3, size, size))
    excess = {t: [] for t in steps}
    with torch.no_grad():
        for name, conv in model.named_modules():
            if isinstance(conv, nn.Conv2d):
                geom = ConvGeometry.from_module(conv, shapes[name])
                exact = float(conv_fft_upper_bound(conv.weight.double(), geom))
                for t in steps:
                    excess[t].append(float(conv_gram_bound(conv.weight.double(), geom, t)) / exact - 1)
    return {"model": model_name, "size": size,
            "steps": {str(t): {"median": statistics.median(e), "max": max(e), "min": min(e)} for t, e in excess.items()}}


# ----------------------------------------------------------------------------------------------------------------
# the warm-start outlier

def _converged(w, geom, gen, n_iter=2000):
    return conv_power_iteration(w, geom, n_iter=n_iter, generator=gen)


def _sgd_step_setup(zero_init_last: bool):
    """bench_spectral.power_errors' setup: model, geometries, kernels before (float64) and after one SGD step."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10, zero_init_last=zero_init_last)
    x = torch.rand(8, 3, 32, 32)
    shapes = conv_input_shapes(model, x)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    geoms = {n: ConvGeometry.from_module(m, shapes[n]) for n, m in convs.items()}
    before = {n: m.weight.detach().double().clone() for n, m in convs.items()}
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    F.cross_entropy(model(x), torch.randint(0, 10, (8,))).backward()
    opt.step()
    after = {n: m.weight.detach().double().clone() for n, m in convs.items()}
    return geoms, before, after


def warm_start_errors(zero_init_last: bool) -> dict:
    """One warm-started power step after the SGD step, per layer, against 2000 steps from a random start."""
    geoms, before, after = _sgd_step_setup(zero_init_last)
    gen = torch.Generator().manual_seed(0)
    layers, vectors = [], {}
    for name, geom in geoms.items():
        _, u, v = _converged(before[name], geom, gen)
        vectors[name] = (u, v)
    for name, geom in geoms.items():
        s_new = float(_converged(after[name], geom, gen)[0])
        s_warm = float(conv_power_iteration(after[name], geom, *vectors[name], n_iter=1)[0])
        change = float((after[name] - before[name]).norm() / before[name].norm())
        layers.append({"name": name, "kernel_change": change, "error": abs(s_warm - s_new) / s_new})
    errors = [r["error"] for r in layers]
    return {"zero_init_last": zero_init_last, "layers": layers, "median": statistics.median(errors),
            "max": max(errors), "n_unchanged": sum(r["kernel_change"] == 0 for r in layers)}


def top_singular(weight: torch.Tensor, geom: ConvGeometry, k: int = 8, n_iter: int = 400):
    """Top-k singular values and right vectors of the conv operator: subspace iteration on A^T A with a final
    Rayleigh-Ritz step (float64; the k-th and later pairs converge slowest, only the first few are used)."""
    x = torch.randn((k, *geom.in_shape), generator=torch.Generator().manual_seed(0), dtype=weight.dtype)
    for _ in range(n_iter):
        y = conv_adjoint(weight, geom, conv_apply(weight, geom, x)).reshape(k, -1)
        x = torch.linalg.qr(y.T)[0].T.reshape(x.shape)
    y = conv_adjoint(weight, geom, conv_apply(weight, geom, x)).reshape(k, -1)
    eig, rot = torch.linalg.eigh(x.reshape(k, -1) @ y.T)
    vectors = (rot.T @ x.reshape(k, -1)).flip(0)
    return eig.flip(0).clamp_min(0).sqrt(), vectors


def crossing(name: str) -> dict:
    """The worst layer of the default setup: singular values before/after, overlaps, warm steps, and the sweep."""
    geoms, before, after = _sgd_step_setup(True)
    geom, w0, w1 = geoms[name], before[name], after[name]
    s0, v0 = top_singular(w0, geom)
    s1, v1 = top_singular(w1, geom)
    s_update, v_update = top_singular(w1 - w0, geom)
    out = {"layer": name, "in_shape": list(geom.in_shape), "kernel": list(w0.shape),
           "kernel_change": float((w1 - w0).norm() / w0.norm()),
           "sigma_before_top4": s0[:4].tolist(), "sigma_after_top4": s1[:4].tolist(),
           "sigma_of_update_alone": float(s_update[0]),
           "overlap_old_top_with_new_top4": [abs(float(v0[0] @ v1[i])) for i in range(4)],
           "overlap_new_top_with_update_top": abs(float(v1[0] @ v_update[0]))}
    v = v0[0].reshape(geom.in_shape)  # the exact top pair before the step, as a converged warm start
    u = conv_apply(w0, geom, v)
    u = u / u.norm()
    out["warm_steps_error"] = {str(k): (float(s1[0]) - float(conv_power_iteration(w1, geom, u, v, n_iter=k)[0]))
                               / float(s1[0]) for k in (1, 2, 5, 10, 20, 50, 100)}
    sweep = []
    for s in (0.25, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
        ws = w0 + s * (w1 - w0)
        sv, vs = top_singular(ws, geom)
        warm = float(conv_power_iteration(ws, geom, u, v, n_iter=1)[0])
        sweep.append({"s": s, "sigma1": float(sv[0]), "sigma2": float(sv[1]),
                      "overlap_old_top_with_new_top": abs(float(v0[0] @ vs[0])),
                      "error": (float(sv[0]) - warm) / float(sv[0])})
    out["sweep"] = sweep
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results_gram.json"))
    parser.add_argument("--dense-max", type=int, default=2048, help="largest input size for the dense SVD")
    args = parser.parse_args()
    torch.set_num_threads(1)
    t0 = time.perf_counter()
    results = {"torch_threads": torch.get_num_threads(), "gram_iters": GRAM_ITERS, "power_steps": POWER_STEPS,
               "dense_max": args.dense_max}
    results["norms"] = [layer_norms(m, s, args.dense_max) for m, s in SETTINGS]
    for r in results["norms"]:
        print(json.dumps({"model": r["model"], "size": r["size"], **r["totals"]}, indent=2), flush=True)
    results["convergence"] = convergence()
    print(json.dumps(results["convergence"], indent=2), flush=True)
    results["warm_start"] = [warm_start_errors(True), warm_start_errors(False)]
    worst = max(results["warm_start"][0]["layers"], key=lambda r: r["error"])["name"]
    results["crossing"] = crossing(worst)
    print(json.dumps({k: v for k, v in results["crossing"].items() if k != "sweep"}, indent=2), flush=True)
    results["wall_s"] = time.perf_counter() - t0
    atomic_write_text(args.out, json.dumps(results, indent=2))
    print(f"wrote {args.out} ({results['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
