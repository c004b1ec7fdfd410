"""Self-supervised pretraining (repspec_zoo.ssl): the losses against the papers' formulas, the penalty's
layers, the views, resume after a kill, the recipe's outputs."""
from __future__ import annotations

import json
import math

import pytest
import safetensors.torch
import timm
import torch

import repspec_zoo  # noqa: F401
from repspec_zoo.ssl import SSLModule, barlow_twins, build_ssl_model, nt_xent, view_matches
from repspec_zoo.ssl.augment import simclr_augmentation
from repspec_zoo.ssl.trainer import knn_accuracy
from repspec_zoo.training import ConfigError, TrainConfig, apply_overrides, build_optimizer

from test_training import CONFIG_DIR, ROOT, kill_then_resume, resume_overrides, run_recipe, write_idx


def _pair(n: int = 6, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(n, d, generator=g, dtype=torch.float64)


def test_nt_xent_is_simclrs_equation_one_over_all_2n_anchors():
    z1, z2 = _pair()
    tau = 0.3
    u = [v / v.norm() for v in torch.cat([z1, z2])]  # u_0..u_{N-1} from view 1, u_N..u_{2N-1} from view 2
    n = len(z1)
    total = 0.0
    for a in range(2 * n):
        positive = (a + n) % (2 * n)
        denominator = sum(math.exp(float(u[a] @ u[b]) / tau) for b in range(2 * n) if b != a)
        total += -math.log(math.exp(float(u[a] @ u[positive]) / tau) / denominator)
    assert float(nt_xent(z1, z2, tau)) == pytest.approx(total / (2 * n), rel=1e-10)


def test_barlow_twins_is_the_cross_correlation_loss_of_the_paper():
    z1, z2 = _pair(n=7, d=4)
    lambd, eps = 5e-3, 1e-5
    n, d = z1.shape

    def standardized(z, i, k):  # column k of z, row i, over the batch with the 1/N variance
        mean = sum(float(z[j, k]) for j in range(n)) / n
        var = sum((float(z[j, k]) - mean) ** 2 for j in range(n)) / n
        return (float(z[i, k]) - mean) / math.sqrt(var + eps)

    c = [[sum(standardized(z1, b, i) * standardized(z2, b, j) for b in range(n)) / n for j in range(d)]
         for i in range(d)]
    want = sum((1 - c[i][i]) ** 2 for i in range(d)) + lambd * sum(c[i][j] ** 2 for i in range(d) for j in range(d)
                                                                     if i != j)
    assert float(barlow_twins(z1, z2, lambd, eps)) == pytest.approx(want, rel=1e-10)


def test_view_matches_and_knn_accuracy_count_what_they_say():
    z = torch.eye(4, dtype=torch.float64)
    assert view_matches(z, z).tolist() == [True] * 4 and not view_matches(z, z.roll(1, 0)).any()
    angles = torch.tensor([0.0, 10.0, 90.0, 80.0, 30.0]) * math.pi / 180  # unit vectors at these angles
    features = torch.stack([angles.cos(), angles.sin()], 1) * torch.tensor([[1.0], [2.0], [3.0], [1.0], [5.0]])
    labels = torch.tensor([0, 0, 1, 1, 1])  # the last one's nearest (10 deg) is of class 0: k=1 gets 4 of 5 right
    assert knn_accuracy(features, labels, k=1) == pytest.approx(0.8)


def _ssl_config(*overrides: str) -> TrainConfig:
    return apply_overrides(TrainConfig(), ["ssl.method=simclr", "ssl.projector=[32,16]", "num_classes=10", *overrides])


@pytest.mark.parametrize("mode", ["rep", "ll"])
def test_rep_penalizes_the_backbone_only_and_ll_the_projector_too(mode):
    network = build_ssl_model(_ssl_config(f"regularizer.mode={mode}"))
    SSLModule(network).eval()(torch.rand(2, 2, 1, 28, 28))  # records every layer's input size
    names = set(network.spectral.sigmas())
    projector = {f"projector.{n}" for n, m in network.projector.named_modules() if isinstance(m, torch.nn.Linear)}
    convs = {f"backbone.{n}" for n, m in network.backbone.named_modules() if isinstance(m, torch.nn.Conv2d)}
    assert names == (convs if mode == "rep" else convs | projector)
    penalty = network.spectral.penalty()
    penalty.backward()
    touched = {n for n, p in network.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    assert touched and all(n.startswith("backbone.") for n in touched) == (mode == "rep")
    assert any(n.startswith("projector.") for n in touched) == (mode == "ll")


def test_ssl_config_errors_name_the_setting():
    with pytest.raises(ConfigError, match="ssl.method='moco'"):
        _ssl_config("ssl.method=moco")
    with pytest.raises(ConfigError, match="regularizer.mode"):
        _ssl_config("regularizer.mode=bss")
    with pytest.raises(ConfigError, match="ssl.projector"):
        _ssl_config("ssl.projector=[]")


def test_lars_excludes_biases_and_norms_from_weight_decay_and_adaptation():
    network = build_ssl_model(_ssl_config("optim.optimizer=lars", "optim.weight_decay=1e-6"))
    optimizer = build_optimizer(_ssl_config("optim.optimizer=lars", "optim.weight_decay=1e-6"), network)
    assert type(optimizer).__name__ == "Lars"
    for group in optimizer.param_groups:
        flat = group["name"].endswith("_1d")
        assert all((p.ndim <= 1) == flat for p in group["params"])
        assert group["weight_decay"] == (0.0 if flat else 1e-6)


def test_simclr_views_differ_stay_in_the_unit_box_and_repeat_with_the_seed():
    augment = simclr_augmentation((3, 96, 96), crop_scale_min=0.2)  # > 64 px: blur included
    image = torch.rand(3, 96, 96)
    torch.manual_seed(1)
    a, b = augment(image), augment(image)
    torch.manual_seed(1)
    assert torch.equal(augment(image), a)
    assert a.shape == (3, 96, 96) and not torch.equal(a, b) and 0 <= float(a.min()) and float(a.max()) <= 1
    gray = simclr_augmentation((1, 28, 28))(torch.rand(1, 28, 28))
    assert gray.shape == (1, 28, 28)


def test_killed_ssl_run_resumes_mid_epoch_to_the_same_weights(tmp_path, capsys):
    data_dir = write_idx(tmp_path / "idx", n_train=96, n_test=8)
    overrides = resume_overrides(data_dir, "ssl.projector=[32,16]", "eval.n=2", "eval.budget=40")
    killed, reference = kill_then_resume(CONFIG_DIR / "fmnist_simclr_resnet_small_repspectral.yaml", tmp_path,
                                         overrides, capsys)
    a = safetensors.torch.load_file(killed / "model.safetensors")
    b = safetensors.torch.load_file(reference / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k].double() - b[k].double()).abs().max().item() for k in a) <= 1e-6
    # the published weights are the headless backbone: no projector, no regularizer buffers
    assert not any(k.startswith(("projector.", "spectral.")) for k in a)
    timm.create_model("resnet_small", num_classes=0).load_state_dict(a)


