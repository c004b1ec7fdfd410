"""Slow: a short version of the paper's single-hidden-layer experiment on real Fashion-MNIST."""
import pytest
import safetensors.torch
import torch

from test_training import run_recipe

pytestmark = pytest.mark.slow

SHORT = ["epochs=2", "regularizer.burn_in_epochs=1", "dataset.test_limit=1000", "eval.attack=none"]


def hidden_sigma(run_dir) -> float:
    weights = safetensors.torch.load_file(run_dir / "model.safetensors")
    return float(torch.linalg.svdvals(weights["fc1.weight"].double())[0])


def test_rep_spectral_lowers_the_hidden_layers_sigma_max(tmp_path):
    """Same seed, same batches: the only difference is the penalty in epoch 2 (paper gamma 1e-3)."""
    run_recipe("fmnist_slp_baseline", tmp_path / "baseline", *SHORT[:1], *SHORT[2:])
    run_recipe("fmnist_slp_repspectral", tmp_path / "rep", *SHORT)
    assert hidden_sigma(tmp_path / "rep") < hidden_sigma(tmp_path / "baseline")
