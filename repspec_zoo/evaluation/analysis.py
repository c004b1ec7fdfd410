"""Jacobian analyses of a classifier, after Roth, Kilcher & Hofmann (2019), Sec. 5.

Every function takes images in [0, 1] and maps that are sample-wise (modules in eval mode), so
all lengths are L2 norms in [0, 1] pixel units and J_f(x) is the Jacobian of the logits with
respect to the [0, 1] image (normalization inside the model, :class:`NormalizedModel`).

* spectrum: singular values sigma_1 >= sigma_2 >= ... of J_f(x) (K x d, K logits, d pixels) at
  test points; full SVD of the extracted matrix when d*K is small, else the top k by subspace
  iteration with jvp/vjp. Aggregated by rank: median and quartiles over samples.
* alignment: |cos(delta, v_r)| = |<delta, v_r>| / ||delta|| of PGD perturbations delta = x_adv - x
  with the right singular vectors v_r of J_f(x), by rank r, against a Gaussian delta.
* linearity: along a unit direction z/||z|| (random Gaussian, or the PGD direction),
  ``||phi(x+z) - phi(x) - J_phi(x) z||`` for the pre-logit features phi and sigma_max(J_f(x+z)),
  for ||z|| on a grid. x + z is not clipped to [0, 1] (the measures are taken on the exact line through x).
* robustness: PGD-L2 accuracy as a function of eps (:func:`robust_accuracy_curve`).
* function: the function-level numbers of :func:`function_report` -- BN-folded layer norms, the global
  Lipschitz bound, the certified radius it gives and the median feature-Jacobian norm.
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ..attacks import pgd_l2, robust_accuracy_curve
from ..models.normalize import as_normalized
from .bounds import certified_radius, is_vacuous, logit_lipschitz, unwrap
from ..spectral.jacobian import jacobian_top_singular, jvp, vjp
from .lipschitz import function_bound

__all__ = ["ANALYSES", "FULL_SVD_MAX_ENTRIES", "jacobian_matrix", "subspace_iteration",
           "jacobian_svd", "rank_quantiles", "alignment_by_rank", "linearity_profile", "function_report", "analyze"]

ANALYSES = ("spectrum", "alignment", "linearity", "robustness", "function")
FULL_SVD_MAX_ENTRIES = 4_000_000  # d*K per sample up to which J is extracted and fully decomposed


def _flat_out(fn: Callable[[Tensor], Tensor]) -> Callable[[Tensor], Tensor]:
    return lambda z: fn(z).flatten(1)


def jacobian_matrix(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Per-sample Jacobians (N, K, d) of a sample-wise fn, K outputs and d inputs per sample.

    One forward and K vector-Jacobian products with one-hot cotangents (reverse mode, as
    ``torch.func.jacrev``); row k of every sample's matrix comes from the same backward pass.
    """
    out, pullback = torch.func.vjp(_flat_out(fn), x)
    eye = torch.eye(out.shape[1], dtype=out.dtype, device=out.device)
    rows = [pullback(eye[k].expand_as(out).contiguous())[0].flatten(1) for k in range(out.shape[1])]
    return torch.stack(rows, dim=1).detach()


def _orthonormal_rows(m: Tensor) -> Tensor:
    """(N, k, d) -> rows orthonormalized per sample (QR of the transpose)."""
    return torch.linalg.qr(m.transpose(1, 2)).Q.transpose(1, 2)


