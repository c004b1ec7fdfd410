"""Benchmark a classifier: clean accuracy, black-box attack distances, Lemma-1 estimates.

``evaluate(model, dataset, ...)`` takes a classifier on images in [0,1] (wrap timm models in
``NormalizedModel`` so every distance is an L2 distance in [0,1] pixel space) and returns an
``EvalResult``:

* clean accuracy (fraction 0..1) on the whole split;
* a decision-based attack (Tangent Attack by default) on ``n`` correctly classified samples
  drawn with a fixed seed; for every budget Q the TA paper's rule: the distance of the last
  iterate that had spent <= Q queries; mean, median and success rate per budget;
* the Lemma-1 local estimate (Yang et al. 2024): for a linear head W on features Phi,
  ``min_k (f_c - f_k) / (||W_c - W_k|| * sigma_max(J_Phi(x)))`` — the feature-space margin
  carried back through the local Lipschitz constant of Phi (not a certificate);
* for networks where it holds (a single hidden layer, Phi = act(W1 x + b1)), the certified
  radius ``min_k (f_c - f_k) / (||W_c - W_k|| * sigma_max(W1) * max|act'| / min(std))``; it
  lower-bounds every true adversarial distance, so it must lie below the attack's.

Multi-process (Accelerate): the attacked samples are split across processes and gathered;
every sample's random stream is seeded by its dataset index, so the numbers equal a
single-process run.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from timm.layers.activations import GELU as TimmGELU
from torch.utils.data import DataLoader, Dataset

from . import __version__
from .attacks import ATTACKS, NormalizedModel, predict_labels, run_attack
from .attacks.oracle import check_images as check_values
from .io import atomic_write_text
from .jacobian import jacobian_top_singular
from .models.tiny import SingleHiddenLayerNet

#: exact max_z |phi'(z)| of common activations (GELU: at z = sqrt(2), Phi(sqrt2) + sqrt2 phi(sqrt2) = 1.1289).
GELU_MAX_SLOPE = 0.5 * (1 + math.erf(1.0)) + math.sqrt(2) * math.exp(-1.0) / math.sqrt(2 * math.pi)
ACTIVATION_MAX_SLOPE = {
    nn.ReLU: 1.0, nn.LeakyReLU: 1.0, nn.Tanh: 1.0, nn.Identity: 1.0, nn.Sigmoid: 0.25,
    nn.GELU: GELU_MAX_SLOPE, TimmGELU: GELU_MAX_SLOPE,
}


def activation_max_slope(act: nn.Module) -> float | None:
    """max |act'(z)| over z for known activations, else None (no certificate)."""
    return next((slope for cls, slope in ACTIVATION_MAX_SLOPE.items() if type(act) is cls), None)


@dataclass
class EvalResult:
    """Everything `evaluate` measured; JSON-able. Distances are L2 in [0,1] pixel units."""

    model: str  # name or source of the evaluated model
    dataset: str  # dataset name/path
    split: str  # evaluated split
    n_test: int  # images in the split used for clean accuracy
    clean_acc: float  # fraction 0..1 of the split classified correctly
    attack: str | None = None  # 'ta', 'gta', 'hsja' or None (accuracy only)
    budgets: list[int] = field(default_factory=list)  # query budgets Q reported
    n_requested: int = 0  # samples asked for
    n_samples: int = 0  # correctly classified samples attacked
    success_rate: dict[str, float] = field(default_factory=dict)  # per budget: fraction with an adversarial
    l2_mean: dict[str, float] = field(default_factory=dict)  # per budget: mean L2 over successes
    l2_median: dict[str, float] = field(default_factory=dict)  # per budget: median L2 over successes
    queries_mean: float = 0.0  # mean queries spent per sample
    wall_time_s: float = 0.0  # attack wall time in seconds
    lemma1: dict | None = None  # Lemma-1 local estimate: mean, median, per_sample
    certified: dict | None = None  # certified radius (where it holds): mean, median, per_sample
    per_sample: dict = field(default_factory=dict)  # index, label, l2 per budget, queries
    settings: dict = field(default_factory=dict)  # seed, batch size, versions, attack params

    def to_json(self) -> str:
        def clean(v):
            if isinstance(v, float) and not math.isfinite(v):
                return None if math.isnan(v) else ("inf" if v > 0 else "-inf")
            if isinstance(v, dict):
                return {k: clean(x) for k, x in v.items()}
            if isinstance(v, list):
                return [clean(x) for x in v]
            return v
        return json.dumps(clean(asdict(self)), indent=2)

    def save(self, path: str | Path) -> Path:
        return atomic_write_text(path, self.to_json())

    def summary_table(self) -> str:
        """Markdown table: one row per budget (or one row of accuracy when no attack ran)."""
        head = f"{self.model} on {self.dataset}/{self.split}: clean_acc {self.clean_acc:.4f} ({self.n_test} images)"
        if not self.attack:
            return head
        rows = [head, f"attack {self.attack}, {self.n_samples} correctly classified samples, "
                      f"mean queries {self.queries_mean:.0f}, wall {self.wall_time_s:.1f} s", "",
                "| budget | success | mean L2 | median L2 |", "|---:|---:|---:|---:|"]
        for q in self.budgets:
            k = str(q)
            rows.append(f"| {q} | {self.success_rate[k]:.3f} | {self.l2_mean[k]:.4f} | {self.l2_median[k]:.4f} |")
        for label, part in (("Lemma-1 local estimate", self.lemma1), ("certified radius", self.certified)):
            if part:
                rows.append(f"\n{label}: mean {part['mean']:.4f}, median {part['median']:.4f}")
        return "\n".join(rows)


