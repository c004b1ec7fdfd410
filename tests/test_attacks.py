"""Oracle, attacks (TA, G-TA, HSJA) and results: budgets, bounds, determinism, errors, and
distances on classifiers whose minimal adversarial distance is known in closed form."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch import nn

from repspec_zoo.attacks import (HARD_LABEL_ATTACKS, AttackResult, AttackSettings, AttackVerificationError,
                                 HardLabelOracle, run_attack, verify)
from repspec_zoo.models.normalize import NormalizedModel

S = AttackSettings
F32 = torch.float32


# The analytic models use elementwise products and row sums, which (unlike a float32 matmul)
# give every row the same bits whatever chunk it runs in: an attack can only be
# chunk-invariant on a model that is.
class Affine(nn.Module):
    """Two logits (0, <w, x> + b); the distance of x to the boundary is |<w, x> + b| / ||w||."""

    def __init__(self, w, b):
        super().__init__()
        self.register_buffer("w", w)
        self.b = float(b)

    def forward(self, x):
        z = (x.flatten(1) * self.w).sum(1) + self.b
        return torch.stack([torch.zeros_like(z), z], 1)


class Sphere(nn.Module):
    """Class 0 inside the ball ||x - c|| < r, class 1 outside; distance | ||x - c|| - r |."""

    def __init__(self, c, r):
        super().__init__()
        self.register_buffer("c", c)
        self.r = float(r)

    def forward(self, x):
        q = (x.flatten(1) - self.c).pow(2).sum(1)
        return torch.stack([self.r ** 2 - q, torch.zeros_like(q)], 1)


def affine_problem(shape, scales, seed=0):
    """Hyperplane through the box centre; x at distance m = 0.02 sqrt(d) * scale on the
    benign side. Both x and its closest boundary point x + m w lie inside the box, so the
    box-constrained distance is m. Half of uniform noise is adversarial."""
    d = math.prod(shape)
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(d, dtype=torch.float64, generator=g)
    w /= w.norm()
    b = -0.5 * w.sum()
    m = 0.02 * math.sqrt(d) * torch.tensor(scales, dtype=torch.float64)
    c = 0.4 + 0.2 * torch.rand(len(m), d, dtype=torch.float64, generator=g)
    x = c - (c @ w + b + m)[:, None] * w
    assert 0 <= x.min() and x.max() <= 1 and 0 <= (x + m[:, None] * w).min()
    assert (x + m[:, None] * w).max() <= 1
    model = Affine(w.to(F32), b).eval()
    return model, x.to(F32).view(-1, *shape), torch.zeros(len(m), dtype=torch.long), m.to(F32)


def sphere_problem(shape, scales, seed=0):
    """Ball of radius r = 0.04 sqrt(d) around the box centre; x at radius r * scale (inside:
    class 0, outside: class 1). The radial closest points lie inside the box."""
    d = math.prod(shape)
    g = torch.Generator().manual_seed(seed)
    r = 0.04 * math.sqrt(d)
    rho = r * torch.tensor(scales, dtype=torch.float64)
    c = torch.full((d,), 0.5, dtype=torch.float64)
    dirs = torch.randn(len(rho), d, dtype=torch.float64, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    x = c + rho[:, None] * dirs
    assert 0 <= x.min() and x.max() <= 1
    assert 0 <= (c + r * dirs).min() and (c + r * dirs).max() <= 1
    model = Sphere(c.to(F32), r).eval()
    return model, x.to(F32).view(-1, *shape), (rho > r).long(), (rho - r).abs().to(F32)


CENTRE = {s: torch.full((1, *s), 0.5) for s in [(32,), (1, 28, 28), (3, 32, 32)]}
PROBLEMS = {"affine": affine_problem, "sphere": sphere_problem}
SCALES = {"affine": [1.0, 2.0], "sphere": [0.5, 1.5]}  # sphere: one inside, one outside


@pytest.mark.parametrize("name", sorted(HARD_LABEL_ATTACKS))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
def test_converges_to_analytic_distance(name, problem):
    """d = 32, 20k queries: within 2% of the true distance, never below it."""
    shape = (32,)
    model, x, y, true = PROBLEMS[problem](shape, SCALES[problem])
    # starts: the ball centre, for samples outside the ball where noise is never adversarial
    res = run_attack(name, model, x, y, 20_000, S(batch_size=4096), starts=CENTRE[shape])
    assert res.success.all() and res.verified.all()
    ratio = res.l2 / true
    assert ratio.min() >= 1 - 1e-4, ratio
    assert ratio.max() <= 1.02, ratio


@pytest.mark.parametrize("name", sorted(HARD_LABEL_ATTACKS))
@pytest.mark.parametrize("problem", sorted(PROBLEMS))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)], ids=["d784", "d3072"])
def test_analytic_distance_image_size(name, problem, shape):
    """d = 784 / 3072 at 5000 queries. Within 2% is out of reach there for any attack of
    this family (the normal estimate has cos^2 ~ 1 / (1 + pi d / 2B) with the true normal;
    measured ratios: 1.14-1.38 at d = 784, 1.2-1.65 at d = 3072), so the bound checks that
    the attack got there from an init 6-14x (affine) too far, and never went below."""
    # one sample each (distances are scale-invariant); the sphere sample is inside the ball
    model, x, y, true = PROBLEMS[problem](shape, SCALES[problem][:1])
    res = run_attack(name, model, x, y, 5000, S(batch_size=4096))
    assert res.success.all() and res.verified.all() and (res.queries <= 5000).all()
    ratio = res.l2 / true
    assert ratio.min() >= 1 - 1e-4, ratio
    assert ratio.max() <= (1.5 if shape[0] == 1 else 1.8), ratio
    if problem == "affine":
        assert (res.trace_l2[:, 0] / true).min() > 5  # the init is far ...
        assert (res.l2 <= res.trace_l2[:, 0] / 4).all()  # ... and the attack closed in


@pytest.fixture(scope="module")
def hsja_run():
    model, x, y, _ = affine_problem((1, 28, 28), [1.0, 1.5, 2.0])
    budget = torch.tensor([200, 500, 1200])
    return model, x, y, budget, run_attack("hsja", model, x, y, budget, S(batch_size=64, seed=3))


def test_budgets_bounds_and_trace(hsja_run):
    model, x, y, budget, res = hsja_run
    assert (res.queries == budget).all()  # hard budget: spent exactly, never exceeded
    assert res.x_adv.min() >= 0 and res.x_adv.max() <= 1
    assert res.success.all()
    torch.testing.assert_close(res.l2, (res.x_adv - x).flatten(1).norm(dim=1))
    for i in range(len(x)):
        trace = res.trace(i)
        qs = [q for q, _ in trace]
        assert qs == sorted(qs) and qs[-1] <= budget[i]
        assert trace[-1][1] == pytest.approx(res.l2[i].item())
    assert verify(model, x, res.x_adv, y, res.l2).all()


def test_same_seed_identical_and_chunking_invariant(hsja_run):
    model, x, y, budget, res = hsja_run
    for batch_size in (1, 64):  # the chunk size must not change any draw or answer
        again = run_attack("hsja", model, x, y, budget, S(batch_size=batch_size, seed=3))
        assert torch.equal(again.x_adv, res.x_adv) and torch.equal(again.queries, res.queries)
        assert torch.equal(again.trace_l2, res.trace_l2)
    other = run_attack("hsja", model, x, y, budget, S(batch_size=64, seed=4))
    assert not torch.equal(other.x_adv, res.x_adv)


@pytest.mark.parametrize("name", sorted(HARD_LABEL_ATTACKS))
def test_batched_equals_one_at_a_time(name):
    model, x, y, _ = sphere_problem((1, 28, 28), [0.3, 0.6, 0.9])
    batched = run_attack(name, model, x, y, 600, S(seed=7))
    for i in range(len(x)):
        single = run_attack(name, model, x[i:i + 1], y[i:i + 1], 600, S(seed=7), sample_ids=[i])
        assert torch.equal(single.x_adv[0], batched.x_adv[i])
        assert single.queries[0] == batched.queries[i]


def test_verify_catches_planted_wrong_answers(hsja_run):
    model, x, y, _, res = hsja_run
    wrong = res.x_adv.clone()
    wrong[1] = x[1]  # correctly classified
    with pytest.raises(AttackVerificationError, match=r"not misclassified: samples \[1\]"):
        verify(model, x, wrong, y, (wrong - x).flatten(1).norm(dim=1))
    l2 = res.l2.clone()
    l2[2] *= 0.9  # distance under-reported
    with pytest.raises(AttackVerificationError, match=r"reported l2.*samples \[2\]"):
        verify(model, x, res.x_adv, y, l2)
    out = res.x_adv.clone()
    out[0, 0, 0, 0] = 1.5  # out of the box
    ok = verify(model, x, out, y, (out - x).flatten(1).norm(dim=1), raise_on_error=False)
    assert ok.tolist() == [False, True, True]
    l2 = res.l2.clone()
    l2[0] = math.inf  # a failed sample is not checked
    assert verify(model, x, wrong, y, torch.where(torch.arange(3) == 1, 0.0, l2),
                  raise_on_error=False).tolist() == [True, False, True]


def test_attack_flags_points_that_fail_reverification(monkeypatch):
    """A model that answers differently when re-asked (batch-dependent kernels) must not crash
    an attack run: the sample is flagged in `verified`, with a warning."""
    import repspec_zoo.attacks.result as result

    model, x, y, _ = affine_problem((32,), [1.0, 1.0])
    monkeypatch.setattr(result, "predict_labels",  # verify's re-evaluation says "class 0"
                        lambda m, pts, bs: torch.zeros(len(pts), dtype=torch.long))
    with pytest.warns(RuntimeWarning, match="2 returned point.*failed re-verification"):
        res = run_attack("hsja", model, x, y, 300)
    assert res.success.all() and not res.verified.any()


def test_l2_at_budgets_rule():
    res = AttackResult(
        "ta", x_adv=torch.zeros(2, 1), l2=torch.tensor([1.0, math.inf]),
        queries=torch.tensor([900, 5]), success=torch.tensor([True, False]),
        verified=torch.tensor([True, True]),
        trace_queries=torch.tensor([[50, 400, 900], [0, 0, 0]]),
        trace_l2=torch.tensor([[4.0, 2.0, 1.0], [math.inf] * 3]),
        trace_mask=torch.tensor([[True, True, True], [False, False, False]]))
    got = res.l2_at_budgets([10, 50, 399, 400, 1000])
    assert got[0].tolist() == [math.inf, 4.0, 4.0, 2.0, 1.0]
    assert torch.isinf(got[1]).all()


def test_starts_fallback_and_failure():
    model, x, y, true = sphere_problem((32,), [1.5])  # outside the ball: noise never fools it
    res = run_attack("ta", model, x, y, 2000)
    assert not res.success.any() and torch.isinf(res.l2).all()
    # 1 query for x, 1000 noise draws, then nothing left to try
    assert torch.equal(res.x_adv, x) and res.queries[0] == 1001
    starts = torch.cat([torch.ones(1, 32), CENTRE[(32,)]])  # first start is not adversarial
    res = run_attack("ta", model, x, y, 2000, starts=starts)
    assert res.success.all() and res.l2[0] >= true[0] * (1 - 1e-4)


def test_already_misclassified_and_max_iter():
    model, x, y, _ = affine_problem((32,), [1.0, 1.0])
    y = torch.tensor([0, 1])  # sample 1 is already misclassified
    res = run_attack("gta", model, x, y, 5000, S(max_iter=3))
    assert res.l2[1] == 0 and res.queries[1] == 1 and torch.equal(res.x_adv[1], x[1])
    assert res.params["iterations"] == 3 and res.queries[0] < 1500
    assert res.trace_mask[0].sum() == 4  # init + 3 iterations
    assert "success=2/2" in repr(res)


def test_oracle_counts_and_hard_budget():
    model, x, y, _ = affine_problem((32,), [1.0, 1.0, 1.0])
    oracle = HardLabelOracle(model, x, y, budget=torch.tensor([2, 5, 5]), batch_size=2)
    far = x + 0.3  # adversarial (moved along +1, w has positive sum on average) or not
    pts = torch.cat([x[[0, 0, 0]], far[[1]].clamp(0, 1), x[[1]]])
    ans = oracle.is_adversarial(pts, torch.tensor([0, 0, 0, 1, 1]))
    assert ans.answered.tolist() == [True, True, False, True, True]
    assert not ans.adversarial[[0, 1, 2, 4]].any()  # x itself is benign; unanswered -> False
    assert oracle.queries.tolist() == [2, 2, 0] and oracle.remaining.tolist() == [0, 3, 5]
    ans = oracle.is_adversarial(x[[0, 2]], torch.tensor([0, 2]))
    assert ans.answered.tolist() == [False, True] and oracle.queries.tolist() == [2, 2, 1]


def test_oracle_and_run_attack_errors():
    model, x, y, _ = affine_problem((32,), [1.0])
    with pytest.raises(ValueError, match="outside bounds.*NormalizedModel"):
        HardLabelOracle(model, x * 4 - 2, y, 10)
    bad = x.clone()
    bad[0, 3] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN"):
        HardLabelOracle(model, bad, y, 10)
    with pytest.raises(ValueError, match="budget must be >= 1"):
        HardLabelOracle(model, x, y, 0)
    with pytest.raises(ValueError, match="y must be integer labels"):
        HardLabelOracle(model, x, y.float(), 10)
    with pytest.raises(ValueError, match="batch_size"):
        HardLabelOracle(model, x, y, 10, batch_size=0)
    with pytest.raises(ValueError, match="model.eval"):
        HardLabelOracle(nn.Linear(32, 2), x, y, 10)
    oracle = HardLabelOracle(model, x, y, 10)
    with pytest.raises(ValueError, match="points has values"):
        oracle.is_adversarial(x + 2, torch.tensor([0]))
    with pytest.raises(ValueError, match=r"idx must index samples in \[0, 1\)"):
        oracle.is_adversarial(x, torch.tensor([1]))
    with pytest.raises(ValueError, match="unknown attack 'boundary'; valid names: 'alma', 'cgba', 'ddn', 'fmn', 'gta', 'hsja'"):
        run_attack("boundary", model, x, y, 10)
    with pytest.raises(ValueError, match="ratio must be"):
        run_attack("gta", model, x, y, 10, ratio=-1.0)
    with pytest.raises(ValueError, match="starts must be images shaped like x"):
        run_attack("ta", model, x, y, 10, starts=torch.zeros(1, 31))
    with pytest.raises(TypeError, match="settings must be an AttackSettings"):
        run_attack("ta", model, x, y, 10, 64)  # the old positional batch_size


@pytest.mark.parametrize("budget, match", [
    (None, "budget must be an int >= 1 or one integer per sample"), (10.0, "integer number of queries"),
    (torch.tensor([5, 5]), r"one per sample \(1,\), got shape \(2,\)"), (torch.tensor([0]), "budget must be >= 1"),
])
def test_oracle_validates_budgets(budget, match):
    model, x, y, _ = affine_problem((32,), [1.0])
    with pytest.raises(ValueError, match=match):
        HardLabelOracle(model, x, y, budget)
    with pytest.raises(ValueError, match=match):  # the attacks leave it to the oracle
        run_attack("hsja", model, x, y, budget)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seed=1.5), "seed must be an int"), (dict(batch_size=0), "batch_size must be an int >= 1"),
    (dict(max_iter=-1), "max_iter must be an int >= 1"), (dict(max_iter=2.0), "max_iter must be an int"),
    (dict(max_iter=0), "0 iterations attack nothing"), (dict(seed=-1), r"seed must be an int in \[0, 2\*\*32\)"),
    (dict(theta_scale=0.0), "theta_scale must be a finite number > 0"),
    (dict(theta_scale=math.inf), "theta_scale must be"), (dict(bounds=(1.0, 0.0)), "bounds must be"),
])
def test_settings_are_validated_on_construction(kwargs, match):
    with pytest.raises(ValueError, match=match):
        AttackSettings(**kwargs)


def test_settings_are_frozen_normalized_and_recorded():
    s = AttackSettings(seed=np.int64(3), theta_scale=2, bounds=[0, 1], progress=0)
    assert (s.seed, s.theta_scale, s.bounds, s.progress) == (3, 2.0, (0.0, 1.0), False)
    assert type(s.seed) is int and type(s.theta_scale) is float
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.seed = 4
    assert s == AttackSettings(seed=3, theta_scale=2.0)  # hashable and comparable: one value
    model, x, y, _ = affine_problem((32,), [1.0])
    res = run_attack("ta", model, x, y, 300, S(seed=3, max_iter=2))
    assert {k: res.params[k] for k in ("ratio", "budget", "seed", "theta_scale", "max_iter", "iterations")} == dict(
        ratio=1.0, budget=300, seed=3, theta_scale=1.0, max_iter=2, iterations=2)
    assert "gamma" not in res.params  # the regularizer's gamma is the only gamma in published files
    doubled = run_attack("ta", model, x, y, 300, S(seed=3, max_iter=2, theta_scale=2.0))
    assert doubled.params["theta_scale"] == 2.0 and not torch.equal(doubled.trace_queries, res.trace_queries)


def test_normalized_model():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.LazyLinear(5)).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.rand(2, 3, 8, 8)
    wrapped = NormalizedModel(net, mean, std).eval()
    expected = net((x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    torch.testing.assert_close(wrapped(x), expected)
    cfg = NormalizedModel(net, data_config={"mean": mean, "std": std})
    torch.testing.assert_close(cfg(x), expected)
    with pytest.raises(ValueError, match=r"expects images \(N, 3, H, W\)"):
        wrapped(torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="both mean and std"):
        NormalizedModel(net, mean=mean)
