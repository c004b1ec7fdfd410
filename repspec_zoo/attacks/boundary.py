"""Shared pieces of the decision-based L2 attacks (HopSkipJump family), batched over samples.

Notation (ALGORITHMS.md section 2): ``x`` original image (correctly classified), ``o`` current
boundary point (adversarial), ``d`` input dimension, ``t = 1, 2, ...`` iteration. All points
are flat rows (n, d) here; every model query goes through a `HardLabelOracle` and is charged
to one sample. Everything runs in lockstep: all active samples are at the same iteration t,
and per-sample masks say who is still running, so a batch costs about as many model calls
as one sample does.

Units: pixel values in ``oracle.bounds`` (normally [0, 1]); every distance is an L2 norm in
those pixel units.

Randomness: each sample owns a `torch.Generator` seeded from (seed, sample id)
(`SampleStreams`), so a sample's draws never depend on which other samples share its batch,
on the oracle's chunk size, or on whether it is attacked alone.
"""
from __future__ import annotations

import math
from typing import Callable, Iterator, Sequence

import torch

from .oracle import Classifier, HardLabelOracle
from .result import AttackResult, verify, warn_unverified
from .starts import StartPool

__all__ = [
    "SampleStreams", "default_gamma", "bisection_steps", "num_probes", "initialize", "bisect", "estimate_normal",
    "step_search", "BoundaryWalk", "run_boundary_attack",
]

# One per-sample draw of probe directions holds at most DRAW_ELEMS numbers (DRAW_ELEMS // d
# rows): a constant, so how a sample's stream is cut into draws never depends on batch size,
# chunking or device memory.
DRAW_ELEMS = 2 ** 24
# Probe numbers handled per oracle call, by device type: small on CPU to stay in cache (1.5x
# faster there), large elsewhere to give the model big batches. Never changes results.
WORK_ELEMS = {"cpu": 2 ** 22}
WORK_ELEMS_DEFAULT = 2 ** 26
INIT_DRAWS = 1000  # uniform-noise draws per sample when there is no start pool (reference)
# With a pool, noise stops after this many draws: a model that rejects 100 uniform draws almost
# surely maps noise to the sample's own class, and every further draw is a query the attack
# proper loses (at a 1000-query budget the reference's 1000 draws leave nothing).
INIT_DRAWS_WITH_POOL = 100
INIT_TOL = 1e-3  # tolerance of the blend search (1-l) x + l noise at initialization
MAX_HALVINGS = 20  # cap on step halvings per iteration (the reference has no cap: an
# estimate pointing into the benign side can otherwise loop forever)
STOP_L2 = 1e-4  # a sample whose distance falls below this is done
LARGE_INPUT_DIM = 3 * 64 * 64  # above this, "ImageNet-size" defaults (gamma 1000, G-TA r 1.1)

# candidate(x, o, u, scale) -> step point (n, d) before clipping; scale is the radius / step
StepRule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


# ----------------------------------------------------------------------------- schedules

def default_gamma(d: int) -> float:
    """gamma of the bisection threshold: 1 for MNIST/CIFAR-size inputs, 1000 for ImageNet-size
    (d > 3*64*64), as in the HSJA and TA reference code."""
    return 1000.0 if d > LARGE_INPUT_DIM else 1.0


def bisection_steps(gamma: float, d: int) -> int:
    """Queries of one boundary bisection: ceil(log2(1/theta)) with theta = gamma / d^{3/2},
    i.e. bisect alpha in [0, 1] until high - low <= theta."""
    theta = gamma / d ** 1.5
    return max(0, math.ceil(math.log2(1.0 / theta)))


def num_probes(t: int) -> int:
    """Monte-Carlo probes at iteration t: B_t = min(floor(100 sqrt(t)), 10000)."""
    return min(int(100 * math.sqrt(t)), 10000)


# ----------------------------------------------------------------------------- randomness

