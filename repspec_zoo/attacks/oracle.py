"""Hard-label oracle: the only door through which decision-based attacks reach a model.

An attack on a batch of N samples sees nothing but one boolean per query row: "is this
point adversarial for the sample it is charged to" (untargeted: the predicted label differs
from the sample's label). The oracle

- counts queries per sample (``queries``, a LongTensor (N,)),
- enforces a hard per-sample budget: a row whose sample has no query left is not run and is
  reported as not adversarial, with ``answered=False`` so the attack can tell "no" from
  "not asked",
- runs the model in chunks of ``batch_size`` rows under ``torch.no_grad`` on the model's
  device, and
- validates its inputs (finite, inside ``bounds``) so that every distance the attacks report
  is an L2 distance in [0, 1] pixel space.
"""
from __future__ import annotations

from typing import Callable, Iterable, NamedTuple, Sequence

import torch
from torch import nn

__all__ = [
    "EVAL_BATCH_SIZE", "HardLabelOracle", "OracleAnswer", "check_attack_inputs", "check_batch_size", "check_bounds",
    "check_budgets", "check_image_values", "model_device_dtype", "predict_labels",
]

Classifier = Callable[[torch.Tensor], torch.Tensor]
#: rows per model call, the one default of every evaluation, attack and feature pass: the best folded-forward
#: rows/s of the bundled models (within noise of 64 and 256) at half the activation memory of 256
#: (benchmarks/README.md, evaluation forward). Chunking never changes an answer.
EVAL_BATCH_SIZE = 128


class OracleAnswer(NamedTuple):
    """Reply to one `HardLabelOracle.is_adversarial` call, one entry per query row."""

    adversarial: torch.Tensor  # bool (M,): the model's label differs from the sample's label
    answered: torch.Tensor  # bool (M,): the row was run (False: its sample's budget was spent)


def model_device_dtype(model: Classifier, like: torch.Tensor) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype the model computes in: those of its first floating parameter
    or buffer; for a parameter-free callable, those of ``like``."""
    if isinstance(model, nn.Module):
        for t in list(model.parameters()) + list(model.buffers()):
            if t.is_floating_point():
                return t.device, t.dtype
    return like.device, like.dtype


def check_image_values(name: str, t: torch.Tensor, bounds: tuple[float, float]) -> None:
    """Raise ValueError unless ``t`` is a finite floating tensor with values inside ``bounds``."""
    if not isinstance(t, torch.Tensor) or not t.is_floating_point():
        raise ValueError(f"{name} must be a floating-point torch.Tensor of images in "
                         f"{list(bounds)}, got {type(t).__name__} "
                         f"{getattr(t, 'dtype', '')}; convert with .float() / 255 first")
    bad = ~torch.isfinite(t.reshape(len(t), -1)).all(1)
    if bad.any():
        rows = bad.nonzero().flatten()[:8].tolist()
        raise ValueError(f"{name} contains NaN or inf (rows {rows}); pass finite images")
    if t.numel() and (t.min() < bounds[0] or t.max() > bounds[1]):
        raise ValueError(
            f"{name} has values in [{t.min().item():.4g}, {t.max().item():.4g}], outside bounds "
            f"{list(bounds)}; attacks work in [0, 1] pixel space: pass un-normalized images and "
            f"wrap the model in repspec_zoo.models.normalize.NormalizedModel (or change `bounds`)")


def check_bounds(bounds: Sequence[float]) -> tuple[float, float]:
    """``bounds`` as floats (min, max); ValueError unless min < max."""
    if len(bounds) != 2 or not float(bounds[0]) < float(bounds[1]):
        raise ValueError(f"bounds must be (min, max) with min < max, got {tuple(bounds)}")
    return float(bounds[0]), float(bounds[1])


def check_batch_size(batch_size: int) -> int:
    """``batch_size`` unchanged; ValueError unless it is an int >= 1."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an int >= 1 (rows per model call), got {batch_size!r}")
    return batch_size


def check_budgets(budgets: Iterable) -> list[int]:
    """The query budgets at which an evaluation reads distances, as ints in ascending order; ValueError
    unless there is one at least and every one is >= 1 query (the rule an attack call's budget obeys)."""
    values = sorted(int(q) for q in budgets)
    if not values or values[0] < 1:
        raise ValueError(f"budgets must be positive query counts, got {values}")
    return values


