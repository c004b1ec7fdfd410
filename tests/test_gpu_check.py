"""benchmarks/gpu_check.py --tiny: the GPU check's CPU variant runs without datasets / adv_lib (the GPU
machines have neither) and records finite numbers, exact FFT norms and no section errors."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ["datasets", "adv_lib"]
# repspec_zoo.training still imports datasets (training/loaders.py -> repspec_zoo/data.py), so it is
# imported before the block, which then catches the script's own imports only. Empty this list once
# test_training_imports_without_datasets passes.
PREIMPORTED: list[str] = []
RUN = ("import runpy, sys\n"
       "for name in {pre}: __import__(name)\n"
       "sys.modules.update(dict.fromkeys({blocked}))  # None: any later import of them raises ImportError\n"
       "sys.argv = ['benchmarks/gpu_check.py', '--tiny', '--out', {out!r}]\n"
       "runpy.run_path('benchmarks/gpu_check.py', run_name='__main__')\n")


def _python(code: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("gpu_check") / "results.json"
    proc = _python(RUN.format(pre=PREIMPORTED, blocked=BLOCKED, out=str(out)))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| variant |" in proc.stdout  # the printed tables
    return json.loads(out.read_text())


def _numbers(tree):
    if isinstance(tree, dict):
        for value in tree.values():
            yield from _numbers(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _numbers(value)
    elif isinstance(tree, (int, float)) and not isinstance(tree, bool):
        yield tree


def test_every_section_ran_without_error(tiny):
    assert {"settings", "environment", "train_step_bf16", "attack", "fft_norms", "leaderboard", "eval_precision",
            "wall_s"} <= tiny.keys()
    assert tiny["settings"]["tiny"] and tiny["environment"]["device"] == "cpu"
    text = json.dumps(tiny)
    assert '"error"' not in text and '"skipped"' not in text
    assert all(math.isfinite(x) for x in _numbers(tiny))
    for section in ("train_step_bf16", "attack", "fft_norms", "leaderboard", "eval_precision"):
        assert tiny[section]["wall_s"] > 0 and tiny[section]["peak_rss_gb"] > 0


def test_train_step_variants(tiny):
    steps, s = tiny["train_step_bf16"], tiny["settings"]
    assert steps["mixed_precision"] == "bf16"
    for name in ("plain", "every_1", "every_n", "direct"):
        v = steps[name]
        assert v["ms_median"] > 0 and v["ms_amortized"] > 0 and v["ratio_vs_plain"] > 0
        assert v["regularized_layers"] == (0 if name == "plain" else 53)  # every conv of ResNet-50
    assert steps["plain"]["ratio_vs_plain"] == 1
    assert steps["every_1"]["every"] == 1 and steps["every_n"]["every"] == s["every_amortized"]
    assert steps["direct"]["every"] == 80 and steps["direct"]["direct_step_ms"] > 0  # the ImageNet recipe's
    assert "regularizer.every=1" in steps["every_1"]["overrides"]


def test_attack_rows(tiny):
    a, s = tiny["attack"], tiny["settings"]
    assert a["distinct_labels"] >= 2  # the start pool holds other-class images
    assert 0 < a["queries"] <= s["attack_n"] * s["attack_budget"] and a["rows"] >= a["queries"]
    assert a["rows_per_s"] > 0 and a["floor_rows_per_s"] > 0 and a["ratio"] > 0
    assert a["rows_per_s"] == pytest.approx(a["rows"] / a["seconds"])


def test_published_leaderboard_section(tiny):
    """The leaderboard ran on the bundled models with the tiny settings: every model attacked on
    the same images by the default ensemble, rows and wall time per attack, a forward floor."""
    board = tiny["leaderboard"]
    assert set(board["models"]) == {"slp_baseline.fmnist", "slp_repspectral.fmnist"}
    for m in board["models"].values():
        assert m["n"] == 3 and m["floor_rows_per_s"] > 0
        assert set(m["attacks"]) == {"ta", "cgba", "fmn", "ddn", "alma"}
        assert all(p["rows"] > 0 and p["wall_s"] > 0 for p in m["attacks"].values())
        assert m["attacks"]["ta"]["rows"] <= 3 * 20  # the hard-label budget caps the queries


def test_eval_precision_section(tiny):
    """bf16 against strict float32 on the same images and seed: float32 against itself changes nothing,
    bf16's counts and paired change are recorded; the float flags are restored afterwards."""
    m = tiny["eval_precision"]["models"]["slp_baseline.fmnist"]
    assert set(m["modes"]) == {"fp32", "bf16"} and m["test_images"] == 200 and m["attacked"] == 4
    assert m["modes"]["fp32"]["test_labels_changed"] == 0
    bf16 = m["modes"]["bf16"]
    assert 0 <= bf16["test_labels_changed"] <= 200 and bf16["time_vs_fp32"] > 0
    change = bf16["relative_l2_change"]
    assert change["low"] <= change["estimate"] <= change["high"]
    assert tiny["environment"]["tf32_conv"] is True  # cuDNN's default, read before the section ran


def test_precision_mode_restores_the_flags(monkeypatch):
    import torch

    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclasses look their module up
    monkeypatch.setattr(sys, "path", list(sys.path))  # it adds benchmarks/ for its sibling imports
    spec.loader.exec_module(gpu_check)
    precision_mode = gpu_check.precision_mode
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    with precision_mode("tf32", torch.device("cpu")):
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    with precision_mode("bf16", torch.device("cpu")):
        assert not torch.backends.cudnn.allow_tf32 and torch.is_autocast_enabled("cpu")
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == before


def test_fft_norms_are_exact(tiny):
    f = tiny["fft_norms"]
    assert f["n_convs"] == len(f["layers"]) == 53
    assert f["dense_check"] and "layer4.0.conv2" in f["dense_check"]  # a strided 3x3 conv among them
    for name, d in f["dense_check"].items():
        assert d["sigma_fft"] == pytest.approx(d["sigma_dense"], rel=1e-9), name
    for name, layer in f["layers"].items():
        assert layer["sigma"] > 0 and layer["seconds"] > 0
        # power iteration gives ||A v|| for a unit v: never above the exact norm, and close after 30 steps
        assert -1e-9 <= layer["power_rel_gap"] < 0.1, name


def test_readme_renders_results_and_failures(tiny):
    spec = importlib.util.spec_from_file_location("render_readme", ROOT / "benchmarks" / "render_readme.py")
    render = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(render)
    text = "\n".join(render.gpu_check(tiny))
    assert f"| {tiny['train_step_bf16']['every_1']['ms_amortized']:.1f} |" in text
    assert "| `slp_baseline.fmnist` | 3 |" in text and "peak memory, attack" in text
    assert "| `slp_baseline.fmnist` | bf16 |" in text
    assert f"every {tiny['settings']['every_amortized']} steps" in text and "every 80 steps" in text
    broken = {**tiny, "attack": {"error": "RuntimeError: CUDA out of memory", "wall_s": 1.0},
              "train_step_bf16": {**tiny["train_step_bf16"], "direct": {"skipped": "--budget-s 240 spent"}}}
    text = "\n".join(render.gpu_check(broken))
    assert "| Tangent Attack | RuntimeError: CUDA out of memory |" in text
    assert "--budget-s 240 spent" in text
