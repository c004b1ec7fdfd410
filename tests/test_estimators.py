"""The estimator table behind SpectralRegularizer(estimator=...): every entry works, and a layer an
estimator cannot measure falls back to power iteration on the same operator."""
import warnings
from pathlib import Path

import pytest
import timm
import torch

from repspec_zoo import SpectralRegularizer
from repspec_zoo.spectral.estimators import ESTIMATORS, Estimator, EstimatorUnavailable
from repspec_zoo.training.config import ConfigError, load_config

STRIDED = "layer2.0.conv1"  # resnet_small: 3x3 stride-2 conv, padding 1
RECIPE = Path(__file__).resolve().parents[1] / "recipes" / "configs" / "xor_toy.yaml"


def _regularized(estimator, size):
    """resnet_small with a regularizer that has seen one size x size batch."""
    torch.manual_seed(0)
    model = timm.create_model("resnet_small", num_classes=10)
    reg = SpectralRegularizer(model, estimator=estimator, warmup_iters=5)
    model(torch.rand(2, 1, size, size))
    return reg


@pytest.mark.parametrize("name", list(ESTIMATORS))
def test_every_estimator_measures_its_geometry(name):
    est = ESTIMATORS[name]
    reg = _regularized(name, 16)
    conv = reg.remove().get_submodule(STRIDED)
    geom = est.geometry(conv, reg.states[STRIDED.replace(".", "__")].shape)
    assert geom.padding_mode == ("circular" if est.circular else conv.padding_mode)
    assert torch.isfinite(reg.penalty()) and reg.sigmas()[STRIDED] > 0
    assert load_config(RECIPE, [f"regularizer.estimator={name}"]).regularizer.estimator == name  # recipes take it


def test_recipes_refuse_an_estimator_the_table_lacks():
    with pytest.raises(ConfigError, match="regularizer.estimator='svd': choose one of " + ", ".join(ESTIMATORS)):
        load_config(RECIPE, ["regularizer.estimator=svd"])


def test_unmeasurable_layer_falls_back_to_power_iteration_once(monkeypatch):
    def refuse(weight, geom, u, v, n_iter):
        raise EstimatorUnavailable("not this one")

    monkeypatch.setitem(ESTIMATORS, "refuses", Estimator(refuse))
    reg = _regularized("refuses", 16)
    with pytest.warns(UserWarning, match="'refuses' cannot measure layer") as caught:
        reg.step()
    assert f"layer '{STRIDED}' (not this one)" in " ".join(str(w.message) for w in caught)
    # the same power iteration, from the same start vectors, as estimator='power'
    power = _regularized("power", 16)
    power.step()
    assert reg.sigmas() == power.sigmas()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # warned once per layer
        reg.step()


def test_fft_falls_back_where_the_conv_is_not_block_circulant():
    reg = _regularized("fft", 15)  # stride 2 on an odd grid
    with pytest.warns(UserWarning, match="'fft' cannot measure layer .*divisible by the stride") as caught:
        reg.step()
    assert f"layer '{STRIDED}'" in " ".join(str(w.message) for w in caught)
    assert reg.sigmas()[STRIDED] > 0