def _check_budget(budget: int | torch.Tensor, n: int, device: torch.device) -> torch.Tensor:
    """The per-sample query budget as a LongTensor (n,) on ``device``, from an int or a tensor
    of shape () or (n,); ValueError unless every entry is an integer >= 1."""
    if budget is None:
        raise ValueError(f"budget must be an int >= 1 or one integer per sample ({n},), got {budget!r}")
    budget = torch.as_tensor(budget)
    if budget.is_floating_point() or budget.dtype == torch.bool:
        raise ValueError(f"budget must be an integer number of queries, got {budget.dtype}")
    if budget.shape not in ((), (1,), (n,)):
        raise ValueError(f"budget must be an int or one per sample ({n},), got shape {tuple(budget.shape)}")
    budget = budget.to(device=device, dtype=torch.long).expand(n).clone()
    if (budget < 1).any():
        raise ValueError(f"budget must be >= 1 query per sample, got min "
                         f"{budget.min().item()}; pass a positive query budget")
    return budget


def check_attack_inputs(model: Classifier, x: torch.Tensor, y, bounds: Sequence[float],
                        batch_size: int) -> tuple[tuple[float, float], torch.Tensor]:
    """Clear errors for what every attack is given: a model in eval mode, ``bounds`` (min < max),
    ``batch_size`` an int >= 1, ``x`` a non-empty batch of finite images inside the bounds and ``y``
    integer labels, one per image. Returns ((lo, hi), y as a tensor)."""
    if isinstance(model, nn.Module) and model.training:
        raise ValueError("model is in training mode; call model.eval() before attacking "
                         "it (BatchNorm/Dropout in train mode make labels depend on the batch)")
    lo, hi = check_bounds(bounds)
    check_batch_size(batch_size)
    check_image_values("x", x, (lo, hi))
    if x.dim() < 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty batch (N, ...), got shape {tuple(x.shape)}")
    y = torch.as_tensor(y)
    if y.shape != (len(x),) or y.is_floating_point() or y.dtype == torch.bool:
        raise ValueError(f"y must be integer labels of shape ({len(x)},) matching x, got "
                         f"{y.dtype} {tuple(y.shape)}")
    return (lo, hi), y


@torch.no_grad()
def predict_labels(model: Classifier, points: torch.Tensor, batch_size: int,
                   device_dtype: tuple[torch.device, torch.dtype] | None = None) -> torch.Tensor:
    """Arg-max labels of ``model`` on ``points`` (any leading batch size), computed in chunks
    of ``batch_size`` rows on the model's device and dtype (``device_dtype``, default
    `model_device_dtype`). Charges nothing: for the oracle and for verifying results, never
    for attacks."""
    device, dtype = device_dtype or model_device_dtype(model, points)
    labels = torch.empty(len(points), dtype=torch.long, device=device)
    for start in range(0, len(points), batch_size):
        chunk = points[start:start + batch_size].to(device=device, dtype=dtype)
        labels[start:start + batch_size] = model(chunk).argmax(1)
    return labels


