"""Count the calls that would make a CUDA device wait for the host (a "host sync"), on any device.

On the CPU nothing synchronizes, so a test cannot time it; what it can see is the calls that on a
GPU copy a value back to the host: reading a tensor as a Python number or list (.item(), .tolist(),
bool(), int(), float(), .numpy(), .cpu()), and the ops whose output size depends on the data
(nonzero, masked_select, unique, boolean-mask indexing). A ``TorchFunctionMode`` sees every such
call made from Python, whatever device the tensors are on.
"""
from collections import Counter

import torch
from torch.overrides import TorchFunctionMode

_METHODS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
            torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.numpy, torch.Tensor.cpu,
            torch.Tensor.nonzero, torch.nonzero, torch.Tensor.masked_select, torch.masked_select,
            torch.Tensor.unique, torch.unique, torch.argwhere, torch.Tensor.argwhere}


def _bool_index(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


class HostSyncs(TorchFunctionMode):
    """``with HostSyncs() as syncs: ...`` then ``syncs.total`` and ``syncs.by_call``."""

    def __init__(self):
        super().__init__()
        self.by_call = Counter()

    @property
    def total(self) -> int:
        return sum(self.by_call.values())

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _METHODS:
            self.by_call[getattr(func, "__name__", str(func))] += 1
        elif func in (torch.Tensor.__getitem__, torch.Tensor.__setitem__) and _bool_index(args[1]):
            self.by_call[f"{func.__name__}[bool mask]"] += 1
        return func(*args, **kwargs)
