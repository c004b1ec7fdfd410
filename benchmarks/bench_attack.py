"""Benchmark of the batched decision-based attacks on a small Fashion-MNIST CNN.

Measures
  1. batching speed-up: TA on n samples as one batch vs. the same code run one sample at a
     time (same seed and sample ids, so the distances must agree), goal >= 10x;
  2. attack overhead, for every hard-label attack: its batched wall time / the time to forward
     exactly the rows it queried, in the same model calls (recorded during the attack and
     replayed: the floor no attack on this model can beat), goal <= 1.5;
  3. quality: mean and median L2 at 1K / 5K / 10K queries for TA, G-TA, HSJA and CGBA on the
     same correctly classified test samples (TA paper's rule: last iterate within the budget).

Prints a markdown table and writes benchmarks/results_attack.json (atomically).

    PYTHONPATH=. .venv/bin/python benchmarks/bench_attack.py            # ~5 min on 2 cores
    PYTHONPATH=. .venv/bin/python benchmarks/bench_attack.py --n 20 --quality-budget 2000
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from repspec_zoo import data
from repspec_zoo.attacks import HARD_LABEL_ATTACKS, AttackSettings, predict_labels, run_attack

DATA_DIR = data.FASHION_MNIST_DIR  # IDX files as distributed upstream
RESULTS = Path(__file__).with_name("results_attack.json")


def small_cnn() -> nn.Module:
    """Strided CNN, ~0.1 MMAC per image: cheap enough for 10K queries x 100 samples on CPU."""
    return nn.Sequential(
        nn.Conv2d(1, 8, 5, stride=2, padding=2), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(), nn.Linear(16 * 7 * 7, 10))


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int) -> float:
    """Adam on shuffled mini-batches of 128 for ``steps`` steps (a step count, not a time
    limit, so the same seed gives the same model on a loaded machine); returns seconds."""
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    start, done = time.perf_counter(), 0
    while done < steps:
        for idx in torch.randperm(len(x)).split(128)[:steps - done]:
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            done += 1
    return time.perf_counter() - start


class RowInvariant(nn.Module):
    """``net`` with one-row calls padded to two rows. On CPU a one-row Linear runs BLAS gemv,
    which rounds differently from the gemm used for larger calls, so a point at the boundary
    could get a different label alone than in a batch; padding makes every row's logits
    independent of the call size, so batched-vs-single equality tests the attack, not BLAS."""

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x):
        return self.net(x.expand(2, *x.shape[1:]))[:1] if len(x) == 1 else self.net(x)


class CallRecorder(nn.Module):
    """Forwards to ``net`` and keeps a copy of every call's rows (the attack's own queries: on a
    CNN, random rows run about 1.4x slower than the attack's near-boundary ones, so only a
    replay of these is a fair floor), up to ``max_rows`` rows (then whole calls stop being kept;
    ``rows`` counts them all): a long attack on large images replays a prefix of its calls."""

    def __init__(self, net: nn.Module, max_rows: int | None = None):
        super().__init__()
        self.net, self.max_rows = net, max_rows
        self.calls: list[torch.Tensor] = []
        self.rows = self.kept_rows = 0

    def forward(self, x):
        self.rows += len(x)
        if self.max_rows is None or self.kept_rows + len(x) <= self.max_rows:
            self.calls.append(x.detach().clone())
            self.kept_rows += len(x)
        return self.net(x)


@torch.no_grad()
def replay_forward(net: nn.Module, calls: list[torch.Tensor]) -> float:
    """Seconds to forward exactly the recorded rows, in the recorded calls."""
    start = time.perf_counter()
    for rows in calls:
        net(rows)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=100, help="samples attacked (all parts)")
    ap.add_argument("--speed-budget", type=int, default=1000, help="queries, parts 1-2")
    ap.add_argument("--quality-budget", type=int, default=10_000, help="queries, part 3")
    ap.add_argument("--batch-size", type=int, default=1024, help="rows per model call")
    ap.add_argument("--train-steps", type=int, default=2500, help="~1 min on one core")
    ap.add_argument("--repeats", type=int, default=2,
                    help="timed repeats of the batched attack and the replay (min is kept)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1: stable timings on a shared machine)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data-dir", type=Path, default=DATA_DIR)
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    x_train, y_train = data.as_tensors(data.load_split(args.data_dir, "train"))  # (N, 1, 28, 28) in [0, 1]
    x_test, y_test = data.as_tensors(data.load_split(args.data_dir, "test"))
    net = small_cnn()
    train_seconds = train(net, x_train, y_train, args.train_steps)
    net = RowInvariant(net).eval()
    pred = predict_labels(net, x_test, 2048)
    test_acc = (pred == y_test).float().mean().item()
    keep = (pred == y_test).nonzero().flatten()[:args.n]  # first n correctly classified
    x, y = x_test[keep], y_test[keep]
    print(f"trained {args.train_steps} steps in {train_seconds:.0f}s: test accuracy "
          f"{test_acc:.4f}; "
          f"attacking {len(x)} correctly classified test images")

    # 1. batched vs one at a time (same seed, same per-sample ids -> same random streams);
    # timings on a shared machine are noisy: the min over repeats is kept
    settings = AttackSettings(seed=args.seed, batch_size=args.batch_size)
    t_batched = math.inf
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        batched = run_attack("ta", net, x, y, args.speed_budget, settings)
        t_batched = min(t_batched, time.perf_counter() - t0)
    t0 = time.perf_counter()
    single_l2 = torch.empty(len(x))
    for i in range(len(x)):
        res = run_attack("ta", net, x[i:i + 1], y[i:i + 1], args.speed_budget, settings, sample_ids=[i])
        single_l2[i] = res.l2[0]
    t_single = time.perf_counter() - t0
    diff = (single_l2 - batched.l2).abs()

    # 2. overhead: each attack against a replay of its own model calls (incl. the final verify)
    overhead = {}
    for name in HARD_LABEL_ATTACKS:
        t_attack, t_floor = math.inf, math.inf
        for _ in range(args.repeats):
            rec = CallRecorder(net).eval()
            t0 = time.perf_counter()
            res = run_attack(name, rec, x, y, args.speed_budget, settings)
            t_attack = min(t_attack, time.perf_counter() - t0)
            t_floor = min(t_floor, replay_forward(net, rec.calls))
        overhead[name] = {"seconds_attack": t_attack, "seconds_forward_only": t_floor,
                          "model_calls": len(rec.calls), "queries": int(res.queries.sum()),
                          "ratio": t_attack / t_floor}
        del rec

    # 3. quality at 1K / 5K / 10K
    budgets = [b for b in (1000, 5000, 10_000) if b <= args.quality_budget]
    quality = {}
    for name in HARD_LABEL_ATTACKS:
        t0 = time.perf_counter()
        res = run_attack(name, net, x, y, args.quality_budget, settings)
        at = res.l2_at_budgets(budgets)
        quality[name] = {
            "seconds": time.perf_counter() - t0,
            "success": float(res.success.float().mean()),
            "l2_mean": {str(b): float(at[:, j].mean()) for j, b in enumerate(budgets)},
            "l2_median": {str(b): float(at[:, j].median()) for j, b in enumerate(budgets)},
        }

    results = {
        "setup": {"n_samples": len(x), "speed_budget": args.speed_budget,
                  "quality_budget": args.quality_budget, "batch_size": args.batch_size,
                  "threads": args.threads, "seed": args.seed, "repeats": args.repeats,
                  "train_steps": args.train_steps, "train_seconds": train_seconds,
                  "clean_acc": test_acc, "model": "strided CNN 8-16 (Fashion-MNIST)",
                  "torch": torch.__version__, "machine": platform.processor() or platform.machine(),
                  "cpus": os.cpu_count()},
        "batching": {"seconds_batched": t_batched, "seconds_one_at_a_time": t_single,
                     "speedup": t_single / t_batched,
                     "l2_max_abs_diff": float(diff.max()),
                     "l2_equal_fraction": float((diff == 0).float().mean())},
        "overhead": overhead,
        "quality": quality,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=args.out.parent, delete=False, suffix=".tmp") as f:
        json.dump(results, f, indent=2)
    os.replace(f.name, args.out)

    b = results["batching"]
    print("\n| measure | value | goal |\n|---|---|---|")
    print(f"| TA {args.speed_budget} q, {len(x)} samples: one-at-a-time / batched time | "
          f"{t_single:.1f}s / {t_batched:.1f}s = {b['speedup']:.1f}x | >= 10x |")
    print(f"| distances equal (batched vs one at a time) | {b['l2_equal_fraction']:.0%} "
          f"(max diff {b['l2_max_abs_diff']:.2e}) | 100% |")
    for name, o in overhead.items():
        print(f"| {name} / replay of its own {o['model_calls']} calls ({o['queries']} queries) | "
              f"{o['seconds_attack']:.1f}s / {o['seconds_forward_only']:.1f}s = {o['ratio']:.2f} | <= 1.5 |")
    head = " | ".join(f"mean L2 @{b // 1000}K" for b in budgets)
    print(f"\n| attack | {head} | median @{budgets[-1] // 1000}K | success | time |")
    print("|---" * (len(budgets) + 4) + "|")
    for name, q in quality.items():
        cells = " | ".join(f"{q['l2_mean'][str(b)]:.3f}" for b in budgets)
        print(f"| {name} | {cells} | {q['l2_median'][str(budgets[-1])]:.3f} | "
              f"{q['success']:.0%} | {q['seconds']:.0f}s |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
