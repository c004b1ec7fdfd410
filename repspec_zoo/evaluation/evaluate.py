"""Benchmark a classifier: clean accuracy, attack distances with error bars, and their bracket.

``evaluate(model, dataset, ...)`` takes a classifier on images in [0,1] (wrap timm models in
``NormalizedModel`` so every distance is an L2 distance in [0,1] pixel space) and returns an
``EvalResult``:

* clean accuracy (fraction 0..1) on the whole split;
* one or several attacks (``attack="ta"``, ``"ta,cgba,fmn"`` or ``"ensemble"``) on ``n``
  correctly classified samples drawn with a fixed seed (or the given ``indices``). Every
  sample gets a start: uniform noise first, then correctly classified images of other
  classes from a start pool that is not the attacked set (the rest of the split). For every
  budget Q and attack, the TA paper's rule: the distance of the last iterate that had spent
  <= Q queries (white-box attacks spend no hard-label queries: their distance counts at every
  Q). The per-sample best over the attacks is the upper bound that is reported;
* statistics that decide (`repspec_zoo.evaluation.stats`): success rate with its CI, mean distance
  over the broken samples and median over all (an unbroken sample counts as +inf) with
  bootstrap CIs, and robust accuracy derived from the distances (an upper bound);
* the bracket (`repspec_zoo.evaluation.bounds`): the certified radius where the model admits one and
  the Lemma-1 local estimate, against the best attack.

Multi-process (Accelerate): the attacked samples are split across processes and gathered;
every sample's random stream is seeded by its dataset index, so the numbers equal a
single-process run.
"""
from __future__ import annotations

import math
import time
import warnings
from typing import Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from .. import __version__
from . import stats
from ..attacks import ATTACKS, AttackSettings, StartPool, predict_labels, run_attack
from ..attacks.oracle import EVAL_BATCH_SIZE, check_budgets, check_image_values
from .bounds import bracket, certified_radius, lemma1_estimate, unwrap
from ..errors import UserError
from .result import EvalResult
from .model_checks import check_model, first_images

#: the attacks of ``attack="ensemble"``: the two strongest hard-label attacks and the three white-box
#: minimal-norm attacks; the reported distance is the per-sample minimum over them
ENSEMBLE = ("ta", "cgba", "fmn", "ddn", "alma")
#: the rep-spectral paper's evaluation: TA with T = 40 iterations (B_t = 100 sqrt(t) normal queries,
#: about 17k queries per sample); the budgets are where its distances are read off
PAPER = dict(attack="ta", max_iter=40, budgets=(1000, 2000, 5000, 10000, 20000))
#: start-pool size cap: at most this many images, and at most POOL_ELEMS numbers in memory
POOL_IMAGES, POOL_ELEMS = 1000, 2 ** 26


def resolve_attacks(attack: str | Sequence[str] | None) -> list[str]:
    """Attack names from ``attack``: None / 'none' (accuracy only), one name, a comma-separated
    list, a sequence of names, or 'ensemble' (`ENSEMBLE`)."""
    if attack is None:
        return []
    names = attack.split(",") if isinstance(attack, str) else list(attack)
    out: list[str] = []
    for name in (str(n).strip().lower() for n in names):
        if not name:
            raise ValueError(f"attack {attack!r} names no attack (an empty name); pass an attack name, a list like "
                             "'ta,cgba', 'ensemble', or 'none' for accuracy only")
        expanded = list(ENSEMBLE) if name == "ensemble" else [] if name == "none" else [name]
        for one in expanded:
            if one not in ATTACKS:
                raise ValueError(f"unknown attack {one!r}; valid names: {', '.join(sorted(ATTACKS))}, "
                                 f"'ensemble' ({'+'.join(ENSEMBLE)}), a comma-separated list, or None")
            if one not in out:
                out.append(one)
    return out


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


class DataMismatchError(UserError, ValueError):
    """The data's classes do not match the model's head."""


def check_images(x: Tensor, model: nn.Module | None = None, box: bool = True) -> None:
    """Clear errors for images the model cannot take: NaN, outside [0,1] (``box``: the attacks
    search that box) and, given the model, wrong channels/size (one trial forward)."""
    check_image_values("images", x, (0.0, 1.0) if box else (-math.inf, math.inf))
    if model is None:
        return
    net, _, _ = unwrap(model)
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


