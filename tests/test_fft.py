"""Exact circular FFT norms and the symbol upper bound against the SVD of the dense operator (tiny sizes, float64)."""
import math

import pytest
import torch

from repspec_zoo.spectral import fft
from repspec_zoo.spectral.fft import conv_fft_sigma, conv_fft_upper_bound
from repspec_zoo.spectral.operator import ConvGeometry, conv_apply
from repspec_zoo.spectral.power import conv_power_iteration

from spectral_cases import ALL_CASES, F64, FFT_CASES, as_params, c2, dense_of, module_dense, top_sigma

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")


@pytest.mark.parametrize('make,in_shape', as_params(FFT_CASES))
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


@pytest.mark.parametrize('make,in_shape', as_params(FFT_CASES[2:14]))
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


@pytest.mark.parametrize('make,in_shape', as_params(ALL_CASES))
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


def test_errors_name_the_problem():
    w = torch.randn(4, 2, 3, 3)
    with pytest.raises(ValueError, match='divisible'):
        conv_fft_sigma(w, ConvGeometry((2, 7, 7), stride=2, padding=1, padding_mode='circular'))
    with pytest.raises(ValueError, match='circular'):
        conv_fft_sigma(w, ConvGeometry((2, 8, 8), padding=1))
    with pytest.raises(ValueError, match='block-circulant'):
        conv_fft_sigma(w, ConvGeometry((2, 8, 8), padding=0, padding_mode='circular'))
