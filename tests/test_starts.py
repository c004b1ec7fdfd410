"""Every attacked sample gets a start: the start pool, its ordering, and evaluate()'s defaults
on a model that maps all uniform noise to one class (as slp_baseline.fmnist maps it to Bag)."""
import math

import pytest
import torch
from torch import nn

from repspec_zoo.attacks import StartPool, run_attack
from repspec_zoo.evaluation.evaluate import evaluate

D = 64  # 1 x 8 x 8 images


class NearestPrototype(nn.Module):
    """Logits -||x - p_k||^2: class k wins where x is nearest prototype k. Prototype 0 is the grey
    image 0.5, the mean of uniform noise, so every noise draw lands in class 0 (the noise is at
    about d/12 from it and at d (1/12 + 0.35^2) from the others). The boundary between classes j
    and k is the bisecting hyperplane, so each sample's minimal distance is known exactly."""

    LEVELS = (0.5, 0.15, 0.85)

    def __init__(self):
        super().__init__()
        self.protos = nn.Parameter(torch.tensor(self.LEVELS)[:, None].expand(3, D).clone(), requires_grad=False)

    def forward(self, x):
        diff = x.flatten(1)[:, None, :] - self.protos[None]
        return -(diff * diff).sum(-1)  # elementwise: every row's logits are independent of the batch

    def distance(self, x, y):
        """Exact L2 distance from x (class y) to the nearest other class's half-space."""
        flat, p = x.flatten(1).double(), self.protos.double()
        sq = ((flat[:, None, :] - p[None]) ** 2).sum(-1)  # (n, 3)
        gap = (sq - sq.gather(1, y[:, None])) / (2 * (p[None, :, :] - p[y][:, None, :]).norm(dim=-1).clamp_min(1e-12))
        gap[torch.arange(len(y)), y] = math.inf
        return gap.min(1).values


def dataset(per_class=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.cat([level + 0.06 * (2 * torch.rand(per_class, D, generator=g) - 1) for level in NearestPrototype.LEVELS])
    y = torch.arange(3).repeat_interleave(per_class)
    return x.clamp(0, 1).view(-1, 1, 8, 8), y


def test_noise_never_fools_the_model_on_class_zero():
    model = NearestPrototype().eval()
    noise = torch.rand(2000, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    assert (model(noise).argmax(1) == 0).all()


def test_pool_orders_other_classes_nearest_first():
    x, y = dataset()
    pool = StartPool(x, y, per_sample=5)
    order = pool.order(x.flatten(1)[:3], y[:3])
    assert order.shape == (3, 5)
    assert (y[order] != y[:3, None]).all()
    dist = (x.flatten(1)[order] - x.flatten(1)[:3, None]).norm(dim=-1)
    assert (dist[:, 1:] >= dist[:, :-1]).all()
    # labels unknown: every image is a candidate, nearest first
    assert StartPool.of(x).order(x.flatten(1)[:1], y[:1]).shape == (1, len(x))
    with pytest.raises(ValueError, match="one label per image"):
        StartPool(x, y[:3])


def test_every_sample_of_the_noise_class_gets_a_start():
    model = NearestPrototype().eval()
    x, y = dataset()
    # without a pool the class-0 samples are never started on and cost 1 + 1000 queries each
    bare = evaluate(model, (x, y), n=18, budgets=[300, 1500], seed=0, lemma1=False, progress=False, start_pool=None)
    index = torch.tensor(bare.per_sample["index"])
    l2 = torch.tensor(bare.per_sample["l2"]["1500"])
    assert torch.isinf(l2[y[index] == 0]).all() and torch.isfinite(l2[y[index] != 0]).all()
    assert bare.success_rate["1500"] < 1.0 and bare.n_samples == 18  # kept and reported, not dropped
    # by default the rest of the split is the pool: every sample is broken
    res = evaluate(model, (x, y), n=18, budgets=[300, 1500], seed=0, lemma1=False, progress=False)
    assert res.per_sample["index"] == bare.per_sample["index"]
    assert res.success_rate["1500"] == 1.0 and res.settings["start_pool"] == dict(source="rest of the split", size=18)
    got = torch.tensor(res.per_sample["l2"]["1500"], dtype=torch.float64)
    true = model.distance(x[index], y[index])
    assert (got >= true * (1 - 1e-4)).all() and (got <= 1.5 * true).all()


def test_noise_draws_stop_early_when_a_pool_can_take_over():
    from repspec_zoo.attacks.boundary import INIT_DRAWS_WITH_POOL, bisection_steps

    model = NearestPrototype().eval()
    x, y = dataset()
    zero, rest = (y == 0).nonzero().flatten()[:4], (y != 0).nonzero().flatten()
    res = run_attack("ta", model, x[zero], y[zero], 1000, starts=StartPool(x[rest], y[rest]))
    # 1 (x) + the capped noise draws (rounds of 1, 1, 2, 4, ... query at most twice the cap)
    # + 1 pool image + 10 blend steps + one boundary bisection, then the attack proper
    first_record = torch.tensor([res.trace(i)[0][0] for i in range(len(zero))])
    assert (first_record <= 1 + 2 * INIT_DRAWS_WITH_POOL + 1 + 10 + bisection_steps(1.0, D)).all()
    assert res.success.all() and (res.queries == 1000).all()


def test_pool_excludes_the_attacked_images():
    model = NearestPrototype().eval()
    x, y = dataset(per_class=4)
    with pytest.warns(UserWarning, match="nothing|no correctly classified image is left for the start pool"):
        res = evaluate(model, (x, y), n=12, budgets=[100], seed=0, lemma1=False, progress=False)
    assert res.settings["start_pool"]["size"] == 0  # all 12 attacked: nothing left for the pool
    l2 = torch.tensor(res.per_sample["l2"]["100"])
    assert torch.isinf(l2[y == 0]).all() and res.n_samples == 12  # unbroken samples are kept, as +inf
    assert res.success_rate["100"] == pytest.approx(8 / 12)


def test_bare_start_tensor_is_tried_nearest_first():
    model = NearestPrototype().eval()
    x, y = dataset(per_class=2)
    zero = (y == 0).nonzero().flatten()
    starts = torch.cat([x[y == 0], x[y == 2], x[y == 1]])  # same-class rows first: the oracle rejects them
    res = run_attack("ta", model, x[zero], y[zero], 400, starts=starts)
    assert res.success.all()
