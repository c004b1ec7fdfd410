"""Geometry and primitives of the decision-based attacks, checked in float64 against
independent formulas (ALGORITHMS.md section 2) on random vectors and analytic oracles."""
import math

import pytest
import torch
from torch import nn

from repspec_zoo.attacks import HardLabelOracle, tangent_point
from repspec_zoo.attacks.boundary import bisect, bisection_steps, default_theta_scale, num_normal_queries
from repspec_zoo.attacks.queries import SampleStreams, estimate_normal

F64 = torch.float64


def frame(n, d, seed, below=True):
    """Random o, unit u and x with x - o = P p_hat + a u (P = ||p||, a = <x - o, u>)."""
    g = torch.Generator().manual_seed(seed)
    o = torch.randn(n, d, dtype=F64, generator=g)
    u = torch.randn(n, d, dtype=F64, generator=g)
    u /= u.norm(dim=1, keepdim=True)
    p = torch.randn(n, d, dtype=F64, generator=g)
    p -= (p * u).sum(1, keepdim=True) * u
    p_hat = p / p.norm(dim=1, keepdim=True)
    big_p = 0.5 + 2 * torch.rand(n, 1, dtype=F64, generator=g)
    a = -(0.1 + 2 * torch.rand(n, 1, dtype=F64, generator=g))
    if not below:
        a = -a
    return o, u, p_hat, big_p, a, o + big_p * p_hat + a * u


def reference_ta_point(x, o, u, radius):
    """The TA formula exactly as written in ALGORITHMS.md (hemisphere)."""
    v = x - o
    a = (v * u).sum(1, keepdim=True)
    n = v.norm(dim=1, keepdim=True)
    p = v - a * u
    pn = p.norm(dim=1, keepdim=True)
    r = radius[:, None]
    s = torch.sqrt(n ** 2 - r ** 2)
    return o + (r / n ** 2) * ((r * pn - a * s) * p / pn + (s * pn + r * a) * u)