def check_classes(model: nn.Module, dataset, dataset_name: str) -> None:
    """DataMismatchError when the model's head and the dataset's class list differ in size: every
    label would index the wrong logit, and accuracy would be meaningless rather than low."""
    classes = getattr(dataset, "class_names", None)
    width = getattr(unwrap(model)[0], "num_classes", None)
    if classes and width and len(classes) != width:
        shown = ", ".join(classes[:5]) + (", ..." if len(classes) > 5 else "")
        raise DataMismatchError(f"the model has a {width}-class head but {dataset_name} has {len(classes)} classes "
                                f"({shown}); evaluate it on data with the classes it was trained on, or train or "
                                "fine-tune a model for these classes")


def _batches(dataset, batch_size: int):
    if isinstance(dataset, tuple):
        return ((dataset[0][i:i + batch_size], dataset[1][i:i + batch_size])
                for i in range(0, len(dataset[1]), batch_size))
    return DataLoader(dataset, batch_size=batch_size, shuffle=False)


def predict_split(model: nn.Module, dataset, batch_size: int, device, box: bool = True) -> tuple[Tensor, Tensor]:
    """(correct (N,) bool, labels (N,)) on CPU, streaming a Dataset batch by batch (ImageNet-size
    splits never sit in memory at once); the first batch is checked by `check_images`."""
    correct, labels = [], []
    for x, y in _batches(dataset, batch_size):
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


def _choose(correct: Tensor, n: int, seed: int, indices: Sequence[int] | Tensor | None) -> Tensor:
    """Ascending dataset positions to attack: ``indices`` (all must be classified correctly) or
    ``n`` correctly classified ones drawn with ``seed``."""
    if indices is not None:
        chosen = torch.as_tensor(indices, dtype=torch.long).flatten().unique()
        if len(chosen) and (chosen.min() < 0 or chosen.max() >= len(correct)):
            raise ValueError(f"indices must be positions in [0, {len(correct)}) of the split, got values in "
                             f"[{int(chosen.min())}, {int(chosen.max())}]")
        wrong = chosen[~correct[chosen]]
        if len(wrong):
            raise ValueError(f"indices {wrong[:8].tolist()} are misclassified by the model; attack only "
                             f"correctly classified images (pass images every compared model gets right)")
        return chosen
    pool = torch.nonzero(correct).flatten()
    if n > len(pool):
        warnings.warn(f"n={n} but only {len(pool)} test images are classified correctly; attacking all of them")
    return pool[torch.randperm(len(pool), generator=torch.Generator().manual_seed(seed))[:n]].sort().values


