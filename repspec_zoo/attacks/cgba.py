"""CGBA: Curvature-aware Geometric Black-box Attack, hard-label, untargeted, L2, batched.

Reza, Rahmati, Wu, Dai, "CGBA: Curvature-aware Geometric Black-box Attack", ICCV 2023
(arXiv 2308.03163); official code github.com/Farhamdur/CGBA (``proposed_attack.py``, one image at
a time), read for the algorithm and its defaults; this is an independent batched implementation
on the shared oracle / streams / bisection of `boundary`.

Geometry. Let x be the original image, o the current boundary point, D = ||o - x||,
e1 = (o - x) / D, and u the estimated unit normal of the boundary at o (pointing to the
adversarial side). In the plane through x spanned by e1 and e2 = unit(u - <u, e1> e1), the
semicircle with diameter [x, o] on u's side is

    p(alpha) = x + D cos(alpha) (cos(alpha) e1 + sin(alpha) e2),    alpha in [0, pi/2],

with p(0) = o, p(pi/2) = x and ||p(alpha) - x|| = D cos(alpha) (Thales: the angle x-p-o is a right
angle). Every point of the arc but o is closer to x than o. Near alpha = 0 the arc leaves o along
+e2, i.e. into the adversarial half-space of the estimated tangent plane (<e2, u> > 0), and it
ends at the benign x; so, for a boundary that curves less than the arc does, the arc crosses
the boundary, and along the continuous path alpha -> p(alpha) any bracket
[alpha_adv, alpha_benign] (adversarial at one end, benign at the other) contains a crossing that
binary search on alpha finds. The crossing found at alpha* is the next boundary point, at
distance D cos(alpha*) < D. Each iteration:

1. Normal estimate at o (HSJA-style signs, `queries.estimate_normal`) from
   ``int(initial_normal_queries * sqrt(t))`` queries (official N0 = 30), drawn in the span of the
   lowest-frequency 2-D DCT basis images (`LowFrequencyDCT`, block (H/f) x (W/f) per channel,
   f = ``dim_reduc_factor``; f = 1 is the full space).
2. CGBA (non-targeted default): try alpha_k = (pi/2)(1 - 2^-k), k = 1, 2, ... (pi/4, 3pi/8, ...,
   marching toward x) until p(alpha_k) is benign (at most MAX_ARC_TRIES queries), then bisect
   alpha on [alpha_{k-1}, alpha_k] until the bracket is below theta = theta_scale / d^{3/2} radians
   (chord between its ends <= theta D, the relative tolerance of the line bisection of TA/HSJA).
   CGBA-H (``variant="cgba_h"``, the paper's variant for high-curvature, targeted boundaries):
   try alpha = phi / 2^k, phi = angle(u, e1) (p(phi) is the foot of x on the estimated tangent
   plane), halving toward o until adversarial, then bisect the line between x and that point.
   Every candidate is clipped to the box; clipping toward a box containing x never increases
   the distance to x, so the returned point is still at most D cos(alpha*) from x.

Deviations from the official code, on purpose:
- Start, budget and records as TA/HSJA here: `boundary.initialize` (uniform noise, then
  ``starts``) and a line bisection with theta = theta_scale / d^{3/2} instead of growing Gaussian noise
  and an absolute 1e-4 tolerance; a hard per-sample budget (the official loop runs a fixed 93
  iterations).
- Query radius delta = (theta_scale / d) * (distance before the last move), HSJA's schedule, instead of
  the fixed sigma = 2e-4 of the official code (per coordinate, in ImageNet-normalized units, i.e.
  about 0.0044 L2 in [0, 1] pixels at 224x224 and f = 4): a fixed radius does not carry over
  between image sizes, and this one keeps the queries' normal component at the scale of the
  bisection tolerance. Query directions are unit vectors with HSJA's baseline subtraction (same
  expected direction as the official unnormalized mean of signed noise, less variance).
- CGBA's angle bisection starts from [alpha_{k-1}, alpha_k] (the last adversarial try, not o):
  never farther from x than the official [0, alpha_k], one query cheaper. If no benign point
  turns up, the last adversarial try is kept (official: no move).

Units: pixels in ``bounds`` (normally [0, 1]); every distance is L2 in those units; angles in
radians. ``queries`` count model rows charged per sample, never above its budget.

Example::

    from repspec_zoo.models.normalize import NormalizedModel
    from repspec_zoo.attacks.cgba import cgba
    res = cgba(NormalizedModel(net).eval(), x, y, budget=5000, seed=0, starts=pool)
    res.l2_at_budgets([1000, 2000, 5000]).median(0)
"""
from __future__ import annotations

