"""White-box minimal-norm L2 attacks: FMN, DDN and ALMA, batched over samples.

These give a tight *upper bound* on each sample's minimal adversarial L2 distance, to set
against the hard-label attacks (TA, G-TA, HSJA, CGBA): a decision-based attack that reaches the
white-box distance has found (about) the closest boundary point.

- ``fmn``: Fast Minimum-Norm attack, L2 (Pintor, Roli, Brendel, Biggio; NeurIPS 2021).
- ``ddn``: Decoupled Direction and Norm attack (Rony et al.; CVPR 2019).
- ``alma``: Augmented Lagrangian Method for Adversarial attacks, L2 (Rony et al.; ICCV 2021).
  AttackBench (Cina et al. 2024) shows ALMA failing on some defenses, so it never runs alone.

The three loops are in `minnorm` (why not a library's: its docstring; the tests check them
against adv-lib's, step by step). This module chunks the data, counts passes, seeds and
isolates random numbers, protects the model's parameters, warm-starts FMN, re-checks every
point and packs the result as an `AttackResult` like the hard-label attacks, so they share the registry
(``run_attack("fmn", model, x, y, budget=None)``).

Units: pixel values in ``bounds`` (normally [0, 1]); every distance is an L2 norm in those
pixel units (for other bounds the attack runs on the rescaled box [0, 1] and the result is
mapped back).

`AttackResult` for a white-box attack:

- ``l2``: ``||x_adv - x||_2`` where the returned point is adversarial, as re-checked by
  `verify` (the model's arg-max label via `predict_labels`); ``inf`` where the attack found no
  adversarial point (``x_adv = x`` there). Inputs the model already misclassifies get
  ``l2 = 0`` and ``x_adv = x`` and are not attacked.
- ``queries``: forward + backward passes per sample (rows through the model's forward and
  backward, counted by hooks; every sample of a chunk takes part in every pass, so the
  per-sample count is rows / chunk size). 0 for samples that were not attacked. These are
  gradient passes, not hard-label queries; ``params`` splits them into forwards/backwards.
- ``trace_*``: ONE record per successful sample, at ``trace_queries = 0``, holding the final
  ``l2``. A white-box distance does not depend on a hard-label query budget, so
  ``l2_at_budgets(Q)`` returns the final distance for every Q (and inf where the attack failed).
- ``params``: ``kind="white-box"``, steps, forwards, backwards (per attacked sample, main
  pass), ``implementation`` (distribution and version), every keyword passed to it, and ``warm_started``
  (FMN's retried samples, see `fmn`).

For the tightest bound take the per-sample minimum over the attacks: on piecewise-linear
models the adversarial region is a union over target classes and each attack can settle on a
different class (measured per-sample ratios to DDN from 0.82 to 1.77 on a linear model).

Randomness: the three draw none (a zero gradient gives a zero step); the call still runs inside
``torch.random.fork_rng`` seeded with ``seed``, so a model that draws (dropout left on, a
stochastic defense) is deterministic and the caller's RNG state is untouched. Every sample's
result is independent of ``batch_size`` (as far as the model's own outputs are: float32 kernels
may differ with the batch size).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import fields
from importlib.metadata import version as _pkg_version
from typing import Callable

import torch
from torch import nn

from .minnorm import alma_l2, ddn_l2, fmn_l2
from .oracle import Classifier, check_attack_inputs, model_device_dtype, predict_labels
from .result import AttackResult, verify, warn_unverified
from .settings import AttackSettings
from .starts import StartPool

__all__ = ["alma", "ddn", "fmn", "WHITE_BOX_ATTACKS"]

# Default step counts, from the curves of benchmarks/bench_whitebox.py (benchmarks/README.md): on the
# first 64 of the published leaderboard's images of each of the 9 zoo models, each attack rerun at
# fewer steps against the published setting (FMN 300, ALMA 1000, DDN 300), paired. FMN at 200 and
# ALMA at 300 are within noise of theirs (bootstrap CIs include 0 on every model but one at
# +0.03%..+1.1% for FMN); DDN stays at 300 (at 200 it is within +0.12% of 300 on every model, at 100
# +0.3% to +1.2%). On the 300 images both leaderboards attacked, the per-sample best of the ensemble
# at 200 / 300 / 300 is equal to or below the previous one's (FMN 300 + ALMA 1000) on every model.
FMN_STEPS = 200
DDN_STEPS = 300
ALMA_STEPS = 300


class _Counted(nn.Module):
    """``model(lo + scale * u)`` for ``u`` in [0, 1] (just ``model(u)`` for the unit box), counting
    the rows that pass through its forward and its backward (hooks, like a profiler's counters)."""

    def __init__(self, model: Classifier, lo: float, scale: float):
        super().__init__()
        self.model = model  # an nn.Module attribute registers it as a submodule (no copy)
        self.lo, self.scale = lo, scale
        self.forwards = self.backwards = 0
        self.register_forward_pre_hook(self._count_forward)
        self.register_full_backward_hook(self._count_backward)

    def _count_forward(self, module, args) -> None:
        self.forwards += len(args[0])

    def _count_backward(self, module, grad_input, grad_output) -> None:
        self.backwards += len(grad_output[0])

    def forward(self, u: torch.Tensor) -> torch.Tensor:
        if self.lo == 0.0 and self.scale == 1.0:
            return self.model(u)
        return self.model(u * self.scale + self.lo)


#: attack -> its loop ``(model, u, y, steps, starting_points=None, **kw) -> u_adv`` on the unit box
_RUNNERS: dict[str, Callable] = {"fmn": fmn_l2, "ddn": ddn_l2, "alma": alma_l2}


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def _run_white_box(name: str, model: Classifier, x: torch.Tensor, y: torch.Tensor, budget,
                   settings: AttackSettings, steps: int, attack_kw: dict, **options) -> AttackResult:
    """`_attack_and_verify` with torch's generators seeded by ``settings.seed`` inside fork_rng: a
    model that draws random numbers gives the same result for the same seed, and the caller's RNG
    state is untouched."""
    device, _ = model_device_dtype(model, x)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(settings.seed)
        return _attack_and_verify(name, model, x, y, budget, settings, steps, attack_kw, **options)


def _attack_and_verify(name: str, model: Classifier, x: torch.Tensor, y: torch.Tensor, budget,
                       settings: AttackSettings, steps: int, attack_kw: dict, min_classes: int = 2,
                       warm_start: bool = False, starts: StartPool | torch.Tensor | None = None) -> AttackResult:
    """Chunked, counted call of the loop of attack ``name`` and the re-check of its points (see the
    module docstring)."""
    misplaced = sorted(set(attack_kw) & {f.name for f in fields(AttackSettings)})
    if misplaced:
        raise TypeError(f"{name}: {', '.join(misplaced)} belong in settings=AttackSettings(...), not among "
                        f"{name}'s own keywords")
    batch_size, seed = settings.batch_size, settings.seed
    (lo, hi), y = check_attack_inputs(model, x, y, settings.bounds, batch_size)
    _check_int("steps", steps, 1)
    device, dtype = model_device_dtype(model, x)
    x = x.to(device=device, dtype=dtype)
    y = y.to(device=device, dtype=torch.long)
    n = len(x)
    scale = hi - lo
    runner = _RUNNERS[name]

    # Parameters never need gradients here (the attacks differentiate w.r.t. the input only);
    # switching them off saves the weight-gradient graph and guarantees no .grad is written.
    params_list = list(model.parameters()) if isinstance(model, nn.Module) else []
    flags = [p.requires_grad for p in params_list]
    counted = _Counted(model, lo, scale)
    x_adv = x.clone()
    forwards = torch.zeros(n, dtype=torch.long, device=device)
    backwards = torch.zeros(n, dtype=torch.long, device=device)
    found = torch.zeros(n, dtype=torch.bool, device=device)
    retried = torch.zeros(n, dtype=torch.bool, device=device)
    try:
        for p in params_list:
            p.requires_grad_(False)
        # clean check (charges nothing, like `verify`): misclassified inputs are done, l2 = 0
        with torch.no_grad():
            clean = torch.empty(n, dtype=torch.long, device=device)
            for s in range(0, n, batch_size):
                logits = model(x[s:s + batch_size])
                clean[s:s + batch_size] = logits.argmax(1)
        if logits.shape[1] < min_classes:
            raise ValueError(f"{name} needs a model with at least {min_classes} classes "
                             f"(its loss uses the top-{min_classes} logits), got "
                             f"{logits.shape[1]}")
        todo = (clean == y).nonzero().flatten()
        bar = None
        if settings.progress:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(todo), desc=name, unit="sample")
        unit = (lo, scale) == (0.0, 1.0)
        view = (-1,) + (1,) * (x.dim() - 1)

        def run_chunks(rows: torch.Tensor, starts_for_rows: torch.Tensor | None) -> None:
            """The attack on samples ``rows`` in chunks of batch_size; fills x_adv, found and
            adds the per-sample pass counts (every sample of a chunk is in every pass)."""
            for s in range(0, len(rows), batch_size):
                idx = rows[s:s + batch_size]
                u = x[idx] if unit else (x[idx] - lo) / scale
                kw = dict(attack_kw)
                if starts_for_rows is not None:
                    sp = starts_for_rows[s:s + batch_size]
                    kw["starting_points"] = sp if unit else (sp - lo) / scale
                counted.forwards = counted.backwards = 0
                with torch.enable_grad():
                    try:
                        u_adv = runner(counted, u, y[idx], steps, **kw)
                    except ValueError as err:  # "starting points are not all adversarial"
                        if starts_for_rows is None:
                            raise
                        warnings.warn(f"{name}: warm start skipped for {len(idx)} sample(s): "
                                      f"{err}", RuntimeWarning)
                        u_adv = u
                u_adv = u_adv.detach().to(dtype)
                # the loops return the input itself where they found no adversarial point
                hit = (u_adv != u).flatten(1).any(1)
                found[idx] |= hit
                if not unit:
                    u_adv = (u_adv * scale + lo).clamp_(lo, hi)
                x_adv[idx] = torch.where(hit.view(view), u_adv, x_adv[idx])
                forwards[idx] += counted.forwards // len(idx)
                backwards[idx] += counted.backwards // len(idx)
                if bar is not None:
                    bar.update(len(idx))

        run_chunks(todo, None)
        main_passes = (int(forwards[todo].max()) if len(todo) else 0,
                       int(backwards[todo].max()) if len(todo) else 0)
        retry = todo[~found[todo]]
        if warm_start and len(retry):
            images, labels = x[todo], y[todo]  # correctly classified: label = y
            given = StartPool.of(starts)
            if given is not None and len(given):
                given.check(x.shape[1:], (lo, hi))
                extra = given.images.to(device=device, dtype=dtype)
                images = torch.cat([images, extra])
                labels = torch.cat([labels, predict_labels(model, extra, batch_size)])  # the model's labels
            # nearest image (L2) that the model labels differently from y
            best = StartPool(images, labels, per_sample=1).order(x[retry].flatten(1), y[retry])[:, 0]
            ok = labels[best] != y[retry]
            if ok.any():
                if bar is not None:
                    bar.total += int(ok.sum())
                retried[retry[ok]] = True
                run_chunks(retry[ok], images[best[ok]])
        if bar is not None:
            bar.close()
    finally:
        for p, f in zip(params_list, flags):
            p.requires_grad_(f)

    # Success: misclassified clean, or the attack returned a point (it returns x where it found
    # nothing) that the re-check by `verify` (label via predict_labels, bounds, distance)
    # confirms. A point the attack claimed but the re-check rejects (labels that depend on the
    # batch, at the boundary) is dropped: x_adv = x, l2 = inf, verified = False.
    mis = clean != y
    verified = torch.ones(n, dtype=torch.bool, device=device)
    rows = found.nonzero().flatten()
    if len(rows):
        claimed = (x_adv[rows] - x[rows]).flatten(1).norm(dim=1)
        verified[rows] = verify(model, x[rows], x_adv[rows], y[rows], claimed,
                                bounds=(lo, hi), batch_size=batch_size, raise_on_error=False)
    success = mis | (found & verified)
    x_adv[~success] = x[~success]
    l2 = torch.where(success, (x_adv - x).flatten(1).norm(dim=1),
                     torch.full((n,), math.inf, dtype=x.dtype, device=device))
    warn_unverified(name, verified, " and count as failures")
    queries = forwards + backwards
    trace_q = torch.zeros(n, 1, dtype=torch.long, device=device)
    trace_l2 = l2[:, None].clone()
    trace_mask = success[:, None].clone()
    params = dict(kind="white-box", budget=budget, batch_size=batch_size, seed=seed,
                  steps=steps, forwards=main_passes[0], backwards=main_passes[1],
                  bounds=(lo, hi), implementation=f"repspec_zoo.attacks.minnorm {_pkg_version('repspec-zoo')}",
                  attack_kw=dict(attack_kw),
                  warm_started=retried.nonzero().flatten().tolist())
    return AttackResult(name, x_adv, l2, queries, success, verified, trace_q, trace_l2,
                        trace_mask, params)


