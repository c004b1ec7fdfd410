"""Shared pieces of the decision-based L2 attacks (HopSkipJump family), batched over samples.

Notation (ALGORITHMS.md section 2): ``x`` original image (correctly classified), ``o`` current
boundary point (adversarial), ``d`` input dimension, ``t = 1, 2, ...`` iteration. All points
are flat rows (n, d) here; every model query goes through a `HardLabelOracle` and is charged
to one sample. Everything runs in lockstep: all active samples are at the same iteration t,
and per-sample masks say who is still running, so a batch costs about as many model calls
as one sample does.

Units: pixel values in ``oracle.bounds`` (normally [0, 1]); every distance is an L2 norm in
those pixel units. Random draws come from each sample's own stream (`queries.SampleStreams`).
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch

from .oracle import Classifier, HardLabelOracle
from .queries import SampleStreams, ask, estimate_normal, work_groups
from .result import AttackResult, verify, warn_unverified
from .settings import AttackSettings
from .starts import StartPool

__all__ = [
    "default_theta_scale", "bisection_steps", "num_normal_queries", "initialize", "bisect", "step_search",
    "BoundaryWalk", "run_boundary_attack",
]

INIT_DRAWS = 1000  # uniform-noise draws per sample when there is no start pool (reference)
# With a pool, noise stops after this many draws: a model that rejects 100 uniform draws almost
# surely maps noise to the sample's own class, and every further draw is a query the attack
# proper loses (at a 1000-query budget the reference's 1000 draws leave nothing).
INIT_DRAWS_WITH_POOL = 100
INIT_TOL = 1e-3  # tolerance of the blend search (1-l) x + l noise at initialization
MAX_HALVINGS = 20  # cap on step halvings per iteration (the reference has no cap: an
# estimate pointing into the benign side can otherwise loop forever)
STOP_L2 = 1e-4  # a sample whose distance falls below this is done
LARGE_INPUT_DIM = 3 * 64 * 64  # above this, "ImageNet-size" defaults (theta_scale 1000, G-TA r 1.1)

# candidate(x, o, u, scale) -> step point (n, d) before clipping; scale is the radius / step
StepRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- schedules

def default_theta_scale(d: int) -> float:
    """theta_scale of the bisection threshold theta = theta_scale / d^{3/2}: 1 for MNIST/CIFAR-size
    inputs, 1000 for ImageNet-size (d > 3*64*64), as in the HSJA and TA reference code (which
    call it gamma: HSJA's theta = d^{-3/2}, scaled).

    theta is the bisection's stopping width on the blend weight alpha of (1 - alpha) x + alpha x'
    (so a returned point is within about theta ||x' - x|| of the boundary), and the query radius
    of the normal estimate is delta_t = sqrt(d) theta dist_{t-1} = (theta_scale / d) dist_{t-1}:
    a larger scale means coarser, cheaper bisections and wider normal queries."""
    return 1000.0 if d > LARGE_INPUT_DIM else 1.0


def bisection_steps(theta_scale: float, d: int) -> int:
    """Queries of one boundary bisection: ceil(log2(1/theta)) with theta = theta_scale / d^{3/2},
    i.e. bisect alpha in [0, 1] until high - low <= theta."""
    theta = theta_scale / d ** 1.5
    return max(0, math.ceil(math.log2(1.0 / theta)))


def num_normal_queries(t: int) -> int:
    """Monte-Carlo normal queries at iteration t: B_t = min(floor(100 sqrt(t)), 10000)."""
    return min(int(100 * math.sqrt(t)), 10000)


# ----------------------------------------------------------------------------- primitives

def bisect(oracle: HardLabelOracle, x: torch.Tensor, x_adv: torch.Tensor, ids: torch.Tensor,
           steps: int) -> torch.Tensor:
    """Lockstep bisection of alpha on ``(1 - alpha) x + alpha x_adv`` (alpha in [0, 1]).

    Takes ``steps`` queries per sample (the same for all, so one model call per step for the
    whole batch) and returns the adversarial end ``(1 - high) x + high x_adv`` (n, d). A
    sample whose budget runs out keeps its last adversarial ``high``.
    """
    lo = torch.zeros(len(x), 1, dtype=x.dtype, device=x.device)
    hi = torch.ones_like(lo)
    for _ in range(steps):
        mid = (lo + hi) / 2
        ans = ask(oracle, _blend(x, x_adv, mid, oracle.bounds), ids)
        adv, answered = ans.adversarial[:, None], ans.answered[:, None]
        hi = torch.where(answered & adv, mid, hi)
        lo = torch.where(answered & ~adv, mid, lo)
    return _blend(x, x_adv, hi, oracle.bounds)


def _blend(x: torch.Tensor, x2: torch.Tensor, alpha: torch.Tensor, bounds) -> torch.Tensor:
    # clamp: (1 - a) + a can round above 1, and a blend of in-box points must stay in the box
    return ((1 - alpha) * x + alpha * x2).clamp_(*bounds)


def _first_adversarial(oracle: HardLabelOracle, ids: torch.Tensor, d: int,
                       candidates: Callable[[torch.Tensor, int, int], torch.Tensor],
                       total: int) -> tuple[torch.Tensor, torch.Tensor]:
    """For each sample, the first adversarial one of up to ``total`` candidates.

    Candidates come in batched rounds of 1, 1, 2, 4, ... 64, 64, ... per still-searching
    sample (``candidates(group_positions, size, offset) -> (g, size, d)``); every candidate
    of a round is queried, so a sample pays at most twice the reference's one-at-a-time cost.
    Returns (points (n, d), found (n,) bool).
    """
    n = len(ids)
    found = torch.zeros(n, dtype=torch.bool, device=oracle.device)
    points = torch.zeros(n, d, dtype=oracle.x.dtype, device=oracle.device)
    pending = torch.arange(n, device=oracle.device)
    offset, size = 0, 1
    while offset < total and len(pending):
        size = min(size, total - offset)
        for sl in work_groups(len(pending), size, d, oracle.device):
            pos = pending[sl]
            cand = candidates(pos, size, offset)
            adv = ask(oracle, cand.reshape(-1, d), ids[pos].repeat_interleave(size))
            adv = adv.adversarial.view(len(pos), size)
            hit = adv.any(1)
            first = adv.to(torch.uint8).argmax(1)  # first True in row order
            points[pos[hit]] = cand[hit, first[hit]]
            found[pos[hit]] = True
        pending = pending[~found[pending] & (oracle.remaining[ids[pending]] > 0)]
        offset += size
        size = min(2 * size, 64) if offset > 1 else 1
    return points, found


def initialize(oracle: HardLabelOracle, streams: SampleStreams, ids: torch.Tensor,
               starts: StartPool | torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Adversarial starting points for samples ``ids``, close to x along a blend.

    1. Uniform noise in the box until misclassified: up to INIT_DRAWS draws per sample, or
       INIT_DRAWS_WITH_POOL when ``starts`` can take over.
    2. Samples still without one try their candidates from ``starts`` (a `StartPool` of
       correctly classified images, other classes nearest first; a bare tensor of images is
       tried whole, nearest first).
    3. Binary search of the blend ``(1 - l) x + l start`` to tolerance INIT_TOL in l.

    Returns (points (n, d), found (n,) bool); points are adversarial where found.
    """
    x = oracle.x.flatten(1)[ids]
    d = x.shape[1]
    lo, hi = oracle.bounds
    pool = StartPool.of(starts)

    def noise(pos, size, offset):
        return streams.draw("uniform", ids[pos], size, d, x.dtype) * (hi - lo) + lo

    draws = INIT_DRAWS if pool is None or not len(pool) else INIT_DRAWS_WITH_POOL
    points, found = _first_adversarial(oracle, ids, d, noise, draws)
    if pool is not None and len(pool) and not found.all():
        flat = pool.images.flatten(1).to(device=x.device, dtype=x.dtype)
        rest = (~found).nonzero().flatten()
        order = pool.order(x[rest], oracle.y[ids[rest]])  # (len(rest), k)

        def from_pool(pos, size, offset):
            return flat[order[pos, offset:offset + size]]

        extra, extra_found = _first_adversarial(oracle, ids[rest], d, from_pool, order.shape[1])
        points[rest] = extra
        found[rest] = extra_found
    if found.any():
        f = found.nonzero().flatten()
        steps = math.ceil(math.log2(1.0 / INIT_TOL))
        points[f] = bisect(oracle, x[f], points[f], ids[f], steps)
    return points, found


def step_search(oracle: HardLabelOracle, x: torch.Tensor, o: torch.Tensor, u: torch.Tensor,
                scale: torch.Tensor, ids: torch.Tensor,
                candidate: StepRule) -> tuple[torch.Tensor, torch.Tensor]:
    """Geometric step search: ``k = clip(candidate(x, o, u, scale))``; while k is not
    adversarial halve ``scale`` (per sample) and retry, at most MAX_HALVINGS times.

    Returns (k (n, d), found (n,) bool). Rounds query only the samples still searching.
    """
    k = o.clone()
    found = torch.zeros(len(o), dtype=torch.bool, device=o.device)
    pending = torch.arange(len(o), device=o.device)
    scale = scale.clone()
    for _ in range(MAX_HALVINGS + 1 if len(o) else 0):
        cand = candidate(x[pending], o[pending], u[pending], scale[pending])
        cand = cand.clamp_(*oracle.bounds)
        ans = ask(oracle, cand, ids[pending])
        k[pending[ans.adversarial]] = cand[ans.adversarial]
        found[pending[ans.adversarial]] = True
        pending = pending[ans.answered & ~ans.adversarial]
        if not len(pending):
            break
        scale[pending] /= 2
    return k, found


# ----------------------------------------------------------------------------- main loop

class BoundaryWalk:
    """The state every boundary-walking attack (HSJA, TA, G-TA, CGBA) shares, and its common
    beginning and end; the attacks differ only in how an iteration moves ``o``.

    The constructor builds the oracle (which validates model, images, labels and budget) and the
    per-sample streams, checks the per-call data (``starts``, ``sample_ids``), queries x once per
    sample (1 query; samples already misclassified are done with l2 = 0), finds each sample a
    start (`initialize`) and bisects to the boundary. Then ``for t, active in walk.iterations()``
    hands the attack the samples still running; it moves ``walk.o`` / ``walk.dist`` for them and
    the walk records (queries, ||o - x||). `finish` re-verifies every returned point and packs
    the `AttackResult`.

    Args:
        name: registry name stored in the result.
        model, x, y, budget: as `HardLabelOracle`.
        settings: seed, batch size, iteration cap, theta_scale, bounds, progress bar.
        starts: fallback starts for samples where noise never fools the model: a `StartPool`
            of correctly classified images with their labels, or a bare tensor of images (M, ...).
        sample_ids: ids seeding each sample's random stream (default 0..N-1); pass dataset
            indices to make a sample's result independent of how the data is batched.

    Attributes: ``name``, ``settings``, ``oracle``, ``streams``, ``theta_scale`` (resolved),
    ``theta`` (= theta_scale / d^{3/2}), ``steps`` (queries of one bisection), ``x`` (N, d) flat
    originals, ``o`` (N, d) current points, ``found`` (N,) bool, ``dist`` (N,) ||o - x||,
    ``start_dist`` (N,) distance of the start before its bisection, ``records``, ``t``
    (iterations run).
    """

    def __init__(self, name: str, model: Classifier, x: torch.Tensor, y: torch.Tensor,
                 budget: int | torch.Tensor, settings: AttackSettings, *,
                 starts: StartPool | torch.Tensor | None = None,
                 sample_ids: Sequence[int] | torch.Tensor | None = None):
        oracle = HardLabelOracle(model, x, y, budget, batch_size=settings.batch_size, bounds=settings.bounds)
        n, device = oracle.n_samples, oracle.device
        self.x = oracle.x.flatten(1)
        d = self.x.shape[1]
        starts = StartPool.of(starts)
        if starts is not None:
            starts.check(x.shape[1:], oracle.bounds)
        sample_ids = list(range(n)) if sample_ids is None else torch.as_tensor(sample_ids).flatten().tolist()
        if len(sample_ids) != n:
            raise ValueError(f"sample_ids must give one id per sample ({n}), got {len(sample_ids)}")
        self.name, self.settings, self.oracle, self.t = name, settings, oracle, 0
        self.theta_scale = default_theta_scale(d) if settings.theta_scale is None else settings.theta_scale
        self.theta = self.theta_scale / d ** 1.5
        self.streams = SampleStreams(settings.seed, sample_ids, device)
        self.steps = bisection_steps(self.theta_scale, d)
        self.bar = None
        if settings.progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=int(oracle.budget.sum()), desc=name, unit="query")

        ids_all = torch.arange(n, device=device)
        self.o = self.x.clone()
        self.found = ask(oracle, self.x, ids_all).adversarial  # already misclassified: l2 = 0
        self.start_dist = torch.zeros(n, dtype=self.x.dtype, device=device)
        todo = (~self.found).nonzero().flatten()
        if len(todo):
            start, ok = initialize(oracle, self.streams, todo, starts)
            good = todo[ok]
            self.o[good] = bisect(oracle, self.x[good], start[ok], good, self.steps)
            self.start_dist[good] = (start[ok] - self.x[good]).norm(dim=1)
            self.found[good] = True
        self.dist = (self.o - self.x).norm(dim=1)
        self.records = [(self.found.nonzero().flatten(), oracle.queries[self.found], self.dist[self.found])]

    def iterations(self) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (t, active) for t = 1, 2, ... while some sample is still running (an adversarial
        point, queries left, ||o - x|| >= STOP_L2) and t <= ``settings.max_iter``; after each
        iteration store (queries, ||o - x||) of ``active`` and advance the bar. ``self.t``:
        iterations run."""
        max_iter, self.t = self.settings.max_iter, 0
        while max_iter is None or self.t < max_iter:
            active = (self.found & (self.oracle.remaining > 0) & (self.dist >= STOP_L2)).nonzero().flatten()
            if not len(active):
                return
            self.t += 1
            yield self.t, active
            self.records.append((active, self.oracle.queries[active], self.dist[active]))
            if self.bar is not None:
                self.bar.update(int(self.oracle.queries.sum()) - self.bar.n)

    def params(self) -> dict:
        """The resolved settings every boundary attack records in ``AttackResult.params``: budget
        (the largest per-sample one), batch_size, seed, theta_scale, max_iter, iterations run."""
        s = self.settings
        return dict(budget=self.oracle.budget.max().item(), batch_size=s.batch_size, seed=s.seed,
                    theta_scale=self.theta_scale, max_iter=s.max_iter, iterations=self.t)

    def finish(self, params: dict) -> AttackResult:
        """Re-verify every returned point (without queries) and pack the `AttackResult`.

        Failures are flagged in ``verified`` with a RuntimeWarning rather than raised: a point
        within theta of the boundary can legitimately change label when the model's outputs
        depend on the batch composition.
        """
        if self.bar is not None:
            self.bar.close()
        oracle, n, device = self.oracle, self.oracle.n_samples, self.oracle.device
        x_adv = self.o.view_as(oracle.x)
        l2 = torch.where(self.found, (x_adv - oracle.x).flatten(1).norm(dim=1),
                         torch.full_like(self.dist, math.inf))
        tq = torch.zeros(n, len(self.records), dtype=torch.long, device=device)
        tl = torch.full((n, len(self.records)), math.inf, dtype=self.dist.dtype, device=device)
        tm = torch.zeros(n, len(self.records), dtype=torch.bool, device=device)
        for j, (ids, q, dist) in enumerate(self.records):
            tq[ids, j], tl[ids, j], tm[ids, j] = q, dist, True
        verified = verify(oracle, oracle.x, x_adv, oracle.y, l2, raise_on_error=False)
        warn_unverified(self.name, verified, "")
        return AttackResult(self.name, x_adv, l2, oracle.queries.clone(), self.found, verified, tq, tl, tm,
                            params)


def run_boundary_attack(name: str, model: Classifier, x: torch.Tensor, y: torch.Tensor,
                        budget: int | torch.Tensor, candidate: StepRule, settings: AttackSettings, *,
                        starts: StartPool | torch.Tensor | None = None,
                        sample_ids: Sequence[int] | torch.Tensor | None = None,
                        params: dict | None = None) -> AttackResult:
    """The HopSkipJump-family loop shared by HSJA, TA and G-TA; only ``candidate`` differs.

    0. Query x once per sample (1 query); samples already misclassified are done, l2 = 0.
    1. `initialize`, then `bisect` between x and the start -> boundary point o.
    2. Iteration t = 1, 2, ... for every active sample, in lockstep:
       delta = 0.1 (max - min) if t = 1 else (theta_scale / d) dist_prev;
       u = `estimate_normal` with B_t = `num_normal_queries` (t) queries;
       k = `step_search` from scale ||o - x|| / sqrt(t);
       o = `bisect` (x, k) with `bisection_steps` (theta_scale, d) queries; dist_prev = ||k - x||;
       record (queries, ||o - x||).
    A sample stops when its budget is spent (hard: the oracle refuses queries beyond it),
    when ||o - x|| < STOP_L2, or after ``settings.max_iter`` iterations. Steps 0-1, the records
    and the final re-verification are `BoundaryWalk`'s, and so are the arguments but these:

    Args:
        candidate: step rule, ``candidate(x, o, u, scale) -> point`` (unclipped).
        params: the attack's own settings, stored in the result before the shared ones.
    """
    walk = BoundaryWalk(name, model, x, y, budget, settings, starts=starts, sample_ids=sample_ids)
    oracle, xf, o, dist = walk.oracle, walk.x, walk.o, walk.dist
    d, (lo, hi) = xf.shape[1], oracle.bounds
    dist_prev = dist.clone()
    for t, active in walk.iterations():
        if t == 1:
            delta = torch.full((len(active),), 0.1 * (hi - lo), dtype=o.dtype, device=o.device)
        else:
            delta = walk.theta_scale / d * dist_prev[active]
        u, ok = estimate_normal(oracle, walk.streams, o[active], active, delta, num_normal_queries(t))
        s = active[ok]  # samples with a usable normal estimate
        k, moved = step_search(oracle, xf[s], o[s], u[ok], dist[s] / math.sqrt(t), s, candidate)
        m = s[moved]
        if len(m):
            o[m] = bisect(oracle, xf[m], k[moved], m, walk.steps)
            dist_prev[m] = (k[moved] - xf[m]).norm(dim=1)
            dist[m] = (o[m] - xf[m]).norm(dim=1)
    return walk.finish({**(params or {}), **walk.params()})
