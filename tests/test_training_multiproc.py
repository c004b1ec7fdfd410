"""recipes/train.py on two CPU processes (gloo) against one process with the same global batch.

``accelerate launch --cpu --num_processes 2`` silently runs one process; ``--multi_gpu`` with
ACCELERATE_USE_CPU=1 starts two (torchrun + gloo).
"""
from __future__ import annotations

import json

import pytest
import safetensors.torch

from multiproc import launch_two_processes
from test_training import CONFIG_DIR, ROOT, run_recipe, write_idx

# slp with a small hidden layer, rep-spectral from epoch 2; augmentation on (seeded per image, so
# two processes see the images one process sees); 4 optimizer steps of 8 images per epoch.
OVERRIDES = ["epochs=3", "batch_size=8", "model_kwargs={hidden_dim: 32}", "dataset.augment=true",
             "dataset.train_limit=32", "dataset.test_limit=8", "regularizer.burn_in_epochs=1", "optim.lr=0.05"]


def test_two_processes_match_one_process_and_stay_in_sync(tmp_path):
    data_dir = write_idx(tmp_path / "idx", n_train=32, n_test=8)
    config = CONFIG_DIR / "fmnist_slp_repspectral.yaml"
    two = tmp_path / "two"
    launch_two_processes(ROOT / "recipes" / "train.py", "--config", str(config), "--output", str(two),
                         "--data-dir", str(data_dir), *OVERRIDES)
    summary = json.loads((two / "run.json").read_text())
    assert summary["num_processes"] == 2
    assert summary["ranks_in_sync"], summary.get("unsynced_tensors")  # weights and spectral.* buffers, by hash

    one = tmp_path / "one"
    run_recipe(config, one, *OVERRIDES, data_dir=data_dir)
    curves = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    assert [r["step"] for r in curves[1]] == [4, 8, 12]
    for single, double in zip(*curves):
        assert double["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
        assert double["penalty"] == pytest.approx(single["penalty"], rel=1e-4)
        assert double["train_acc"] == single["train_acc"]
    a = safetensors.torch.load_file(one / "model.safetensors")
    b = safetensors.torch.load_file(two / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