_IGNORED_DOC = """
    Hard-label-only arguments: ``budget`` (a white-box distance does not depend on a query
    budget; stored in ``params`` only), ``sample_ids``, ``settings.max_iter``,
    ``settings.theta_scale`` and (except for `fmn`) ``starts`` are accepted so that `run_attack`
    can pass the same arguments to every attack, and are ignored. In particular ``max_iter`` is
    NOT the step count (a small hard-label iteration cap would silently loosen the bound): set
    ``steps``."""


def fmn(model: Classifier, x: torch.Tensor, y: torch.Tensor, budget=None,
        settings: AttackSettings = AttackSettings(), *, starts: StartPool | torch.Tensor | None = None,
        sample_ids=None, steps: int = FMN_STEPS, warm_start: bool = True, **attack_kw) -> AttackResult:
    """Fast Minimum-Norm attack, L2, untargeted (`minnorm.fmn_l2`).

    Minimizes ``||delta||_2`` (pixel units) subject to ``argmax model(x + delta) != y`` and
    ``x + delta`` in ``bounds``: gradient steps on the logit difference (step size
    cosine-annealed from ``max_stepsize`` = 1 to 1/100 of it) inside an L2 ball of radius eps
    that shrinks by (1 - γ) while adversarial and grows by (1 + γ) otherwise (γ annealed from
    0.05 to 0.001); the best adversarial point seen is returned.

    Warm start: FMN (like the original) has no overshoot; before its first adversarial point
    it sets eps to the linearized distance to the boundary and so can creep up to the boundary
    from the benign side forever (measured: 0/20 Fashion-MNIST images on the
    linear slp_baseline.fmnist and 8/20 on resnet_small_baseline.fmnist at any of 100-1000
    steps; some samples on an exact hyperplane). With ``warm_start`` (default), each sample
    FMN failed on is attacked again with FMN's own warm start (``starting_points``: 10
    bisection steps to the boundary, then the same FMN loop) from the nearest (L2) image the
    model labels differently, among the correctly classified images of ``x`` and the rows of
    ``starts``; ``params['warm_started']`` lists them, and their ``queries`` include both
    runs (+11 forwards for the start check and bisection). A warm-started result depends on
    the start (it can settle on another class than a cold start): take the minimum over
    attacks for the tightest bound.

    Args:
        model: differentiable classifier (nn.Module in eval mode) on images in ``settings.bounds``
            returning logits; parameters are left untouched (requires_grad restored, no .grad).
        x: images (N, ...) in ``settings.bounds``; y: labels (N,).
        settings: ``batch_size`` (samples per loop call), ``seed`` (seeds torch's RNG inside
            ``fork_rng``; FMN itself draws nothing), ``bounds`` ((min, max) pixel values),
            ``progress`` (tqdm bar over samples).
        steps: optimization steps = forward and backward passes per sample.
        warm_start: retry failed samples from another-class image (see above).
        starts: extra candidate start images (M, ...) in the bounds for the warm start (e.g.
            correctly classified images of other classes); their labels are computed without
            counting passes, like the clean check.
        **attack_kw: passed to `minnorm.fmn_l2` (``max_stepsize``, ``min_stepsize``, ``gamma``,
            ``gamma_final``, ``binary_search_steps``).
    """ + _IGNORED_DOC + """

    Returns:
        `AttackResult` with ``attack='fmn'`` (see the module docstring for white-box semantics).

    Example::

        res = fmn(NormalizedModel(net).eval(), x, y)
        res.l2            # per-sample L2 upper bound on the minimal adversarial distance
    """
    return _run_white_box("fmn", model, x, y, budget, settings, steps, attack_kw,
                          warm_start=warm_start, starts=starts)


