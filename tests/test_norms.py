"""Operator norms: every estimator against the dense operator matrix (tiny sizes, float64).

Ground truth is the layer itself: the dense matrix of ``x -> conv(x)`` built by running the nn module
(bias off) on the standard basis, and ``torch.linalg.svdvals`` of it.
"""
import math

import pytest
import torch
import torch.nn as nn

from repspec_zoo.spectral import fft
from repspec_zoo.spectral.bn import bn_scale, bn_scaled_weight
from repspec_zoo.spectral.fft import conv_fft_sigma, conv_fft_upper_bound
from repspec_zoo.spectral.operator import ConvGeometry, conv_adjoint, conv_apply
from repspec_zoo.spectral.power import conv_power_iteration, matrix_power_iteration, sigma_from_vectors

try:
    from timm.layers import Conv2dSame
except ImportError:  # pragma: no cover
    Conv2dSame = None

F64 = torch.float64


def _conv(cls, c_in, c_out, k, seed=0, **kw):
    torch.manual_seed(seed)
    return cls(c_in, c_out, k, bias=False, **kw).to(F64)


def c1(*a, **kw):
    return _conv(nn.Conv1d, *a, **kw)


def c2(*a, **kw):
    return _conv(nn.Conv2d, *a, **kw)


def c3(*a, **kw):
    return _conv(nn.Conv3d, *a, **kw)


def c2same(c_in, c_out, k, seed=0, **kw):  # timm TF-'SAME' conv: input-size dependent asymmetric padding
    torch.manual_seed(seed)
    return Conv2dSame(c_in, c_out, k, bias=False, **kw).to(F64)


# (id, module factory, input shape without batch dim)
ZERO_CASES = [
    ('2d-k1-s1-8x8', lambda: c2(3, 4, 1), (3, 8, 8)),
    ('2d-k1-s2-odd7x7', lambda: c2(3, 4, 1, stride=2), (3, 7, 7)),
    ('2d-k3-s1-p1-7x7', lambda: c2(3, 4, 3, padding=1, seed=2), (3, 7, 7)),
    ('2d-k3-s2-p1-odd9x9', lambda: c2(3, 4, 3, stride=2, padding=1), (3, 9, 9)),
    ('2d-k3-s2-p1-even8x8', lambda: c2(2, 4, 3, stride=2, padding=1), (2, 8, 8)),
    ('2d-k3-valid-nonsq5x7', lambda: c2(3, 2, 3), (3, 5, 7)),
    ('2d-k5-s1-p2-nonsq6x9', lambda: c2(2, 3, 5, padding=2, seed=2), (2, 6, 9)),
    ('2d-k5-s2-p2-9x7', lambda: c2(2, 3, 5, stride=2, padding=2), (2, 9, 7)),
    ('2d-k7-s2-p3-9x9', lambda: c2(2, 4, 7, stride=2, padding=3), (2, 9, 9)),
    ('2d-k7-valid-exactfit7x7', lambda: c2(2, 3, 7), (2, 7, 7)),
    ('2d-k4even-s2-p1-8x8', lambda: c2(2, 3, 4, stride=2, padding=1), (2, 8, 8)),
    ('2d-k4even-same-str-6x7', lambda: c2(2, 3, 4, padding='same', seed=1), (2, 6, 7)),
    ('2d-k3-stride(2,1)-p(1,0)', lambda: c2(2, 3, 3, stride=(2, 1), padding=(1, 0)), (2, 7, 6)),
    ('2d-k3-groups2', lambda: c2(4, 4, 3, padding=1, groups=2, seed=1), (4, 6, 6)),
    ('2d-k3-depthwise-s2', lambda: c2(4, 4, 3, stride=2, padding=1, groups=4), (4, 7, 7)),
    ('2d-k3-dil2', lambda: c2(2, 3, 3, padding=2, dilation=2), (2, 7, 8)),
    ('2d-k3-dil2-s2', lambda: c2(2, 3, 3, stride=2, padding=1, dilation=2), (2, 9, 9)),
    ('2d-k3-pad-exceeds-kernel', lambda: c2(2, 2, 3, padding=3), (2, 4, 5)),
    ('1d-k3-s1-p1-L9', lambda: c1(3, 4, 3, padding=1, seed=1), (3, 9)),
    ('1d-k5-s2-p2-L10', lambda: c1(2, 3, 5, stride=2, padding=2), (2, 10)),
    ('1d-k3-groups2-dil2', lambda: c1(4, 2, 3, padding=2, dilation=2, groups=2), (4, 8)),
    ('3d-k3-s2-p1', lambda: c3(2, 2, 3, stride=2, padding=1), (2, 3, 5, 4)),
]
if Conv2dSame is not None:
    ZERO_CASES += [
        ('2d-timm-same-k3-s2-8x7', lambda: c2same(2, 3, 3, stride=2), (2, 8, 7)),
        ('2d-timm-same-k4-s1-5x6', lambda: c2same(2, 2, 4, seed=2), (2, 5, 6)),
    ]
