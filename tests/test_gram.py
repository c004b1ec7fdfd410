"""Gram-iteration bound (repspec_zoo.spectral.gram) against the SVD of the dense operator (tiny sizes, float64)."""
from dataclasses import replace
from pathlib import Path

import pytest
import timm
import torch

from repspec_zoo import SpectralRegularizer
from repspec_zoo.spectral.fft import conv_fft_sigma, conv_fft_upper_bound
from repspec_zoo.spectral import gram
from repspec_zoo.spectral.gram import conv_gram_bound, gram_schatten_bound
from repspec_zoo.spectral.operator import ConvGeometry, conv_apply
from repspec_zoo.training import build_model, load_config

from spectral_cases import ALL_CASES, F64, FFT_CASES, as_params, c1, c2, dense_of, module_dense, top_sigma

pytestmark = pytest.mark.filterwarnings("ignore:Using padding='same':UserWarning")
CONFIG_DIR = Path(__file__).resolve().parents[1] / "recipes" / "configs"
STEPS = range(9)


def test_schatten_bound_is_the_schatten_norm_batched_real_and_complex():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(5, 7, 4, generator=g, dtype=F64)
    cplx = torch.complex(torch.randn(3, 3, 6, generator=g, dtype=F64), torch.randn(3, 3, 6, generator=g, dtype=F64))
    for mats in (real, cplx):
        s = torch.linalg.svdvals(mats)
        for t in (0, 1, 3, 6):
            p = 2 ** (t + 1)
            expected = s.pow(p).sum(-1).pow(1 / p)
            torch.testing.assert_close(gram_schatten_bound(mats, t), expected, rtol=1e-12, atol=0)
    # the rescaling keeps float32 finite where the plain Gram powers overflow ((1e20)^(2^6) >> float max)
    big = torch.diag(torch.tensor([3e20, 1e20]))
    assert gram_schatten_bound(big, 6).item() == pytest.approx(3e20, rel=1e-5)


@pytest.mark.parametrize('n_iter', [0, 2, 6])
def test_pruned_maximum_is_the_maximum(n_iter):
    # 60 matrices with top singular values within 5% (pruning must keep every candidate) and a few far below
    g = torch.Generator().manual_seed(1)
    mats = torch.complex(torch.randn(60, 8, 5, generator=g, dtype=F64), torch.randn(60, 8, 5, generator=g, dtype=F64))
    top = torch.linalg.svdvals(mats)[:, :1, None]
    mats = mats / top * (1 + 0.05 * torch.rand(60, 1, 1, generator=g, dtype=F64))
    mats[:10] *= 0.3
    full = gram_schatten_bound(mats, n_iter)
    best, i = gram._max_bound(mats, n_iter, None)
    assert best.item() == pytest.approx(full.max().item(), rel=1e-12) and i == int(full.argmax())
    assert gram._max_bound(mats, n_iter, full.max() * 1.01) == (-float("inf"), -1)  # a higher known maximum



@pytest.mark.parametrize('dtype', [torch.float32, F64])
def test_pruning_keeps_a_maximum_of_rank_one_matrices(dtype):
    # rank one (e.g. every symbol matrix of a conv with one input channel): upper == lower in exact arithmetic,
    # and rounding must not drop every matrix
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        mats = torch.randn(3, 5, 1, generator=g, dtype=dtype) @ torch.randn(3, 1, 4, generator=g, dtype=dtype)
        for n_iter in (2, 4, 6):
            best, i = gram._max_bound(mats, n_iter, None)
            full = gram_schatten_bound(mats, n_iter)
            assert i >= 0 and best.item() == pytest.approx(full.max().item(), rel=1e-5)


@pytest.mark.parametrize('make,in_shape', as_params(FFT_CASES))
def test_bound_never_below_the_exact_circular_norm_and_converges_to_it(make, in_shape):
    conv = make()
    geom = ConvGeometry.from_module(conv, in_shape)
    true = top_sigma(module_dense(conv, in_shape))
    assert conv_fft_sigma(conv.weight, geom, vectors=False)[0].item() == pytest.approx(true, rel=1e-12)
    bounds = [conv_gram_bound(conv.weight, geom, t).item() for t in STEPS]
    assert all(b >= true * (1 - 1e-12) for b in bounds)
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(bounds, bounds[1:]))  # tightens
    assert bounds[-1] == pytest.approx(true, rel=1e-4)
    assert conv_gram_bound(conv.weight, geom, 12).item() == pytest.approx(true, rel=1e-9)
    assert conv_gram_bound(conv.weight.float(), geom, 12).item() >= true * (1 - 1e-5)  # float32: to rounding