def subspace_iteration(fn: Callable[[Tensor], Tensor], x: Tensor, k: int, iters: int = 30,
                       generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Top-k singular values (N, k) and right singular vectors (N, k, d) of J_fn(x_i), matrix-free.

    Block power iteration V <- orth(J^T J V) with k jvps and k vjps per step (error of sigma_r
    ~ (sigma_{k+1}/sigma_r)^(2 iters)), then Rayleigh-Ritz: the SVD of the small K x k matrix
    J V = P S Q^T gives sigma = S and right singular vectors V^T Q.
    """
    n, d = len(x), x[0].numel()
    fn_flat = _flat_out(fn)
    v = _orthonormal_rows(torch.randn((n, k, d), generator=generator, dtype=x.dtype).to(x.device))

    def jv_rows(rows: Tensor) -> Tensor:  # (N, k, d) -> (N, k, K)
        return torch.stack([jvp(fn_flat, x, rows[:, j].reshape(x.shape))[1] for j in range(k)], dim=1)

    for _ in range(iters):
        ju = jv_rows(v)
        v = _orthonormal_rows(torch.stack([vjp(fn_flat, x, ju[:, j]).flatten(1) for j in range(k)], dim=1))
    _, s, qh = torch.linalg.svd(jv_rows(v).transpose(1, 2), full_matrices=False)  # (N, K, k) = P S Q^T
    return s.detach(), (qh @ v).detach()


def jacobian_svd(fn: Callable[[Tensor], Tensor], x: Tensor, k: int | None = None, method: str = "auto",
                 iters: int = 30, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor, str]:
    """Singular values (N, r), right singular vectors (N, r, d) of J_fn(x_i) and the method used.

    Args:
        k: ranks to keep (None: all min(K, d) for 'full'; required for 'topk').
        method: 'full' (extract J, ``torch.linalg.svd``), 'topk' (:func:`subspace_iteration`) or
            'auto' ('full' when d*K <= FULL_SVD_MAX_ENTRIES, else 'topk').
    """
    if method not in ("auto", "full", "topk"):
        raise ValueError(f"method must be 'auto', 'full' or 'topk', got {method!r}")
    d = x[0].numel()
    with torch.no_grad():
        n_out = fn(x[:1]).numel()
    rank = min(d, n_out)
    if k is not None and not 1 <= k <= rank:
        raise ValueError(f"k={k} ranks requested but J is {n_out} x {d} (rank <= {rank}); pick 1 <= k <= {rank}")
    if method == "auto":
        method = "full" if d * n_out <= FULL_SVD_MAX_ENTRIES else "topk"
    if method == "full":
        _, s, vh = torch.linalg.svd(jacobian_matrix(fn, x), full_matrices=False)
        keep = rank if k is None else k
        return s[:, :keep], vh[:, :keep], method
    if k is None:
        raise ValueError(f"method='topk' needs k (the number of top singular values), J is {n_out} x {d}")
    s, v = subspace_iteration(fn, x, k, iters, generator)
    return s, v, method


def rank_quantiles(values: Tensor) -> dict[str, list[float]]:
    """Median and quartiles over samples (dim 0) for each rank (dim 1) of an (N, r) tensor."""
    q = torch.quantile(values.double(), torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64), dim=0)
    return {"q25": q[0].tolist(), "median": q[1].tolist(), "q75": q[2].tolist()}


def alignment_by_rank(delta: Tensor, v: Tensor) -> Tensor:
    """|cos(delta_i, v_ir)| (N, r) for perturbations delta (N, *in) and unit right singular vectors v (N, r, d)."""
    flat = delta.flatten(1)
    return ((v @ flat[:, :, None]).squeeze(2).abs() / flat.norm(dim=1, keepdim=True).clamp_min(1e-30)).detach()


def linearity_profile(phi: Callable[[Tensor], Tensor], f: Callable[[Tensor], Tensor], x: Tensor,
                      direction: Tensor, norms: Sequence[float], power_iters: int = 30,
                      generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """Deviation from linearity of phi and sigma_max(J_f) along x + t * direction/||direction||.

    Returns (deviation, sigma), each (N, len(norms)): ``||phi(x + z) - phi(x) - J_phi(x) z||``
    (feature units) and sigma_max(J_f(x + z)) (logits per pixel unit, power iteration), z = t * unit
    direction for t in ``norms``. J_phi(x) z = t * J_phi(x) u needs one jvp.
    """
    unit = direction / direction.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, *([1] * (x.dim() - 1)))
    phi0, j_unit = jvp(_flat_out(phi), x, unit)
    deviation, sigma = [], []
    for t in norms:
        moved = x + t * unit
        with torch.no_grad():
            deviation.append((_flat_out(phi)(moved) - phi0 - t * j_unit).norm(dim=1))
        sigma.append(jacobian_top_singular(f, moved, n_iter=power_iters, generator=generator)[0])
    return torch.stack(deviation, 1).detach(), torch.stack(sigma, 1)


def _nearest_other_class(x: Tensor, y: Tensor) -> Tensor:
    """Per point, the L2 distance to the nearest point of another label (inf if none). For correctly
    classified points that point is itself an adversarial example: an upper bound on the true distance."""
    dist = torch.cdist(x.flatten(1).double(), x.flatten(1).double())
    return dist.masked_fill(y[:, None] == y[None, :], float("inf")).amin(1)


def function_report(model: nn.Module, x: Tensor | None = None, y: Tensor | None = None,
                    jacobian_points: int = 20) -> dict:
    """Function-level numbers of a classifier on [0, 1] images (a timm model or a NormalizedModel, eval mode).

    Always (layer norms at x's image size, else the model's timm ``input_size``; :mod:`.lipschitz`):

    * ``layers``: per conv / linear layer up to the features, ``name``, ``raw_sigma`` (its own kernel) and
      ``folded_sigma`` (the eval-mode BatchNorm after it folded in); ``estimator`` says how they are measured;
    * ``raw_sum_sq`` = sum raw_sigma^2, ``folded_sum_sq`` = sum folded_sigma^2, ``folded_prod`` = prod
      folded_sigma over all those layers (shortcut convs included; not a Lipschitz bound of a residual net);
    * ``feature_lipschitz_upper``: the global L2 Lipschitz bound L of the pre-logit features w.r.t. the [0, 1]
      image; ``lipschitz_upper``: that of the logits, ``||W_head||_2 L``; both None where the architecture has
      no bound (``no_bound_reason`` says why).

    With x, y: over the correctly classified points (``n_correct``), the certified radius
    ``min_k (f_y - f_k) / (||W_y - W_k|| L)`` (``certified_median``, ``certified_mean``) and ``vacuous``
    (`bounds.is_vacuous` against ``reference_distance``: per point the distance to the nearest correctly
    classified point of another class, an upper bound on its true distance; median reported); and
    ``jacobian_median``: the median over the first ``jacobian_points`` points of sigma_max of the feature
    Jacobian (power iteration, 30 steps, a lower estimate of it), which L bounds from above. JSON-able values.
    """
    net, _, _ = unwrap(model)
    if net.training:
        raise ValueError("function_report needs the model in eval mode: call model.eval() first")
    if x is not None:
        in_shape = tuple(x.shape[1:])
    else:
        in_shape = tuple((getattr(net, "pretrained_cfg", None) or {}).get("input_size", ()))
        if not in_shape:
            raise ValueError(f"{type(net).__name__} has no timm input_size: pass images x to function_report")
    bound = function_bound(model, in_shape)
    raw = [layer.raw_sigma for layer in bound.layers]
    folded = [layer.folded_sigma for layer in bound.layers]
    out = dict(raw_sum_sq=sum(r * r for r in raw), folded_sum_sq=sum(f * f for f in folded),
               folded_prod=math.prod(folded), feature_lipschitz_upper=bound.features,
               lipschitz_upper=None if bound.features is None else logit_lipschitz(model, bound.features),
               no_bound_reason=bound.reason, layers=[vars(layer).copy() for layer in bound.layers],
               estimator=bound.estimator, input_shape=list(in_shape))
    if x is None or y is None:
        return out
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    out["n_correct"] = int(correct.sum())
    radius = None if bound.features is None else certified_radius(model, x[correct], y[correct], bound.features)
    if radius is not None and len(radius):
        reference = _nearest_other_class(x[correct], y[correct])
        finite = reference[torch.isfinite(reference)]
        out.update(certified_median=float(radius.median()), certified_mean=float(radius.mean()),
                   reference_distance=float(finite.median()) if len(finite) else None,
                   vacuous=is_vacuous(radius, reference))
    else:
        out.update(certified_median=None, certified_mean=None, reference_distance=None, vacuous=None)
    out["jacobian_median"] = None
    if hasattr(net, "forward_features") and hasattr(net, "forward_head") and jacobian_points > 0:
        points = x[:jacobian_points]
        sigma, _, _ = jacobian_top_singular(as_normalized(model, x.shape[1]).features, points,
                                            generator=torch.Generator().manual_seed(0))
        out.update(jacobian_median=float(sigma.median()), jacobian_points=len(points))
    return out


def _check_settings(analyses: Sequence[str], x: Tensor, eps_list: Sequence[float], attack_eps: float,
                    norms: Sequence[float]) -> None:
    unknown = [a for a in analyses if a not in ANALYSES]
    if unknown or not analyses:
        raise ValueError(f"unknown analysis name(s) {unknown or list(analyses)}; choose from {', '.join(ANALYSES)}")
    if len(x) < 1:
        raise ValueError("no test points: N must be >= 1")
    if not float(attack_eps) > 0:
        raise ValueError(f"attack_eps must be an L2 radius > 0 in [0, 1] pixel units, got {attack_eps!r}")
    if not eps_list or any(not float(e) >= 0 for e in eps_list):
        raise ValueError(f"eps_list must hold L2 radii >= 0, got {list(eps_list)}")
    if not norms or any(not float(t) >= 0 for t in norms):
        raise ValueError(f"norms must hold perturbation norms ||z|| >= 0, got {list(norms)}")


def analyze(model: nn.Module, x: Tensor, y: Tensor, analyses: Sequence[str] = ANALYSES, *, top_k: int | None = 10,
            method: str = "auto", eps_list: Sequence[float] = (0.0, 0.5, 1.0, 2.0), attack_eps: float = 1.0,
            pgd_steps: int = 10, norms: Sequence[float] = (0.0, 0.5, 1.0, 2.0, 4.0), power_iters: int = 30,
            batch_size: int = 64, seed: int = 0, progress: bool = True) -> dict:
    """Run the named analyses on test points (x in [0, 1], labels y); a JSON-able dict of the results.

    ``model`` maps [0, 1] images to logits and must be in eval mode; PGD (``pgd_steps`` steps,
    step 2 eps / steps, random start) gives the adversarial perturbations at ``attack_eps``.
    ``top_k`` caps the ranks reported (None: all, 'full' only). Seeded by ``seed``.
    """
    _check_settings(analyses, x, eps_list, attack_eps, norms)
    gen = torch.Generator().manual_seed(seed)  # CPU: power/subspace iteration starts
    dev_gen = torch.Generator(device=x.device).manual_seed(seed)  # on x's device: PGD, noise
    out: dict = {}
    need_svd, need_adv = {"spectrum", "alignment"} & set(analyses), {"alignment", "linearity"} & set(analyses)
    chunks = range(0, len(x), batch_size)
    if need_svd:
        d, n_out = x[0].numel(), model(x[:1]).numel()
        k = None if top_k is None else min(top_k, d, n_out)
        parts = [jacobian_svd(model, x[i:i + batch_size], k, method, power_iters, gen)
                 for i in tqdm(chunks, desc="jacobian svd", disable=not progress)]
        s, v, used = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), parts[0][2]
    if need_adv:
        delta = torch.cat([pgd_l2(model, x[i:i + batch_size], y[i:i + batch_size], attack_eps, pgd_steps,
                                  generator=dev_gen) - x[i:i + batch_size]
                           for i in tqdm(chunks, desc="pgd", disable=not progress)])
    if "spectrum" in analyses:
        out["spectrum"] = {"method": used, "ranks": list(range(1, s.shape[1] + 1)), **rank_quantiles(s),
                           "per_sample": s.tolist()}
    if "alignment" in analyses:
        noise = torch.randn(x.shape, generator=dev_gen, dtype=x.dtype, device=x.device)
        adv_cos, rand_cos = alignment_by_rank(delta, v), alignment_by_rank(noise, v)
        out["alignment"] = {"attack_eps": attack_eps, "ranks": list(range(1, v.shape[1] + 1)),
                            "adversarial": {**rank_quantiles(adv_cos), "mean": adv_cos.mean(0).tolist()},
                            "random": {**rank_quantiles(rand_cos), "mean": rand_cos.mean(0).tolist()}}
    if "linearity" in analyses:
        phi = as_normalized(model, x.shape[1]).features
        directions = {"random": torch.randn(x.shape, generator=dev_gen, dtype=x.dtype, device=x.device),
                      "adversarial": delta}
        out["linearity"] = {"norms": [float(t) for t in norms], "attack_eps": attack_eps}
        for name, direction in tqdm(directions.items(), desc="linearity", disable=not progress):
            parts = [linearity_profile(phi, model, x[i:i + batch_size], direction[i:i + batch_size], norms,
                                       power_iters, gen) for i in chunks]
            dev, sig = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
            out["linearity"][name] = {"deviation": rank_quantiles(dev), "sigma_max": rank_quantiles(sig)}
    if "robustness" in analyses:
        eps = [float(e) for e in eps_list]
        acc = robust_accuracy_curve(model, x, y, eps, steps=pgd_steps, generator=dev_gen, batch_size=batch_size)
        out["robustness"] = {"eps": eps, "accuracy": acc, "pgd_steps": pgd_steps}
    if "function" in analyses:
        out["function"] = function_report(model, x, y, jacobian_points=len(x))
    return out