def ddn(model: Classifier, x: torch.Tensor, y: torch.Tensor, budget=None,
        settings: AttackSettings = AttackSettings(), *, starts=None, sample_ids=None,
        steps: int = DDN_STEPS, **attack_kw) -> AttackResult:
    """Decoupled Direction and Norm attack, L2, untargeted (`minnorm.ddn_l2`).

    Minimizes ``||delta||_2`` (pixel units) subject to misclassification and the box: a
    normalized cross-entropy ascent step (size cosine-annealed from 1 to 0.01) sets the
    direction, and the norm is set separately to eps, shrunk by (1 - γ) while adversarial and
    grown by (1 + γ) otherwise (γ = 0.05, eps starts at ``init_epsilon`` = 1); the best
    adversarial point seen is returned. Points are continuous (not quantized to 8-bit colour).

    Args: as `fmn`. ``**attack_kw`` go to `minnorm.ddn_l2` (``init_epsilon``, ``gamma``,
    ``max_stepsize``, ``min_stepsize``). A zero gradient gives a zero step (no random direction).
    """ + _IGNORED_DOC + """

    Returns:
        `AttackResult` with ``attack='ddn'``.

    Example::

        res = ddn(NormalizedModel(net).eval(), x, y)
    """
    return _run_white_box("ddn", model, x, y, budget, settings, steps, attack_kw)


