"""Power iteration and the differentiable sigma against the SVD of the dense operator (tiny sizes, float64)."""
import pytest
import torch

from repspec_zoo.spectral.operator import ConvGeometry, conv_apply
from repspec_zoo.spectral.power import conv_power_iteration, matrix_power_iteration, sigma_from_vectors

from spectral_cases import ALL_CASES, F64, as_params, c1, c2, converge_conv, dense_of, module_dense, top_sigma

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


@pytest.mark.parametrize('make,in_shape', as_params(ALL_CASES))
def test_conv_power_iteration_converges_to_svd(make, in_shape):
    conv = make()
    geom = ConvGeometry.from_module(conv, in_shape)
    true = top_sigma(module_dense(conv, in_shape))
    sigma, u, v, steps = converge_conv(conv.weight, geom, true)
    assert sigma.dtype == F64 and u.shape == geom.out_shape(conv.weight) and v.shape == geom.in_shape
    assert abs(sigma.item() - true) <= 1e-6 * true, f'{sigma.item()} vs {true} after {steps} steps'
    assert sigma.item() <= true * (1 + 1e-10)  # ||A v|| with unit v never exceeds sigma_max
    assert abs(u.norm().item() - 1) < 1e-12 and abs(v.norm().item() - 1) < 1e-12


def test_conv_power_iteration_warm_start_and_seed():
    conv = c2(3, 4, 3, stride=2, padding=1)
    geom = ConvGeometry.from_module(conv, (3, 7, 7))
    true = top_sigma(module_dense(conv, (3, 7, 7)))
    s, u, v, _ = converge_conv(conv.weight, geom, true)
    s1, u1, v1 = conv_power_iteration(conv.weight, geom, u, v, n_iter=1)
    assert abs(s1.item() - s.item()) <= 1e-12 * true
    torch.testing.assert_close(v1, v, rtol=0, atol=1e-6)
    torch.testing.assert_close(u1, u, rtol=0, atol=1e-6)
    a = conv_power_iteration(conv.weight, geom, n_iter=3, generator=torch.Generator().manual_seed(7))
    b = conv_power_iteration(conv.weight, geom, n_iter=3, generator=torch.Generator().manual_seed(7))
    assert torch.equal(a[2], b[2])
    # n_iter=k is k single steps
    s5, u5, v5 = conv_power_iteration(conv.weight, geom, a[1], a[2], n_iter=5)
    u_, v_ = a[1], a[2]
    for _ in range(5):
        s_, u_, v_ = conv_power_iteration(conv.weight, geom, u_, v_, n_iter=1)
    torch.testing.assert_close((s5, u5, v5), (s_, u_, v_), rtol=0, atol=1e-14)
    # n_iter=0 only evaluates <u, A v>
    s0, _, _ = conv_power_iteration(conv.weight, geom, u, v, n_iter=0)
    assert abs(s0.item() - s.item()) <= 1e-12 * true


def test_matrix_power_iteration_vs_svd_and_warm_start():
    torch.manual_seed(0)
    w = torch.randn(7, 2, 2, 2, dtype=F64)  # any shape: flattened to (7, 8)
    true = top_sigma(w.reshape(7, -1))
    sigma, u, v = matrix_power_iteration(w, n_iter=500, generator=torch.Generator().manual_seed(0))
    assert u.shape == (7,) and v.shape == (8,) and sigma.dtype == F64
    assert abs(sigma.item() - true) <= 1e-10 * true
    s1, u1, v1 = matrix_power_iteration(w, u, v, n_iter=1)
    assert abs(s1.item() - sigma.item()) <= 1e-13 * true
    torch.testing.assert_close(u1, u, rtol=0, atol=1e-10)
    torch.testing.assert_close(v1, v, rtol=0, atol=1e-10)
    # warm start from u alone derives v = W^T u
    s2, _, _ = matrix_power_iteration(w, u=u, n_iter=0)
    assert abs(s2.item() - true) <= 1e-10 * true