CIRC_CASES = [
    ('circ-2d-k3-s1-p1-7x7', lambda: c2(3, 4, 3, padding=1, padding_mode='circular'), (3, 7, 7)),
    ('circ-2d-k3-s2-p1-odd7x7', lambda: c2(2, 4, 3, stride=2, padding=1, padding_mode='circular'), (2, 7, 7)),
    ('circ-2d-k5-s1-p2-nonsq6x8', lambda: c2(2, 3, 5, padding=2, padding_mode='circular'), (2, 6, 8)),
    ('circ-2d-k3-valid-6x6', lambda: c2(2, 3, 3, padding_mode='circular'), (2, 6, 6)),
    ('circ-2d-k3-depthwise', lambda: c2(3, 3, 3, padding=1, groups=3, padding_mode='circular'), (3, 6, 6)),
    ('circ-2d-k3-dil2-s2', lambda: c2(2, 3, 3, stride=2, padding=2, dilation=2, padding_mode='circular'), (2, 8, 8)),
    ('circ-2d-k4even-same-str', lambda: c2(2, 2, 4, padding='same', padding_mode='circular'), (2, 6, 6)),
    ('circ-2d-k3-pad-exceeds-input', lambda: c2(1, 2, 3, padding=3, padding_mode='circular'), (1, 3, 4)),
    ('circ-1d-k3-s1-L7', lambda: c1(3, 2, 3, padding=1, padding_mode='circular'), (3, 7)),
]
ALL_CASES = ZERO_CASES + CIRC_CASES

# Circular geometries whose operator is block-circulant (output = input / stride): FFT is exact.
FFT_CASES = [
    ('fft-2d-k1-s1', lambda: c2(3, 4, 1, padding_mode='circular'), (3, 6, 6)),
    ('fft-2d-k1-s2', lambda: c2(4, 3, 1, stride=2, padding_mode='circular'), (4, 6, 8)),
    ('fft-2d-k3-s1', lambda: c2(3, 4, 3, padding=1, padding_mode='circular'), (3, 7, 7)),
    ('fft-2d-k3-s2', lambda: c2(3, 4, 3, stride=2, padding=1, padding_mode='circular'), (3, 8, 8)),
    ('fft-2d-k3-s2-nonsq', lambda: c2(2, 4, 3, stride=2, padding=1, padding_mode='circular'), (2, 6, 8)),
    ('fft-2d-k3-stride(2,1)', lambda: c2(2, 3, 3, stride=(2, 1), padding=1, padding_mode='circular'), (2, 6, 5)),
    ('fft-2d-k3-s3', lambda: c2(2, 3, 3, stride=3, padding=1, padding_mode='circular'), (2, 6, 9)),
    ('fft-2d-k4-stride(3,2)', lambda: c2(2, 2, 4, stride=(3, 2), padding=1, padding_mode='circular'), (2, 6, 4)),
    ('fft-2d-k5-s1', lambda: c2(2, 3, 5, padding=2, padding_mode='circular'), (2, 8, 7)),
    ('fft-2d-k5-s2', lambda: c2(2, 3, 5, stride=2, padding=2, padding_mode='circular'), (2, 8, 8)),
    ('fft-2d-k5-wraps-4x4', lambda: c2(2, 2, 5, padding=2, padding_mode='circular'), (2, 4, 4)),
    ('fft-2d-k2even-s2-p0', lambda: c2(2, 3, 2, stride=2, padding_mode='circular'), (2, 6, 6)),
    ('fft-2d-k4even-same-asym', lambda: c2(2, 2, 4, padding='same', padding_mode='circular'), (2, 6, 6)),
    ('fft-2d-k3-groups2', lambda: c2(4, 6, 3, padding=1, groups=2, padding_mode='circular'), (4, 6, 6)),
    ('fft-2d-k3-depthwise-s2', lambda: c2(3, 3, 3, stride=2, padding=1, groups=3, padding_mode='circular'), (3, 6, 6)),
    ('fft-2d-k3-dil2', lambda: c2(2, 3, 3, padding=2, dilation=2, padding_mode='circular'), (2, 7, 7)),
    ('fft-2d-k1-groups2-s2', lambda: c2(4, 4, 1, stride=2, groups=2, padding_mode='circular'), (4, 4, 4)),
    ('fft-1d-k3-s1', lambda: c1(3, 4, 3, padding=1, padding_mode='circular'), (3, 9)),
    ('fft-1d-k5-s2', lambda: c1(2, 3, 5, stride=2, padding=2, padding_mode='circular'), (2, 10)),
]


pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


def _ids(cases):
    return [pytest.param(f, s, id=i) for i, f, s in cases]


def dense_of(fn, in_shape, dtype=F64):
    """Dense matrix (out_numel x in_numel) of a linear map on one sample, from the standard basis."""
    d = math.prod(in_shape)
    basis = torch.eye(d, dtype=dtype).reshape(d, *in_shape)
    return fn(basis).reshape(d, -1).T


def module_dense(conv, in_shape):
    with torch.no_grad():
        return dense_of(conv, in_shape)


def top_sigma(a):
    return torch.linalg.svdvals(a)[0].item()


def converge_conv(weight, geom, target, max_iter=20000, chunk=200):
    """Warm-started power iteration until within 1e-9 of target (or max_iter); returns (sigma, u, v, steps)."""
    sigma, u, v = conv_power_iteration(weight, geom, n_iter=chunk, generator=torch.Generator().manual_seed(0))
    steps = chunk
    while abs(sigma.item() - target) > 1e-9 * target and steps < max_iter:
        sigma, u, v = conv_power_iteration(weight, geom, u, v, n_iter=chunk)
        steps += chunk
    return sigma, u, v, steps


# ------------------------------------------------------------------------------------------ geometry

@pytest.mark.parametrize('make,in_shape', _ids(ALL_CASES))
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


@pytest.mark.parametrize('make,in_shape', _ids(ALL_CASES))
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


# ---------------------------------------------------------------------------------- power iteration

@pytest.mark.parametrize('make,in_shape', _ids(ALL_CASES))
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


# ---------------------------------------------------------------------------------------------- FFT

@pytest.mark.parametrize('make,in_shape', _ids(FFT_CASES))
def test_fft_sigma_exact_for_circular(make, in_shape):
    conv = make()
    geom = ConvGeometry.from_module(conv, in_shape)
    a = module_dense(conv, in_shape)
    true = top_sigma(a)
    sigma, u, v = conv_fft_sigma(conv.weight, geom)
    assert sigma.dtype == F64
    assert abs(sigma.item() - true) <= 1e-6 * true
    assert abs(sigma.item() - true) <= 1e-12 * true  # in fact to rounding
    # v is an exact top right singular vector of the real operator, u = A v / sigma
    assert v.shape == geom.in_shape and u.shape == geom.out_shape(conv.weight)
    assert abs(v.norm().item() - 1) < 1e-12 and abs(u.norm().item() - 1) < 1e-12
    av = a @ v.reshape(-1)
    assert abs(av.norm().item() - true) <= 1e-10 * true
    torch.testing.assert_close(a.T @ u.reshape(-1), sigma * v.reshape(-1), rtol=0, atol=1e-10 * true)
    # float32 agrees with float64
    s32, u32, v32 = conv_fft_sigma(conv.weight.float(), geom)
    assert s32.dtype == u32.dtype == torch.float32
    assert abs(s32.item() - true) <= 1e-5 * true
    assert abs(conv_fft_sigma(conv.weight, geom, vectors=False)[0].item() - sigma.item()) == 0


