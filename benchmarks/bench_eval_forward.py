"""Speed and memory of the evaluation forward: eager vs channels_last vs BatchNorm folded vs torch.compile.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_eval_forward.py
    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_eval_forward.py --old OLD_CHECKOUT --demo

One process, one thread, everything interleaved so that the ratios share the machine's load:
  1. forward: rows/s of the no-grad logits of each bundled model at several batch sizes, for
     ``eager`` (the forward before fast_eval), ``channels_last`` (that layout alone), ``folded``
     (fast_eval(): channels_last + BatchNorm folded into the convs) and ``compiled``
     (fast_eval(compile=True): folded + torch.compile); rounds alternate variants and batch sizes, the median
     round is reported, with the peak resident memory of each measurement (VmHWM, reset before
     it), the compile time and the largest logit difference from eager on 1000 test images;
  2. gradient: rows/s of forward + input-gradient backward (what the white-box attacks run, at
     the demo's 50 rows) for the same variants (compiled: torch.compile with autograd);
  3. agreement: the same attacks on the same images with the eager and the fast_eval model: the
     fraction of samples whose best distance changes and by how much (boundary ties);
  4. training: step time (forward + backward + SGD step) of the small ResNet, torch.compile'd / eager;
  5. commands (``--old``): the reduced leaderboard (`LEADERBOARD_ARGS`, one thread) and with
     ``--demo`` also `make demo`'s full leaderboard (its two threads), run with the code of an
     older checkout and with this one, alternately: wall time and peak memory.
Writes benchmarks/results_eval_forward.json (atomically).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import repspec_zoo  # noqa: F401  (registers the zoo's architectures with timm)
from repspec_zoo import data
from repspec_zoo.models.normalize import NormalizedModel
from repspec_zoo.evaluation.evaluate import EVAL_BATCH_SIZE, evaluate
from repspec_zoo.io import atomic_write_text
from repspec_zoo.evaluation.leaderboard import common_indices, load_zoo_model
from repspec_zoo.loader import load_model

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).with_name("results_eval_forward.json")
MODELS = ("resnet_small_baseline.fmnist", "slp_baseline.fmnist")
BATCH_SIZES = (64, 128, 256, 1000)
SECTIONS = ("forward", "gradient", "agreement", "training", "commands")
LEADERBOARD_ARGS = ["--models", *MODELS, "--n", "20", "--budgets", "500"]


def plain(name: str) -> NormalizedModel:
    """The zoo model as evaluated before fast_eval: eager, contiguous (NCHW) memory format."""
    return NormalizedModel(load_model(name)).eval()


def channels_last_only(eager: NormalizedModel) -> NormalizedModel:
    """The eager model in channels_last memory format, inputs converted in `forward`; nothing folded."""
    model = copy.deepcopy(eager).to(memory_format=torch.channels_last)
    model.channels_last = True
    return model


def variants_of(name: str) -> dict[str, NormalizedModel]:
    eager = plain(name)
    return {"eager": eager, "channels_last": channels_last_only(eager),
            "folded": copy.deepcopy(eager).fast_eval(), "compiled": copy.deepcopy(eager).fast_eval(compile=True)}


def peak_gb() -> float:
    """Peak resident memory of this process since the last `reset_peak` (VmHWM), GB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")  # Linux: VmHWM := current RSS


def rows_per_s(call, rows: int, seconds: float) -> float:
    """``rows`` / the mean time of ``call()`` over ``seconds``."""
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        call()
        done += rows
    return done / (time.perf_counter() - start)


def forward_rows_per_s(model, x: torch.Tensor, seconds: float) -> float:
    """No-grad logits, after one warm-up call."""
    with torch.no_grad():
        model(x)
        return rows_per_s(lambda: model(x), len(x), seconds)


def forward(x: torch.Tensor, rounds: int, seconds: float) -> dict:
    out = {}
    for name in MODELS:
        variants = variants_of(name)
        eager = variants["eager"]
        start = time.perf_counter()
        with torch.no_grad():
            variants["compiled"](x[:BATCH_SIZES[0]])
        compile_s = time.perf_counter() - start
        with torch.no_grad():
            ref = eager(x[:1000])
            diff = {k: float((m(x[:1000]) - ref).abs().max()) for k, m in variants.items()}
        rates = {(k, b): [] for k in variants for b in BATCH_SIZES}
        peaks = {key: 0.0 for key in rates}
        for _ in range(rounds):
            for b in BATCH_SIZES:
                for k, m in variants.items():
                    reset_peak()
                    rates[k, b].append(forward_rows_per_s(m, x[:b], seconds))
                    peaks[k, b] = max(peaks[k, b], peak_gb())
        table = {k: {str(b): dict(rows_per_s=statistics.median(rates[k, b]), peak_rss_gb=peaks[k, b],
                                  vs_eager=statistics.median(r / e for r, e in zip(rates[k, b], rates["eager", b])))
                     for b in BATCH_SIZES} for k in variants}
        out[name] = dict(compile_s=compile_s, max_logit_diff_vs_eager=diff, by_variant=table)
        print(name, json.dumps(out[name], indent=1), flush=True)
    return out


