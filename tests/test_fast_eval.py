"""The fast evaluation forward (NormalizedModel.fast_eval: channels_last, torch.compile, inference mode),
its eager fallback, --compile, and the training recipe's ``compile`` option."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from safetensors.torch import save_file
from torch import nn

import repspec_zoo  # noqa: F401  (registers the zoo with timm)
from repspec_zoo.models.normalize import MIN_COMPILED_ROWS, NormalizedModel
from repspec_zoo.training import ConfigError, TrainConfig, apply_overrides


def tiny_convnet(seed: int = 0) -> NormalizedModel:
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    with torch.no_grad():  # eval-mode BatchNorm with statistics that are not the identity
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return NormalizedModel(net, mean=[0.3], std=[0.4]).eval()


def test_compiled_channels_last_logits_equal_eager_for_every_batch_size(capsys):
    eager = tiny_convnet()
    fast = copy.deepcopy(eager).fast_eval(compile=True)
    assert fast.channels_last and fast.model[0].weight.is_contiguous(memory_format=torch.channels_last)
    x = torch.rand(40, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        for rows in (40, 1, MIN_COMPILED_ROWS - 1, 23):  # padded small batches and a dynamic batch dimension
            torch.testing.assert_close(fast(x[:rows]), eager(x[:rows]), rtol=0, atol=1e-5)
    printed = capsys.readouterr().out.splitlines()
    assert len(printed) == 1 and printed[0].startswith("compiled the evaluation forward of Sequential for 1x8x8 inputs in ")
    # autograd calls (white-box attacks, Lemma-1) run eagerly and keep their gradients
    xg = x[:5].clone().requires_grad_()
    logits = fast(xg)
    assert logits.grad_fn is not None
    grad, = torch.autograd.grad(logits[:, 0].sum(), xg)
    xe = x[:5].clone().requires_grad_()
    torch.testing.assert_close(grad, torch.autograd.grad(eager(xe)[:, 0].sum(), xe)[0], rtol=0, atol=1e-5)


def test_mlp_is_not_put_in_channels_last():
    net = NormalizedModel(timm.create_model("slp", num_classes=10, hidden_dim=8), mean=[0.0], std=[1.0]).eval()
    assert not net.fast_eval(compile=False).channels_last and net._compiled is None


def test_compile_failure_prints_one_line_and_evaluates_eagerly(monkeypatch, capsys):
    def broken_compile(fn, *args, **kwargs):
        raise RuntimeError("no C++ compiler here\nsecond line")

    monkeypatch.setattr(torch, "compile", broken_compile)
    eager, x = tiny_convnet(), torch.rand(6, 1, 8, 8)
    fast = copy.deepcopy(eager).fast_eval(compile=True)
    with torch.no_grad():
        torch.testing.assert_close(fast(x), eager(x), rtol=0, atol=1e-5)
    assert capsys.readouterr().out == ("torch.compile failed for Sequential (RuntimeError: no C++ compiler here); "
                                       "evaluating it eagerly\n")


def test_failure_inside_the_compiled_call_falls_back_once(monkeypatch, capsys):
    calls = []

    def compile_that_fails_when_run(fn, *args, **kwargs):
        def run(x):
            calls.append(len(x))
            raise RuntimeError("InductorError: codegen failed")
        return run

    monkeypatch.setattr(torch, "compile", compile_that_fails_when_run)
    eager, x = tiny_convnet(), torch.rand(20, 1, 8, 8)
    fast = copy.deepcopy(eager).fast_eval(compile=True)
    with torch.no_grad():
        first, second = fast(x), fast(x[:3])
    torch.testing.assert_close(first, eager(x).detach(), rtol=0, atol=1e-5)
    torch.testing.assert_close(second, eager(x[:3]).detach(), rtol=0, atol=1e-5)
    assert calls == [20] and capsys.readouterr().out.count("torch.compile failed") == 1


def test_an_input_the_model_cannot_take_raises_its_own_error_not_a_fallback(monkeypatch, capsys):
    def compile_that_fails_when_run(fn, *args, **kwargs):
        def run(x):
            raise RuntimeError("compiled code rejects it")
        return run

    monkeypatch.setattr(torch, "compile", compile_that_fails_when_run)
    fast = tiny_convnet().fast_eval(compile=True)
    with torch.no_grad(), pytest.raises(ValueError, match=r"expects images \(N, 1, H, W\)"):
        fast(torch.rand(4, 3, 8, 8))
    assert capsys.readouterr().out == "" and fast._compiled is not None


def test_cli_eval_compiles_only_with_compile(tmp_path, capsys):
    from repspec_zoo.cli.eval import main

    net = timm.create_model("slp", num_classes=10)
    save_file(net.state_dict(), str(tmp_path / "model.safetensors"))
    args = ["slp", "--checkpoint", str(tmp_path / "model.safetensors"), "--dataset", "digits", "--limit", "40",
            "--n", "2", "--budgets", "30", "--attack", "ta", "--no-lemma1"]
    eager = main(args)
    assert "compiled the evaluation forward" not in capsys.readouterr().out
    compiled = main([*args, "--compile"])
    assert "compiled the evaluation forward of SingleHiddenLayerNet for 1x28x28 inputs" in capsys.readouterr().out
    assert compiled.clean_acc == eager.clean_acc and compiled.per_sample["index"] == eager.per_sample["index"]


def test_leaderboard_takes_compile():
    from repspec_zoo.cli.leaderboard import build_parser

    assert build_parser().parse_args(["--compile"]).compile
    assert not build_parser().parse_args([]).compile


def test_training_compile_option_is_a_validated_bool():
    assert TrainConfig().compile is False
    assert apply_overrides(TrainConfig(), ["compile=true"]).compile is True
    with pytest.raises(ConfigError, match="compile: expected bool"):
        apply_overrides(TrainConfig(), ["compile=fast"])


@pytest.mark.slow
def test_compiled_training_reaches_the_eager_loss(tmp_path):
    """Three SGD steps of the small ResNet with rep-spectral (penalty on from the second epoch), eager vs
    compiled, from the same seed and data: the same last-epoch loss and penalty up to float32 reassociation."""
    from test_training import TWO_STEPS, run_recipe, write_idx

    data_dir = write_idx(tmp_path / "idx", n_train=32, n_test=8)
    shape = ("epochs=3", "batch_size=16", "dataset.train_limit=16", "dataset.augment=false", "eval.attack=none")
    runs = {flag: run_recipe("fmnist_resnet_small_repspectral", tmp_path / flag, *TWO_STEPS, *shape,
                             f"compile={flag}", data_dir=data_dir) for flag in ("false", "true")}
    eager, compiled = (runs[f]["final"] for f in ("false", "true"))
    assert eager["step"] == compiled["step"] == 3 and eager["penalty"] > 0
    assert compiled["train_loss"] == pytest.approx(eager["train_loss"], rel=1e-4)
    assert compiled["penalty"] == pytest.approx(eager["penalty"], rel=1e-4)