@pytest.mark.parametrize('make,in_shape', _ids(FFT_CASES[2:14]))
def test_fft_sigma_pruned_eigen_search_is_exact(make, in_shape, monkeypatch):
    # real layers (Gram matrices >= 64) skip eigvalsh on frequencies a Cholesky test rules out; force that
    # path on tiny sizes and check the value and the singular pair are unchanged
    monkeypatch.setattr(fft, '_PRUNE_MIN', 1)
    monkeypatch.setattr(fft, '_PRUNE_TOP', 1)
    monkeypatch.setattr(fft, '_PRUNE_POWER_STEPS', 0)  # poor ranking: the Cholesky test must find the max
    monkeypatch.setattr(fft, '_SYMBOL_CHUNK_ELEMS', 64)  # several chunks: the running maximum prunes too
    conv = make()
    geom = ConvGeometry.from_module(conv, in_shape)
    a = module_dense(conv, in_shape)
    true = top_sigma(a)
    for dtype in (F64, torch.float32):
        sigma, u, v = conv_fft_sigma(conv.weight, geom, dtype=dtype)
        assert abs(sigma.item() - true) <= (1e-12 if dtype == F64 else 1e-5) * true
    sigma, u, v = conv_fft_sigma(conv.weight, geom)
    assert abs((a @ v.reshape(-1)).norm().item() - true) <= 1e-10 * true


@pytest.mark.parametrize('power_steps', [0, 8])
def test_top_eigenvalue_pruning_keeps_the_maximum(power_steps, monkeypatch):
    # 40 Hermitian PSD matrices whose top eigenvalues differ by < 5%: the ranking by lower bounds is
    # unreliable, so the Cholesky test has to keep every matrix that could hold the maximum
    monkeypatch.setattr(fft, '_PRUNE_MIN', 1)
    monkeypatch.setattr(fft, '_PRUNE_TOP', 1)
    monkeypatch.setattr(fft, '_PRUNE_POWER_STEPS', power_steps)
    g = torch.Generator().manual_seed(0)
    m = torch.randn(40, 6, 6, dtype=torch.complex128, generator=g)
    gram = m @ m.mH
    top = torch.linalg.eigvalsh(gram)[:, -1]
    gram = gram / top[:, None, None] * (1 + 0.05 * torch.rand(40, 1, 1, generator=g, dtype=F64))
    full = torch.linalg.eigvalsh(gram)[:, -1]
    out = fft._top_eigenvalues(gram, None)
    assert out.max().item() == full.max().item()
    kept = out > -math.inf
    torch.testing.assert_close(out[kept], full[kept], rtol=0, atol=0)
    assert (full[~kept] < full.max() * (1 - 1e-3) * (1 + 1e-9)).all()
    assert kept.sum() < 40  # it does prune


def test_fft_lift_does_not_depend_on_the_phase_of_the_frequency_vector():
    # at self-conjugate frequencies the symbol is real; a complex phase on its singular vector must not
    # make the real part of the lifted mode vanish or shrink
    geom = ConvGeometry((2, 4, 4), padding=1, padding_mode='circular')
    w = torch.randn(3, 2, 3, 3, dtype=F64)
    sigma, best = fft._symbol_top(w, (4, 4), (1, 1), (1, 1), 1, True)
    a = dense_of(lambda b: conv_apply(w, geom, b), geom.in_shape)
    for phase in (1, 1j, -1j, (1 + 1j) / 2 ** 0.5):
        v = fft._lift_mode((best[0], best[1], best[2] * phase), geom, 2, F64)
        assert abs((a @ v.reshape(-1)).norm().item() - sigma.item()) <= 1e-10 * sigma.item()


def test_fft_vectors_warm_start_power_iteration():
    conv = c2(3, 4, 3, stride=2, padding=1, padding_mode='circular')
    geom = ConvGeometry.from_module(conv, (3, 8, 8))
    sigma, u, v = conv_fft_sigma(conv.weight, geom)
    s1, _, _ = conv_power_iteration(conv.weight, geom, u, v, n_iter=1)
    assert abs(s1.item() - sigma.item()) <= 1e-12 * sigma.item()


