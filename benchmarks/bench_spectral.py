"""Speed and accuracy of the operator-norm machinery (issue: foundation benchmark).

Measures, in one run so that machine-load swings cancel in the ratios:
1. training-step time ratio regularized / plain: timm resnet18, 32x32, batch 128, CPU,
   rep-spectral with a power step every step (every=1) and every 16 steps;
2. exact FFT sigma_max of all convs of timm resnet50 at 224x224 (circular operator): wall time
   and peak resident memory of that phase;
3. relative error of power iteration vs the converged value after k steps from random
   vectors (k = 1, 10, 100), and after ONE warm-started step following an SGD update.

Usage:  python benchmarks/bench_spectral.py [--steps 20] [--out benchmarks/results_spectral.json]
"""
from __future__ import annotations

import argparse
import json
import resource
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
from repspec_zoo.spectral import ConvGeometry, attach_spectral, conv_fft_sigma, conv_power_iteration


def conv_input_shapes(model: nn.Module, x: torch.Tensor) -> dict[str, tuple]:
    shapes, hooks = {}, []
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_pre_hook(
                lambda mod, a, name=name: shapes.__setitem__(name, tuple(a[0].shape[1:])) or None))
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return shapes


def step_times(every: int | None, steps: int, batch: int = 128) -> list[float]:
    """Seconds per SGD step of resnet18 on 32x32 inputs; every=None means no regularizer."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    if every is not None:
        attach_spectral(model, gamma=1e-3, mode="rep", every=every)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    x, y = torch.rand(batch, 3, 32, 32), torch.randint(0, 10, (batch,))
    times = []
    for i in range(steps + 3):  # 3 warm-up steps (first forward records shapes, warm-up iterations)
        t = time.perf_counter()
        loss = F.cross_entropy(model(x), y)
        if every is not None:
            loss = loss + model.spectral.penalty()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return times


def interleaved_ratios(steps: int) -> dict:
    """Alternate plain/regularized blocks so slow phases of a shared machine hit both alike."""
    blocks = {None: [], 1: [], 16: []}
    for _ in range(3):
        for every in blocks:
            blocks[every] += step_times(every, steps // 3)
    plain = statistics.median(blocks[None])
    return {"plain_s_per_step": plain,
            "ratio_every_1": statistics.median(blocks[1]) / plain,
            "ratio_every_16": statistics.median(blocks[16]) / plain}


def resnet50_fft() -> dict:
    model = timm.create_model("resnet50").eval()
    shapes = conv_input_shapes(model, torch.rand(1, 3, 224, 224))
    convs = dict((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d))
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t = time.perf_counter()
    sigmas = {}
    for name, conv in convs.items():
        geom = replace(ConvGeometry.from_module(conv, shapes[name]), padding_mode="circular")
        sigmas[name] = float(conv_fft_sigma(conv.weight, geom, vectors=False)[0])
    seconds = time.perf_counter() - t
    peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    t = time.perf_counter()
    with torch.no_grad():
        for name, conv in convs.items():
            conv_power_iteration(conv.weight, ConvGeometry.from_module(conv, shapes[name]), n_iter=1)
    power_step = time.perf_counter() - t
    return {"n_convs": len(convs), "fft_all_convs_s": seconds, "peak_rss_gb": peak_gb,
            "rss_before_gb": rss_before / 2**20, "one_power_step_all_convs_s": power_step}


def power_errors() -> dict:
    """Relative error |sigma_k - sigma_ref| / sigma_ref over the convs of resnet18 at 32x32."""
    torch.manual_seed(0)
    model = timm.create_model("resnet18", num_classes=10)
    x = torch.rand(8, 3, 32, 32)
    shapes = conv_input_shapes(model, x)
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    geoms = {n: ConvGeometry.from_module(m, shapes[n]) for n, m in convs.items()}
    gen = torch.Generator().manual_seed(0)
    errors = {k: [] for k in (1, 10, 100)}
    ref, vecs = {}, {}
    for name, conv in convs.items():
        w = conv.weight.detach().double()
        s_ref, u, v = conv_power_iteration(w, geoms[name], n_iter=2000, generator=gen)
        ref[name], vecs[name] = float(s_ref), (u, v)
        for k in errors:
            s = conv_power_iteration(w, geoms[name], n_iter=k, generator=torch.Generator().manual_seed(1))[0]
            errors[k].append(abs(float(s) - ref[name]) / ref[name])
    # one SGD step, then one warm-started power step from the previous vectors
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    F.cross_entropy(model(x), torch.randint(0, 10, (8,))).backward()
    opt.step()
    warm = []
    for name, conv in convs.items():
        w = conv.weight.detach().double()
        s_new = float(conv_power_iteration(w, geoms[name], n_iter=2000, generator=gen)[0])
        s_warm = float(conv_power_iteration(w, geoms[name], *vecs[name], n_iter=1)[0])
        warm.append(abs(s_warm - s_new) / s_new)
    summary = {f"k={k}": {"median": statistics.median(e), "max": max(e)} for k, e in errors.items()}
    summary["warm_1_step_after_sgd_update"] = {"median": statistics.median(warm), "max": max(warm)}
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per variant")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results_spectral.json"))
    args = parser.parse_args()
    results = {"torch_threads": torch.get_num_threads()}
    results["step_time"] = interleaved_ratios(args.steps)
    print(json.dumps(results["step_time"], indent=2))
    results["power_iteration_error"] = power_errors()
    print(json.dumps(results["power_iteration_error"], indent=2))
    results["resnet50_224"] = resnet50_fft()  # last: its peak RSS is the process peak
    print(json.dumps(results["resnet50_224"], indent=2))
    atomic_write_text(args.out, json.dumps(results, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
