"""Lower bounds and estimates of the minimal adversarial L2 distance, and the bracket they form
with the best attack.

* the Lemma-1 local estimate (Yang et al. 2024): for a linear head W on features Phi,
  ``min_k (f_c - f_k) / (||W_c - W_k|| * sigma_max(J_Phi(x)))`` -- the feature-space margin
  carried back through the local Lipschitz constant of Phi. An ESTIMATE, not a bound: the
  Jacobian at x stands in for its maximum over the ball.
* the certified radius where it holds (a single hidden layer, Phi = act(W1 x + b1)):
  ``min_k (f_c - f_k) / (||W_c - W_k|| * sigma_max(W1) * max|act'| / min(std))``; it
  lower-bounds every true adversarial distance.
* `bracket`: per sample, lower (certified) <= true minimal distance <= upper (best attack);
  the ratio upper / lower says how tight the evaluation is.

Units: L2 in [0, 1] pixel space (normalization lives inside `NormalizedModel`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from timm.layers.activations import GELU as TimmGELU

from .attacks.normalize import NormalizedModel, as_normalized
from .jacobian import jacobian_top_singular
from .models.tiny import SingleHiddenLayerNet

__all__ = ["GELU_MAX_SLOPE", "activation_max_slope", "lemma1_estimate", "certified_radius", "bracket",
           "unwrap"]

#: exact max_z |phi'(z)| of common activations (GELU: at z = sqrt(2), Phi(sqrt2) + sqrt2 phi(sqrt2) = 1.1289).
GELU_MAX_SLOPE = 0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1.0) / math.sqrt(2 * math.pi)
ACTIVATION_MAX_SLOPE = {
    nn.ReLU: 1.0, nn.LeakyReLU: 1.0, nn.Tanh: 1.0, nn.Identity: 1.0, nn.Sigmoid: 0.25,
    nn.GELU: GELU_MAX_SLOPE, TimmGELU: GELU_MAX_SLOPE,
}


def activation_max_slope(act: nn.Module) -> float | None:
    """max |act'(z)| over z for known activations, else None (no certificate)."""
    return next((slope for cls, slope in ACTIVATION_MAX_SLOPE.items() if type(act) is cls), None)


def unwrap(model: nn.Module) -> tuple[nn.Module, Tensor | None, Tensor | None]:
    """The timm network inside a NormalizedModel, and its mean/std (None if not wrapped)."""
    if isinstance(model, NormalizedModel):
        return model.model, model.mean, model.std
    return model, None, None


def _linear_head(net: nn.Module) -> nn.Linear | None:
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    return head if isinstance(head, nn.Linear) else None


def _feature_margins(net: nn.Module, head: nn.Linear, logits: Tensor, y: Tensor) -> Tensor:
    """min_k (f_y - f_k) / ||W_y - W_k||: the feature-space distance to the nearest other class.

    W is the effective head, ``logit_scale * head.weight`` for a net that scales its logits."""
    w = head.weight.detach().to(logits.dtype) * getattr(net, "logit_scale", 1.0)
    diff_norm = (w[y][:, None, :] - w[None, :, :]).norm(dim=-1)  # (N, K)
    margin = logits.gather(1, y[:, None]) - logits
    ratio = margin / diff_norm.clamp_min(1e-30)
    ratio[torch.arange(len(y)), y] = math.inf
    return ratio.min(1).values


def lemma1_estimate(model: nn.Module, x: Tensor, y: Tensor, n_iter: int = 30, batch_size: int = 64) -> Tensor | None:
    """Per-sample Lemma-1 local estimate (pixel L2 units); None if the head is not Linear."""
    net, _, _ = unwrap(model)
    head = _linear_head(net)
    if head is None or not hasattr(net, "forward_features"):
        return None
    phi = as_normalized(model, x.shape[1]).features  # [0,1] image -> pre-logit features
    out = []
    gen = torch.Generator().manual_seed(0)
    for i in range(0, len(x), batch_size):
        xb, yb = x[i:i + batch_size], y[i:i + batch_size]
        sigma, _, _ = jacobian_top_singular(phi, xb, n_iter=n_iter, generator=gen)
        with torch.no_grad():
            logits = model(xb)
        out.append(_feature_margins(net, head, logits, yb) / sigma.clamp_min(1e-30))
    return torch.cat(out)


def certified_radius(model: nn.Module, x: Tensor, y: Tensor) -> Tensor | None:
    """Certified L2 radius from the layer norms, for single-hidden-layer nets; else None.

    f_y - f_k = (W_y - W_k) act(W1 x + b1) + const is Lipschitz with constant
    ||W_y - W_k|| * max|act'| * sigma_max(W1) / min(std), so no perturbation smaller than
    (f_y - f_k) / that constant changes the label.
    """
    net, _, std = unwrap(model)
    slope = activation_max_slope(getattr(net, "act", None))
    if not isinstance(net, SingleHiddenLayerNet) or slope is None:
        return None
    with torch.no_grad():
        w1 = net.fc1.weight.detach().double()
        lip_phi = float(torch.linalg.matrix_norm(w1, ord=2)) * slope
        if std is not None:
            lip_phi /= float(std.min())
        logits = model(x)
    return _feature_margins(net, net.get_classifier(), logits, y) / lip_phi


def _ratio_stats(upper: Tensor, lower: Tensor) -> dict:
    """Median / mean / max of upper / lower over samples where both are finite and lower > 0."""
    ok = torch.isfinite(upper) & torch.isfinite(lower) & (lower > 0)
    r = upper[ok] / lower[ok]
    if not len(r):
        return dict(n=0, median=None, mean=None, max=None)
    return dict(n=int(ok.sum()), median=float(r.median()), mean=float(r.mean()), max=float(r.max()))


def bracket(upper: Tensor, certified: Tensor | None, lemma1: Tensor | None) -> dict:
    """How tight the evaluation is, per sample: ``certified <= true distance <= upper``.

    Args:
        upper: (N,) best attack distance (inf where no attack succeeded).
        certified: (N,) certified radius or None where the model admits none.
        lemma1: (N,) Lemma-1 local estimate or None.
    Returns:
        ``lower``: 'certified' or None; ``upper_over_certified``: median / mean / max of the
        ratio (>= 1 whenever both are right; ``violations`` counts samples where an attack
        went below the certificate, which would mean a bug); ``upper_over_lemma1``: the same
        against the estimate (may fall below 1: it is not a bound).
    """
    out = dict(lower="certified" if certified is not None else None, upper="best attack")
    if certified is not None:
        out["upper_over_certified"] = _ratio_stats(upper, certified)
        out["violations"] = int((upper < certified * (1 - 1e-4)).sum())
    if lemma1 is not None:
        out["upper_over_lemma1"] = _ratio_stats(upper, lemma1)
    return out
