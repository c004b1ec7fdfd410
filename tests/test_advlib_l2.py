"""The vendored adv-lib attacks (repspec_zoo.attacks.advlib_l2) return the same points as adv-lib
itself (the ``test`` extra installs it), on a small ReLU network with 10 classes, cold and
warm-started, including FMN's boundary bisection and ALMA's init_lr_distance line search."""
from importlib.metadata import version

import pytest
import torch
from adv_lib.attacks import alma, ddn, fmn
from adv_lib.utils import BackwardCounter, ForwardCounter
from torch import nn

from repspec_zoo.attacks import advlib_l2


def problem():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Flatten(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 10)).eval()
    x = torch.rand(12, 1, 8, 8)
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


def same(ours, theirs, seed=0):
    """Both calls from the same torch RNG state (ALMA / DDN may draw Gaussian directions)."""
    torch.manual_seed(seed)
    a = ours()
    torch.manual_seed(seed)
    b = theirs()
    return a, b


def test_copied_release_is_the_installed_one():
    assert advlib_l2.ADV_LIB_VERSION == version("adv-lib")


@pytest.mark.parametrize("kw", [dict(), dict(α_init=2.0, γ_init=0.1, γ_final=0.01)])
def test_fmn_matches_adv_lib(kw):
    net, x, y = problem()
    a, b = same(lambda: advlib_l2.fmn(net, x, y, steps=30, **kw), lambda: fmn(net, x, y, norm=2, steps=30, **kw))
    assert (a != x).flatten(1).any(1).sum() >= 6  # most samples are attacked successfully
    assert torch.equal(a, b)


def test_fmn_warm_start_matches_adv_lib():
    net, x, y = problem()
    # another sample of a different class as each start (adversarial for FMN)
    with torch.no_grad():
        labels = net(x).argmax(1)
    idx = torch.tensor([int((labels != labels[i]).nonzero()[0]) for i in range(len(x))])
    starts = x[idx]
    a, b = same(lambda: advlib_l2.fmn(net, x, y, steps=20, starting_points=starts),
                lambda: fmn(net, x, y, norm=2, steps=20, starting_points=starts))
    assert (a != x).flatten(1).any(1).all()
    assert torch.equal(a, b)
    with pytest.raises(ValueError, match="not all adversarial"):
        advlib_l2.fmn(net, x, y, starting_points=x)


@pytest.mark.parametrize("kw", [dict(), dict(init_lr_distance=0.1, levels=256)])
def test_alma_matches_adv_lib(kw):
    net, x, y = problem()
    a, b = same(lambda: advlib_l2.alma(net, x, y, num_steps=60, **kw),
                lambda: alma(net, x, y, num_steps=60, distance="l2", **kw))
    assert (a != x).flatten(1).any(1).sum() >= 6
    assert torch.equal(a, b)


@pytest.mark.parametrize("kw", [dict(levels=None), dict(γ=0.1, init_norm=0.5)])
def test_ddn_matches_adv_lib(kw):
    net, x, y = problem()
    a, b = same(lambda: advlib_l2.ddn(net, x, y, steps=40, **kw), lambda: ddn(net, x, y, steps=40, **kw))
    assert (a != x).flatten(1).any(1).sum() >= 6
    assert torch.equal(a, b)


def test_pass_counters_match_adv_lib():
    net, x, y = problem()
    counts = []
    for forward, backward in [(advlib_l2.ForwardCounter(), advlib_l2.BackwardCounter()),
                              (ForwardCounter(), BackwardCounter())]:
        model = nn.Sequential(net)
        model.register_forward_pre_hook(forward)
        model.register_full_backward_hook(backward)
        advlib_l2.fmn(model, x, y, steps=7)
        counts.append((forward.num_samples_called, backward.num_samples_called))
    assert counts[0] == counts[1] == (7 * len(x), 7 * len(x))
