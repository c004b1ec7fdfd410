"""The random queries of the decision-based attacks: per-sample random streams, the cutting of
query rows into oracle calls, and the Monte-Carlo estimate of the boundary normal from normal queries.

Randomness: each sample owns a `torch.Generator` seeded from (seed, sample id)
(`SampleStreams`), so a sample's draws never depend on which other samples share its batch,
on the oracle's chunk size, or on whether it is attacked alone.

Points are flat rows (n, d); units are pixel values in ``oracle.bounds`` (normally [0, 1]).
"""
from __future__ import annotations

from typing import Sequence

import torch

from .oracle import HardLabelOracle

__all__ = ["SampleStreams", "ask", "estimate_normal", "work_groups"]

# One per-sample draw of query directions holds at most DRAW_ELEMS numbers (DRAW_ELEMS // d
# rows): a constant, so how a sample's stream is cut into draws never depends on batch size,
# chunking or device memory.
DRAW_ELEMS = 2 ** 24
# Query numbers handled per oracle call, by device type: small on CPU to stay in cache (1.5x
# faster there), large elsewhere to give the model big batches. Never changes results.
WORK_ELEMS = {"cpu": 2 ** 22}
WORK_ELEMS_DEFAULT = 2 ** 26


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


def work_groups(n: int, rows: int, d: int, device: torch.device):
    """Slices of samples such that one group's rows * d stays within the device's
    WORK_ELEMS (at least one sample per group)."""
    size = max(1, WORK_ELEMS.get(device.type, WORK_ELEMS_DEFAULT) // max(1, rows * d))
    for start in range(0, n, size):
        yield slice(start, min(n, start + size))


def ask(oracle: HardLabelOracle, points: torch.Tensor, ids: torch.Tensor):
    """Oracle call on flat rows (n, d) charged to samples ``ids`` (n,)."""
    return oracle.is_adversarial(points.view(len(points), *oracle.x.shape[1:]), ids)


def estimate_normal(oracle: HardLabelOracle, streams: SampleStreams, o: torch.Tensor,
                    ids: torch.Tensor, delta: torch.Tensor, n_queries: int, *,
                    subspace=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte-Carlo estimate of the boundary normal at boundary points ``o`` (n, d).

    Draws ``n_queries`` Gaussian directions per sample, normalized to unit length, and queries
    ``clip(o + delta v_b)``; ``v_b`` is then replaced by the direction actually queried,
    ``(clip(o + delta v_b) - o) / delta``, as in the HSJA reference (computed by clipping the
    displacement, which avoids the cancellation of subtracting o again). With
    ``phi_b = +1`` if the query is adversarial, else -1, and only answered queries counted,

        g = mean_b((phi_b - mean(phi)) v_b)      (g = mean_b(phi_b v_b) if all phi agree)
        u = g / ||g||, normalized per sample

    (foolbox 3.3.4 normalizes g over the whole batch, which is wrong for batch > 1). Queries
    of all samples run as large oracle batches (groups of samples of about WORK_ELEMS numbers).

    Args:
        delta: (n,) query radius in pixel units.
        subspace: None (default): directions are Gaussian in the full space. Otherwise a linear
            map to draw directions in a subspace (CGBA's low-frequency DCT directions): an object
            with an int attribute ``dim`` (k) that maps (m, rows, k) standard normal draws to
            (m, rows, d) directions, row by row; each sample's stream then supplies k numbers
            per query instead of d.
    Returns:
        (u (n, d) unit normals pointing to the adversarial side, ok (n,) bool: False where no
        query was answered or g vanished).
    """
    n, d = o.shape
    k = d if subspace is None else int(subspace.dim)
    dt = o.dtype
    lo, hi = oracle.bounds
    sums = torch.zeros(n, 2, d, dtype=dt, device=o.device)  # [sum phi_b v_b, sum v_b]
    s_p = torch.zeros(n, dtype=dt, device=o.device)  # sum of phi_b
    cnt = torch.zeros(n, dtype=dt, device=o.device)  # answered queries
    block = max(1, DRAW_ELEMS // d)  # rows per draw; fixed by d so draws never vary
    for r0 in range(0, n_queries, block):
        rows = min(block, n_queries - r0)
        for sl in work_groups(n, rows, d, o.device):
            oo, step = o[sl, None], delta[sl, None, None]
            v = streams.draw("normal", ids[sl], rows, k, dt)
            if subspace is not None:
                v = subspace(v)
            v.mul_(step / v.norm(dim=2, keepdim=True))
            # displacement clipped so that o + v stays in the box: delta * (effective v_b)
            v = torch.clamp(v, min=lo - oo, max=hi - oo, out=v)
            points = (oo + v).clamp_(lo, hi)  # the clamp only absorbs rounding
            ans = ask(oracle, points.view(-1, d), ids[sl].repeat_interleave(rows))
            del points
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