def _start_pool(dataset, correct: Tensor, labels: Tensor, chosen: Tensor, seed: int, device,
                source: str | StartPool | None) -> tuple[StartPool | None, dict]:
    """The fallback starts for samples that uniform noise does not fool.

    ``source`` 'rest': correctly classified images of the evaluated split that are not attacked
    (at most POOL_IMAGES images and POOL_ELEMS numbers, drawn with ``seed``); a `StartPool`:
    used as given (e.g. correctly classified training images); None: no pool, noise starts
    only, as the reference attacks.
    """
    if source is None:
        return None, dict(source=None, size=0)
    if isinstance(source, StartPool):
        return source, dict(source="given", size=len(source))
    if source != "rest":
        raise ValueError(f"start_pool must be 'rest', None or a repspec_zoo.attacks.StartPool, got {source!r}")
    keep = correct.clone()
    keep[chosen] = False
    cand = torch.nonzero(keep).flatten()
    if not len(cand):
        warnings.warn("no correctly classified image is left for the start pool: samples that uniform noise does "
                      "not fool will go unattacked; evaluate on a larger split or pass start_pool=StartPool(...)")
        return None, dict(source="rest of the split", size=0)
    d = _rows(dataset, cand[:1], device)[0].numel()
    size = min(POOL_IMAGES, max(1, POOL_ELEMS // d))
    pick = cand[torch.randperm(len(cand), generator=torch.Generator().manual_seed(seed + 1))[:size]].sort().values
    pool = StartPool(_rows(dataset, pick, device), labels[pick].to(device))
    return pool, dict(source="rest of the split", size=len(pick))


def _budget_stats(l2_q: Tensor, budgets: list[int]) -> dict:
    """success_rate / l2_mean (broken samples) / l2_median (all, unbroken = inf) per budget."""
    out = dict(success_rate={}, l2_mean={}, l2_median={})
    for j, q in enumerate(budgets):
        col = l2_q[:, j]
        ok = torch.isfinite(col)
        out["success_rate"][str(q)] = float(ok.float().mean())
        out["l2_mean"][str(q)] = float(col[ok].mean()) if ok.any() else math.inf
        out["l2_median"][str(q)] = float(np.median(col.double().numpy()))
    return out


def _convergence(part: dict, budgets: list[int]) -> dict | None:
    """Relative change of the mean and the median between the two largest budgets."""
    if len(budgets) < 2:
        return None
    a, b = str(budgets[-2]), str(budgets[-1])

    def change(key):
        before, after = part[key][a], part[key][b]
        return (after - before) / before if math.isfinite(before) and math.isfinite(after) and before else None
    return dict(budgets=[budgets[-2], budgets[-1]], mean_change=change("l2_mean"), median_change=change("l2_median"))


def evaluate(model: nn.Module, dataset: Dataset | tuple[Tensor, Tensor], *, model_name: str = "model",
             dataset_name: str = "dataset", split: str = "test", n: int = 100, budgets: Sequence[int] = (1000,),
             attack: str | Sequence[str] | None = "ta", seed: int = 0, batch_size: int = EVAL_BATCH_SIZE,
             max_iter: int | None = None, lemma1: bool = True, progress: bool = True, accelerator=None,
             indices: Sequence[int] | Tensor | None = None, start_pool: str | StartPool | None = "rest",
             attack_options: dict[str, dict] | None = None) -> EvalResult:
    """Clean accuracy, attack distances per budget, their statistics and bracket for ``model``.

    Args:
        model: classifier on [0,1] images (e.g. ``NormalizedModel(timm_model)``), put in eval mode here.
        dataset: a torch Dataset of (image in [0,1], label) or a tuple (X, Y) of tensors.
        n: number of correctly classified samples to attack (all of them, with a warning, if fewer).
        budgets: query budgets Q; the hard-label attacks run with budget max(budgets).
        attack: one name, a comma-separated list or sequence, 'ensemble' (`ENSEMBLE`), or None for
            accuracy only. With several, each sample's reported distance is the best over them.
        seed: picks the samples and the start pool and seeds the attacks.
        batch_size: rows per model call (does not change results).
        max_iter: iteration cap of the hard-label attacks (the rep-spectral paper used T = 40).
        progress: progress bars of the attacks (main process only).
        lemma1: compute the Lemma-1 local estimate (needs a Linear head).
        accelerator: an ``accelerate.Accelerator`` to split the attack across processes.
        indices: attack exactly these split positions (all correctly classified) instead of a
            seeded draw of ``n``: paired comparisons attack every model on the same images.
        start_pool: fallback starts: 'rest' (correctly classified images of the split that are
            not attacked), a `StartPool`, or None (noise only).
        attack_options: per attack name, its own keywords for `run_attack` (e.g.
            ``{"fmn": {"steps": 100}}``); the attacks' defaults otherwise.

    seed, batch_size, max_iter and progress become the one `AttackSettings` of every attack (the
    default theta_scale, the [0,1] box); seed and batch_size also serve the accuracy pass and the
    choice of samples and start pool.
    """
    names = resolve_attacks(attack)
    attack_options = dict(attack_options or {})
    unused = sorted(set(attack_options) - set(names))
    if unused:
        raise ValueError(f"attack_options names attacks that do not run: {unused}; running: {names}")
    budgets = check_budgets(budgets) if names else sorted(int(q) for q in budgets)  # no attack reads them
    if n < 1:
        raise ValueError(f"n must be >= 1 sample, got {n}")
    main = accelerator is None or accelerator.is_local_main_process
    attack_settings = AttackSettings(seed=seed, batch_size=batch_size, max_iter=max_iter, progress=progress and main)
    model.eval()
    check_classes(model, dataset, dataset_name)
    device = next(model.parameters()).device
    first = first_images(dataset, device)
    if len(first):  # before any attack: a headless or non-finite model would read as unbreakable
        check_images(first, model, box=bool(names))
        check_model(model, first, model_name)
    correct, y_all = predict_split(model, dataset, batch_size, device, box=bool(names))
    result = EvalResult(model=model_name, dataset=dataset_name, split=split, n_test=len(y_all),
                        clean_acc=float(correct.float().mean()), attack="+".join(names) or None, attacks=names,
                        budgets=budgets, n_requested=n if indices is None else len(indices),
                        settings=dict(seed=seed, batch_size=batch_size, max_iter=max_iter, version=__version__,
                                      torch=torch.__version__))
    if not names:
        return result
    chosen = _choose(correct, n, seed, indices)
    if not len(chosen):
        warnings.warn("no test image is classified correctly: nothing to attack")
        return result
    pool, result.settings["start_pool"] = _start_pool(dataset, correct, y_all, chosen, seed, device, start_pool)
    mine = _shard(chosen, accelerator)
    x, y = _rows(dataset, mine, device), y_all[mine].to(device)
    runs = {}
    for name in names:
        start = time.perf_counter()
        res = run_attack(name, model, x, y, budgets[-1], attack_settings, starts=pool, sample_ids=mine.tolist(),
                         **attack_options.get(name, {}))
        runs[name] = (res.l2_at_budgets(budgets).cpu(), res.queries.cpu(), time.perf_counter() - start, res.params)
    local = lemma1_estimate(model, x, y) if lemma1 else None
    cert = certified_radius(model, x, y)

    index = _gather(mine, accelerator)
    order = index.argsort()
    index = index[order]
    by_attack, l2_all, l2_hard, queries_all = {}, [], [], {}
    hard_queries = torch.zeros(len(index), dtype=torch.long)
    for name, (l2_q, queries, wall, params) in runs.items():
        l2_q, queries = _gather(l2_q, accelerator)[order], _gather(queries, accelerator)[order]
        if params.get("kind") != "white-box":  # white-box counts are forwards + backwards, not queries
            hard_queries += queries
            l2_hard.append(l2_q)
        queries_all[name] = queries.tolist()
        by_attack[name] = dict(_budget_stats(l2_q, budgets), queries_mean=float(queries.float().mean()),
                               wall_time_s=wall, params=params)
        l2_all.append(l2_q)
    best = torch.stack(l2_all).amin(0)  # (n, B): per sample, the best attack at each budget
    final = best[:, -1]
    result.n_samples = len(index)
    result.queries_mean = float(hard_queries.float().mean())
    result.wall_time_s = sum(r[2] for r in runs.values())
    result.by_attack = by_attack
    overall = _budget_stats(best, budgets)
    for key, value in overall.items():
        setattr(result, key, value)
    if l2_hard:  # the white-box distances do not move with the budget: converge on the hard-label ones
        result.black_box = dict(attacks=[a for a in names if runs[a][3].get("kind") != "white-box"],
                                **_budget_stats(torch.stack(l2_hard).amin(0), budgets))
    result.convergence = _convergence(result.black_box or overall, budgets)
    result.distance = stats.to_jsonable(stats.distance_summary(final.numpy(), seed=seed))
    eps = stats.standard_eps(dataset_name)
    finite = final[torch.isfinite(final)]
    top = max(2 * (eps or 0.0), float(finite.quantile(0.95)) if len(finite) else 1.0)
    grid = [round(float(e), 4) for e in np.linspace(0.0, top, 26)]
    accuracy = dict(clean_acc=result.clean_acc, n_test=result.n_test)
    result.robust_accuracy = stats.to_jsonable(dict(
        eps=eps, at_eps=stats.robust_accuracy(final.numpy(), eps, **accuracy) if eps else None,
        curve=stats.robust_accuracy_curve(final.numpy(), grid, **accuracy)))
    result.per_sample = dict(index=index.tolist(), label=y_all[index].tolist(),
                             l2={str(q): best[:, j].tolist() for j, q in enumerate(budgets)},
                             l2_by_attack={name: {str(q): l2[:, j].tolist() for j, q in enumerate(budgets)}
                                           for name, l2 in zip(runs, l2_all)},
                             queries=queries_all)
    lower = {}
    for key, values in (("lemma1", local), ("certified", cert)):
        if values is not None:
            lower[key] = _gather(values.detach().cpu(), accelerator)[order]
            setattr(result, key, _stats(lower[key]))
    result.bracket = bracket(final, lower.get("certified"), lower.get("lemma1"))
    return result