class HardLabelOracle:
    """Untargeted hard-label oracle over an attack batch with a hard per-sample query budget.

    Args:
        model: callable mapping images (M, C, H, W) in ``bounds`` to logits (M, K); an
            ``nn.Module`` must be in eval mode (train-mode BatchNorm/Dropout would make labels
            depend on the other rows of a chunk).
        x: the attacked images (N, ...), inside ``bounds``.
        y: their labels (N,), integer.
        budget: queries allowed per sample, an int >= 1 or a LongTensor (N,).
        batch_size: rows per model call (chunking never changes answers or random draws).
        bounds: (min, max) pixel values; every query must lie inside.

    Attributes:
        x, y, bounds, batch_size, model: as given (x, y on the model's device).
        budget, queries: LongTensor (N,), queries charged so far (never above budget).

    Example::

        oracle = HardLabelOracle(model.eval(), x, y, budget=1000)
        ans = oracle.is_adversarial(points, idx)   # points (M, C, H, W), idx (M,) in [0, N)
        ans.adversarial, ans.answered, oracle.queries
    """

    def __init__(self, model: Classifier, x: torch.Tensor, y: torch.Tensor,
                 budget: int | torch.Tensor, batch_size: int = EVAL_BATCH_SIZE,
                 bounds: Sequence[float] = (0.0, 1.0)):
        self.bounds, y = check_attack_inputs(model, x, y, bounds, batch_size)
        self._device_dtype = model_device_dtype(model, x)
        device = self._device_dtype[0]
        self.model = model
        self.x = x.to(device)
        self.y = y.to(device=device, dtype=torch.long)
        self.batch_size = batch_size
        self.budget = _check_budget(budget, len(x), device)
        self.queries = torch.zeros(len(x), dtype=torch.long, device=device)

    @property
    def device(self) -> torch.device:
        return self.x.device

    @property
    def n_samples(self) -> int:
        return len(self.x)

    @property
    def remaining(self) -> torch.Tensor:
        """Queries left per sample, LongTensor (N,)."""
        return self.budget - self.queries

    def is_adversarial(self, points: torch.Tensor, idx: torch.Tensor) -> OracleAnswer:
        """Ask whether each row of ``points`` is adversarial for sample ``idx[row]``.

        Rows are charged to their sample in order: if sample i has r queries left and appears
        in k > r rows, its first r rows (in row order) are run and the rest come back
        ``answered=False, adversarial=False``. Each run row costs its sample one query.

        Args:
            points: (M, *x.shape[1:]) images inside ``bounds`` (any floating dtype).
            idx: (M,) integer sample index in [0, N) that each row is charged to.
        """
        idx = torch.as_tensor(idx, device=self.device)
        if points.shape[1:] != self.x.shape[1:] or idx.shape != (len(points),):
            raise ValueError(f"points must have shape (M, {', '.join(map(str, self.x.shape[1:]))})"
                             f" and idx shape (M,); got {tuple(points.shape)} and "
                             f"{tuple(idx.shape)}")
        # The checks and the budget test read back from the device ONCE per call (one host sync,
        # which the hard budget needs anyway): bincount runs on clamped ids and is only used once
        # the ids are known to be valid.
        flags = torch.zeros(3, dtype=torch.bool, device=self.device)  # points bad, idx bad, all rows fit
        if len(points):
            lo, hi = torch.aminmax(points)  # one pass; NaN propagates into lo and hi (and fails both)
            flags[0] = ~((lo >= self.bounds[0]) & (hi <= self.bounds[1]))
        if len(idx):
            first, last = torch.aminmax(idx)
            flags[1] = (first < 0) | (last >= self.n_samples)
        need = torch.bincount(idx.clamp(0, self.n_samples - 1), minlength=self.n_samples)
        flags[2] = (need <= self.remaining).all()
        points_bad, idx_bad, all_fit = flags.tolist()
        if points_bad:
            check_image_values("points", points, self.bounds)
        if idx_bad:
            raise ValueError(f"idx must index samples in [0, {self.n_samples}), got values "
                             f"in [{first.item()}, {last.item()}]")
        if all_fit:  # the common case: every row is run
            answered = torch.ones(len(idx), dtype=torch.bool, device=self.device)
            run, rows, charged = idx, points, need
        else:
            # Rank of each row among the rows of its own sample (stable in row order): a row
            # is answered iff its rank is below the sample's remaining budget.
            order = torch.argsort(idx, stable=True)
            sorted_idx = idx[order]
            first_pos = torch.searchsorted(sorted_idx, sorted_idx)
            rank = torch.empty_like(idx)
            rank[order] = torch.arange(len(idx), device=self.device) - first_pos
            answered = rank < self.remaining[idx]
            keep = answered.nonzero().flatten()
            run, rows = idx[keep], points[keep]
            charged = torch.bincount(run, minlength=self.n_samples)
        if not len(run):
            return OracleAnswer(torch.zeros(len(idx), dtype=torch.bool, device=self.device), answered)
        flipped = predict_labels(self.model, rows, self.batch_size, self._device_dtype) != self.y[run]
        self.queries += charged
        if all_fit:
            return OracleAnswer(flipped, answered)
        adversarial = torch.zeros(len(idx), dtype=torch.bool, device=self.device)
        adversarial[keep] = flipped  # by the answered rows' positions: a boolean mask would be a second host sync
        return OracleAnswer(adversarial, answered)
