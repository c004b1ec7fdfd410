"""Batch Spectral Shrinkage (Chen et al. 2019): a fine-tuning regularizer on the batch features.

    penalty = eta * sum_{i=1}^{k} sigma_{-i}(F)^2

where F is the (batch, features) matrix of pre-logit features and sigma_{-i} its i-th smallest
singular value: shrinking the small singular directions suppresses the features that do not
transfer. A baseline of the rep-spectral paper's fine-tuning experiments.
"""
from __future__ import annotations

import torch

__all__ = ["bss_penalty"]


def bss_penalty(features: torch.Tensor, k: int, eta: float) -> torch.Tensor:
    """eta * (sum of the k smallest squared singular values of ``features`` (B, D)), in float32.

    Singular values are computed in float32 (float64 for float64 input) even under autocast.
    Under DDP each process penalizes its own share of the batch, as the per-GPU original.
    """
    matrix = features.flatten(1)
    if k > min(matrix.shape):
        raise ValueError(f"bss_k={k} exceeds the rank bound min(batch, features) = {min(matrix.shape)} of the "
                         f"{tuple(matrix.shape)} feature matrix; lower regularizer.bss_k or raise the per-process batch")
    dtype = torch.float64 if matrix.dtype == torch.float64 else torch.float32
    with torch.autocast(device_type=matrix.device.type, enabled=False):
        singular_values = torch.linalg.svdvals(matrix.to(dtype))  # descending
    return eta * singular_values[-k:].square().sum()
