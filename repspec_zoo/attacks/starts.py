"""Fallback starting points of the decision-based attacks: other-class images from a start pool.

A hard-label attack needs one adversarial point per sample before it can walk the boundary.
Uniform noise is the usual first try, but it fails structurally on models that map all noise
to one class (``slp_baseline.fmnist`` labels every uniform draw "Bag"): every sample of that
class would go unattacked. HSJA/TA implementations then fall back to a correctly classified
image of another class, which is adversarial by construction (the model gives it its own,
different label); the attack blends it toward x by binary search before the attack proper.

`StartPool` holds such images, drawn from data that is not the attacked set (the rest of the
test split in `repspec_zoo.evaluation.evaluate.evaluate`), and orders them for each sample: other-class images
first, nearest in L2 first (a nearer start leaves a shorter blend to search).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .oracle import check_image_values

__all__ = ["StartPool"]

#: pairwise-distance work per chunk (numbers), so the ordering never holds an (n, M, d) tensor
_CHUNK_ELEMS = 2 ** 24


@dataclass
class StartPool:
    """Candidate starting images for samples that uniform noise does not fool.

    Attributes:
        images: (M, C, H, W) images inside the attack's bounds.
        labels: (M,) the model's labels of ``images`` (correctly classified images: their true
            labels); None if unknown, then every image is a candidate for every sample and the
            oracle rejects those of the sample's own class at one query each.
        per_sample: candidates tried per sample (None: all M). With labels from the model one
            suffices (it is adversarial by construction); a few more cover label noise.

    Example::

        pool = StartPool(x_rest, y_rest)                # correctly classified, not attacked
        run_attack("ta", model, x, y, 1000, starts=pool)
    """

    images: torch.Tensor
    labels: torch.Tensor | None = None
    per_sample: int | None = 8

    def __post_init__(self):
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels).flatten()
            if len(self.labels) != len(self.images):
                raise ValueError(f"StartPool needs one label per image: {len(self.images)} images, "
                                 f"{len(self.labels)} labels")
        if self.per_sample is not None and self.per_sample < 1:
            raise ValueError(f"per_sample must be >= 1 or None (all images), got {self.per_sample}")

    def check(self, shape: torch.Size, bounds: tuple[float, float]) -> None:
        """Raise ValueError unless the images are finite, inside ``bounds`` and shaped (M, *shape)."""
        check_image_values("starts", self.images, bounds)
        if self.images.shape[1:] != shape:
            raise ValueError(f"starts must be images shaped like x (M, {', '.join(map(str, shape))}), "
                             f"got {tuple(self.images.shape)}")

    def __len__(self) -> int:
        return len(self.images)

    def order(self, x_flat: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """(n, k) indices into ``images``: for each sample (row of ``x_flat`` (n, d), label
        ``y``), images of another class first, each group nearest-in-L2 first; k =
        ``per_sample`` (or M). Same-class images sort last (they cannot be adversarial)."""
        pool = self.images.flatten(1).to(device=x_flat.device, dtype=x_flat.dtype)
        m, d = pool.shape
        k = m if self.per_sample is None else min(self.per_sample, m)
        rows = max(1, _CHUNK_ELEMS // max(1, m * d))
        out = []
        for start in range(0, len(x_flat), rows):
            dist = torch.cdist(x_flat[start:start + rows], pool)
            if self.labels is not None:
                same = self.labels.to(x_flat.device)[None, :] == y[start:start + rows, None].to(x_flat.device)
                dist = dist.masked_fill(same, torch.inf)
            out.append(dist.topk(k, dim=1, largest=False).indices)
        return torch.cat(out) if out else torch.zeros(0, k, dtype=torch.long, device=x_flat.device)

    @classmethod
    def of(cls, starts: "StartPool | torch.Tensor | None") -> "StartPool | None":
        """A pool from what an attack was given: a pool, a bare tensor of images (labels
        unknown, every row tried) or None."""
        if starts is None or isinstance(starts, StartPool):
            return starts
        return cls(starts, None, per_sample=None)
