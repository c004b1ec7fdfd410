"""Shared cases of the spectral tests: conv layers of every geometry and their dense operator matrices.

Ground truth is the layer itself: the dense matrix of ``x -> conv(x)`` built by running the nn module
(bias off) on the standard basis, and ``torch.linalg.svdvals`` of it (tiny sizes, float64).
"""
import math

import pytest
import torch
import torch.nn as nn

from repspec_zoo.spectral.power import conv_power_iteration


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


def as_params(cases):
    """pytest params (factory, input shape) with the case ids."""
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