def _mix_seed(seed: int, sample_id: int) -> int:
    """splitmix64 of (seed, sample_id): well-separated 64-bit seeds for neighbouring ids."""
    z = (seed * 0x9E3779B97F4A7C15 + sample_id + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return z ^ (z >> 31)


class SampleStreams:
    """One random stream (torch.Generator on ``device``) per sample.

    ``draw`` fills the rows of each requested sample from that sample's own generator. It is
    the one Python loop over samples in the attacks, kept on purpose: a few microseconds per
    sample per draw against the B_t * d numbers drawn, and it is what makes results
    independent of batch composition and chunking (a batched run equals one-at-a-time runs).
    """

    def __init__(self, seed: int, sample_ids: Sequence[int], device: torch.device):
        self.device = torch.device(device)
        self.generators = []
        for sid in sample_ids:
            g = torch.Generator(device=self.device)
            g.manual_seed(_mix_seed(int(seed), int(sid)))
            self.generators.append(g)

    def draw(self, kind: str, ids: torch.Tensor, rows: int, d: int,
             dtype: torch.dtype) -> torch.Tensor:
        """(len(ids), rows, d) draws, ``kind`` 'normal' (N(0,1)) or 'uniform' (U[0,1))."""
        out = torch.empty(len(ids), rows, d, dtype=dtype, device=self.device)
        for j, i in enumerate(ids.tolist()):
            if kind == "normal":
                out[j].normal_(generator=self.generators[i])
            else:
                out[j].uniform_(generator=self.generators[i])
        return out


def _groups(n: int, rows: int, d: int, device: torch.device):
    """Slices of samples such that one group's rows * d stays within the device's
    WORK_ELEMS (at least one sample per group)."""
    size = max(1, WORK_ELEMS.get(device.type, WORK_ELEMS_DEFAULT) // max(1, rows * d))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def _ask(oracle: HardLabelOracle, points: torch.Tensor, ids: torch.Tensor):
    """Oracle call on flat rows (n, d) charged to samples ``ids`` (n,)."""
    return oracle.is_adversarial(points.view(len(points), *oracle.x.shape[1:]), ids)


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
        ans = _ask(oracle, _blend(x, x_adv, mid, oracle.bounds), ids)
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
        for sl in _groups(len(pending), size, d, oracle.device):
            pos = pending[sl]
            cand = candidates(pos, size, offset)
            adv = _ask(oracle, cand.reshape(-1, d), ids[pos].repeat_interleave(size))
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


def estimate_normal(oracle: HardLabelOracle, streams: SampleStreams, o: torch.Tensor,
                    ids: torch.Tensor, delta: torch.Tensor, n_probes: int, *,
                    subspace=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo estimate of the boundary normal at boundary points ``o`` (n, d).

    Draws ``n_probes`` Gaussian directions per sample, normalized to unit length, and queries
    ``clip(o + delta v_b)``; ``v_b`` is then replaced by the direction actually probed,
    ``(clip(o + delta v_b) - o) / delta``, as in the HSJA reference (computed by clipping the
    displacement, which avoids the cancellation of subtracting o again). With
    ``phi_b = +1`` if the probe is adversarial, else -1, and only answered probes counted,

        g = mean_b((phi_b - mean(phi)) v_b)      (g = mean_b(phi_b v_b) if all phi agree)
        u = g / ||g||, normalized per sample

    (foolbox 3.3.4 normalizes g over the whole batch, which is wrong for batch > 1). Probes
    of all samples run as large oracle batches (groups of samples of about WORK_ELEMS numbers).

    Args:
        delta: (n,) probe radius in pixel units.
        subspace: None (default): directions are Gaussian in the full space. Otherwise a linear
            map to draw directions in a subspace (CGBA's low-frequency DCT probes): an object
            with an int attribute ``dim`` (k) that maps (m, rows, k) standard normal draws to
            (m, rows, d) directions, row by row; each sample's stream then supplies k numbers
            per probe instead of d.
    Returns:
        (u (n, d) unit normals pointing to the adversarial side, ok (n,) bool: False where no
        probe was answered or g vanished).
    """
    n, d = o.shape
    k = d if subspace is None else int(subspace.dim)
    dt = o.dtype
    lo, hi = oracle.bounds
    sums = torch.zeros(n, 2, d, dtype=dt, device=o.device)  # [sum phi_b v_b, sum v_b]
    s_p = torch.zeros(n, dtype=dt, device=o.device)  # sum of phi_b
    cnt = torch.zeros(n, dtype=dt, device=o.device)  # answered probes
    block = max(1, DRAW_ELEMS // d)  # rows per draw; fixed by d so draws never vary
    for r0 in range(0, n_probes, block):
        rows = min(block, n_probes - r0)
        for sl in _groups(n, rows, d, o.device):
            oo, step = o[sl, None], delta[sl, None, None]
            v = streams.draw("normal", ids[sl], rows, k, dt)
            if subspace is not None:
                v = subspace(v)
            v.mul_(step / v.norm(dim=2, keepdim=True))
            # displacement clipped so that o + v stays in the box: delta * (effective v_b)
            v = torch.clamp(v, min=lo - oo, max=hi - oo, out=v)
            probes = (oo + v).clamp_(lo, hi)  # the clamp only absorbs rounding
            ans = _ask(oracle, probes.view(-1, d), ids[sl].repeat_interleave(rows))
            del probes
            w = ans.answered.view(-1, rows).to(dt)
            phi = (2 * ans.adversarial.view(-1, rows).to(dt) - 1) * w
            sums[sl] += torch.bmm(torch.stack([phi, w], 1) / step, v)
            s_p[sl] += phi.sum(1)
            cnt[sl] += w.sum(1)
    s_pv, s_v = sums.unbind(1)
    c = cnt.clamp_min(1)[:, None]
    mean_phi = s_p[:, None] / c
    agree = mean_phi.abs() == 1
    g = torch.where(agree, s_pv / c, (s_pv - mean_phi * s_v) / c)
    norm = g.norm(dim=1)
    ok = (cnt > 0) & (norm > 0) & torch.isfinite(norm)
    return g / norm.clamp_min(torch.finfo(dt).tiny)[:, None], ok


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
        ans = _ask(oracle, cand, ids[pending])
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

    `BoundaryWalk.begin` validates the arguments, builds the oracle and the per-sample streams,
    queries x once per sample (1 query; samples already misclassified are done with l2 = 0),
    finds each sample a start (`initialize`) and bisects to the boundary. Then
    ``for t, active in walk.iterations(max_iter)`` hands the attack the samples still running;
    it moves ``walk.o`` / ``walk.dist`` for them and the walk records (queries, ||o - x||).
    `finish` re-verifies every returned point and packs the `AttackResult`.

    Attributes: ``name``, ``oracle``, ``streams``, ``gamma``, ``steps`` (queries of one
    bisection), ``x`` (N, d) flat originals, ``o`` (N, d) current points, ``found`` (N,) bool,
    ``dist`` (N,) ||o - x||, ``start_dist`` (N,) distance of the start before its bisection,
    ``records``, ``t`` (iterations run).
    """

    def __init__(self, name: str, model: Classifier, x: torch.Tensor, y: torch.Tensor,
                 budget: int | torch.Tensor, *, batch_size: int, seed: int, gamma: float | None,
                 max_iter: int | None, starts: StartPool | torch.Tensor | None,
                 sample_ids: Sequence[int] | torch.Tensor | None, bounds: Sequence[float],
                 progress: bool):
        oracle = HardLabelOracle(model, x, y, budget, batch_size=batch_size, bounds=bounds)
        n, device = oracle.n_samples, oracle.device
        self.x = oracle.x.flatten(1)
        d = self.x.shape[1]
        gamma = default_gamma(d) if gamma is None else float(gamma)
        if not (gamma > 0 and math.isfinite(gamma)):
            raise ValueError(f"gamma must be a finite number > 0 (bisection threshold gamma / d^1.5), "
                             f"got {gamma}")
        if max_iter is not None and max_iter < 0:
            raise ValueError(f"max_iter must be >= 0 or None (no limit), got {max_iter}")
        starts = StartPool.of(starts)
        if starts is not None:
            starts.check(x.shape[1:], oracle.bounds)
        sample_ids = list(range(n)) if sample_ids is None else torch.as_tensor(sample_ids).flatten().tolist()
        if len(sample_ids) != n:
            raise ValueError(f"sample_ids must give one id per sample ({n}), got {len(sample_ids)}")
        self.name, self.oracle, self.gamma, self.t = name, oracle, gamma, 0
        self.streams = SampleStreams(seed, sample_ids, device)
        self.steps = bisection_steps(gamma, d)
        self.bar = None
        if progress:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=int(oracle.budget.sum()), desc=name, unit="query")

        ids_all = torch.arange(n, device=device)
        self.o = self.x.clone()
        self.found = _ask(oracle, self.x, ids_all).adversarial  # already misclassified: l2 = 0
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

    def iterations(self, max_iter: int | None) -> Iterator[tuple[int, torch.Tensor]]:
        """Yield (t, active) for t = 1, 2, ... while some sample is still running (an adversarial
        point, queries left, ||o - x|| >= STOP_L2) and t <= ``max_iter``; after each iteration
        store (queries, ||o - x||) of ``active`` and advance the bar. ``self.t``: iterations run."""
        self.t = 0
        while max_iter is None or self.t < max_iter:
            active = (self.found & (self.oracle.remaining > 0) & (self.dist >= STOP_L2)).nonzero().flatten()
            if not len(active):
                return
            self.t += 1
            yield self.t, active
            self.records.append((active, self.oracle.queries[active], self.dist[active]))
            if self.bar is not None:
                self.bar.update(int(self.oracle.queries.sum()) - self.bar.n)

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
                        budget: int | torch.Tensor, candidate: StepRule, *,
                        batch_size: int = 256, seed: int = 0, gamma: float | None = None,
                        max_iter: int | None = None, starts: StartPool | torch.Tensor | None = None,
                        sample_ids: Sequence[int] | torch.Tensor | None = None,
                        bounds: Sequence[float] = (0.0, 1.0), progress: bool = False,
                        params: dict | None = None) -> AttackResult:
    """The HopSkipJump-family loop shared by HSJA, TA and G-TA; only ``candidate`` differs.

    0. Query x once per sample (1 query); samples already misclassified are done, l2 = 0.
    1. `initialize`, then `bisect` between x and the start -> boundary point o.
    2. Iteration t = 1, 2, ... for every active sample, in lockstep:
       delta = 0.1 (max - min) if t = 1 else (gamma / d) dist_prev;
       u = `estimate_normal` with B_t = `num_probes` (t) probes;
       k = `step_search` from scale ||o - x|| / sqrt(t);
       o = `bisect` (x, k) with `bisection_steps` (gamma, d) queries; dist_prev = ||k - x||;
       record (queries, ||o - x||).
    A sample stops when its budget is spent (hard: the oracle refuses queries beyond it),
    when ||o - x|| < STOP_L2, or after ``max_iter`` iterations. Steps 0-1, the records and
    the final re-verification are `BoundaryWalk`'s.

    Args:
        name: registry name stored in the result.
        candidate: step rule, ``candidate(x, o, u, scale) -> point`` (unclipped).
        gamma: bisection threshold constant; None: `default_gamma` (d).
        starts: fallback starts for samples where noise never fools the model: a `StartPool`
            of correctly classified images with their labels, or a bare tensor of images (M, ...).
        sample_ids: ids seeding each sample's random stream (default 0..N-1); pass dataset
            indices to make a sample's result independent of how the data is batched.
        progress: show a tqdm bar of queries spent.
    """
    walk = BoundaryWalk(name, model, x, y, budget, batch_size=batch_size, seed=seed, gamma=gamma,
                        max_iter=max_iter, starts=starts, sample_ids=sample_ids, bounds=bounds,
                        progress=progress)
    oracle, xf, o, dist = walk.oracle, walk.x, walk.o, walk.dist
    d, (lo, hi) = xf.shape[1], oracle.bounds
    dist_prev = dist.clone()
    for t, active in walk.iterations(max_iter):
        if t == 1:
            delta = torch.full((len(active),), 0.1 * (hi - lo), dtype=o.dtype, device=o.device)
        else:
            delta = walk.gamma / d * dist_prev[active]
        u, ok = estimate_normal(oracle, walk.streams, o[active], active, delta, num_probes(t))
        s = active[ok]  # samples with a usable normal estimate
        k, moved = step_search(oracle, xf[s], o[s], u[ok], dist[s] / math.sqrt(t), s, candidate)
        m = s[moved]
        if len(m):
            o[m] = bisect(oracle, xf[m], k[moved], m, walk.steps)
            dist_prev[m] = (k[moved] - xf[m]).norm(dim=1)
            dist[m] = (o[m] - xf[m]).norm(dim=1)
    return walk.finish(dict(params or {}, budget=oracle.budget.max().item(), batch_size=batch_size,
                            seed=seed, gamma=walk.gamma, max_iter=max_iter, iterations=walk.t))