@pytest.mark.parametrize('make,in_shape', as_params(ALL_CASES))
def test_bound_never_below_the_real_operator_norm(make, in_shape):
    """Zero padding (and circular geometries that are not block-circulant): >= the dense operator's norm at every
    step, converging to the exact circular norm on the larger grid N >= n + lo + hi (conv_fft_upper_bound)."""
    conv = make()
    geom = ConvGeometry.from_module(conv, in_shape)
    true = top_sigma(module_dense(conv, in_shape))
    bounds = [conv_gram_bound(conv.weight, geom, t).item() for t in STEPS]
    assert all(b >= true * (1 - 1e-12) for b in bounds)
    assert all(later <= earlier * (1 + 1e-12) for earlier, later in zip(bounds, bounds[1:]))
    symbol = conv_fft_upper_bound(conv.weight, geom).item()
    assert symbol >= true * (1 - 1e-12)
    assert conv_gram_bound(conv.weight, geom, 12).item() == pytest.approx(symbol, rel=1e-9)


TINY_INPUTS = [  # inputs small next to the kernel: some taps never meet the input and are cropped
    ('2d-k3-p1-1x1', lambda: c2(3, 4, 3, padding=1), (3, 1, 1)),
    ('2d-k3-p1-1x4', lambda: c2(2, 3, 3, padding=1, seed=1), (2, 1, 4)),
    ('2d-k3-s2-p1-2x2', lambda: c2(2, 3, 3, stride=2, padding=1), (2, 2, 2)),
    ('2d-k3-dil2-p2-2x3', lambda: c2(2, 2, 3, padding=2, dilation=2), (2, 2, 3)),
    ('2d-k5-s3-p2-3x3', lambda: c2(2, 2, 5, stride=3, padding=2, seed=2), (2, 3, 3)),
    ('1d-k5-p2-L2', lambda: c1(2, 3, 5, padding=2), (2, 2)),
]


@pytest.mark.parametrize('make,in_shape', as_params(TINY_INPUTS))
def test_taps_that_never_meet_the_input_do_not_count(make, in_shape):
    conv = make()
    geom = ConvGeometry.from_module(conv, in_shape)
    true = top_sigma(module_dense(conv, in_shape))
    weight = conv.weight.detach().requires_grad_()
    for t in STEPS:
        assert conv_gram_bound(weight, geom, t).item() >= true * (1 - 1e-12)
    assert conv_fft_upper_bound(weight, geom).item() >= true * (1 - 1e-12)
    if in_shape[1:] == (1, 1):  # the centre tap alone: exact
        assert conv_gram_bound(weight, geom, 12).item() == pytest.approx(true, rel=1e-12)
        assert conv_fft_upper_bound(weight, geom).item() == pytest.approx(true, rel=1e-12)
        grad, = torch.autograd.grad(conv_gram_bound(weight, geom), weight)
        off_centre = grad.clone()
        off_centre[:, :, 1, 1] = 0
        assert grad[:, :, 1, 1].abs().sum() > 0 and off_centre.abs().max() == 0


def test_circular_norm_on_the_own_grid_does_not_bound_zero_padding():
    """Why a zero-padded layer is bounded on the grid N >= n + 2p and not on n: kernel [1, 0, -1], n = 2, padding 1.
    Circularly, both outer taps land on the same input entry and cancel (norm 0); zero-padded, the operator
    [[0, -1], [1, 0]] has norm 1."""
    conv = c1(1, 1, 3, padding=1)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor([[[1.0, 0.0, -1.0]]], dtype=F64))
    geom = ConvGeometry.from_module(conv, (1, 2))
    assert top_sigma(module_dense(conv, (1, 2))) == pytest.approx(1.0)
    assert conv_fft_sigma(conv.weight, replace(geom, padding_mode='circular'))[0].item() == pytest.approx(0, abs=1e-12)
    assert conv_gram_bound(conv.weight, geom).item() >= 1.0


