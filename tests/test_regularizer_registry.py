"""The regularizer registry: every mode's spec is complete and its training step does what the spec says."""
import dataclasses

import pytest
import timm
import torch
import torch.nn.functional as F

import repspec_zoo  # noqa: F401
from repspec_zoo.models.registry import ARCHS
from repspec_zoo.regularizers import bss_penalty
from repspec_zoo.regularizers.registry import BASELINE_MODE, REGULARIZERS, SPECTRAL_MODES, get_spec
from repspec_zoo.regularizers.steps import RegularizerStep
from repspec_zoo.training.config import ConfigError, RegularizerConfig, TrainConfig, validate
from repspec_zoo.training.model import TrainingModule, build_model

MODES = list(REGULARIZERS)
CONFIG_FIELDS = {f.name for f in dataclasses.fields(RegularizerConfig)}


@pytest.mark.parametrize("mode", MODES)
def test_spec_is_complete(mode):
    spec = get_spec(mode)
    assert spec.mode == mode and spec.label and spec.hub_tags
    assert set(spec.keys) <= CONFIG_FIELDS, "a spec reads only RegularizerConfig fields"
    assert set(spec.export_keys) <= set(spec.keys)
    assert "{base}" in spec.description and "{dataset}" in spec.description and "{base}" in spec.doc
    summary = spec.summary(RegularizerConfig(mode=mode))
    assert summary["mode"] == mode
    assert set(summary) - {"mode", "convention", "burn_in_epochs", "step_size"} <= set(spec.keys)
    assert issubclass(spec.step_class, RegularizerStep)
    validate(TrainConfig(regularizer=RegularizerConfig(mode=mode)))  # every mode is a valid recipe setting


@pytest.mark.parametrize("mode", MODES)
def test_card_sentence_renders_from_the_exported_settings(mode):
    """The card reads the keys the export writes (for spectral modes: gamma and the layers)."""
    spec, config = get_spec(mode), RegularizerConfig(mode=mode)
    exported = {"mode": mode, "layers": ["fc1"], "gamma": config.gamma,
                **{k: getattr(config, k) for k in spec.keys if k != "layers"}}
    sentence = spec.card(exported)
    assert sentence.endswith(".") and (("gamma=" in sentence) == spec.spectral)


def test_zoo_archs_come_from_the_specs():
    for arch, (base, mode) in ARCHS.items():
        assert arch == f"{base}_{REGULARIZERS[mode].arch_suffix}"
        assert (arch in timm.list_models()) and REGULARIZERS[mode].arch_suffix is not None
    assert SPECTRAL_MODES == ("rep", "repbn", "ll")
    assert [mode for mode, spec in REGULARIZERS.items() if spec.arch_suffix is None] == ["bss", "convwd"]
    with pytest.raises(ValueError, match="unknown regularizer mode 'spectral'; known: none, rep, repbn, ll, bss"):
        get_spec("spectral")


def test_a_run_reads_its_spec_from_its_config_and_one_spec_is_the_baseline():
    assert [mode for mode, spec in REGULARIZERS.items() if spec.baseline] == [BASELINE_MODE] == ["none"]
    assert all(RegularizerConfig(mode=mode).spec is REGULARIZERS[mode] for mode in MODES)
    with pytest.raises(ValueError, match="unknown regularizer mode"):
        RegularizerConfig(mode="spectral").spec
    epochs = TrainConfig().epochs
    validate(TrainConfig(regularizer=RegularizerConfig(mode="none", burn_in_epochs=epochs)))  # nothing to burn in
    with pytest.raises(ConfigError, match="burn_in_epochs=.* the rep penalty would never be applied"):
        validate(TrainConfig(regularizer=RegularizerConfig(mode="rep", burn_in_epochs=epochs)))
    with pytest.raises(ConfigError, match="mode=repbn with apply=direct"):
        validate(TrainConfig(regularizer=RegularizerConfig(mode="repbn", apply="direct")))
    validate(TrainConfig(regularizer=RegularizerConfig(mode="rep", apply="direct")))