def gradient(x: torch.Tensor, y: torch.Tensor, rounds: int, seconds: float, rows: int = 50) -> dict:
    """rows/s of forward + backward to the input (parameters frozen, as in the white-box attacks)."""
    out = {}
    xb, yb = x[:rows], y[:rows]

    def step(fn) -> None:
        u = xb.clone().requires_grad_()
        torch.autograd.grad(F.cross_entropy(fn(u), yb), u)

    for name in MODELS:
        variants = variants_of(name)
        for model in variants.values():
            model.requires_grad_(False)
        folded = variants.pop("compiled")  # the same model; its compiled forward serves no-grad calls only
        fns = dict(variants, compiled=torch.compile(folded.forward, dynamic=True))
        start = time.perf_counter()
        step(fns["compiled"])  # compiles forward and backward
        compile_s = time.perf_counter() - start
        rates = {k: [] for k in fns}
        for _ in range(rounds):
            for k, fn in fns.items():
                rates[k].append(rows_per_s(lambda: step(fn), rows, seconds))
        out[name] = dict(rows=rows, compile_s=compile_s, by_variant={
            k: dict(rows_per_s=statistics.median(r),
                    vs_eager=statistics.median(a / e for a, e in zip(r, rates["eager"]))) for k, r in rates.items()})
        print(name, "gradient", json.dumps(out[name]), flush=True)
    return out


def agreement(x, y, n: int, budgets: list[int], attack: str) -> dict:
    out = {}
    models = {name: plain(name) for name in MODELS}
    index = common_indices(models, x, y, n, 0, EVAL_BATCH_SIZE).tolist()
    for name in MODELS:
        runs = {}
        for label, model in (("eager", plain(name)), ("fast", load_zoo_model(name))):
            start = time.perf_counter()
            result = evaluate(model, (x, y), model_name=name, budgets=budgets, attack=attack, indices=index,
                              batch_size=EVAL_BATCH_SIZE, lemma1=False, progress=False)
            runs[label] = (torch.tensor([float(v) for v in result.per_sample["l2"][str(budgets[-1])]]),
                           time.perf_counter() - start)
        (a, wall_a), (b, wall_b) = runs["eager"], runs["fast"]
        both = torch.isfinite(a) & torch.isfinite(b)
        changed = (a != b) & ~(torch.isinf(a) & torch.isinf(b))
        rel = ((b - a).abs() / a)[both & changed]
        moved = (torch.isfinite(a) != torch.isfinite(b)) | (both & ((b - a).abs() > 1e-3 * a))
        out[name] = dict(n=len(a), changed_fraction=float(changed.float().mean()),
                         moved_fraction=float(moved.float().mean()),
                         changed_max_rel=float(rel.max()) if len(rel) else 0.0,
                         changed_median_rel=float(rel.median()) if len(rel) else 0.0,
                         success_changed=int((torch.isfinite(a) != torch.isfinite(b)).sum()),
                         mean_l2=dict(eager=float(a[both].mean()), fast=float(b[both].mean())),
                         wall_s=dict(eager=wall_a, fast_incl_setup=wall_b))
        print(name, out[name], flush=True)
    return dict(attack=attack, budgets=budgets, models=out)


def training(x, y, steps: int, rounds: int, batch: int = 128) -> dict:
    def make():
        torch.manual_seed(0)
        return repspec_zoo.models.zoo.create_model("resnet_small", num_classes=10).train()

    eager, compiled = make(), torch.compile(make())
    opts = {k: torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9) for k, m in (("eager", eager), ("compiled", compiled))}
    xb, yb = x[:batch], y[:batch]

    def step(model, opt):
        loss = F.cross_entropy(model(xb), yb)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    start = time.perf_counter()
    step(compiled, opts["compiled"])
    compile_s = time.perf_counter() - start
    times = {"eager": [], "compiled": []}
    for _ in range(rounds):
        for k, m in (("eager", eager), ("compiled", compiled)):
            start = time.perf_counter()
            for _ in range(steps):
                step(m, opts[k])
            times[k].append((time.perf_counter() - start) / steps)
    ratio = statistics.median(c / e for c, e in zip(times["compiled"], times["eager"]))
    return dict(model="resnet_small", batch=batch, compile_s=compile_s, eager_s_per_step=statistics.median(times["eager"]),
                compiled_s_per_step=statistics.median(times["compiled"]), compiled_over_eager=ratio)


