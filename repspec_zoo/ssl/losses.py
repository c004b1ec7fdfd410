"""The self-supervised objectives: SimCLR's NT-Xent and Barlow Twins' redundancy reduction.

Written here rather than taken from ``lightly``: that library brings ``pytorch_lightning`` and
``hydra-core``, a second training framework beside the Accelerate loop this package trains with,
for two losses of a few lines each; both are checked in tests/test_ssl.py against the papers'
formulas written out independently (explicit loops over the pairs / matrix entries).

Both take the projections of two augmented views of the same N images, ``z1, z2`` (N, D), row i
of each from image i, and return a scalar (nats for NT-Xent, a sum of squares for Barlow Twins).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["nt_xent", "barlow_twins", "view_matches"]


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's normalized temperature-scaled cross entropy (Chen et al. 2020, eq. 1).

    With the 2N projections u_k (the rows of z1 then z2), s(a, b) = u_a^T u_b / (|u_a| |u_b|) and
    pos(a) the other view of a's image:

        l(a) = -log( exp(s(a, pos(a)) / tau) / sum_{b != a} exp(s(a, b) / tau) ),   L = mean_a l(a)

    over all 2N anchors (the paper's 1/2N sum over both orders of every positive pair).
    """
    u = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = u @ u.T / temperature
    logits = logits.masked_fill(torch.eye(len(u), dtype=torch.bool, device=u.device), float("-inf"))
    n = len(z1)
    positives = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(u.device)
    return F.cross_entropy(logits, positives)


def barlow_twins(z1: torch.Tensor, z2: torch.Tensor, lambd: float, eps: float = 1e-5) -> torch.Tensor:
    """Barlow Twins' loss (Zbontar et al. 2021, eq. 1-2).

    Each projection dimension is standardized over the batch (mean 0, variance 1 with the 1/N
    variance and ``eps`` of their code's affine-free BatchNorm1d), C = z1n^T z2n / N (D, D) is the
    cross-correlation matrix, and

        L = sum_i (1 - C_ii)^2 + lambd * sum_i sum_{j != i} C_ij^2.
    """
    n = len(z1)

    def standardize(z: torch.Tensor) -> torch.Tensor:
        return (z - z.mean(0)) / torch.sqrt(z.var(0, correction=0) + eps)

    c = standardize(z1).T @ standardize(z2) / n
    on_diagonal = (torch.diagonal(c) - 1).square().sum()
    off_diagonal = c.square().sum() - torch.diagonal(c).square().sum()
    return on_diagonal + lambd * off_diagonal


@torch.no_grad()
def view_matches(z1: torch.Tensor, z2: torch.Tensor) -> torch.Tensor:
    """(N,) bool: whether row i of z1 has its own image's z2 as the most cosine-similar row of z2."""
    similarity = F.normalize(z1, dim=1) @ F.normalize(z2, dim=1).T
    return similarity.argmax(1) == torch.arange(len(z1), device=z1.device)