def test_the_source_asks_no_mode_by_name_outside_the_registry():
    """Which mode is the baseline (or BN-folded, or spectral) is a spec field, not a string compared in the code."""
    import re
    from pathlib import Path

    package = Path(repspec_zoo.__file__).parent
    pattern = re.compile(r"\bmode\s*[!=]=\s*['\"]|\bmode\s+(?:not\s+)?in\s+\(['\"]")
    skip = ("regularizers/registry.py", "spectral/")  # spectral/: SpectralRegularizer's own layer selection 'rep'/'ll'
    found = [f"{name}:{n}" for path in package.rglob("*.py")
             if not (name := path.relative_to(package).as_posix()).startswith(skip)
             for n, line in enumerate(path.read_text().splitlines(), 1) if pattern.search(line)]
    assert found == []


@pytest.mark.parametrize("mode", MODES)
def test_step_acts_as_its_spec_says(mode):
    """One micro-batch through the mode's step object on a small net: the trained-on images, the
    penalty and the direct step, each against an independent computation."""
    torch.manual_seed(0)
    cfg = TrainConfig(model="slp", num_classes=10, model_kwargs={"hidden_dim": 16},
                      regularizer=RegularizerConfig(mode=mode, pgd_eps=0.3, pgd_steps=2, ddsnr_iters=2))
    model = build_model(cfg)
    net = TrainingModule(model, return_features=get_spec(mode).needs_features)
    step = get_spec(mode).step(cfg.regularizer, model)
    x, y = torch.rand(8, 1, 28, 28), torch.randint(0, 10, (8,))
    trained_on = step.batch(net, x, y, active=True)
    assert step.batch(net, x, y, active=False) is x  # burn-in: the plain batch
    out = net(trained_on)
    logits, features = out if isinstance(out, tuple) else (out, None)
    penalty = step.penalty(net, trained_on, logits, features, active=True)
    if mode == "adv":
        moved = (trained_on - x).flatten(1).norm(dim=1)
        assert (moved <= 0.3 + 1e-5).all() and moved.max() > 0.1
        assert F.cross_entropy(net(trained_on), y) > F.cross_entropy(net(x), y)
    else:
        assert torch.equal(trained_on, x)
    if mode in SPECTRAL_MODES:
        sigmas = model.spectral.sigmas()
        assert penalty.item() == pytest.approx(cfg.regularizer.gamma / 2 * sum(s ** 2 for s in sigmas.values()),
                                               rel=1e-5)
    elif mode == "bss":
        assert penalty.item() == pytest.approx(bss_penalty(features, 1, cfg.regularizer.bss_eta).item())
    elif mode == "ddsnr":
        assert penalty.item() > 0 and penalty.requires_grad
    elif mode == "convwd":  # slp: fc1 is the one layer up to the features
        assert penalty.item() == pytest.approx(cfg.regularizer.wd_lambda / 2 * model.fc1.weight.square().sum().item())
    else:
        assert penalty is None
    assert step.penalty(net, x, logits, features, active=False) is None


def test_direct_step_runs_every_n_optimizer_steps_after_burn_in():
    torch.manual_seed(0)
    cfg = TrainConfig(model="slp", num_classes=10, model_kwargs={"hidden_dim": 16},
                      regularizer=RegularizerConfig(mode="rep", apply="direct", every=3, gamma=0.1))
    model = build_model(cfg)
    step = get_spec("rep").step(cfg.regularizer, model)
    before = model.fc1.weight.detach().clone()
    for global_step in (1, 2):
        step.after_optimizer_step(global_step, active=True)
    step.after_optimizer_step(3, active=False)  # burn-in: nothing
    assert torch.equal(model.fc1.weight, before)
    step.after_optimizer_step(3, active=True)
    assert not torch.equal(model.fc1.weight, before)
    assert step.penalty(None, None, None, None, active=True) is None  # nothing in the loss
