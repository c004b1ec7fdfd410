"""The activation term of the authors' ``eig-ub`` regularizer: ``mean_x max_j phi'(z_j)^2`` per activation.

Lemma 1 of Yang et al. (2024) bounds the feature Jacobian by ``prod_l sigma_max(W_l) * prod_phi max|phi'|``.
Their ``eig-ub`` regularizer penalizes the second factor too: for every smooth activation phi up to the
features it adds ``mean_x max_j phi'(z_j)^2`` (``z`` the activation's input in the latest training
forward, ``j`` over its entries) to ``sum_l sigma_l^2``. Their ``eig-ub-pure`` (MNIST) leaves it out.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ['SMOOTH_ACTIVATIONS', 'ActivationTerms']

#: activations whose derivative the activation term reads (by class name, as the authors' code does);
#: ReLU is left out: phi' is 0 or 1, so max_j phi'^2 is a constant with no gradient
SMOOTH_ACTIVATIONS = ("gelu", "sigmoid", "elu", "tanh", "silu", "softplus")


class ActivationTerms:
    """Forward hooks that record ``mean_x max_j phi'(z_j)^2`` of each smooth activation outside the
    classifier in every training forward (phi' by autograd: the activations are elementwise).

    Raises ValueError if ``model`` has no such activation (the term would be a constant).

    Example::

        >>> terms = ActivationTerms(model)
        >>> logits = model(x)                       # in training mode, with grad
        >>> extra = terms.pop_sum(torch.float32)    # differentiable; None if nothing was recorded
        >>> terms.remove()
    """

    def __init__(self, model: nn.Module):
        classifier = model.get_classifier() if hasattr(model, "get_classifier") else None
        skip = {id(m) for m in classifier.modules()} if isinstance(classifier, nn.Module) else set()
        found = [m for m in model.modules()
                 if type(m).__name__.lower() in SMOOTH_ACTIVATIONS and id(m) not in skip]
        if not found:
            raise ValueError(f"activation_term=True, but {type(model).__name__} has no smooth activation "
                             f"({', '.join(SMOOTH_ACTIVATIONS)}) outside its classifier; its derivative term "
                             "would be a constant")
        self._latest: dict[int, Tensor] = {}  # per activation module, latest training forward
        self._handles = [module.register_forward_hook(self._record) for module in found]

    def _record(self, module: nn.Module, args, out: Tensor) -> None:
        z = args[0]
        if not (module.training and torch.is_grad_enabled() and z.requires_grad):
            return
        slope = torch.autograd.grad(out.sum(), z, create_graph=True)[0]  # phi'(z), elementwise
        self._latest[id(module)] = slope.square().flatten(1).amax(1).mean()

    def pop_sum(self, dtype: torch.dtype) -> Tensor | None:
        """Sum of the terms recorded since the last call, in ``dtype`` (consumed); None if none were."""
        if not self._latest:
            return None
        total = torch.stack(list(self._latest.values())).to(dtype).sum()
        self._latest.clear()
        return total

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
