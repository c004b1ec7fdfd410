"""Lower bounds and estimates of the minimal adversarial L2 distance, and the bracket they form
with the best attack.

* the Lemma-1 local estimate (Yang et al. 2024): for a linear head W on features Phi,
  ``min_k (f_c - f_k) / (||W_c - W_k|| * sigma_max(J_Phi(x)))`` -- the feature-space margin
  carried back through the local Lipschitz constant of Phi. An ESTIMATE, not a bound: the
  Jacobian at x stands in for its maximum over the ball.
* the certified radius, for every architecture :mod:`.lipschitz` bounds (single hidden layer,
  the small ResNet, timm's ResNet family): f_c - f_k = (W_c - W_k) Phi(x) + const is Lipschitz
  with constant ``||W_c - W_k|| * L`` (L: the global Lipschitz bound of Phi), so
  ``min_k (f_c - f_k) / (||W_c - W_k|| * L)`` lower-bounds every true adversarial distance. It is
  at least the logit form ``margin / (sqrt(2) L_logits)`` (``||W_c - W_k|| <= sqrt(2) ||W||_2``).
  For a single hidden layer L = sigma_max(W1) * max|act'| / min(std).
* `bracket`: per sample, lower (certified) <= true minimal distance <= upper (best attack);
  the ratio upper / lower says how tight the evaluation is, and a certificate below
  `VACUOUS_FRACTION` of the attack distance is labelled vacuous.

Units: L2 in [0, 1] pixel space (normalization lives inside `NormalizedModel`).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..models.normalize import NormalizedModel, as_normalized
from ..spectral.jacobian import jacobian_top_singular
from .lipschitz import GELU_MAX_SLOPE, activation_max_slope, try_feature_lipschitz

__all__ = ["GELU_MAX_SLOPE", "VACUOUS_FRACTION", "activation_max_slope", "lemma1_estimate", "certified_radius",
           "is_vacuous", "logit_lipschitz", "bracket", "unwrap"]

#: a certified radius whose median is below this fraction of the median best-attack distance says nothing
#: useful about the model: the bracket labels it vacuous
VACUOUS_FRACTION = 1e-3


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


def certified_radius(model: nn.Module, x: Tensor, y: Tensor, lipschitz: float | None = None) -> Tensor | None:
    """Per-sample certified L2 radius ``min_k (f_y - f_k) / (||W_y - W_k|| * L)`` (module docstring);
    None where the head is not Linear or :func:`.lipschitz.try_feature_lipschitz` has no bound.

    ``lipschitz``: L if already computed (at x's image size), else it is computed here. Negative for a
    misclassified sample (its margin is)."""
    net, _, _ = unwrap(model)
    head = _linear_head(net)
    if head is not None and lipschitz is None:
        bound = try_feature_lipschitz(model, tuple(x.shape[1:]), raw=False)
        lipschitz = None if bound is None else bound.features
    if head is None or lipschitz is None:
        return None
    with torch.no_grad():
        logits = model(x)
    return _feature_margins(net, head, logits, y) / lipschitz


def logit_lipschitz(model: nn.Module, feature_lipschitz: float) -> float | None:
    """Global L2 Lipschitz bound of the logits, ``||s W||_2 * L`` for a Linear head W (scale s), else None."""
    net, _, _ = unwrap(model)
    head = _linear_head(net)
    if head is None:
        return None
    w = head.weight.detach().double() * getattr(net, "logit_scale", 1.0)
    return float(torch.linalg.matrix_norm(w, ord=2)) * feature_lipschitz


def is_vacuous(certified: Tensor, reference: Tensor) -> bool:
    """Whether the median certificate is below `VACUOUS_FRACTION` of the median finite ``reference``
    (an upper bound on the true distances, e.g. the best attack's); True when no reference is finite."""
    ref = reference[torch.isfinite(reference)]
    return not len(ref) or float(certified.median()) < VACUOUS_FRACTION * float(ref.median())


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
        went below the certificate, which would mean a bug; ``vacuous``: `is_vacuous`);
        ``upper_over_lemma1``: the same against the estimate (may fall below 1: it is not a bound).
    """
    out = dict(lower="certified" if certified is not None else None, upper="best attack")
    if certified is not None:
        out["upper_over_certified"] = _ratio_stats(upper, certified)
        out["violations"] = int((upper < certified * (1 - 1e-4)).sum())
        out["vacuous"] = is_vacuous(certified, upper)
    if lemma1 is not None:
        out["upper_over_lemma1"] = _ratio_stats(upper, lemma1)
    return out
