"""The GPU check: what rep-spectral training, the Tangent Attack and exact FFT norms cost on one GPU.

    benchmarks/gpu_check.sh                 # one GPU (--budget-s guards the training variants)
    benchmarks/gpu_check.sh --tiny          # CPU, under a minute (tests/test_gpu_check.py)

Sections, each guarded (a failing one records ``{"error": "Type: message"}`` and the rest still run):

1. ``train_step``: ms per optimizer step (forward + backward + SGD step, device synchronized after
   each step, warm-up steps first) of ResNet-50 at 224, batch 128 per device (the ImageNet recipe's
   4 x 128), built and stepped as ``recipes/train.py`` does (``load_config`` of the shipped ImageNet
   configs, ``build_model``, ``check_input``, ``TrainingModule``, ``build_optimizer``, Accelerate
   ``prepare`` with ``mixed_precision``, ``Trainer._train_step`` with the penalty on). Variants:
   ``plain`` (imagenet_resnet50_baseline), the penalty in the loss with a power update every step
   (``every_1``) and every 16 steps (``every_n``; imagenet_resnet50_repspectral_paper_text), and the
   authors' ``direct`` step (imagenet_resnet50_repspectral: no penalty in the loss, a direct step
   every 80 optimizer steps, timed on its own). ``ms_amortized``: the mean over whole update periods
   (loss variants), or the median step plus the median direct step / every (direct);
   ``ratio_vs_plain``: ms_amortized / plain's. bf16 autocast first (the fast choice on GPUs), fp32
   (``mixed_precision: "no"``, what the configs ship) last, if the budget allows.
2. ``attack``: Tangent Attack (``run_attack('ta')``, fp32 as ``repspec-zoo eval`` runs it) on a
   random-init ResNet-50 at 224, 500 images at 10k queries: the labels are the model's own
   predictions (so every sample counts as correctly classified), starts from a pool of other
   images. ``rows_per_s``: model rows queried (attack and final verification) per second of attack
   wall time; ``floor_rows_per_s``: the first ``attack_record_rows`` of those rows replayed as plain
   forwards in the same calls; ``ratio`` = attack time / the time of all rows at the floor rate.
   ``leaderboard``: ``repspec-zoo leaderboard`` at the published settings (500 images, budgets to
   10k, the default ensemble) on the bundled models, on the GPU, into ``--leaderboard-out``: wall
   time in total and per model and attack, the rows each attack ran and the model's forward floor
   (rows/s of its no-grad forward at the same batch size). Every section records its peak memory
   (``peak_gpu_gb``: torch's peak allocation; ``peak_rss_gb``: the process's peak resident set).
   ``eval_precision``: do TF32 (cuDNN's default for convolutions) or bf16 autocast change what the
   evaluation measures? Per bundled model: test labels that differ from strict float32's, and the
   paired change of the Tangent Attack's mean L2 (same seed and images) with its CI and time ratio.
3. ``fft_norms``: exact sigma_max of the circularly padded operator of every ResNet-50 conv at its
   input size for a 224 input (``conv_fft_sigma``, float64 as the regularizer's ``estimator: fft``),
   per layer and in total, and ``power_iters`` power-iteration steps on the same operators for
   comparison (a lower bound: rel_gap = (fft - power) / fft >= 0 up to rounding).

Writes benchmarks/results_gpu_check.json (atomically) and prints the tables benchmarks/README.md
shows (``render_readme.gpu_check``). Training variants do not start after ``--budget-s`` seconds
(they record ``skipped``); the other sections always run. ``--tiny`` runs
everything on CPU with the TINY settings (ResNet-50 at 32x32, batch 4, a few steps, 4 attacked
images) and also checks the FFT norms of the small layers against the SVD of the dense operator.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import gc
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import accelerate
import timm
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState

from repspec_zoo.attacks import AttackSettings, StartPool, predict_labels, run_attack
from repspec_zoo.models.normalize import NormalizedModel
from repspec_zoo.io import atomic_write_text
from repspec_zoo.training import Trainer, TrainingModule, build_model, build_optimizer, check_input, load_config
from repspec_zoo.spectral import ConvGeometry, conv_fft_sigma, conv_power_iteration
from repspec_zoo.spectral.operator import conv_adjoint, conv_apply

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling benchmarks, also under runpy
from bench_attack import CallRecorder, replay_forward  # noqa: E402
from bench_spectral import conv_input_shapes  # noqa: E402
from render_readme import gpu_check as render  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "configs"
RESULTS = ROOT / "benchmarks" / "results_gpu_check.json"
TINY_RESULTS = Path(tempfile.gettempdir()) / "results_gpu_check_tiny.json"  # never over the GPU results
#: variant -> (shipped config, overrides beyond the common ones)
VARIANTS = {
    "plain": ("imagenet_resnet50_baseline.yaml", []),
    "every_1": ("imagenet_resnet50_repspectral_paper_text.yaml", ["regularizer.every=1"]),
    "every_n": ("imagenet_resnet50_repspectral_paper_text.yaml", ["regularizer.every={every_amortized}"]),
    "direct": ("imagenet_resnet50_repspectral.yaml", []),
}
PRECISIONS = {"bf16": "bf16", "fp32": "no"}  # result key -> mixed_precision


@dataclass(frozen=True)
class Settings:
    """What one run measures; ``TINY`` is the CPU variant the tests run."""

    device: str = "cuda"
    img_size: int = 224
    batch_size: int = 128  # per device: the ImageNet recipe's 4 GPUs x 128
    warmup_steps: int = 10
    timed_steps: int = 48  # a multiple of every_amortized: whole update periods
    every_amortized: int = 16
    direct_repeats: int = 3  # timed direct steps, after one untimed
    precisions: tuple[str, ...] = ("bf16", "fp32")
    attack_n: int = 500
    attack_pool: int = 64
    attack_budget: int = 10_000
    attack_batch: int = 1024  # rows per model call
    attack_record_rows: int = 4096  # rows kept for the forward-floor replay (2.4 GB at 224)
    leaderboard_args: tuple[str, ...] = ("--n", "500", "--budgets", "1000,2000,5000,10000", "--batch-size", "1024")
    precision_models: tuple[str, ...] = ("slp_repspectral.fmnist", "resnet_small_repspectralbn.fmnist")
    precision_modes: tuple[str, ...] = ("tf32", "bf16")  # each against strict float32
    precision_test: int = 10_000  # test images whose labels are compared
    precision_n: int = 500  # of those, correctly classified ones attacked by TA under each precision
    precision_budget: int = 2000
    power_iters: int = 100
    dense_max_dim: int = 0  # also SVD the dense operator of the k x k convs (k > 1) with sides <= this and 4x this
    budget_s: float = 240.0  # no training variant starts after this many seconds
    note: str = "ResNet-50 (timm resnet50, random init, 1000 classes) at 224x224"


TINY = Settings(device="cpu", img_size=32, batch_size=4, warmup_steps=2, timed_steps=4, every_amortized=4,
                direct_repeats=1, precisions=("bf16",), attack_n=4, attack_pool=8, attack_budget=40, attack_batch=64,
                attack_record_rows=64, power_iters=30, dense_max_dim=512, budget_s=120.0,
                leaderboard_args=("--models", "slp_baseline.fmnist", "slp_repspectral.fmnist", "--n", "3",
                                  "--budgets", "10,20"),
                precision_models=("slp_baseline.fmnist",), precision_modes=("bf16",), precision_test=200,
                precision_n=4, precision_budget=40,
                note="tiny: ResNet-50 at 32x32 on CPU, batch 4, 2 warm-up + 4 timed steps, every=4 instead of 16, "
                     "bf16 only, TA on 4 images with 40 queries; FFT norms checked against dense SVDs; the "
                     "leaderboard of two bundled models on 3 images at 20 queries; bf16 against float32 on one bundled model")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(device: torch.device, fn, *args, **kwargs):
    """(fn(*args, **kwargs), seconds), the device synchronized before and after."""
    _sync(device)
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    _sync(device)
    return out, time.perf_counter() - start


# ----------------------------------------------------------------------------- 1. train step
def _step_times(name: str, mixed_precision: str, s: Settings, device: torch.device) -> dict:
    """Time one variant, built as recipes/train.py builds it."""

    config, extra = VARIANTS[name]
    overrides = [f"batch_size={s.batch_size}", f"mixed_precision={mixed_precision}", "num_classes=1000",
                 "regularizer.burn_in_epochs=0", *(o.format(every_amortized=s.every_amortized) for o in extra)]
    cfg = load_config(CONFIGS / config, overrides)
    torch.manual_seed(0)
    model = build_model(cfg)
    check_input(model, torch.rand(3, s.img_size, s.img_size), cfg)
    net, optimizer = TrainingModule(model), build_optimizer(cfg, model)
    accelerator = Accelerator(mixed_precision=cfg.mixed_precision, cpu=device.type == "cpu")
    try:
        net, optimizer = accelerator.prepare(net, optimizer)
        with tempfile.TemporaryDirectory() as run_dir:  # the Trainer writes nothing here unless it checkpoints
            trainer = Trainer(accelerator, cfg, net, optimizer, [], [], Path(run_dir))
            x = torch.rand(s.batch_size, 3, s.img_size, s.img_size, device=accelerator.device)
            y = torch.randint(0, cfg.num_classes, (s.batch_size,), device=accelerator.device)
            for _ in range(s.warmup_steps):
                trainer._train_step(x, y, True)
            steps = [_timed(device, trainer._train_step, x, y, True)[1] for _ in range(s.timed_steps)]
            # the Trainer follows every `every`-th optimizer step with this (SpectralRegularizer.direct_step)
            direct = [_timed(device, model.spectral.direct_step)[1]
                      for _ in range(1 + s.direct_repeats)][1:] if cfg.regularizer.apply == "direct" else []
    finally:
        accelerator.free_memory()
        AcceleratorState._reset_state(reset_partial_state=True)  # the next variant builds its own Accelerator
        GradientState._reset_state()
    ms = [1e3 * t for t in steps]
    spectral = getattr(model, "spectral", None)
    out = {"config": config, "overrides": overrides, "ms_median": statistics.median(ms), "ms_min": min(ms),
           "ms_amortized": statistics.fmean(ms), "regularized_layers": len(spectral.layer_names) if spectral else 0}
    if direct:
        every = cfg.regularizer.every
        out.update(every=every, direct_step_ms=1e3 * statistics.median(direct),
                   ms_amortized=out["ms_median"] + 1e3 * statistics.median(direct) / every)
    elif name != "plain":
        out["every"] = cfg.regularizer.every
    return out


def train_step(s: Settings, device: torch.device, precision: str, deadline: float) -> dict:
    """All variants at one precision; a variant that fails or has no time left records why."""
    result = {"mixed_precision": PRECISIONS[precision]}
    for name in VARIANTS:
        if time.perf_counter() > deadline:
            result[name] = {"skipped": f"--budget-s {s.budget_s:g} spent"}
            continue
        result[name] = guarded(_step_times, name, PRECISIONS[precision], s, device)
    plain = result["plain"].get("ms_amortized")
    for name in VARIANTS:
        if plain and "ms_amortized" in result[name]:
            result[name]["ratio_vs_plain"] = result[name]["ms_amortized"] / plain
    return result


# ----------------------------------------------------------------------------- 2. attack
def candidate_images(n: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """n images in [0, 1]: alternately uniform noise and smooth colour blobs (bilinear 4x4 noise),
    so that even a random-init network gives them more than one label."""
    noise = torch.rand(n, 3, size, size, generator=generator)
    blobs = torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=generator), size=size,
                                            mode="bilinear", align_corners=False)
    return torch.where(torch.arange(n)[:, None, None, None] % 2 == 0, noise, blobs)


def attack(s: Settings, device: torch.device) -> dict:
    torch.manual_seed(0)
    net = NormalizedModel(timm.create_model("resnet50", num_classes=1000)).to(device).eval()
    images = candidate_images(s.attack_n + s.attack_pool, s.img_size, torch.Generator().manual_seed(0)).to(device)
    labels = predict_labels(net, images, s.attack_batch)  # also the warm-up forwards
    x, y = images[:s.attack_n], labels[:s.attack_n]
    pool = StartPool(images[s.attack_n:], labels[s.attack_n:])
    recorder = CallRecorder(net, max_rows=s.attack_record_rows).eval()
    result, seconds = _timed(device, run_attack, "ta", recorder, x, y, s.attack_budget,
                             AttackSettings(seed=0, batch_size=s.attack_batch), starts=pool)
    _, floor_seconds = _timed(device, replay_forward, net, recorder.calls)
    rows, kept = recorder.rows, recorder.kept_rows
    del recorder  # the recorded rows: 0.6 MB each at 224
    floor_rows_per_s = kept / floor_seconds  # the replayed prefix of the attack's own calls
    return {"n": s.attack_n, "budget": s.attack_budget, "batch_size": s.attack_batch, "pool": s.attack_pool,
            "distinct_labels": len(labels.unique()), "success": float(result.success.float().mean()),
            "queries": int(result.queries.sum()), "rows": rows, "replayed_rows": kept,
            "seconds": seconds, "floor_seconds_replayed": floor_seconds, "rows_per_s": rows / seconds,
            "floor_rows_per_s": floor_rows_per_s, "ratio": seconds / (rows / floor_rows_per_s),
            "l2_median": float(result.l2.median())}


# ----------------------------------------------------------------------------- 2b. published leaderboard
def leaderboard(s: Settings, device: torch.device, out_dir: Path) -> dict:
    """`repspec-zoo leaderboard` with the published settings (``s.leaderboard_args``: 500 images,
    budgets to 10k, the default ensemble) on the bundled models, on ``device`` (the leaderboard
    puts each model on the GPU when there is one), into ``out_dir``. Per model and attack: wall
    seconds and the rows it ran (hard-label queries; white-box forward + backward passes), and the
    forward floor: rows/s of the model's own no-grad forward on the attacked images at the same
    batch size."""
    import subprocess

    from repspec_zoo import data
    from repspec_zoo.attacks.oracle import EVAL_BATCH_SIZE
    from repspec_zoo.evaluation.result import EvalResult
    from repspec_zoo.evaluation.leaderboard import load_zoo_model

    args = [*s.leaderboard_args, "--out", str(out_dir)]
    start = time.perf_counter()  # the command as a user runs it (its own process, the GPU if there is one)
    subprocess.run([sys.executable, "-m", "repspec_zoo.cli", "leaderboard", *args], check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    names = json.loads((out_dir / "leaderboard.json").read_text())["models"]
    results = {name: EvalResult.load(out_dir / f"{name}.json") for name in names}
    x, _ = data.as_tensors(data.load_split("fashion_mnist", "test"))
    batch = int(args[args.index("--batch-size") + 1]) if "--batch-size" in args else EVAL_BATCH_SIZE
    models = {}
    for name, r in results.items():
        net = load_zoo_model(name, device=device)
        rows = x[r.per_sample["index"]].to(device)
        rows = rows.repeat((batch + len(rows) - 1) // len(rows), 1, 1, 1)[:batch]
        with torch.no_grad():
            net(rows)  # warm-up
            _, floor = _timed(device, lambda: [net(rows) for _ in range(20)])
        attacks = {a: {"wall_s": part["wall_time_s"], "rows": int(sum(r.per_sample["queries"][a])),
                       "kind": part["params"].get("kind", "hard-label")} for a, part in r.by_attack.items()}
        for part in attacks.values():
            part["rows_per_s"] = part["rows"] / part["wall_s"] if part["wall_s"] else None
        models[name] = {"n": r.n_samples, "l2_mean": r.l2_mean, "success_rate": r.success_rate,
                        "floor_rows_per_s": 20 * batch / floor, "attacks": attacks}
    return {"args": args, "wall_s_total": wall, "models": models}


# ----------------------------------------------------------------------------- 2c. evaluation precision
@contextlib.contextmanager
def precision_mode(name: str, device: torch.device):
    """``fp32``: strict float32 (TF32 off for cuDNN convolutions and cuBLAS matmuls); ``tf32``: both
    on (cuDNN's default for convolutions, so what a GPU evaluation runs unless told otherwise);
    ``bf16``: autocast to bfloat16 over strict float32. The flags are restored on exit."""
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = name == "tf32"
    try:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "bf16"):
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul


def eval_precision(s: Settings, device: torch.device) -> dict:
    """Whether TF32 or bf16 would change what the evaluation measures, per bundled model (loaded as
    the leaderboard loads it: BatchNorm folded, channels_last): how many of the first
    ``precision_test`` test labels differ from strict float32's, and the Tangent Attack (same seed,
    so the same random draws) on ``precision_n`` images float32 classifies correctly, at
    ``precision_budget`` queries: the paired change of the mean L2 against float32 (bootstrap CI,
    Wilcoxon) and the wall time ratio. A precision is harmless where no test label moves and the
    distance change is not beyond noise."""
    from repspec_zoo import data
    from repspec_zoo.evaluation.leaderboard import load_zoo_model
    from repspec_zoo.evaluation.stats import paired_comparison, to_jsonable

    x, y = data.as_tensors(data.load_split("fashion_mnist", "test"))
    x, y = x[:s.precision_test].to(device), y[:s.precision_test].to(device)
    models = {}
    for name in s.precision_models:
        net = load_zoo_model(name, device=device)
        per = {}
        for mode in ("fp32", *s.precision_modes):  # float32 first: the reference of the others
            with precision_mode(mode, device):
                labels = predict_labels(net, x, s.attack_batch)
                if mode == "fp32":
                    reference = labels
                    idx = (labels == y).nonzero().flatten()[:s.precision_n]
                result, seconds = _timed(device, run_attack, "ta", net, x[idx], y[idx], s.precision_budget,
                                         AttackSettings(seed=0, batch_size=s.attack_batch))
            l2 = result.l2.cpu()
            per[mode] = {"test_labels_changed": int((labels != reference).sum()),
                         "success": float(result.success.float().mean()), "l2_mean": float(l2[l2.isfinite()].mean()),
                         "attack_s": seconds}
            if mode == "fp32":
                reference_l2, reference_s = l2, seconds
            else:
                paired = paired_comparison(reference_l2.numpy(), l2.numpy())
                per[mode].update(relative_l2_change=to_jsonable(paired["relative_difference"]),
                                 beyond_noise=paired["beyond_noise"], time_vs_fp32=seconds / reference_s)
        models[name] = {"test_images": len(y), "attacked": len(idx), "budget": s.precision_budget, "modes": per}
    return {"models": models}


# ----------------------------------------------------------------------------- 3. FFT norms
def dense_sigma(weight: torch.Tensor, geom: ConvGeometry) -> float:
    """sigma_max from the SVD of the operator A materialized from its smaller side: the columns
    A e_i for every input basis vector e_i, or the rows A^T e_j for every output basis vector e_j."""
    in_shape, out_shape = geom.in_shape, geom.out_shape(weight)
    n_in, n_out = math.prod(in_shape), math.prod(out_shape)
    eye = torch.eye(min(n_in, n_out), dtype=weight.dtype, device=weight.device)
    if n_in <= n_out:
        dense = conv_apply(weight, geom, eye.view(n_in, *in_shape))
    else:
        dense = conv_adjoint(weight, geom, eye.view(n_out, *out_shape))
    return float(torch.linalg.matrix_norm(dense.flatten(1), ord=2))


def fft_norms(s: Settings, device: torch.device) -> dict:
    model = timm.create_model("resnet50").to(device).eval()
    shapes = conv_input_shapes(model, torch.rand(1, 3, s.img_size, s.img_size, device=device))
    layers, dense = {}, {}
    for name, conv in model.named_modules():
        if not isinstance(conv, torch.nn.Conv2d):
            continue
        geom = dataclasses.replace(ConvGeometry.from_module(conv, shapes[name]), padding_mode="circular")
        weight = conv.weight.detach().double()
        (sigma, _, _), seconds = _timed(device, conv_fft_sigma, weight, geom, vectors=False)
        (power, _, _), power_seconds = _timed(device, conv_power_iteration, weight, geom, None, None, s.power_iters,
                                              1e-12, torch.Generator().manual_seed(0))
        sigma, power = float(sigma), float(power)
        layers[name] = {"in_shape": list(shapes[name]), "kernel": list(conv.weight.shape), "stride": conv.stride[0],
                        "sigma": sigma, "seconds": seconds, "power_sigma": power,
                        "power_rel_gap": (sigma - power) / sigma, "power_seconds": power_seconds}
        sides = sorted((math.prod(geom.in_shape), math.prod(geom.out_shape(weight))))
        if conv.kernel_size != (1, 1) and sides[0] <= s.dense_max_dim and sides[1] <= 4 * s.dense_max_dim:
            dense[name] = {"sigma_dense": dense_sigma(weight, geom), "sigma_fft": sigma}
    gaps = [layer["power_rel_gap"] for layer in layers.values()]
    return {"n_convs": len(layers), "dtype": "float64", "padding": "circular", "power_iters": s.power_iters,
            "seconds_total": sum(layer["seconds"] for layer in layers.values()),
            "seconds_max_layer": max(layer["seconds"] for layer in layers.values()),
            "power_seconds_total": sum(layer["power_seconds"] for layer in layers.values()),
            "power_rel_gap_median": statistics.median(gaps), "power_rel_gap_max": max(gaps),
            "layers": layers, "dense_check": dense}


# ----------------------------------------------------------------------------- driver
def guarded(fn, *args) -> dict:
    """fn(*args), or {"error": "Type: message"} if it raises; plus its wall time and peak memory
    (GPU: torch's peak allocation during the section; CPU: the process's peak resident set so far).
    Its device memory is released afterwards, so that the next section starts from an empty GPU
    even after an error."""
    import resource

    if torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    try:
        out = fn(*args)
    except Exception as err:  # noqa: BLE001  (one failing section must not cost the others)
        out = {"error": f"{type(err).__name__}: {err}"}
    out["wall_s"] = time.perf_counter() - start
    if torch.cuda.is_initialized():
        out["peak_gpu_gb"] = torch.cuda.max_memory_allocated() / 1e9
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6  # kB on Linux
    gc.collect()
    if torch.cuda.is_initialized():
        torch.cuda.empty_cache()
    return out


def environment(device: torch.device) -> dict:
    env = {"device": str(device), "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version(), "timm": timm.__version__, "accelerate": accelerate.__version__,
           "python": platform.python_version(), "torch_threads": torch.get_num_threads(),
           "tf32_conv": torch.backends.cudnn.allow_tf32, "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}
    if device.type == "cuda":
        env["device_name"] = torch.cuda.get_device_name(device)
    else:
        env["device_name"] = platform.processor() or platform.machine()
    return env


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="CPU, small sizes, under a minute (the CI test)")
    parser.add_argument("--budget-s", type=float, help="no training variant starts after this many seconds "
                        f"(default {Settings.budget_s:g}, tiny {TINY.budget_s:g})")
    parser.add_argument("--out", type=Path, help=f"default benchmarks/{RESULTS.name}; --tiny: {TINY_RESULTS}")
    parser.add_argument("--leaderboard-out", type=Path, help="the published leaderboard's folder (default "
                        "runs/gpu_check/leaderboard; --tiny: a temporary folder)")
    args = parser.parse_args(argv)
    out = args.out or (TINY_RESULTS if args.tiny else RESULTS)
    s = TINY if args.tiny else Settings()
    s = dataclasses.replace(s, budget_s=args.budget_s) if args.budget_s is not None else s
    if s.device == "cuda" and not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU, or pass --tiny for the CPU check")
    device = torch.device(s.device)
    start = time.perf_counter()
    deadline = start + s.budget_s
    results = {"settings": {**dataclasses.asdict(s), "tiny": args.tiny}, "environment": environment(device)}
    results["train_step_bf16"] = guarded(train_step, s, device, "bf16", deadline) if "bf16" in s.precisions else {}
    results["attack"] = guarded(attack, s, device)
    with tempfile.TemporaryDirectory() as tmp:
        board = args.leaderboard_out or (Path(tmp) if args.tiny else ROOT / "runs" / "gpu_check" / "leaderboard")
        results["leaderboard"] = guarded(leaderboard, s, device, board)
    results["eval_precision"] = guarded(eval_precision, s, device)
    results["fft_norms"] = guarded(fft_norms, s, device)
    if "fp32" in s.precisions:  # last: the most expensive and the least needed
        results["train_step_fp32"] = guarded(train_step, s, device, "fp32", deadline)
    results["wall_s"] = time.perf_counter() - start
    atomic_write_text(out, json.dumps(results, indent=1))
    print("\n".join(render(results)))
    print(f"wrote {out}")
    return results


if __name__ == "__main__":
    main()
