"""Training recipes (recipes/train.py + repspec_zoo.training): shipped configs, resume, fine-tuning, errors.

Everything runs on tiny generated data (IDX files) with overrides, on CPU, one thread.
The multi-process test is in test_training_multiproc.py.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import timm
import torch
import yaml
from PIL import Image

import repspec_zoo  # noqa: F401
from repspec_zoo.data import DataFolderError, DatasetUnavailableError
from repspec_zoo.regularizers import bss_penalty
from repspec_zoo.training import (CheckpointError, Checkpoints, ConfigError, InitError, TrainConfig, apply_overrides,
                                  build_model, build_optimizer, load_config, lr_factor)

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "recipes" / "configs"
CONFIGS = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))


def _load_recipe():
    spec = importlib.util.spec_from_file_location("recipe_train", ROOT / "recipes" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


RECIPE = _load_recipe()


def _reset_accelerate() -> None:
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def run_recipe(config: str | Path, output: Path, *overrides: str, init: str | None = None,
               data_dir: Path | None = None) -> dict:
    """recipes/train.py in this process (a fresh Accelerate state each time)."""
    _reset_accelerate()
    argv = ["--config", str(CONFIG_DIR / f"{config}.yaml" if isinstance(config, str) else config),
            "--output", str(output), "--set", "eval.n=2", "--set", "eval.budget=40", *overrides]  # tiny end-of-run attack
    argv += ["--init", init] if init else []
    argv += ["--data-dir", str(data_dir)] if data_dir else []
    try:
        return RECIPE.main(argv)
    finally:
        _reset_accelerate()


# ----------------------------------------------------------------------------- generated data
def write_idx(root: Path, n_train: int, n_test: int, classes: int = 10, side: int = 28, seed: int = 0) -> Path:
    """MNIST-style IDX files with random uint8 images and labels cycling through ``classes``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, side, side), dtype=np.uint8)
        labels = (np.arange(n) % classes).astype(np.uint8)
        for kind, array in (("images-idx3", images), ("labels-idx1", labels)):
            header = b"\x00\x00\x08" + bytes([array.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in array.shape)
            (root / f"{prefix}-{kind}-ubyte.gz").write_bytes(gzip.compress(header + array.tobytes()))
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("training")


@pytest.fixture(scope="module")
def data_dirs(workdir):
    """IDX image files made once: 28x28, 10 classes (Fashion-MNIST-like) and 3 classes (for the RGB configs;
    repspec_zoo.data repeats gray to the 3 channels a ResNet-50 takes, and resizes to dataset.img_size)."""
    return {"gray": write_idx(workdir / "idx", n_train=16, n_test=8),
            "rgb": write_idx(workdir / "idx3", n_train=12, n_test=8, classes=3, seed=1)}


# ----------------------------------------------------------------------------- shipped configs
# Two optimizer steps: two epochs of one step, the penalty off in the first (burn-in) and on in the second.
TWO_STEPS = ("epochs=2", "regularizer.burn_in_epochs=1", "regularizer.every=1", "dataset.num_workers=0", "dataset.test_limit=8",
             "checkpoint.every_epochs=2", "checkpoint.every_steps=0")
SHAPE = {  # per family: batch = the whole (limited) training split, small images
    "fmnist": ("batch_size=16", "dataset.train_limit=16"),
    "imagenet": ("batch_size=12", "dataset.train_limit=12", "dataset.img_size=16"),
    "finetune": ("batch_size=12", "dataset.train_limit=12", "dataset.img_size=16"),
    "xor": ("batch_size=4",),
    "digits": ("batch_size=16", "dataset.train_limit=16"),  # the real (sklearn) digits: fine-tunes a small ResNet
}


@pytest.fixture(scope="module")
def shipped_run(workdir, data_dirs):
    """Run a shipped config for two steps (once per module); returns its run directory."""
    @functools.cache
    def run(name: str) -> Path:
        family = name.split("_")[0]
        output = workdir / "runs" / name
        data_dir = {"fmnist": data_dirs["gray"], "xor": None, "digits": None}.get(family, data_dirs["rgb"])
        init = {"finetune": "imagenet_resnet50_repspectral", "digits": "fmnist_resnet_small_repspectral"}.get(family)
        init = str(run(init)) if init else None
        small_projector = ("ssl.projector=[32,16]",) if "simclr" in name or "barlow" in name else ()  # not 8192^2
        run_recipe(name, output, *TWO_STEPS, *SHAPE[family], *small_projector, init=init, data_dir=data_dir)
        return output

    return run


@pytest.mark.parametrize("name", CONFIGS)
def test_shipped_config_runs_two_steps(name, shipped_run):
    run_dir = shipped_run(name)
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    summary = json.loads((run_dir / "run.json").read_text())
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    mode = cfg["regularizer"]["mode"]
    direct = mode in ("rep", "ll") and cfg["regularizer"]["apply"] == "direct"  # a step outside the loss
    assert summary["steps"] == 2 and [r["step"] for r in records] == [1, 2]
    assert summary["arch"] == cfg["model"] and summary["regularizer"]["mode"] == mode
    assert mode in ("none", "adv", "ddsnr") or "gamma/2" in summary["regularizer"]["convention"]  # Roth's: no gamma
    assert [r["penalty_on"] for r in records] == [False, True]
    assert records[0]["penalty"] == 0.0
    assert (records[1]["penalty"] > 0) == (mode not in ("none", "adv") and not direct)  # adv: a data change, no term
    assert all(np.isfinite(r["train_loss"]) for r in records)
    evaluation = json.loads((run_dir / "eval.json").read_text())
    assert 0.0 <= evaluation["clean_acc"] <= 1.0 and evaluation["n_test"] == (4 if name == "xor_toy" else 8)
    assert evaluation["attack"] == (None if name == "xor_toy" else "ta")
    assert all(q <= 40 for qs in evaluation["per_sample"].get("queries", {}).values() for q in qs)
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    # final weights: a plain timm state dict that strictly loads into the base architecture
    weights = safetensors.torch.load_file(run_dir / "model.safetensors")
    assert not any(k.startswith("spectral.") for k in weights)
    plain = timm.create_model(cfg["model"], num_classes=cfg["num_classes"], **cfg["model_kwargs"])
    plain.load_state_dict(weights)
    # the checkpoint holds the regularizer state; burn-in steps advanced the power iteration too
    checkpoint = safetensors.torch.load_file(run_dir / "checkpoints" / "step_0000002" / "model.safetensors")
    if mode in ("rep", "ll"):
        # loss: a power step per forward, burn-in included; direct: one direct step, after step 2
        assert int(checkpoint["model.spectral.num_steps"]) == (1 if direct else 2 * cfg["grad_accum_steps"])
        assert len(records[1]["sigma_max"]) > 0
    else:
        assert not any(".spectral." in k for k in checkpoint)


def test_finetune_loads_backbone_trains_new_head_with_its_own_lr(workdir, data_dirs, tmp_path):
    pretrain = tmp_path / "pretrain"
    run_recipe("fmnist_slp_baseline", pretrain, "epochs=1", "batch_size=16", "model_kwargs={hidden_dim: 16}",
               data_dir=data_dirs["gray"])
    three_classes = write_idx(tmp_path / "three", n_train=12, n_test=6, classes=3, seed=1)
    overrides = ["model=slp", "model_kwargs={hidden_dim: 16, img_size: 28, in_chans: 1}", "dataset.img_size=28",
                 "dataset.name=" + str(three_classes), "dataset.augment=false"]
    cfg = load_config(CONFIG_DIR / "finetune_cifar10.yaml", overrides + [f"init={pretrain}", "num_classes=3"])
    model = build_model(cfg)
    source = safetensors.torch.load_file(pretrain / "model.safetensors")
    assert torch.equal(model.fc1.weight, source["fc1.weight"])  # backbone loaded
    assert model.head.weight.shape == (3, 16)  # new head
    groups = {g["name"]: g for g in build_optimizer(cfg, model).param_groups}
    assert [id(p) for p in groups["head"]["params"]] == [id(model.head.weight), id(model.head.bias)]
    assert groups["head"]["lr"] == 0.01 and groups["backbone"]["lr"] == 0.002
    assert sum(len(g["params"]) for g in groups.values()) == len(list(model.parameters()))
    # end to end, with BSS on the batch features
    run_dir = tmp_path / "finetuned"
    run_recipe("finetune_cifar10", run_dir, *overrides, "epochs=2", "batch_size=6", "regularizer.mode=bss",
               "regularizer.burn_in_epochs=1", "dataset.num_workers=0", init=str(pretrain))
    final = safetensors.torch.load_file(run_dir / "model.safetensors")
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[1]["penalty"] > 0 and json.loads((run_dir / "run.json").read_text())["regularizer"]["mode"] == "bss"
    assert final["head.weight"].shape == (3, 16)
    assert 0 < (final["fc1.weight"] - source["fc1.weight"]).abs().max() < 0.05  # trained from the init, not re-drawn


def test_bss_penalty_is_eta_times_the_k_smallest_squared_singular_values():
    features = torch.randn(6, 4, dtype=torch.float64, requires_grad=True)
    expected = 0.5 * torch.linalg.svdvals(features.detach())[-2:].square().sum()
    penalty = bss_penalty(features, k=2, eta=0.5)
    assert torch.allclose(penalty, expected)
    penalty.backward()
    assert features.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="bss_k=5 exceeds"):
        bss_penalty(features, k=5, eta=0.5)