import math
from typing import Sequence

import torch

from .boundary import LARGE_INPUT_DIM, BoundaryWalk, bisect, step_search
from .oracle import Classifier, HardLabelOracle
from .queries import ask, estimate_normal
from .result import AttackResult
from .settings import AttackSettings
from .starts import StartPool
from .tangent import _orthogonal_unit

__all__ = ["cgba", "LowFrequencyDCT", "semicircle_point", "default_dim_reduc_factor",
           "INITIAL_NORMAL_QUERIES", "MAX_ARC_TRIES"]

INITIAL_NORMAL_QUERIES = 30  # official N0: int(N0 * sqrt(t)) normal-estimation queries at iteration t
MAX_ARC_TRIES = 39  # official cap on the arc tries of one iteration (its loop stops at 40 calls)
VARIANTS = ("cgba", "cgba_h")


def default_dim_reduc_factor(shape: Sequence[int]) -> float:
    """DCT block factor f for inputs of ``shape`` (C, H, W): the official 4 for ImageNet-size
    images (d > 3*64*64; a 56 x 56 block at 224 x 224), else 1 (full space).

    Measured on 20 Fashion-MNIST test images of slp_baseline.fmnist (mean / median L2 at 2000
    and 5000 queries): f = 1: 1.30 / 0.95, 1.11 / 0.80; f = 2 (14 x 14 block): 1.29 / 1.00,
    1.13 / 0.88; f = 3: 1.48 / 0.99, 1.44 / 0.96; f = 4 (7 x 7): 1.77 / 1.44, 1.74 / 1.42. At
    28 x 28 a low-frequency subspace only helps below ~1000 queries and then caps progress
    (the boundary normal has high-frequency content the low-frequency queries cannot see)."""
    if len(shape) != 3:
        return 1.0
    return 4.0 if math.prod(shape) > LARGE_INPUT_DIM else 1.0


