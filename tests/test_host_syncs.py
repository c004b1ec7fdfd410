"""What the attacks read back to the host per step: the part of running on a GPU that a CPU test can see.

On a CUDA device every read of a tensor value on the host (``.item()``, ``.tolist()``, ``bool()``,
a boolean-mask index, ``nonzero``) waits until the device has finished the work before it. The
white-box loops must do none per step; the hard-label oracle needs one per call (the hard budget);
the hard-label attacks may add a few per call. `host_syncs.HostSyncs` counts those calls whatever
the device, so these tests run on the CPU.
"""
import pytest
import torch
from torch import nn

from repspec_zoo.attacks import HARD_LABEL_ATTACKS, WHITE_BOX_ATTACKS, AttackSettings, HardLabelOracle, run_attack
from repspec_zoo.models.normalize import NormalizedModel

from host_syncs import HostSyncs


@pytest.fixture(scope="module")
def problem():
    """A small random CNN with 10 classes, and 8 images labelled by it."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 12 * 12, 10))
    model = NormalizedModel(net, mean=(0.5,), std=(0.5,)).eval()
    x = torch.rand(8, 1, 12, 12, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return model, x, model(x).argmax(1)


def test_the_counter_sees_host_reads_and_nothing_else():
    t = torch.arange(6.0)
    with HostSyncs() as syncs:
        # device-side work: no read
        u = torch.where(t > 2, t, -t).masked_fill(t > 4, 0).cumsum(0)
        u[torch.tensor([0, 2])] = 1.0
    assert syncs.total == 0
    with HostSyncs() as syncs:
        bool(u.sum() > 0), u[0].item(), u.tolist(), u[u > 1], (u > 1).nonzero(), int(u[1])
        u[u > 3] = 0.0
    assert syncs.by_call == {"__bool__": 1, "item": 1, "tolist": 1, "__getitem__[bool mask]": 1, "nonzero": 1,
                             "__int__": 1, "__setitem__[bool mask]": 1}


def test_the_oracle_reads_back_once_per_call(problem):
    model, x, y = problem
    oracle = HardLabelOracle(model, x, y, budget=6)
    points, idx = torch.rand(16, 1, 12, 12), torch.arange(16) % 8
    for _ in range(3):
        with HostSyncs() as syncs:
            answer = oracle.is_adversarial(points, idx)
        assert syncs.total == 1, syncs.by_call  # the budget and input checks, in one read
        assert answer.answered.all()
    with HostSyncs() as syncs:  # 2 rows per sample against 0 left: the over-budget path adds the answered rows' list
        answer = oracle.is_adversarial(points, idx)
    assert not answer.answered.any() and syncs.total == 2, syncs.by_call


@pytest.mark.parametrize("name", sorted(WHITE_BOX_ATTACKS))
def test_white_box_loops_read_nothing_back_per_step(name, problem):
    """The same reads (setup, re-verification) at 4 and at 12 steps: none inside the loop."""
    model, x, y = problem
    totals = []
    for steps in (4, 12):
        with HostSyncs() as syncs:
            run_attack(name, model, x, y, None, AttackSettings(seed=0), steps=steps)
        totals.append(syncs.total)
    assert totals[0] == totals[1], totals


@pytest.mark.parametrize("name", sorted(HARD_LABEL_ATTACKS))
def test_hard_label_attacks_read_back_a_few_values_per_oracle_call(name, problem, monkeypatch):
    """Beyond the oracle's own read, an iteration lists its live samples (a nonzero); measured
    1.9-2.4 reads per oracle call for TA, G-TA, HSJA and CGBA (CGBA 9.5 before its bisection
    updated by index lists instead of boolean masks)."""
    model, x, y = problem
    calls = []
    ask = HardLabelOracle.is_adversarial
    monkeypatch.setattr(HardLabelOracle, "is_adversarial", lambda self, *a: calls.append(1) or ask(self, *a))
    with HostSyncs() as syncs:
        run_attack(name, model, x, y, 400, AttackSettings(seed=0))
    assert len(calls) > 20
    assert syncs.total <= 3 * len(calls), (syncs.by_call, len(calls))
