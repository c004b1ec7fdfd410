"""The conv operator and its adjoint against the layer itself (dense matrices of tiny layers, float64)."""
import pytest
import torch
import torch.nn as nn

from repspec_zoo.spectral.operator import ConvGeometry, conv_adjoint, conv_apply

from spectral_cases import ALL_CASES, F64, as_params, c2, dense_of, module_dense

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


@pytest.mark.parametrize('make,in_shape', as_params(ALL_CASES))
def test_conv_apply_matches_module(make, in_shape):
    conv = make()
    geom = ConvGeometry.from_module(conv, in_shape)
    x = torch.randn(3, *in_shape, dtype=F64)
    with torch.no_grad():
        expected = conv(x)
    y = conv_apply(conv.weight.detach(), geom, x)
    assert y.shape == expected.shape
    assert tuple(y.shape[1:]) == geom.out_shape(conv.weight)
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)
    torch.testing.assert_close(conv_apply(conv.weight.detach(), geom, x[0]), expected[0], rtol=0, atol=1e-12)


@pytest.mark.parametrize('make,in_shape', as_params(ALL_CASES))
def test_adjoint_is_exact(make, in_shape):
    conv = make()
    geom = ConvGeometry.from_module(conv, in_shape)
    w = conv.weight.detach()
    x = torch.randn(2, *in_shape, dtype=F64)
    y = torch.randn(2, *geom.out_shape(w), dtype=F64)
    at_y = conv_adjoint(w, geom, y)
    assert at_y.shape == x.shape  # output_padding restores odd sizes under stride
    lhs = (conv_apply(w, geom, x) * y).sum()
    rhs = (x * at_y).sum()
    assert abs(lhs - rhs).item() <= 1e-10 * max(1.0, abs(lhs).item())
    # and the dense adjoint is the transpose of the dense operator
    a = module_dense(conv, in_shape)
    at = dense_of(lambda b: conv_adjoint(w, geom, b), geom.out_shape(w))
    torch.testing.assert_close(at, a.T, rtol=0, atol=1e-12)


def test_from_module_accepts_batched_shape_and_resolves_strings():
    conv = c2(2, 3, 4, padding='same')
    g = ConvGeometry.from_module(conv, (5, 2, 6, 7))
    assert g.in_shape == (2, 6, 7) and g.padding == (1, 1) and g.padding_hi == (2, 2)
    assert ConvGeometry.from_module(c2(2, 3, 3, padding='valid'), (2, 5, 5)).padding == (0, 0)
    g = ConvGeometry((3, 9, 9), stride=2, padding=1)  # ints broadcast
    assert g.stride == (2, 2) and g.padding_hi == (1, 1) and g.out_shape(torch.zeros(8, 3, 3, 3)) == (8, 5, 5)


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match='reflect'):
        ConvGeometry.from_module(nn.Conv2d(2, 2, 3, padding=1, padding_mode='reflect'), (2, 5, 5))
    with pytest.raises(ValueError, match='too small for kernel'):
        ConvGeometry.from_module(nn.Conv2d(3, 4, 7), (3, 4, 4))
    with pytest.raises(ValueError, match='C_in=3'):
        ConvGeometry.from_module(nn.Conv2d(3, 4, 3), (2, 8, 8))
    with pytest.raises(TypeError, match='ConvTranspose2d'):
        ConvGeometry.from_module(nn.ConvTranspose2d(3, 4, 3), (3, 8, 8))
    w = torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match='groups'):
        conv_apply(w, ConvGeometry((4, 8, 8), padding=1), torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match='expected'):
        conv_apply(w, ConvGeometry((2, 8, 8), padding=1), torch.randn(1, 2, 8, 9))