def _dense_circular_sigma(weight, geom):
    """sigma_max of the dense circular operator, differentiable in the weight (autograd through svdvals)."""
    return torch.linalg.svdvals(dense_of(lambda x: conv_apply(weight, geom, x), geom.in_shape))[0]


@pytest.mark.parametrize('stride', [1, 2])
def test_gradient_matches_the_svd_of_the_dense_operator(stride):
    conv = c2(3, 4, 3, stride=stride, padding=1, seed=3)
    weight = conv.weight.detach().requires_grad_()
    geom = ConvGeometry.from_module(conv, (3, 6, 6))  # zero padding: bounded on the circular 8x8 grid
    circular8 = ConvGeometry((3, 8, 8), stride=stride, padding=1, padding_mode='circular')
    exact = _dense_circular_sigma(weight, circular8)
    top2 = torch.linalg.svdvals(dense_of(lambda x: conv_apply(weight.detach(), circular8, x), (3, 8, 8)))[:2]
    assert top2[1] < 0.99 * top2[0]  # a simple top singular value: sigma_max is differentiable
    grad_exact, = torch.autograd.grad(exact, weight)
    bound = conv_gram_bound(weight, geom, 12)
    assert bound.item() == pytest.approx(exact.item(), rel=1e-9)
    grad, = torch.autograd.grad(bound, weight)
    torch.testing.assert_close(grad, grad_exact, rtol=1e-7, atol=1e-9)
    # a few steps: the gradient of the bound itself, against finite differences
    assert torch.autograd.gradcheck(lambda w: conv_gram_bound(w, geom, 3), (weight,))


def test_zero_kernel_and_no_grad():
    geom = ConvGeometry((2, 5, 5), padding=1)
    zero = torch.zeros(3, 2, 3, 3, dtype=F64, requires_grad=True)
    bound = conv_gram_bound(zero, geom)
    bound.backward()
    assert bound.item() == 0 and torch.equal(zero.grad, torch.zeros_like(zero))
    weight = torch.randn(3, 2, 3, 3, dtype=F64, requires_grad=True)
    with torch.no_grad():
        assert not conv_gram_bound(weight, geom).requires_grad
    with pytest.raises(ValueError, match="n_iter=-1 must be >= 0"):
        conv_gram_bound(weight, geom, -1)


def _resnet_small(estimator):
    torch.manual_seed(0)
    model = timm.create_model("resnet_small", num_classes=10)
    reg = SpectralRegularizer(model, gamma=0.5, estimator=estimator, warmup_iters=500)
    model(torch.rand(2, 1, 12, 12))
    return model, reg


def test_gram_estimator_penalty_is_the_bound_with_its_gradient():
    model, reg = _resnet_small("gram")
    penalty = reg.penalty()
    convs = {name: m for name, m in model.named_modules() if name in reg.layer_names}
    expected = sum(conv_gram_bound(m.weight, ConvGeometry.from_module(m, reg.states[name.replace(".", "__")].shape))
                   ** 2 for name, m in convs.items())
    assert penalty.item() == pytest.approx(0.25 * expected.item(), rel=1e-6)
    penalty.backward()
    assert all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in convs.values())
    with torch.no_grad():
        assert reg.sigmas() == pytest.approx({n: float(conv_gram_bound(m.weight, ConvGeometry.from_module(
            m, reg.states[n.replace(".", "__")].shape))) for n, m in convs.items()}, rel=1e-6)
    # an upper bound on what power iteration converges to on the same (zero-padded) operators
    _, power = _resnet_small("power")
    assert all(reg.sigmas()[n] >= s * (1 - 1e-5) for n, s in power.refresh(500).items())
    reg.gamma = 0.05  # a small direct step descends the bound
    before = reg.direct_step()
    assert all(reg.refresh()[n] < s for n, s in before.items())


def test_recipe_accepts_estimator_gram():
    cfg = load_config(CONFIG_DIR / "fmnist_resnet_small_repspectral.yaml",
                      ["regularizer.estimator=gram", "num_classes=10"])
    model = build_model(cfg)
    assert model.spectral.estimator == "gram"
    model(torch.rand(2, 1, 28, 28))
    assert torch.isfinite(model.spectral.penalty())