def _inner(model: nn.Module) -> tuple[nn.Module, Tensor | None, Tensor | None]:
    """The timm network inside a NormalizedModel, and its mean/std (None if not wrapped)."""
    if isinstance(model, NormalizedModel):
        return model.model, model.mean, model.std
    return model, None, None


def _linear_head(net: nn.Module) -> nn.Linear | None:
    head = net.get_classifier() if hasattr(net, "get_classifier") else None
    return head if isinstance(head, nn.Linear) else None


def _feature_margins(net: nn.Module, head: nn.Linear, logits: Tensor, y: Tensor) -> Tensor:
    """min_k (f_y - f_k) / ||W_y - W_k||: the feature-space distance to the nearest other class."""
    w = head.weight.detach().to(logits.dtype)
    diff_norm = (w[y][:, None, :] - w[None, :, :]).norm(dim=-1)  # (N, K)
    margin = logits.gather(1, y[:, None]) - logits
    ratio = margin / diff_norm.clamp_min(1e-30)
    ratio[torch.arange(len(y)), y] = math.inf
    return ratio.min(1).values


def lemma1_estimate(model: nn.Module, x: Tensor, y: Tensor, n_iter: int = 30, batch_size: int = 64) -> Tensor | None:
    """Per-sample Lemma-1 local estimate (pixel L2 units); None if the head is not Linear."""
    net, mean, std = _inner(model)
    head = _linear_head(net)
    if head is None or not hasattr(net, "forward_features"):
        return None

    def phi(z):  # [0,1] image -> pre-logit features
        if mean is not None:
            z = (z - mean.to(z.dtype)) / std.to(z.dtype)
        return net.forward_head(net.forward_features(z), pre_logits=True)

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
    net, _, std = _inner(model)
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


def _shard(items: Tensor, accelerator) -> Tensor:
    if accelerator is None or accelerator.num_processes == 1:
        return items
    return items[accelerator.process_index::accelerator.num_processes]


def _gather(t: Tensor, accelerator) -> Tensor:
    """Concatenate every process's rows (uneven counts allowed) in process order."""
    if accelerator is None or accelerator.num_processes == 1:
        return t
    from accelerate.utils import gather_object

    return torch.cat(gather_object([t.cpu()]))


def _stats(values: Tensor) -> dict:
    finite = values[torch.isfinite(values)]
    return dict(mean=float(finite.mean()) if len(finite) else math.inf,
                median=float(finite.median()) if len(finite) else math.inf,
                per_sample=values.tolist())


def check_images(x: Tensor, model: nn.Module | None = None, box: bool = True) -> None:
    """Clear errors for images the model cannot take: NaN, outside [0,1] (``box``: the attacks
    search that box) and, given the model, wrong channels/size (one trial forward)."""
    check_values("images", x, (0.0, 1.0) if box else (-math.inf, math.inf))
    if model is None:
        return
    net, _, _ = _inner(model)
    cfg = getattr(net, "pretrained_cfg", None) or {}
    want = cfg.get("input_size")
    if want and x.shape[1] != want[0]:
        raise ValueError(f"the model takes {want[0]}-channel images, the data has {x.shape[1]} channels; load "
                         f"the data with repspec_zoo.data.load_split(..., channels={want[0]})")
    try:
        with torch.no_grad():
            model(x[:1])
    except RuntimeError as err:
        raise ValueError(f"the model cannot take images of shape {tuple(x.shape[1:])} (expects {want}); "
                         f"resize them with image_size= / --image-size. Original error: {err}") from err


def _predict_split(model: nn.Module, dataset, batch_size: int, device, box: bool) -> tuple[Tensor, Tensor]:
    """(correct (N,) bool, labels (N,)) on CPU, streaming a Dataset batch by batch (ImageNet-size
    splits never sit in memory at once); the first batch is checked by `check_images`."""
    if isinstance(dataset, tuple):
        batches = ((dataset[0][i:i + batch_size], dataset[1][i:i + batch_size])
                   for i in range(0, len(dataset[1]), batch_size))
    else:
        batches = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    correct, labels = [], []
    for x, y in batches:
        x = x.to(device)
        check_images(x, None if labels else model, box)
        correct.append(predict_labels(model, x, batch_size).cpu() == y)
        labels.append(y)
    return torch.cat(correct), torch.cat(labels)