def alma(model: Classifier, x: torch.Tensor, y: torch.Tensor, budget=None,
         settings: AttackSettings = AttackSettings(), *, starts=None, sample_ids=None,
         steps: int = ALMA_STEPS, **attack_kw) -> AttackResult:
    """ALMA, L2, untargeted (penalty P2, difference-of-logits-ratio constraint; `minnorm.alma_l2`).

    Minimizes ``||delta||_2`` (pixel units) subject to ``argmax model(x + delta) != y`` and the
    box, through the augmented Lagrangian ``||delta||_2 + P2(DLR, rho, mu)`` of the
    difference-of-logits-ratio constraint (RMSProp steps, lr decayed by ``lr_reduction`` after
    the first adversarial point, penalty ``rho`` raised by ``γ`` when the constraint stalls);
    the best adversarial point seen is returned. The DLR needs at least 3 classes.

    Args: as `fmn`; ``steps``: one forward and one backward pass per sample each. ``**attack_kw``
    go to `minnorm.alma_l2` (``lr_init``, ``lr_reduction``, ``mu_init``, ``rho_init``,
    ``check_steps``, ``tau``, ``gamma``, ``alpha``, ``logit_tolerance``).
    """ + _IGNORED_DOC + """

    Returns:
        `AttackResult` with ``attack='alma'``.

    Example::

        res = alma(NormalizedModel(net).eval(), x, y)
    """
    return _run_white_box("alma", model, x, y, budget, settings, steps, attack_kw, min_classes=3)


WHITE_BOX_ATTACKS: dict[str, Callable[..., AttackResult]] = {"fmn": fmn, "ddn": ddn, "alma": alma}