def test_two_processes_gather_the_global_batch_and_match_one_process(tmp_path):
    """Each process computes the loss of the global batch from every process's projections (a
    differentiable all-gather); without BatchNorm (slp, a one-layer projector) two processes then
    train exactly as one."""
    from multiproc import launch_two_processes

    data_dir = write_idx(tmp_path / "idx", n_train=32, n_test=8)
    config = CONFIG_DIR / "fmnist_simclr_resnet_small_repspectral.yaml"
    overrides = ["model=slp", "model_kwargs={hidden_dim: 32}", "ssl.projector=[16]", "epochs=2", "batch_size=8",
                 "dataset.train_limit=32", "dataset.test_limit=8", "regularizer.burn_in_epochs=1", "optim.lr=0.05",
                 "eval.n=2", "eval.budget=40"]
    two = tmp_path / "two"
    launch_two_processes(ROOT / "recipes" / "train.py", "--config", str(config), "--output", str(two),
                         "--data-dir", str(data_dir), *overrides)
    one = tmp_path / "one"
    run_recipe(config, one, *overrides, data_dir=data_dir)
    curves = [[json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()] for d in (one, two)]
    for single, double in zip(*curves):
        assert double["train_loss"] == pytest.approx(single["train_loss"], rel=1e-4)
        assert double["train_acc"] == single["train_acc"]
    a = safetensors.torch.load_file(one / "model.safetensors")
    b = safetensors.torch.load_file(two / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) < 1e-4