def _dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix (n, n), float64: row k is frequency k; inverse = transpose."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    j = torch.arange(n, dtype=torch.float64)[None, :]
    c = torch.cos(math.pi * (2 * j + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    c[0] /= math.sqrt(2.0)
    return c


class LowFrequencyDCT:
    """Query directions spanned by the lowest-frequency 2-D DCT-II basis images.

    For images (C, H, W) and factor f, a draw z of k = C * h * w numbers (h = int(H / f),
    w = int(W / f), at least 1) fills the top-left h x w block of each channel's coefficients
    (zeros elsewhere) and the orthonormal inverse 2-D DCT maps it to pixels:
    ``v = Ch[:h]^T z Cw[:w]``. The map is an isometry onto a k-dimensional subspace, so a
    standard normal z gives an isotropic Gaussian direction there (the official code's
    ``idct(idct(., axis=3), axis=2)`` of a zero-padded block). Used as the ``subspace`` of
    `queries.estimate_normal`: ``dim`` = k, call (m, rows, k) -> (m, rows, C*H*W).
    """

    def __init__(self, shape: Sequence[int], factor: float, device, dtype):
        c, hh, ww = (int(s) for s in shape)
        self.shape = (c, hh, ww)
        self.block = (max(1, int(hh / factor)), max(1, int(ww / factor)))
        h, w = self.block
        self.dim = c * h * w
        self.left = _dct_matrix(hh)[:h].T.contiguous().to(device=device, dtype=dtype)  # (H, h)
        self.right = _dct_matrix(ww)[:w].contiguous().to(device=device, dtype=dtype)  # (w, W)

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        m, rows, _ = z.shape
        c, hh, ww = self.shape
        h, w = self.block
        zb = z.reshape(-1, h, w)
        b = len(zb)
        # bmm: one (H, h) @ (h, w) product per channel image, the same shape whatever the batch,
        # so a row's bits never depend on how many samples share the call
        out = torch.bmm(self.left.expand(b, hh, h), zb)
        out = torch.bmm(out, self.right.expand(b, w, ww))
        return out.reshape(m, rows, c * hh * ww)


def _plane(x: torch.Tensor, o: torch.Tensor, u: torch.Tensor):
    """(D (n,), e1, e2 (n, d), cos_phi (n,)): the arc's diameter D = ||o - x||, its unit
    direction e1, the in-plane unit e2 perpendicular to e1 on u's side, and cos(angle(u, e1)).
    Where u is parallel to e1 any unit e2 perpendicular to e1 is taken."""
    v = o - x
    dist = v.norm(dim=1, keepdim=True)
    e1 = v / dist
    cos_phi = (u * e1).sum(1, keepdim=True)
    w = u - cos_phi * e1
    wn = w.norm(dim=1, keepdim=True)
    flat = wn <= math.sqrt(torch.finfo(x.dtype).eps)
    e2 = torch.where(flat, _orthogonal_unit(e1), w / wn.clamp_min(torch.finfo(x.dtype).tiny))
    return dist.squeeze(1), e1, e2, cos_phi.squeeze(1)


def _arc(x, dist, e1, e2, ca, sa, bounds) -> torch.Tensor:
    """p = x + D cos(alpha) (cos(alpha) e1 + sin(alpha) e2), clipped to ``bounds``, from
    ``ca`` = cos(alpha), ``sa`` = sin(alpha): Python floats or (n,) float64 tensors."""
    r = dist.double() * ca
    rc = torch.as_tensor(r * ca).to(x.dtype).expand(len(x))[:, None]
    rs = torch.as_tensor(r * sa).to(x.dtype).expand(len(x))[:, None]
    return (x + rc * e1 + rs * e2).clamp_(*bounds)


def semicircle_point(x: torch.Tensor, o: torch.Tensor, u: torch.Tensor, alpha,
                     bounds: Sequence[float] = (-math.inf, math.inf)) -> torch.Tensor:
    """Point p(alpha) of the semicircle with diameter [x, o] on u's side (rows are samples):
    ``x + ||o - x|| cos(alpha) (cos(alpha) e1 + sin(alpha) e2)``, clipped to ``bounds``; see the
    module docstring. ``alpha``: radians, a float or (n,) tensor. Also the candidate rule of
    CGBA-H (``alpha`` halved on failure)."""
    dist, e1, e2, _ = _plane(x, o, u)
    alpha = torch.as_tensor(alpha, dtype=torch.float64, device=x.device)
    return _arc(x, dist, e1, e2, torch.cos(alpha), torch.sin(alpha), bounds)


def _semicircle_search(oracle: HardLabelOracle, x: torch.Tensor, o: torch.Tensor,
                       u: torch.Tensor, ids: torch.Tensor, tol: float):
    """CGBA's step for samples ``ids`` (rows of x, o, u): arc tries (pi/2)(1 - 2^-k) until
    benign, then bisection of alpha on the last bracket [adversarial, benign] to width ``tol``
    (radians).

    The bracket ends are kept as in-plane unit directions (cos, sin) and the midpoint is their
    normalized sum (the angle bisector), as in the official code: only +, *, /, sqrt, which are
    correctly rounded, so a sample's points never depend on which samples share its batch.
    Returns (points (n, d), moved (n,) bool): the last point found adversarial (its alpha > 0),
    else o.
    """
    n = len(ids)
    dist, e1, e2, _ = _plane(x, o, u)
    bounds = oracle.bounds
    f64 = dict(dtype=torch.float64, device=x.device)
    points = o.clone()
    moved = torch.zeros(n, dtype=torch.bool, device=x.device)
    ends = torch.zeros(n, 4, **f64)  # (cos, sin) of the adversarial end, then of the benign end
    ends[:, 0] = 1.0  # alpha = 0: o itself
    width = torch.full((n,), math.nan, **f64)  # bracket width in radians; nan: no benign point
    pending = torch.arange(n, device=x.device)
    prev = 0.0
    # Updates go through torch.where on index lists rather than boolean masks: on a GPU each mask
    # index waits for the device, and only the next list of rows (one nonzero) has to
    for k in range(1, MAX_ARC_TRIES + 1):
        if not len(pending):
            break
        alpha = math.pi / 2 * (1 - 2.0 ** -k)  # the same try for every pending sample
        ca, sa = math.cos(alpha), math.sin(alpha)
        pts = _arc(x[pending], dist[pending], e1[pending], e2[pending], ca, sa, bounds)
        ans = ask(oracle, pts, ids[pending])
        adv, ben = ans.answered & ans.adversarial, ans.answered & ~ans.adversarial
        try_end = torch.tensor([ca, sa], **f64).expand(len(pending), 2)
        ends[pending, 2:] = torch.where(ben[:, None], try_end, ends[pending, 2:])
        width[pending] = torch.where(ben, alpha - prev, width[pending])
        hit = adv.nonzero().flatten()
        pending = pending[hit]
        points[pending], moved[pending], ends[pending, :2] = pts[hit], True, try_end[hit]
        prev = alpha
    # bisection in lockstep; widths differ (pi / 2^(k+1)), so each sample stops on its own when
    # its bracket is below tol or its budget is spent
    while True:
        live = ((width > tol) & (oracle.remaining[ids] > 0)).nonzero().flatten()  # nan compares False
        if not len(live):
            break
        mid = ends[live, :2] + ends[live, 2:]
        mid = mid / mid.norm(dim=1, keepdim=True)
        pts = _arc(x[live], dist[live], e1[live], e2[live], mid[:, 0], mid[:, 1], bounds)
        ans = ask(oracle, pts, ids[live])
        adv, ben = ans.answered & ans.adversarial, ans.answered & ~ans.adversarial
        points[live] = torch.where(adv[:, None], pts, points[live])
        moved[live] |= adv
        ends[live, :2] = torch.where(adv[:, None], mid, ends[live, :2])
        ends[live, 2:] = torch.where(ben[:, None], mid, ends[live, 2:])
        width[live] = torch.where(ans.answered, width[live] / 2, width[live])
    return points, moved


def _half_angle_search(oracle, x, o, u, ids, steps):
    """CGBA-H's step: arc points at alpha = phi / 2, phi / 4, ... (phi = angle(u, o - x))
    until adversarial (`boundary.step_search`, at most MAX_HALVINGS halvings), then line
    bisection from x."""
    cos_phi = _plane(x, o, u)[3]
    phi = torch.acos(cos_phi.double().clamp(-1.0, 1.0))
    k, found = step_search(oracle, x, o, u, phi / 2, ids, semicircle_point)  # it clips
    points = o.clone()
    if found.any():
        points[found] = bisect(oracle, x[found], k[found], ids[found], steps)
    return points, found


def cgba(model: Classifier, x: torch.Tensor, y: torch.Tensor, budget: int | torch.Tensor,
         settings: AttackSettings = AttackSettings(), *, starts: StartPool | torch.Tensor | None = None,
         sample_ids: Sequence[int] | torch.Tensor | None = None, dim_reduc_factor: float | None = None,
         variant: str = "cgba", initial_normal_queries: int = INITIAL_NORMAL_QUERIES) -> AttackResult:
    """CGBA (semicircular boundary search), untargeted L2, batched in lockstep over samples.

    0. Query x once per sample (1 query); samples already misclassified are done, l2 = 0.
    1. `boundary.initialize` (uniform noise, then ``starts``), then `boundary.bisect`
       between x and the start with `bisection_steps` (theta_scale, d) queries -> boundary point o.
    2. Iteration t = 1, 2, ... for every active sample: normal estimate at o from
       ``int(initial_normal_queries * sqrt(t))`` low-frequency normal queries of radius (theta_scale / d) * D_prev;
       then the semicircle search (see the module docstring) -> next o; record
       (queries, ||o - x||).
    A sample stops when its budget is spent (hard), when ||o - x|| < STOP_L2, or after
    ``settings.max_iter`` iterations. Returned points are re-checked by `result.verify`; failures
    are flagged in ``.verified`` with a RuntimeWarning, as in `run_boundary_attack`.

    Args:
        model: classifier on images in ``settings.bounds`` returning logits, in eval mode.
        x: images (N, C, H, W) (or flat (N, d): then full-space query directions, f = 1); y: labels.
        budget: hard per-sample query budget (int or LongTensor (N,)).
        settings: as `tangent_attack` (official runs: ``max_iter`` 93); ``theta_scale`` also sets
            the angle tolerance theta = theta_scale / d^{3/2} of the semicircle bisection.
        starts: fallback starts for samples noise never fools, forwarded to `initialize`.
        sample_ids: per-sample stream ids (default 0..N-1); a sample's result does not depend
            on its batch.
        dim_reduc_factor: DCT block factor f >= 1 (block int(H/f) x int(W/f) per channel);
            None: `default_dim_reduc_factor` (official 4 at ImageNet size, else 1).
        variant: "cgba" (semicircle bisection, the paper's non-targeted choice) or "cgba_h".
        initial_normal_queries: N0 of the normal-query schedule int(N0 sqrt(t)) (official 30).

    Returns:
        `AttackResult` with ``attack="cgba"``; ``params`` holds the resolved settings
        (theta_scale, iterations, variant, dim_reduc_factor, subspace_dim, initial_normal_queries, ...).
    """
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if isinstance(initial_normal_queries, bool) or not isinstance(initial_normal_queries, int) \
            or initial_normal_queries < 1:
        raise ValueError(f"initial_normal_queries must be an int >= 1 (N0 of int(N0 sqrt(t))), "
                         f"got {initial_normal_queries!r}")
    shape = tuple(x.shape[1:])
    f = default_dim_reduc_factor(shape) if dim_reduc_factor is None else float(dim_reduc_factor)
    if not (f >= 1 and math.isfinite(f)):
        raise ValueError(f"dim_reduc_factor must be a finite number >= 1 (1: full space; the "
                         f"official default is 4 at 224x224), got {dim_reduc_factor}")
    if f > 1 and len(shape) != 3:
        raise ValueError(f"dim_reduc_factor > 1 needs images (N, C, H, W), got x of shape "
                         f"{tuple(x.shape)}; pass dim_reduc_factor=1")
    walk = BoundaryWalk("cgba", model, x, y, budget, settings, starts=starts, sample_ids=sample_ids)
    oracle, xf, o, dist = walk.oracle, walk.x, walk.o, walk.dist
    d = xf.shape[1]
    subspace = LowFrequencyDCT(shape, f, oracle.device, xf.dtype) if f > 1 else None
    dist_prev = walk.start_dist.clone()  # the query radius scales with the distance before the last move
    for t, active in walk.iterations():
        delta = walk.theta_scale / d * dist_prev[active]
        u, ok = estimate_normal(oracle, walk.streams, o[active], active, delta,
                                int(initial_normal_queries * math.sqrt(t)), subspace=subspace)
        sel = ok & (oracle.remaining[active] > 0)  # a usable normal and queries left
        s, us = active[sel], u[sel]
        if len(s):
            if variant == "cgba":  # theta: radians for the angle bisection
                new, moved = _semicircle_search(oracle, xf[s], o[s], us, s, walk.theta)
            else:
                new, moved = _half_angle_search(oracle, xf[s], o[s], us, s, walk.steps)
            m = s[moved]
            dist_prev[m] = dist[m]
            o[m] = new[moved]
            dist[m] = (o[m] - xf[m]).norm(dim=1)
    return walk.finish(dict(walk.params(), variant=variant, dim_reduc_factor=f,
                            subspace_dim=d if subspace is None else subspace.dim,
                            initial_normal_queries=initial_normal_queries, max_arc_tries=MAX_ARC_TRIES))
