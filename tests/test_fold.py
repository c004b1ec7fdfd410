"""BatchNorm folded into the convolution before it (models/fold.py, NormalizedModel.fast_eval):
the same function and input gradients as the unfolded model, only where the graph allows it."""
from __future__ import annotations

import copy

import pytest
import timm
import torch
from timm.layers import BatchNormAct2d
from torch import nn

import repspec_zoo  # noqa: F401  (registers the zoo with timm)
from repspec_zoo.models.normalize import NormalizedModel
from repspec_zoo.models import fold
from repspec_zoo.models.fold import conv_bn_pairs, fold_batchnorm, unfold_batchnorm


def randomize_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Eval-mode BatchNorms whose statistics and affine maps are far from the identity."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 2 + 0.2)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.3)
    return model.eval()


class PreActivation(nn.Module):
    """BatchNorm before the convolution (pre-activation ResNets): nothing may be folded."""

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(3)
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 2))

    def forward(self, x):
        return self.head(self.conv(torch.relu(self.bn(x))))


class SharedConvOutput(nn.Module):
    """conv -> bn, but the conv's output is also used elsewhere: folding would change that use."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(3 * 6 * 6, 2))

    def forward(self, x):
        y = self.conv(x)
        return self.head(self.bn(y) + y)


class ActInBatchNorm(nn.Module):
    """timm's BatchNormAct2d is a BatchNorm2d subclass with an activation inside: not folded."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = BatchNormAct2d(4, act_layer=nn.ReLU)
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4 * 6 * 6, 2))

    def forward(self, x):
        return self.head(self.bn(self.conv(x)))


def batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("name, size", [("resnet_small", 28), ("resnet18", 32)])
def test_folded_resnet_has_the_same_logits_and_input_gradients(name, size):
    model = randomize_statistics(timm.create_model(name, num_classes=10, in_chans=1 if name == "resnet_small" else 3))
    folded = copy.deepcopy(model)
    count = len(fold_batchnorm(folded))
    assert count == batchnorms(model) and batchnorms(folded) == 0  # every ResNet BN follows a conv
    x = torch.rand(5, model.pretrained_cfg["input_size"][0] if name == "resnet_small" else 3, size, size,
                   generator=torch.Generator().manual_seed(1))
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    a, b = model(xa), folded(xb)
    scale = float(a.detach().abs().max())
    torch.testing.assert_close(b, a, rtol=0, atol=1e-5 * max(scale, 1.0))
    ga, = torch.autograd.grad(a[:, 3].sum(), xa)
    gb, = torch.autograd.grad(b[:, 3].sum(), xb)
    torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-5 * float(ga.abs().max()))


def test_folded_weights_match_the_formula():
    """W' = W s and b' = (b - mu) s + beta with s = g / sqrt(var + eps), computed here by hand."""
    net = randomize_statistics(nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten()))
    conv, bn = copy.deepcopy(net[0]), copy.deepcopy(net[1])
    fold_batchnorm(net)
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    torch.testing.assert_close(net[0].weight, conv.weight * s.view(-1, 1, 1, 1))
    torch.testing.assert_close(net[0].bias, (conv.bias - bn.running_mean) * s + bn.bias)
    assert isinstance(net[1], nn.Identity)


@pytest.mark.parametrize("model", [PreActivation, SharedConvOutput, ActInBatchNorm])
def test_nothing_is_folded_where_the_graph_forbids_it(model):
    net = randomize_statistics(model())
    assert conv_bn_pairs(net) == []
    assert fold_batchnorm(net) == [] and batchnorms(net) == 1


def test_unfold_restores_the_very_modules():
    net = randomize_statistics(timm.create_model("resnet_small", num_classes=10))
    before = dict(net.named_modules())
    unfold_batchnorm(net, fold_batchnorm(net))
    after = dict(net.named_modules())
    assert before.keys() == after.keys() and all(before[k] is after[k] for k in before)


def test_fold_needs_eval_mode():
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(nn.Sequential(nn.Conv2d(1, 1, 1), nn.BatchNorm2d(1)).train())


def test_fast_eval_folds_and_then_refuses_to_train(capsys):
    net = NormalizedModel(randomize_statistics(timm.create_model("resnet_small", num_classes=10))).eval()
    net.fast_eval(compile=False)
    assert batchnorms(net) == 0 and capsys.readouterr().out == ""
    net.eval()  # still allowed
    with pytest.raises(RuntimeError, match="load the model again to train"):
        net.train()


def test_fast_eval_undoes_a_fold_that_changes_the_logits(monkeypatch, capsys):
    real = fold.fuse_conv_bn_eval

    def wrong(conv, bn):  # a fold that forgets the BatchNorm's shift
        fused = real(conv, bn)
        with torch.no_grad():
            fused.bias.add_(1.0)
        return fused

    monkeypatch.setattr(fold, "fuse_conv_bn_eval", wrong)
    model = randomize_statistics(timm.create_model("resnet_small", num_classes=10))
    reference = copy.deepcopy(model)
    net = NormalizedModel(model).eval().fast_eval(compile=False)
    printed = capsys.readouterr().out
    assert "changed its logits by up to" in printed and printed.count("\n") == 1
    assert batchnorms(net) == batchnorms(reference)
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(net(x), NormalizedModel(reference).eval()(x), rtol=0, atol=1e-5)
    net.train()  # nothing folded: training is allowed again


def test_fast_eval_of_a_model_fx_cannot_trace_prints_one_line(capsys):
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(1, 2, 3, padding=1), nn.BatchNorm2d(2)
            self.head = nn.Sequential(nn.Flatten(), nn.Linear(2 * 8 * 8, 2))

        def forward(self, x):
            if x.sum() > 0:  # control flow on a tensor value: symbolic tracing fails
                x = x * 2
            return self.head(self.bn(self.conv(x)))

    net = NormalizedModel(randomize_statistics(DataDependent()), mean=[0.0], std=[1.0]).eval()
    net.fast_eval(compile=False)
    printed = capsys.readouterr().out
    assert printed.startswith("BatchNorm not folded for DataDependent (") and printed.count("\n") == 1
    assert batchnorms(net) == 1 and net(torch.rand(2, 1, 8, 8)).shape == (2, 2)
