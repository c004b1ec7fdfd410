"""BatchNorm folding: the scaled kernel is the operator of BN after the layer (float64)."""
import pytest
import torch
import torch.nn as nn

from repspec_zoo.spectral.bn import bn_scale, bn_scaled_weight
from repspec_zoo.spectral.operator import ConvGeometry, conv_apply
from repspec_zoo.spectral.power import matrix_power_iteration, sigma_from_vectors

from spectral_cases import F64, c2, converge_conv, dense_of, top_sigma


@pytest.mark.parametrize('affine', [True, False], ids=['affine', 'no-affine'])
def test_bn_scaled_weight_is_kernel_of_bn_after_conv(affine):
    conv = c2(3, 4, 3, stride=2, padding=1)
    bn = nn.BatchNorm2d(4, affine=affine).to(F64)
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.1, 3.0)
        if affine:
            bn.weight.uniform_(-2, 2)
            bn.bias.uniform_(-1, 1)
    bn.eval()
    in_shape = (3, 7, 7)
    with torch.no_grad():
        offset = bn(conv(torch.zeros(1, *in_shape, dtype=F64)))[0]
        a_bn = dense_of(lambda b: bn(conv(b)) - offset, in_shape)
    geom = ConvGeometry.from_module(conv, in_shape)
    ws = bn_scaled_weight(conv.weight.detach(), bn_scale(bn).detach())
    torch.testing.assert_close(dense_of(lambda b: conv_apply(ws, geom, b), in_shape), a_bn, rtol=0, atol=1e-12)
    true = top_sigma(a_bn)
    sigma, _, _, _ = converge_conv(ws, geom, true)
    assert abs(sigma.item() - true) <= 1e-6 * true
    if not affine:
        torch.testing.assert_close(bn_scale(bn), (bn.running_var + bn.eps).rsqrt())


def test_bn_scale_for_linear_and_gradient_to_gamma():
    lin = nn.Linear(5, 3, bias=False).to(F64)
    bn = nn.BatchNorm1d(3).to(F64).eval()
    with torch.no_grad():
        bn.running_var.uniform_(0.5, 2)
        bn.weight.uniform_(0.5, 2)
    ws = bn_scaled_weight(lin.weight, bn_scale(bn))
    with torch.no_grad():
        a_bn = dense_of(lambda b: bn(lin(b)) - bn(lin(torch.zeros(1, 5, dtype=F64))), (5,))
    torch.testing.assert_close(ws.detach(), a_bn, rtol=0, atol=1e-12)
    sigma, u, v = matrix_power_iteration(ws, n_iter=300)
    sigma_from_vectors(ws, u, v).backward()
    assert bn.weight.grad is not None and lin.weight.grad is not None


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match='track_running_stats'):
        bn_scale(nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match='output channels'):
        bn_scaled_weight(torch.randn(4, 2, 3, 3), torch.ones(3))
