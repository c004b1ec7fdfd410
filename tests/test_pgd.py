"""White-box L2 PGD: the eps-ball and the box, robust-accuracy curves, linear models with an
analytic margin, and no side effects on the model."""
import math

import pytest
import torch
from torch import nn

from repspec_zoo.attacks import pgd_l2, robust_accuracy_curve


def small_cnn():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 8 * 8, 3))


def linear_problem(n=32, d=400, seed=0):
    """Linear 2-class model with logit gap <w, x> + b, ||w|| = 1: the L2 distance of x to
    the boundary is |<w, x> + b|, and x + t w stays in the box for |t| <= 1."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=g)
    w /= w.norm()
    model = nn.Linear(d, 2)
    with torch.no_grad():
        model.weight.copy_(torch.stack([torch.zeros(d), w]))
        model.bias.copy_(torch.tensor([0.0, -0.5 * w.sum().item()]))
    margins = torch.linspace(0.2, 1.0, n)
    side = torch.where(torch.arange(n) % 2 == 0, 1.0, -1.0)  # half of each class
    x = 0.5 + (side * margins)[:, None] * w
    assert w.abs().max() < 0.25
    y = (side > 0).long()
    return model.eval(), x, y, margins


def test_respects_eps_and_bounds():
    model = small_cnn().eval()
    x = torch.rand(16, 1, 8, 8)
    x[:, :, :2] = 0.0  # pixels on the bounds, where the box constraint bites
    y = torch.randint(0, 3, (16,))
    eps = torch.linspace(0.1, 3.0, 16)  # per-sample eps
    adv = pgd_l2(model, x, y, eps, steps=7, generator=torch.Generator().manual_seed(0))
    assert adv.min() >= 0 and adv.max() <= 1
    assert ((adv - x).flatten(1).norm(dim=1) <= eps * (1 + 1e-5)).all()
    zero = pgd_l2(model, x, y, 0.0, steps=3)
    assert torch.equal(zero, x)


def test_leaves_model_untouched():
    model = small_cnn().train()
    x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 3, (8,))
    pgd_l2(model, x, y, 0.5)
    assert model.training  # mode is the caller's choice
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    pgd_l2(model, x, y, 0.5)
    assert not model.training


def test_linear_model_finds_the_margin():
    model, x, y, margins = linear_problem()
    below = pgd_l2(model, x, y, margins * 0.98)  # inside the margin: cannot cross
    assert (model(below).argmax(1) == y).all()
    above = pgd_l2(model, x, y, margins * 1.02, random_start=False)
    assert (model(above).argmax(1) != y).all()
    # the step goes straight along -+w: the adversarial point is x -+ eps w
    torch.testing.assert_close((above - x).flatten(1).norm(dim=1), margins * 1.02)


def test_robust_accuracy_curve_linear_and_monotone():
    model, x, y, margins = linear_problem()
    eps_list = [0.0, 0.5, 0.25, 1.2, 0.75]  # unsorted on purpose
    acc = robust_accuracy_curve(model, x, y, eps_list, batch_size=10, random_start=False)
    for e, a in zip(eps_list, acc):
        expected = (margins > e).double().mean().item()
        assert a == pytest.approx(expected, abs=1.5 / len(x)), (e, a, expected)
    ordered = [a for _, a in sorted(zip(eps_list, acc))]
    assert ordered == sorted(ordered, reverse=True) and acc[3] == 0.0


def test_curve_counts_broken_examples_at_larger_eps():
    """Label 1 only in a band of radii around the box centre: PGD with big steps jumps over
    the band at eps = 1 but lands in it at eps = 0.4; the curve must still say broken."""

    class Band(nn.Module):
        def forward(self, x):  # class 1 where 0.3 < ||x - 0.5|| < 0.6
            r = (x.flatten(1) - 0.5).norm(dim=1)
            z = 50 * torch.minimum(r - 0.3, 0.6 - r)
            return torch.stack([torch.zeros_like(z), z], 1)

    x = torch.full((1, 1, 4, 4), 0.5025)  # r = 0.01; steps spread over 16 pixels stay in the box
    y = torch.zeros(1, dtype=torch.long)
    kw = dict(steps=2, random_start=False)
    assert Band()(pgd_l2(Band(), x, y, 0.4, **kw)).argmax(1).item() == 1
    assert Band()(pgd_l2(Band(), x, y, 1.0, **kw)).argmax(1).item() == 0  # PGD alone: "robust"
    assert robust_accuracy_curve(Band(), x, y, [1.0, 0.4], **kw) == [0.0, 0.0]


def test_errors():
    model, x, y, _ = linear_problem(n=4)
    with pytest.raises(ValueError, match="eps must be a finite number >= 0"):
        pgd_l2(model, x, y, -1.0)
    with pytest.raises(ValueError, match="steps must be an int >= 1"):
        pgd_l2(model, x, y, 0.5, steps=0)
    with pytest.raises(ValueError, match="outside bounds"):
        pgd_l2(model, x * 3, y, 0.5)
    with pytest.raises(ValueError, match="eps_list"):
        robust_accuracy_curve(model, x, y, [0.1, -0.2])
    assert math.isfinite(robust_accuracy_curve(model, x, y, [0.0])[0])