@pytest.mark.parametrize('low', [torch.float16, torch.bfloat16], ids=['fp16', 'bf16'])
def test_low_precision_weights_iterate_in_float32(low):
    torch.manual_seed(0)
    w = torch.randn(6, 5).to(low)
    true = top_sigma(w.to(F64))
    sigma, u, v = matrix_power_iteration(w, n_iter=300)
    assert sigma.dtype == u.dtype == v.dtype == torch.float32
    # float32 accuracy on the low-precision weight (exactly representable in float64)
    assert abs(sigma.item() - true) <= 1e-5 * true
    conv = c2(2, 3, 3, padding=1).to(low)
    geom = ConvGeometry.from_module(conv, (2, 5, 5))
    true = top_sigma(dense_of(lambda b: conv_apply(conv.weight.detach().to(F64), geom, b), (2, 5, 5)))
    with torch.autocast('cpu', dtype=torch.bfloat16):
        s, u, v = conv_power_iteration(conv.weight, geom, n_iter=2000)
        s_diff = sigma_from_vectors(conv.weight, u, v, geom)
    assert s.dtype == torch.float32 and s_diff.dtype == torch.float32
    assert abs(s.item() - true) <= 1e-4 * true
    assert abs(s_diff.item() - s.item()) <= 1e-5 * true
    s_diff.backward()
    assert conv.weight.grad.dtype == low


# ------------------------------------------------------------------------------ differentiable sigma

def test_sigma_from_vectors_matrix_gradient_is_outer_product():
    torch.manual_seed(0)
    w = torch.randn(5, 4, dtype=F64, requires_grad=True)
    sigma, u, v = matrix_power_iteration(w, n_iter=500)
    s = sigma_from_vectors(w, u, v)
    assert abs(s.item() - sigma.item()) <= 1e-12
    s.backward()
    torch.testing.assert_close(w.grad, torch.outer(u, v), rtol=0, atol=1e-14)
    # equals the autograd gradient of the dense sigma_max
    w2 = w.detach().clone().requires_grad_(True)
    torch.linalg.matrix_norm(w2, ord=2).backward()
    torch.testing.assert_close(w.grad, w2.grad, rtol=0, atol=1e-8)


@pytest.mark.parametrize('make,in_shape', as_params([
    ('2d-k3-s2-p1-odd7x7', lambda: c2(2, 3, 3, stride=2, padding=1, seed=1), (2, 7, 7)),
    ('2d-k3-groups2-dil2', lambda: c2(2, 4, 3, padding=2, dilation=2, groups=2, seed=1), (2, 5, 7)),
    ('1d-k5-s2-p2', lambda: c1(2, 3, 5, stride=2, padding=2, seed=1), (2, 9)),
]))
def test_sigma_from_vectors_conv_gradient_matches_dense(make, in_shape):
    conv = make()
    geom = ConvGeometry.from_module(conv, in_shape)
    gamma = 1e-2
    w = conv.weight.detach().clone().requires_grad_(True)
    a = dense_of(lambda b: conv_apply(w, geom, b), in_shape)  # differentiable in w
    sv = torch.linalg.svdvals(a.detach())
    assert sv[0] - sv[1] > 1e-3 * sv[0], 'test needs a simple top singular value'
    (gamma / 2 * torch.linalg.matrix_norm(a, ord=2) ** 2).backward()
    expected = w.grad.clone()
    sigma, u, v, _ = converge_conv(w, geom, sv[0].item())
    w.grad = None
    s = sigma_from_vectors(w, u, v, geom)
    (gamma / 2 * s ** 2).backward()
    assert abs(s.item() - sv[0].item()) <= 1e-9 * sv[0].item()
    torch.testing.assert_close(w.grad, expected, rtol=1e-6, atol=1e-12)


def test_errors_name_the_problem():
    w = torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match='do not match'):
        sigma_from_vectors(w, torch.randn(4, 8, 8), torch.randn(2, 8, 8), ConvGeometry((2, 9, 9), padding=1))
    with pytest.raises(ValueError, match='warm-start u'):
        matrix_power_iteration(torch.randn(3, 4), u=torch.randn(4))