def _rows(dataset, index: Tensor, device) -> Tensor:
    """The images at ``index`` (ascending dataset positions) as one tensor on ``device``."""
    if isinstance(dataset, tuple):
        return dataset[0][index].to(device)
    return torch.stack([dataset[int(i)][0] for i in index]).to(device)


def evaluate(model: nn.Module, dataset: Dataset | tuple[Tensor, Tensor], *, model_name: str = "model",
             dataset_name: str = "dataset", split: str = "test", n: int = 100, budgets: Sequence[int] = (1000,),
             attack: str | None = "ta", seed: int = 0, batch_size: int = 256, max_iter: int | None = None,
             lemma1: bool = True, progress: bool = True, accelerator=None, **attack_kw) -> EvalResult:
    """Clean accuracy, attack distances per budget and bounds for ``model`` on ``dataset``.

    Args:
        model: classifier on [0,1] images (e.g. ``NormalizedModel(timm_model)``), put in eval mode here.
        dataset: a torch Dataset of (image in [0,1], label) or a tuple (X, Y) of tensors.
        n: number of correctly classified samples to attack (all of them, with a warning, if fewer).
        budgets: query budgets Q; the attack runs with budget max(budgets).
        attack: 'ta', 'gta', 'hsja', or None for accuracy only.
        seed: picks the samples and seeds the attack.
        batch_size: rows per model call (does not change results).
        max_iter: attack iteration cap (the rep-spectral paper used T = 40).
        lemma1: compute the Lemma-1 local estimate (needs a Linear head).
        accelerator: an ``accelerate.Accelerator`` to split the attack across processes.
    """
    if attack is not None and attack not in ATTACKS:
        raise ValueError(f"unknown attack {attack!r}; valid names: {', '.join(sorted(ATTACKS))} (or None)")
    budgets = sorted(int(q) for q in budgets)
    if attack is not None and (not budgets or budgets[0] < 1):
        raise ValueError(f"budgets must be positive query counts, got {budgets}")
    if n < 1:
        raise ValueError(f"n must be >= 1 sample, got {n}")
    model.eval()
    device = next(model.parameters()).device
    correct, y_all = _predict_split(model, dataset, batch_size, device, box=attack is not None)
    result = EvalResult(model=model_name, dataset=dataset_name, split=split, n_test=len(y_all),
                        clean_acc=float(correct.float().mean()), attack=attack, budgets=budgets, n_requested=n,
                        settings=dict(seed=seed, batch_size=batch_size, max_iter=max_iter, version=__version__,
                                      torch=torch.__version__, **attack_kw))
    if attack is None:
        return result

    pool = torch.nonzero(correct).flatten()
    if len(pool) == 0:
        warnings.warn("no test image is classified correctly: nothing to attack")
        return result
    if n > len(pool):
        warnings.warn(f"n={n} but only {len(pool)} test images are classified correctly; attacking all of them")
    chosen = pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]].sort().values
    mine = _shard(chosen, accelerator)
    x, y = _rows(dataset, mine, device), y_all[mine].to(device)
    main = accelerator is None or accelerator.is_local_main_process
    start = time.perf_counter()
    res = run_attack(attack, model, x, y, budget=budgets[-1], batch_size=batch_size, seed=seed, max_iter=max_iter,
                     sample_ids=mine.tolist(), progress=progress and main, **attack_kw)
    wall = time.perf_counter() - start
    l2_q = res.l2_at_budgets(budgets).cpu()  # (n_mine, B)
    local = lemma1_estimate(model, x, y) if lemma1 else None
    cert = certified_radius(model, x, y)

    index = _gather(mine, accelerator)
    l2_q = _gather(l2_q, accelerator)
    queries = _gather(res.queries.cpu(), accelerator)
    order = index.argsort()
    index, l2_q, queries = index[order], l2_q[order], queries[order]
    result.n_samples = len(index)
    result.queries_mean = float(queries.float().mean())
    result.wall_time_s = wall
    result.settings.update(res.params)
    for j, q in enumerate(budgets):
        col = l2_q[:, j]
        ok = torch.isfinite(col)
        result.success_rate[str(q)] = float(ok.float().mean())
        result.l2_mean[str(q)] = float(col[ok].mean()) if ok.any() else math.inf
        result.l2_median[str(q)] = float(col[ok].median()) if ok.any() else math.inf
    result.per_sample = dict(index=index.tolist(), label=y_all[index].tolist(),
                             l2={str(q): l2_q[:, j].tolist() for j, q in enumerate(budgets)},
                             queries=queries.tolist())
    if local is not None:
        result.lemma1 = _stats(_gather(local.cpu(), accelerator)[order])
    if cert is not None:
        result.certified = _stats(_gather(cert.cpu(), accelerator)[order])
    return result