# the command's own process: wall time, peak RSS (ru_maxrss) and peak anonymous memory (RssAnon,
# sampled every 5 ms). RSS also counts the shared libraries' file pages (torch's CUDA build maps
# 0.4-0.6 GB of them on a CPU machine, more when they sit in the page cache after an install);
# RssAnon is what the process itself allocated, the part the code controls.
CHILD = """
import resource, runpy, threading, time
peak = [0]
def sample():
    while True:
        for line in open('/proc/self/status'):
            if line.startswith('RssAnon:'):
                peak[0] = max(peak[0], int(line.split()[1]))
        time.sleep(0.005)
threading.Thread(target=sample, daemon=True).start()
t = time.perf_counter()
try:
    runpy.run_module('repspec_zoo.cli', run_name='__main__', alter_sys=True)
except SystemExit as done:  # the console entry point exits with the command's status
    if done.code not in (0, None):
        raise
print('BENCH', time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, peak[0])
"""


def command(old_root: Path, args: list[str], threads: int, repeats: int) -> dict:
    """`repspec-zoo leaderboard ARGS` with the old code and with this code alternately: wall seconds,
    peak RSS and peak anonymous memory (GB) of the command's own process (see `CHILD`)."""
    runs = {"old": [], "new": []}
    for _ in range(repeats):
        for label, root in (("old", old_root), ("new", ROOT)):
            with tempfile.TemporaryDirectory() as out:
                cmd = [sys.executable, "-c", CHILD, "leaderboard", *args, "--out", out]
                env = dict(os.environ, PYTHONPATH=str(root), OMP_NUM_THREADS=str(threads))
                text = subprocess.run(cmd, env=env, cwd=root, check=True, capture_output=True, text=True).stdout
            wall, rss_kb, anon_kb = text.rsplit("BENCH", 1)[1].split()
            runs[label].append(dict(wall_s=float(wall), peak_rss_gb=int(rss_kb) / 2 ** 20,
                                    peak_anon_gb=int(anon_kb) / 2 ** 20))
            print(label, args, runs[label][-1], flush=True)
    return dict(args=args, threads=threads, runs=runs,
                old_over_new_wall=statistics.median(o["wall_s"] / n["wall_s"] for o, n in zip(runs["old"], runs["new"])))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=0.5, help="per measurement")
    ap.add_argument("--n", type=int, default=20, help="attacked images per model (agreement)")
    ap.add_argument("--budgets", default="500")
    ap.add_argument("--attack", default="ta,cgba,fmn")
    ap.add_argument("--old", type=Path, help="a checkout of older code to run the leaderboard commands against")
    ap.add_argument("--demo", action="store_true", help="with --old: also `make demo`'s full leaderboard (minutes)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--sections", default=",".join(SECTIONS),
                    help="comma-separated subset of " + ",".join(SECTIONS) + "; the other sections of an existing "
                         "--out are kept")
    args = ap.parse_args(argv)
    sections = args.sections.split(",")
    torch.set_num_threads(1)
    x, y = data.as_tensors(data.load_split("fashion_mnist", "test"))
    results = json.loads(args.out.read_text()) if args.out.is_file() and set(sections) != set(SECTIONS) else {}
    results["setup"] = dict(results.get("setup", {}), threads=1, torch=torch.__version__, models=MODELS,
                            batch_sizes=BATCH_SIZES, rounds=args.rounds)
    results["setup"][f"load_avg_start_{sections[0]}"] = os.getloadavg()[0]
    if "forward" in sections:
        results["forward"] = forward(x, args.rounds, args.seconds)
    if "gradient" in sections:
        results["gradient"] = gradient(x, y, args.rounds, args.seconds)
    if "agreement" in sections:
        results["agreement"] = agreement(x, y, args.n, [int(q) for q in args.budgets.split(",")], args.attack)
    if "training" in sections:
        results["training"] = training(x, y, steps=5, rounds=args.rounds)
        print(results["training"], flush=True)
    if "commands" in sections and args.old:
        results["leaderboard"] = command(args.old, LEADERBOARD_ARGS, threads=1, repeats=1)
        if args.demo:  # the Makefile's demo: every bundled model, default n / budgets / attacks, 2 threads
            results["demo"] = command(args.old, [], threads=2, repeats=1)
    results["setup"][f"load_avg_end_{sections[-1]}"] = os.getloadavg()[0]
    atomic_write_text(args.out, json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