# ----------------------------------------------------------------------------- resume after SIGKILL
def resume_overrides(data_dir: Path, *extra: str) -> list[str]:
    """The kill/resume runs' settings (see kill_then_resume), then ``extra``."""
    # 12 optimizer steps per epoch (96 images / 8), 2 micro-batches each; checkpoints every 5 steps
    return ["--data-dir", str(data_dir), "epochs=2", "batch_size=8", "grad_accum_steps=2", "dataset.train_limit=96",
            "dataset.test_limit=8", "regularizer.burn_in_epochs=1", "checkpoint.every_steps=5", "checkpoint.keep=5",
            *extra]


def kill_then_resume(config: Path, tmp_path: Path, overrides: list[str], capsys) -> tuple[Path, Path]:
    """Run ``recipes/train.py`` in a subprocess, SIGKILL it once step 5 of 12 is checkpointed, run the same
    command again in-process (it must resume from step 5), then an uninterrupted reference run.
    Returns (resumed run directory, reference run directory)."""
    killed = tmp_path / "killed"
    argv = ["--config", str(config), "--output", str(killed), *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    process = subprocess.Popen([sys.executable, str(ROOT / "recipes" / "train.py"), *argv], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = killed / "checkpoints" / "step_0000005"
    deadline = time.monotonic() + 240
    while not first.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    _, stderr = process.communicate()
    assert first.exists(), f"no checkpoint appeared before the kill; stderr: {stderr.decode()[-2000:]}"
    assert not (killed / "model.safetensors").exists()  # it really died before the end
    for later in Checkpoints(killed / "checkpoints", keep=5).all():  # whatever the kill latency was, resume
        if later.name > first.name:                                  # from step 5 of 12, as if killed right after it
            shutil.rmtree(later)

    assert torch.get_num_threads() == 1  # conftest; as the killed process (OMP_NUM_THREADS=1): same float sums
    _reset_accelerate()
    try:
        RECIPE.main(argv)  # the same command again
    finally:
        _reset_accelerate()
    assert "from step_0000005: epoch 1, 10 batches done" in capsys.readouterr().out  # 5 steps x 2 micro-batches
    reference = tmp_path / "reference"
    run_recipe(config, reference, *overrides)
    return killed, reference


def test_killed_run_resumes_mid_epoch_to_the_same_weights(tmp_path, capsys):
    data_dir = write_idx(tmp_path / "idx", n_train=96, n_test=8)
    killed, reference = kill_then_resume(CONFIG_DIR / "fmnist_resnet_small_repspectral.yaml", tmp_path,
                                         resume_overrides(data_dir, "log_every_steps=1"), capsys)
    a = safetensors.torch.load_file(killed / "model.safetensors")
    b = safetensors.torch.load_file(reference / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6
    lines = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (killed, reference)]
    assert [r["epoch"] for r in lines[0]] == [1, 2]
    for got, want in zip(*lines):
        assert got["train_loss"] == pytest.approx(want["train_loss"], abs=1e-6)
        assert got["train_acc"] == want["train_acc"] and got["step"] == want["step"]


def _flip_middle_byte(content: bytes) -> bytes:
    middle = len(content) // 2
    return content[:middle] + bytes([content[middle] ^ 1]) + content[middle + 1:]


# Damage a checkpoint file the way downloads, full disks and cut copies do (accelerate's load_state would
# skip a damaged random_states file without a word: the run would go on with other random numbers).
CORRUPTIONS = {
    "truncated model.safetensors": ("model.safetensors", lambda b: b[:len(b) // 2]),
    "truncated train_state.json": ("train_state.json", lambda b: b[:len(b) // 2]),
    "HTML optimizer.bin": ("optimizer.bin", lambda _: b"<!DOCTYPE html><html><body>502 Bad Gateway</body></html>"),
    "one flipped byte in random_states_0.pkl": ("random_states_0.pkl", _flip_middle_byte),
}


def test_corrupt_newest_checkpoint_falls_back_to_the_previous_one(tmp_path, data_dirs, capsys):
    """Each damage to the newest checkpoint (step 4 of 4): the same command warns naming it, sets it aside,
    resumes from step 2 and ends with the weights of the uninterrupted run from step 2; when every
    checkpoint is damaged it fails naming each folder."""
    common = ("epochs=2", "batch_size=8", "dataset.train_limit=16", "regularizer.burn_in_epochs=1",
              "model_kwargs={hidden_dim: 16}", "checkpoint.keep=5")
    reference = tmp_path / "reference"  # checkpoints at steps 2 and 4 (epoch ends), uninterrupted
    run_recipe("fmnist_slp_repspectral", reference, *common, data_dir=data_dirs["gray"])
    want = safetensors.torch.load_file(reference / "model.safetensors")
    for kind, (name, damage) in CORRUPTIONS.items():
        run_dir = tmp_path / kind.replace(" ", "_")
        shutil.copytree(reference, run_dir)
        newest = run_dir / "checkpoints" / "step_0000004"
        (newest / name).write_bytes(damage((newest / name).read_bytes()))
        capsys.readouterr()
        with pytest.warns(UserWarning, match=rf"checkpoint {re.escape(str(newest))} cannot be resumed from: {name}"):
            run_recipe("fmnist_slp_repspectral", run_dir, *common, data_dir=data_dirs["gray"])
        assert "from step_0000002: epoch 2, 0 batches done" in capsys.readouterr().out, kind
        assert (run_dir / "checkpoints" / "step_0000004.corrupt" / name).is_file(), kind  # kept for inspection
        got = safetensors.torch.load_file(run_dir / "model.safetensors")
        assert max((got[k] - want[k]).abs().max().item() for k in want) <= 1e-6, kind

    hopeless = tmp_path / "hopeless"
    shutil.copytree(reference, hopeless)
    for step in (2, 4):
        (hopeless / "checkpoints" / f"step_000000{step}" / "optimizer.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=r"step_0000004 \(optimizer.bin is unreadable.*step_0000002 \("):
        run_recipe("fmnist_slp_repspectral", hopeless, *common, data_dir=data_dirs["gray"])
    assert [p.name for p in Checkpoints(hopeless / "checkpoints", keep=5).all()] == ["step_0000002", "step_0000004"]


def test_checkpoint_writes_are_atomic_and_keep_the_newest(tmp_path):
    class Dies(Exception):
        pass

    class FakeAccelerator:
        is_main_process, fail = True, False

        def wait_for_everyone(self):
            pass

        def save_state(self, path):
            (Path(path) / "model.safetensors").write_bytes(b"partial")
            if self.fail:
                raise Dies()

    checkpoints, accelerator = Checkpoints(tmp_path / "checkpoints", keep=2), FakeAccelerator()
    for step in (10, 20, 30):
        checkpoints.save(accelerator, step, {"global_step": step})
    assert [p.name for p in checkpoints.all()] == ["step_0000020", "step_0000030"]
    accelerator.fail = True
    with pytest.raises(Dies):
        checkpoints.save(accelerator, 40, {"global_step": 40})
    assert checkpoints.latest().name == "step_0000030"  # the half-written one is invisible
    assert json.loads((checkpoints.latest() / "train_state.json").read_text()) == {"global_step": 30}
    checkpoints.discard_partial()
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000020", "step_0000030"]


# ----------------------------------------------------------------------------- bad input
def test_unknown_config_keys_list_the_valid_ones(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: slp\noptim:\n  learning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.learning_rate'.*Valid keys of section "
                                          r"'optim': lr, backbone_lr"):
        load_config(bad)
    with pytest.raises(ConfigError, match=r"'epoch'.*Did you mean 'epochs'"):
        load_config(CONFIG_DIR / "xor_toy.yaml", ["epoch=3"])
    bad.write_text("mixed_precision: no\n")
    with pytest.raises(ConfigError, match='write "no"'):
        load_config(bad)
    with pytest.raises(ConfigError, match="regularizer.mode='lip'.*none, rep, repbn, ll, bss"):
        load_config(CONFIG_DIR / "xor_toy.yaml", ["regularizer.mode=lip"])
    with pytest.raises(ConfigError, match="zoo architecture.*model=slp regularizer.mode=rep"):
        load_config(CONFIG_DIR / "xor_toy.yaml", ["model=slp_repspectral"])


def test_the_xor_recipe_trains_on_the_toy_table_points():
    """xor_toy.yaml's dataset is the toy table's XOR: the 4 sign patterns, label 1 where the signs differ."""
    from repspec_zoo.training.loaders import data_summary, dataset_num_classes, recipe_split, toy_spec

    cfg = load_config(CONFIG_DIR / "xor_toy.yaml")
    assert toy_spec(cfg) is not None and dataset_num_classes(cfg) == 2
    points = recipe_split(cfg, None, "train")
    xs = torch.stack([x for x, _ in points])
    assert xs.shape == (4, 1, 1, 2) and {tuple(x.flatten().tolist()) for x in xs} == {(a, b) for a in (-1, 1) for b in (-1, 1)}
    assert [y for _, y in points] == [int(x[0, 0, 0] * x[0, 0, 1] < 0) for x in xs]
    assert data_summary(cfg, points, points) == "data: xor from the 4 points of the toy problem: train 4 images, test 4"
    assert toy_spec(load_config(CONFIG_DIR / "fmnist_slp_repspectral.yaml")) is None


def test_overrides_are_typed_by_the_field():
    cfg = apply_overrides(TrainConfig(), ["mixed_precision=no", "dataset.train_limit=null", "optim.lr=1e-2",
                                          "model_kwargs={hidden_dim: 8}", "dataset.augment=false"])
    assert cfg.mixed_precision == "no" and cfg.dataset.train_limit is None and cfg.optim.lr == 0.01
    assert cfg.model_kwargs == {"hidden_dim": 8} and cfg.dataset.augment is False
    with pytest.raises(ConfigError, match="epochs: expected int"):
        apply_overrides(TrainConfig(), ["epochs=two"])
    with pytest.raises(ConfigError, match="not key=value"):
        apply_overrides(TrainConfig(), ["epochs"])


def test_lr_schedules_and_linear_scaling():
    cfg = load_config(CONFIG_DIR / "imagenet_resnet50_baseline.yaml", ["batch_size=256"])
    assert [lr_factor(cfg.optim, e) for e in (0, 29, 30, 60, 119)] == pytest.approx([1, 1, 0.1, 0.01, 0.001])
    model = timm.create_model("resnet_small", num_classes=10)
    assert {g["name"]: g["lr"] for g in build_optimizer(cfg, model).param_groups} == {"backbone": 0.01, "head": 0.01}
    tuned = load_config(CONFIG_DIR / "finetune_cifar10.yaml")
    assert [lr_factor(tuned.optim, e) for e in (0, 100, 200, 400)] == pytest.approx([1, 0.5, 0, 1])


def test_missing_dataset_and_data_dir_are_clear_errors(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "cache"))
    with pytest.raises(DatasetUnavailableError, match="(?s)ILSVRC/imagenet-1k.*Fix: pass --data-dir"):
        run_recipe("imagenet_resnet50_baseline", tmp_path / "imagenet", "dataset.img_size=16")
    with pytest.raises(FileNotFoundError, match="nowhere.*does not exist"):
        run_recipe("fmnist_slp_baseline", tmp_path / "slp", data_dir=tmp_path / "nowhere")


def test_init_errors_never_fall_back_to_training_from_scratch(tmp_path, data_dirs):
    with pytest.raises(InitError, match="no such run directory.*does not fall back to training from scratch"):
        run_recipe("finetune_cifar10", tmp_path / "ft", init=str(tmp_path / "runs" / "never_trained"))
    with pytest.raises(InitError, match="'resnet50.a1_in1k': could not load its pretrained weights"):
        run_recipe("finetune_cifar10", tmp_path / "ft", init="resnet50.a1_in1k")  # offline, not cached
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.yaml").write_text("model: resnet50\nnum_classes: 3\n")
    with pytest.raises(InitError, match="has no model.safetensors: that run has not finished"):
        run_recipe("finetune_cifar10", tmp_path / "ft", init=str(unfinished))
    other = tmp_path / "slp_run"
    run_recipe("fmnist_slp_baseline", other, "epochs=1", "batch_size=16", "model_kwargs={hidden_dim: 8}",
               data_dir=data_dirs["gray"])
    with pytest.raises(InitError, match="holds a 'slp' model but this config trains 'resnet50'"):
        run_recipe("finetune_cifar10", tmp_path / "ft2", init=str(other))


def test_limits_larger_than_the_split_warn_once_and_the_log_names_the_data_source(tmp_path, data_dirs, capsys):
    gray = data_dirs["gray"]  # 16 training and 8 test images
    with pytest.warns(UserWarning) as caught:
        run_recipe("fmnist_slp_baseline", tmp_path / "run", "epochs=1", "batch_size=16", "model_kwargs={hidden_dim: 8}",
                   "dataset.train_limit=999999999", "dataset.test_limit=9", data_dir=gray)
    assert [str(w.message) for w in caught if "_limit=" in str(w.message)] == [
        f"dataset.train_limit=999999999 is larger than the train split of idx:{gray} (16 images): using all 16",
        f"dataset.test_limit=9 is larger than the test split of idx:{gray} (8 images): using all 8"]
    assert f"data: fashion_mnist from idx:{gray}: train 16 images, test 8\n" in capsys.readouterr().out


def test_a_damaged_image_stops_the_run_before_training_starts(tmp_path):
    root = tmp_path / "pets"
    for split, count in (("train", 8), ("test", 4)):
        for label in ("cat", "dog"):
            (root / split / label).mkdir(parents=True)
            for i in range(count):
                Image.new("L", (28, 28), 40 if label == "cat" else 200).save(root / split / label / f"{i}.png")
    (root / "train" / "dog" / "3.png").write_bytes(b"<html><body>Not Found</body></html>")
    with pytest.raises(DataFolderError, match=r"1 of 16 image files cannot be decoded: train/dog/3\.png"):
        run_recipe("fmnist_slp_baseline", tmp_path / "run", "epochs=1", "batch_size=8", data_dir=root)
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_resuming_with_other_settings_is_refused(tmp_path, data_dirs):
    run_dir = tmp_path / "run"
    common = ("epochs=1", "batch_size=16", "model_kwargs={hidden_dim: 8}")
    run_recipe("fmnist_slp_baseline", run_dir, *common, data_dir=data_dirs["gray"])
    with pytest.raises(ConfigError, match=r"checkpointed run started with other settings \(optim.lr: 0.1 -> 0.5\)"):
        run_recipe("fmnist_slp_baseline", run_dir, *common, "optim.lr=0.5", data_dir=data_dirs["gray"])


@pytest.mark.parametrize("mode", ["ddsnr", "adv"])
def test_roth_baselines_train_from_the_recipe(mode, workdir, data_dirs):
    """Data-dependent spectral norm regularization adds its penalty after burn-in; adversarial
    training adds none but trains on PGD examples, so its loss differs from plain training."""
    def train(regularizer: str) -> list[dict]:
        output = workdir / "roth" / regularizer
        run_recipe("fmnist_slp_baseline", output, *TWO_STEPS, *SHAPE["fmnist"], "model_kwargs={hidden_dim: 16}",
                   f"regularizer.mode={regularizer}", "regularizer.ddsnr_eps=1.0", "regularizer.ddsnr_iters=3",
                   "regularizer.pgd_eps=1.0", "regularizer.pgd_steps=3",
                   data_dir=data_dirs["gray"])
        return [json.loads(line) for line in (output / "metrics.jsonl").read_text().splitlines()]

    plain, roth = train("none"), train(mode)
    summary = json.loads((workdir / "roth" / mode / "run.json").read_text())
    assert summary["regularizer"]["mode"] == mode and summary["regularizer"][f"{'pgd' if mode == 'adv' else mode}_eps"] == 1.0
    assert roth[0]["train_loss"] == pytest.approx(plain[0]["train_loss"])  # burn-in epoch: identical
    if mode == "ddsnr":
        assert roth[0]["penalty"] == 0.0 and roth[1]["penalty"] > 0
    else:
        assert roth[1]["penalty"] == 0.0 and roth[1]["train_loss"] > plain[1]["train_loss"]


def test_branched_run_continues_its_source_checkpoint(tmp_path, data_dirs):
    """--branch-from: a 'none' branch from epoch 1 of a 2-epoch run ends with the same weights;
    a rep branch shares epoch 1's record and adds its penalty in epoch 2."""
    common = ("epochs=2", "batch_size=8", "dataset.train_limit=16", "regularizer.burn_in_epochs=1",
              "model_kwargs={hidden_dim: 16}", "checkpoint.keep=3")
    source = tmp_path / "source"
    run_recipe("fmnist_slp_baseline", source, *common, data_dir=data_dirs["gray"])
    first = Checkpoints(source / "checkpoints", keep=3).all()[0]
    assert json.loads((first / "train_state.json").read_text())["epoch"] == 1

    plain = tmp_path / "plain"
    run_recipe("fmnist_slp_baseline", plain, *common, "--branch-from", str(first), data_dir=data_dirs["gray"])
    a = safetensors.torch.load_file(source / "model.safetensors")
    b = safetensors.torch.load_file(plain / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6

    rep = tmp_path / "rep"
    run_recipe("fmnist_slp_baseline", rep, *common, "regularizer.mode=rep", "--branch-from", str(first),
               data_dir=data_dirs["gray"])
    source_lines, rep_lines = ([json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
                               for d in (source, rep))
    assert rep_lines[0] == source_lines[0] and rep_lines[1]["penalty"] > 0 and source_lines[1]["penalty"] == 0
    with pytest.raises(FileNotFoundError, match="not a checkpoint folder"):
        run_recipe("fmnist_slp_baseline", tmp_path / "bad", *common, "--branch-from", str(source))
    damaged = tmp_path / "damaged" / first.name
    shutil.copytree(first, damaged)
    (damaged / "model.safetensors").write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"--branch-from {re.escape(str(damaged))}: model.safetensors is "
                                              r"unreadable \(.*header too small"):
        run_recipe("fmnist_slp_baseline", tmp_path / "bad", *common, "--branch-from", str(damaged))


def test_direct_apply_shrinks_sigma_at_the_rate_of_the_formula(tmp_path, data_dirs):
    """regularizer.apply=direct: each direct step is W - 2 lam sigma u v^T (lam = gamma/2), which for a
    rank-one hidden layer multiplies sigma_max by exactly (1 - gamma). The SGD step is made negligible
    (lr 1e-12, no momentum or decay), so 2 penalized epochs of one step leave (1 - gamma)^2 of epoch 1's sigma;
    the loss never carries the penalty."""
    run_dir = tmp_path / "direct"
    run_recipe("fmnist_slp_repspectral", run_dir, "epochs=3", "regularizer.burn_in_epochs=1", "regularizer.apply=direct",
               "regularizer.gamma=0.1", "regularizer.every=1", "batch_size=16", "dataset.train_limit=16",
               "optim.lr=1e-12", "optim.momentum=0", "optim.weight_decay=0", "checkpoint.keep=3",
               "model_kwargs={hidden_dim: 1}", data_dir=data_dirs["gray"])
    first = Checkpoints(run_dir / "checkpoints", keep=3).all()[0]
    assert json.loads((first / "train_state.json").read_text())["epoch"] == 1
    start = safetensors.torch.load_file(first / "model.safetensors")["model.fc1.weight"]  # the TrainingModule
    end = safetensors.torch.load_file(run_dir / "model.safetensors")["fc1.weight"]
    assert float(end.norm()) == pytest.approx(0.9 ** 2 * float(start.norm()), rel=1e-5)
    torch.testing.assert_close(end, 0.81 * start, atol=1e-6, rtol=1e-5)  # only the top direction shrinks
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["penalty"] for r in records] == [0, 0, 0]
    with pytest.raises(ConfigError, match="has no data term"):
        load_config(CONFIG_DIR / "fmnist_slp_repspectral.yaml", ["regularizer.apply=direct",
                                                                 "regularizer.activation_term=true"])


def test_regularizer_layers_picks_exactly_the_named_layers():
    """regularizer.layers=[head] with mode ll is the authors' MLP "ll" (their walk reached the head only)."""
    cfg = load_config(CONFIG_DIR / "fmnist_slp_llspectral.yaml", ["regularizer.layers=[head]", "num_classes=10",
                                                                  "model_kwargs={hidden_dim: 8}"])
    model = build_model(cfg)
    assert model.spectral.layer_names == ["head"]
    assert build_model(load_config(CONFIG_DIR / "fmnist_slp_llspectral.yaml", ["num_classes=10"])).spectral.layer_names \
        == ["fc1", "head"]
    with pytest.raises(ConfigError, match="non-empty list of layer names"):
        load_config(CONFIG_DIR / "fmnist_slp_llspectral.yaml", ["regularizer.layers=[]"])


def test_a_config_error_is_one_line_with_exit_status_2(tmp_path):
    """recipes/train.py answers a user's mistake as the repspec-zoo CLI does: one line on stderr, status 2."""
    done = subprocess.run([sys.executable, str(ROOT / "recipes" / "train.py"), "--config",
                           str(ROOT / "recipes" / "configs" / "fmnist_slp_baseline.yaml"), "optim.lrr=0.1",
                           "--output", str(tmp_path / "run")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [done.stderr.strip()]
    assert done.stderr.startswith("recipes/train.py: error: unknown config key 'optim.lrr'")


def test_a_negative_seed_is_a_config_error():
    with pytest.raises(ConfigError, match="seed=-1: must be >= 0"):
        load_config(CONFIG_DIR / "fmnist_resnet_small_baseline.yaml", ["seed=-1"])