@pytest.mark.parametrize("d", [2, 50, 784])
def test_hemisphere_tangent_point(d):
    o, u, p_hat, big_p, a, x = frame(64, d, seed=d)
    n = (x - o).norm(dim=1)
    radius = big_p[:, 0] * torch.rand(64, dtype=F64)  # R <= ||p||: point on the hemisphere
    k = tangent_point(x, o, u, radius)
    torch.testing.assert_close((k - o).norm(dim=1), radius, rtol=1e-12, atol=0)
    tangency = ((k - o) * (x - k)).sum(1)
    assert tangency.abs().max() <= 1e-12 * n.max() ** 2
    assert ((k - o) * u).sum(1).min() >= 0  # adversarial side of the plane through o
    # k lies in the plane through o spanned by u and p_hat
    off_plane = (k - o) - ((k - o) * u).sum(1, keepdim=True) * u \
        - ((k - o) * p_hat).sum(1, keepdim=True) * p_hat
    assert off_plane.norm(dim=1).max() <= 1e-12
    torch.testing.assert_close(k, reference_ta_point(x, o, u, radius), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("ratio", [1.5, 1.1, 0.7])
def test_semi_ellipse_tangent_point(ratio):
    o, u, p_hat, big_p, a, x = frame(64, 30, seed=1)
    big = ratio * big_p[:, 0] * torch.rand(64, dtype=F64)  # S = L / ratio <= ||p||
    small = big / ratio
    k = tangent_point(x, o, u, big, ratio)
    xi = ((k - o) * p_hat).sum(1)
    eta = ((k - o) * u).sum(1)
    # on the ellipse xi^2/S^2 + eta^2/L^2 = 1, in the (p_hat, u) plane, on the adversarial half
    torch.testing.assert_close(xi ** 2 / small ** 2 + eta ** 2 / big ** 2,
                               torch.ones(64, dtype=F64), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(k, o + xi[:, None] * p_hat + eta[:, None] * u, rtol=0, atol=1e-12)
    assert eta.min() >= 0
    # tangency: the ellipse's normal at k, (xi/S^2, eta/L^2), is orthogonal to x - k
    xp, xa = big_p[:, 0], a[:, 0]
    normal_dot = (xi / small ** 2) * (xp - xi) + (eta / big ** 2) * (xa - eta)
    assert normal_dot.abs().max() <= 1e-10 * (xp.abs() + xa.abs()).max() / small.min() ** 2
    # the segment x -> k never enters the ellipse (it only touches it at k)
    lam = torch.linspace(0, 0.999, 200, dtype=F64)[:, None]
    seg_xi, seg_eta = xp + lam * (xi - xp), xa + lam * (eta - xa)
    assert (seg_xi ** 2 / small ** 2 + seg_eta ** 2 / big ** 2).min() >= 1 - 1e-9


def test_ellipse_with_ratio_one_is_the_hemisphere():
    o, u, _, big_p, _, x = frame(16, 40, seed=2)
    radius = big_p[:, 0] / 2
    torch.testing.assert_close(tangent_point(x, o, u, radius, ratio=1.0),
                               reference_ta_point(x, o, u, radius), rtol=1e-12, atol=1e-12)


def test_tangent_point_guards():
    o, u, p_hat, big_p, a, x = frame(8, 20, seed=3)
    n = (x - o).norm(dim=1)
    # R >= ||x - o||: x is not outside the sphere; the sphere shrinks just enough
    k = tangent_point(x, o, u, 2 * n)
    assert torch.isfinite(k).all()
    assert ((k - o).norm(dim=1) <= n).all()
    assert ((k - o) * (x - k)).sum(1).abs().max() <= 1e-4 * n.max() ** 2
    # p = 0: x on the normal line through o; any orthogonal direction, still a tangent point
    x_axis = o - 2.0 * u
    radius = torch.full((8,), 0.5, dtype=F64)
    k = tangent_point(x_axis, o, u, radius)
    assert torch.isfinite(k).all()
    torch.testing.assert_close((k - o).norm(dim=1), radius, rtol=1e-12, atol=0)
    assert ((k - o) * (x_axis - k)).sum(1).abs().max() <= 1e-12


def test_schedules():
    # theta = theta_scale / d^{3/2}; ceil(log2(1/theta)) queries
    assert bisection_steps(1.0, 784) == math.ceil(math.log2(784 ** 1.5)) == 15
    assert bisection_steps(1.0, 3072) == 18
    d = 3 * 224 * 224
    assert bisection_steps(1000.0, d) == math.ceil(math.log2(d ** 1.5 / 1000)) == 16
    assert [num_normal_queries(t) for t in (1, 2, 4, 100, 10 ** 5)] == [100, 141, 200, 1000, 10000]
    assert default_theta_scale(784) == default_theta_scale(3072) == 1.0
    assert default_theta_scale(3 * 224 * 224) == 1000.0


class Halfspace(nn.Module):
    """Logits (0, <w, x> + b): class 1 on the side w points to."""

    def __init__(self, w, b):
        super().__init__()
        self.register_buffer("w", w)
        self.b = b

    def forward(self, x):
        z = x.flatten(1) @ self.w + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


def halfspace_oracle(n, d, budget, seed=0):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, dtype=F64, generator=g)
    w /= w.norm()
    model = Halfspace(w, -0.5 * w.sum()).eval()  # boundary through the box centre
    x = 0.5 - 0.05 * w.abs().max() ** -1 * w * torch.rand(n, 1, dtype=F64, generator=g)
    x = x.clamp(0, 1)
    return HardLabelOracle(model, x, torch.zeros(n, dtype=torch.long), budget), w


def test_estimate_normal_is_per_sample_and_batch_independent():
    d, n = 50, 5
    oracle, w = halfspace_oracle(n, d, budget=10 ** 6)
    ids = torch.arange(n)
    # boundary points: project x onto the hyperplane, with a slightly different offset each
    o = oracle.x - ((oracle.x @ w - 0.5 * w.sum()) - 1e-6 * torch.arange(n))[:, None] * w
    delta = torch.full((n,), 0.01, dtype=F64)
    streams = SampleStreams(0, range(n), "cpu")
    u, ok = estimate_normal(oracle, streams, o, ids, delta, 4000)
    assert ok.all()
    torch.testing.assert_close(u.norm(dim=1), torch.ones(n, dtype=F64))  # unit per sample
    # cos^2 ~ 1 / (1 + pi d / (2 B)) = 0.98 for a flat boundary
    assert (u @ w).min() > 0.95
    assert (oracle.queries == 4000).all()
    # each sample alone (own oracle, own stream) gives the same estimate, bit for bit
    for i in (0, 3):
        single = HardLabelOracle(oracle.model, oracle.x[i:i + 1], oracle.y[i:i + 1], 10 ** 6)
        u1, _ = estimate_normal(single, SampleStreams(0, [i], "cpu"), o[i:i + 1],
                                torch.tensor([0]), delta[i:i + 1], 4000)
        assert torch.equal(u1[0], u[i])


def test_estimate_normal_all_queries_agree_and_budget_truncation():
    d = 20
    oracle, w = halfspace_oracle(2, d, budget=torch.tensor([1000, 30]))
    far = (oracle.x + 0.4 * w).clamp(0, 1)  # deep in the adversarial half: every phi = +1
    u, ok = estimate_normal(oracle, SampleStreams(1, [0, 1], "cpu"), far.clone(),
                            torch.arange(2), torch.full((2,), 1e-3, dtype=F64), 100)
    assert ok.all() and torch.isfinite(u).all()
    torch.testing.assert_close(u.norm(dim=1), torch.ones(2, dtype=F64))
    assert oracle.queries.tolist() == [100, 30]  # sample 1 stops at its hard budget


def test_bisect_lockstep_within_theta():
    d, n = 64, 6
    oracle, w = halfspace_oracle(n, d, budget=10 ** 4, seed=4)
    x_far = (oracle.x + 0.8 * w).clamp(0, 1)
    assert oracle.is_adversarial(x_far, torch.arange(n)).adversarial.all()
    oracle.queries.zero_()
    steps = bisection_steps(1.0, d)
    o = bisect(oracle, oracle.x, x_far, torch.arange(n), steps)
    assert (oracle.queries == steps).all()
    assert oracle.is_adversarial(o, torch.arange(n)).adversarial.all()
    margin = o @ w - 0.5 * w.sum()  # signed distance past the boundary
    theta = d ** -1.5
    assert (margin >= 0).all()
    assert (margin <= theta * (x_far - oracle.x).norm(dim=1) * 1.0001).all()
