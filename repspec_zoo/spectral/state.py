"""Per-layer state of SpectralRegularizer: the power-iteration vectors, in buffers.

Buffers are saved with the model's ``state_dict``, follow ``model.to(...)`` and are identical on every DDP
rank (start vectors are drawn from a generator seeded by the layer name).
"""
from __future__ import annotations

import zlib
from typing import Sequence

import torch
from torch import nn

__all__ = ['LayerState', 'state_key']


def state_key(name: str) -> str:
    """Module names contain dots, which buffers/ModuleDict keys may not."""
    return name.replace(".", "__")


class LayerState(nn.Module):
    """Power-iteration state of one layer, all in buffers (saved, moved by ``.to()``).

    u: unit vector in the layer's output space (``(C_out, *spatial_out)`` for a conv).
    v: unit vector in its input space (``(C_in, *spatial_in)``).
    sigma: the latest estimate of sigma_max (float, for logging).
    in_shape: the per-sample input shape the operator was built for (empty until recorded).
    Their shapes are only known after the first forward, so loading resizes them (like
    torch's lazy modules do).
    """

    def __init__(self):
        super().__init__()
        self.register_buffer("u", torch.empty(0))
        self.register_buffer("v", torch.empty(0))
        self.register_buffer("sigma", torch.zeros(()))
        self.register_buffer("in_shape", torch.empty(0, dtype=torch.long))
        self.shape: tuple[int, ...] | None = None  # python mirror of in_shape (no device sync)
        self.needs_warmup = True

    def restart(self, name: str, u_shape: Sequence[int], v_shape: Sequence[int],
                in_shape: tuple[int, ...] | None = None) -> None:
        """Fresh random unit ``u``, ``v`` for layer ``name``, warmed up at the next update.

        Drawn in float64 from a CPU generator seeded by the name, so every DDP rank draws the same.
        ``in_shape``: the conv input shape the vectors are for (None for a Linear layer).
        """
        gen = torch.Generator().manual_seed(zlib.crc32(name.encode()))
        u = torch.randn(u_shape, generator=gen, dtype=torch.float64)
        v = torch.randn(v_shape, generator=gen, dtype=torch.float64)
        device = self.sigma.device
        self.u = (u / u.norm()).to(device=device, dtype=self.sigma.dtype)
        self.v = (v / v.norm()).to(device=device, dtype=self.sigma.dtype)
        self.in_shape = torch.tensor(in_shape or (), dtype=torch.long, device=device)
        self.shape = in_shape
        self.needs_warmup = True

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if not any(k.startswith(prefix) for k in state_dict):
            return  # plain weights without regularizer state: keep fresh vectors, report nothing missing
        for name in ("u", "v", "in_shape"):
            saved = state_dict.get(prefix + name)
            if saved is not None and saved.shape != getattr(self, name).shape:
                setattr(self, name, torch.empty(saved.shape, dtype=getattr(self, name).dtype,
                                                device=getattr(self, name).device))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        saved = state_dict.get(prefix + "in_shape")
        if saved is not None:
            self.shape = tuple(int(s) for s in saved.tolist()) or None
            self.needs_warmup = False