@pytest.mark.parametrize('make,in_shape', _ids(ALL_CASES))
def test_fft_upper_bound_bounds_the_norm(make, in_shape):
    conv = make()
    true = top_sigma(module_dense(conv, in_shape))
    bound = conv_fft_upper_bound(None, conv, in_shape)
    assert bound.item() >= true * (1 - 1e-12)
    geom = ConvGeometry.from_module(conv, in_shape)
    assert conv_fft_upper_bound(conv.weight, geom).item() == bound.item()


@pytest.mark.parametrize('make,in_shape,grid', [
    pytest.param(lambda: c2(2, 3, 3, stride=2, padding=1), (2, 6, 6), (8, 8), id='k3-s2-6x6-grid8'),
    pytest.param(lambda: c2(2, 3, 3, stride=2, padding=1), (2, 7, 6), (10, 8), id='k3-s2-7x6-grid10x8'),
    pytest.param(lambda: c2(2, 3, 5, padding=2), (2, 5, 5), (9, 9), id='k5-s1-5x5-grid9'),
])
def test_fft_upper_bound_is_circular_norm_on_grid_n_plus_2p(make, in_shape, grid):
    # the bound is the exact norm of the circular conv on the smallest stride-divisible grid >= n + 2p
    conv = make()
    w = conv.weight.detach()
    k = w.shape[-1]
    circ = ConvGeometry((in_shape[0],) + grid, stride=conv.stride, padding=(k - 1) // 2, padding_mode='circular')
    true = top_sigma(dense_of(lambda b: conv_apply(w, circ, b), circ.in_shape))
    bound = conv_fft_upper_bound(w, ConvGeometry.from_module(conv, in_shape))
    assert abs(bound.item() - true) <= 1e-12 * true


def test_circular_vs_zero_padding_on_tiny_input_differ():
    # the norm depends on the padding mode and input size: a 3x3 kernel on a 1x1 input
    w = torch.randn(2, 2, 3, 3, dtype=F64)
    zero = ConvGeometry((2, 1, 1), padding=1)
    circ = ConvGeometry((2, 1, 1), padding=1, padding_mode='circular')
    s_zero = top_sigma(dense_of(lambda b: conv_apply(w, zero, b), (2, 1, 1)))
    torch.testing.assert_close(torch.tensor(s_zero, dtype=F64), torch.linalg.matrix_norm(w[:, :, 1, 1], ord=2))
    s_circ = conv_fft_sigma(w, circ)[0]
    torch.testing.assert_close(s_circ, torch.linalg.matrix_norm(w.sum((2, 3)), ord=2))


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


@pytest.mark.parametrize('make,in_shape', _ids([
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


# ---------------------------------------------------------------------------------------- BatchNorm

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


# ------------------------------------------------------------------------------------------- errors

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
    with pytest.raises(ValueError, match='divisible'):
        conv_fft_sigma(w, ConvGeometry((2, 7, 7), stride=2, padding=1, padding_mode='circular'))
    with pytest.raises(ValueError, match='circular'):
        conv_fft_sigma(w, ConvGeometry((2, 8, 8), padding=1))
    with pytest.raises(ValueError, match='block-circulant'):
        conv_fft_sigma(w, ConvGeometry((2, 8, 8), padding=0, padding_mode='circular'))
    with pytest.raises(ValueError, match='groups'):
        conv_apply(w, ConvGeometry((4, 8, 8), padding=1), torch.randn(1, 4, 8, 8))
    with pytest.raises(ValueError, match='expected'):
        conv_apply(w, ConvGeometry((2, 8, 8), padding=1), torch.randn(1, 2, 8, 9))
    with pytest.raises(ValueError, match='do not match'):
        sigma_from_vectors(w, torch.randn(4, 8, 8), torch.randn(2, 8, 8), ConvGeometry((2, 9, 9), padding=1))
    with pytest.raises(ValueError, match='track_running_stats'):
        bn_scale(nn.BatchNorm2d(4, track_running_stats=False))
    with pytest.raises(ValueError, match='output channels'):
        bn_scaled_weight(w, torch.ones(3))
    with pytest.raises(ValueError, match='warm-start u'):
        matrix_power_iteration(torch.randn(3, 4), u=torch.randn(4))
