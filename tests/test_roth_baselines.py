"""Roth et al. baselines: data-dependent spectral norm penalty and L2-PGD adversarial batches."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from repspec_zoo.regularizers import DataDependentSpectralNorm, adversarial_batch
from repspec_zoo.regularizers.data_dependent import power_iteration


def small_net() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 9), nn.Tanh(), nn.Linear(9, 5)).double()


def per_sample_jacobians(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Explicit J_i (N, K, d) from the full batched jacrev (block diagonal)."""
    full = torch.func.jacrev(net)(x).flatten(2)  # (N, K, N*d)
    d = x[0].numel()
    return torch.stack([full[i, :, i * d:(i + 1) * d] for i in range(len(x))])


def test_power_iteration_converges_to_top_singular_pair():
    net, x = small_net(), torch.rand(4, 1, 3, 4, dtype=torch.float64)
    sigma, v = power_iteration(net, x, iters=200)
    _, s, vh = torch.linalg.svd(per_sample_jacobians(net, x))
    torch.testing.assert_close(sigma, s[:, 0], rtol=1e-9, atol=0)
    cos = (v.flatten(1) * vh[:, 0]).sum(1).abs()
    torch.testing.assert_close(cos, torch.ones(4, dtype=torch.float64), rtol=1e-6, atol=0)


def test_warm_start_at_the_singular_vector_is_exact_after_one_step():
    net, x = small_net(), torch.rand(2, 1, 3, 4, dtype=torch.float64)
    _, s, vh = torch.linalg.svd(per_sample_jacobians(net, x))
    sigma, _ = power_iteration(net, x, iters=1, v0=vh[:, 0].reshape(x.shape))
    torch.testing.assert_close(sigma, s[:, 0], rtol=1e-12, atol=0)


def test_penalty_is_lam_eps2_sigma2_for_an_affine_model():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Flatten(), nn.Linear(12, 5)).double()
    x = torch.rand(3, 1, 3, 4, dtype=torch.float64)
    reg = DataDependentSpectralNorm(lam=0.3, eps=0.7, iters=300)
    top = torch.linalg.svdvals(net[1].weight.detach())[0]
    torch.testing.assert_close(reg.penalty(net, x), 0.3 * 0.7 ** 2 * top ** 2, rtol=1e-10, atol=0)
    torch.testing.assert_close(reg.last_sigma, top.expand(3), rtol=1e-10, atol=0)


def test_penalty_is_differentiable_restores_mode_and_reuses_fx():
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(48, 4)).double().train()
    x = torch.rand(5, 1, 4, 4, dtype=torch.float64)
    reg = DataDependentSpectralNorm(lam=1.0, eps=0.5, iters=3)
    gen = torch.Generator().manual_seed(0)
    value = reg.penalty(net, x, generator=gen)
    assert net.training and all(m.training for m in net.modules())
    value.backward()
    assert value > 0 and net[0].weight.grad.abs().sum() > 0 and not reg.last_v.requires_grad
    net.eval()  # fixed running statistics: both calls see the same function
    again = reg.penalty(net, x, fx=net(x), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again, reg.penalty(net, x, generator=torch.Generator().manual_seed(0)))


@pytest.mark.parametrize("kwargs, match", [(dict(lam=-1, eps=1), "lam"), (dict(lam=1, eps=0), "eps"),
                                           (dict(lam=1, eps=1, iters=0), "iters"),
                                           (dict(lam=1, eps=1, iters=2.0), "iters")])
def test_bad_settings_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DataDependentSpectralNorm(**kwargs)


def test_bad_warm_start_and_fx_are_rejected():
    net, x = small_net(), torch.rand(2, 1, 3, 4, dtype=torch.float64)
    reg = DataDependentSpectralNorm(lam=1, eps=1, iters=1)
    with pytest.raises(ValueError, match="v0"):
        reg.penalty(net, x, v0=torch.rand(2, 12, dtype=torch.float64))
    with pytest.raises(ValueError, match="fx"):
        reg.penalty(net, x, fx=torch.zeros(2, 3, dtype=torch.float64))


def test_adversarial_batch_respects_eps_bounds_and_mode():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3)).train()
    x, y = torch.rand(6, 1, 4, 4), torch.randint(0, 3, (6,))
    running = net[2].running_mean.clone()
    x_adv = adversarial_batch(net, x, y, eps=0.8, steps=5)
    assert ((x_adv - x).flatten(1).norm(dim=1) <= 0.8 + 1e-5).all()
    assert x_adv.min() >= 0 and x_adv.max() <= 1 and not x_adv.requires_grad
    assert net.training and all(p.grad is None for p in net.parameters())
    torch.testing.assert_close(net[2].running_mean, running)  # eval mode: running stats untouched
    with torch.no_grad():
        net.eval()
        assert F.cross_entropy(net(x_adv), y) > F.cross_entropy(net(x), y)
