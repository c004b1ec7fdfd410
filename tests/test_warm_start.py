"""Why one warm-started power step can be far off after a weight update (the 0.28 outlier in benchmarks/README.md).

Power iteration from the previous top singular vector ``v0`` converges like ``(sigma_2/sigma_1)^(2k) * tan(angle
(v0, v1))``: an update that leaves the top direction on top costs little, but one whose own direction's singular
value *crosses* the old sigma_max (here a spatially constant, near-DC filter, like the first SGD step gives timm's
ResNet stem) makes a new top direction almost orthogonal to ``v0``, and one step recovers little of it.
"""
import torch

from repspec_zoo.spectral.operator import ConvGeometry, conv_apply
from repspec_zoo.spectral.power import conv_power_iteration

from spectral_cases import F64, dense_of

GEOM = ConvGeometry((3, 8, 8), padding=1)


def _top_pair(weight):
    _, s, vh = torch.linalg.svd(dense_of(lambda x: conv_apply(weight, GEOM, x), GEOM.in_shape))
    return s[0].item(), vh[0]


def _warm_error(w0, update, scale, steps=1):
    """(|<v0, v1>|, relative error of `steps` warm power steps on w0 + scale * update) from w0's exact top pair."""
    _, v0 = _top_pair(w0)
    v0 = v0.reshape(GEOM.in_shape)
    u0 = conv_apply(w0, GEOM, v0)
    w1 = w0 + scale * update
    sigma1, v1 = _top_pair(w1)
    warm = conv_power_iteration(w1, GEOM, u0, v0, n_iter=steps)[0].item()
    return abs(float(v0.reshape(-1) @ v1)), (sigma1 - warm) / sigma1


def test_one_warm_step_fails_when_the_update_creates_a_new_top_direction():
    g = torch.Generator().manual_seed(0)
    w0 = 0.2 * torch.randn(4, 3, 3, 3, generator=g, dtype=F64)
    sigma0, _ = _top_pair(w0)
    # a rank-one, spatially constant (DC) filter: its operator's top direction is a near-constant image
    dc = torch.outer(torch.randn(4, generator=g, dtype=F64), torch.randn(3, generator=g, dtype=F64))
    dc = dc[:, :, None, None].expand(4, 3, 3, 3)
    dc = dc / _top_pair(dc)[0]  # operator norm 1
    # the same update direction, growing: the warm step stays accurate while the old top direction stays on top
    # (even at overlap 0.6), and fails once the DC direction's singular value crosses it (overlap ~0)
    small_overlap, small_error = _warm_error(w0, dc, 1e-3 * sigma0)
    assert small_overlap > 0.99 and abs(small_error) < 1e-8
    before_overlap, before_error = _warm_error(w0, dc, 1.0 * sigma0)
    assert before_overlap > 0.5 and 0 <= before_error < 2e-3
    after_overlap, after_error = _warm_error(w0, dc, 1.5 * sigma0)
    assert after_overlap < 0.01 and after_error > 0.2
    errors = [_warm_error(w0, dc, 1.5 * sigma0, steps)[1] for steps in (1, 5, 25, 400)]
    assert all(b <= a + 1e-12 for a, b in zip(errors, errors[1:])) and errors[-1] < 1e-6  # it catches up
