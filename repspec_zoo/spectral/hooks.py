"""SpectralRegularizer: rep-/ll-spectral penalty attached to any ``nn.Module`` by hooks.

    penalty = gamma/2 * sum_l sigma_max(W_l)^2          (Yang et al. 2024, eq. 3)

sigma_max is the operator norm of the layer *as it acts on its input*: for a Linear layer
the largest singular value of the weight matrix, for a convolution the norm of the real
(zero- or circular-padded, strided, grouped, dilated) linear map at the input size recorded
by a forward pre-hook. It is estimated by power iteration with vectors (u, v) kept as
buffers and refined by ``n_power_iter`` steps every ``every`` training steps (the paper's
amortization). With u, v fixed, ``sigma = u^T W v`` (for a conv ``<u, conv(v)>``) is
differentiable in the weight with ``d sigma / dW = u v^T``, which is the gradient of the
true sigma_max at convergence.

Two variants of the authors' code (Pehlevan-Group/rep-spectral) are options:

* ``direct_step()``: instead of adding the penalty to the loss, take the step
  ``W <- W - lam * grad_W sigma_max(W)^2 = W - 2 lam sigma u v^T`` on every layer, lam = gamma/2,
  outside the optimizer (no learning rate, no momentum): their ResNet pretraining and fine-tuning
  (``top_eig_ub_transfer_update``, every ``reg_freq_update`` optimizer steps).
* ``activation_term=True``: their ``eig-ub`` regularizer adds, for every smooth activation phi up
  to the features, the data-dependent term ``mean_x max_j phi'(z_j)^2`` (:mod:`.activation`) to
  sum sigma^2: penalty = gamma/2 * (sum_l sigma_l^2 + sum_phi term). Their ``eig-ub-pure`` (MNIST)
  is sigma^2 alone, the default here.

BatchNorm-correct variant (``bn_aware=True``; the zoo's ``repbn`` mode, "rep-spectral-bn"): every
conv followed by a BatchNorm is measured as the map the network computes, the conv with output
channel c scaled by ``s_c = g_c / sqrt(var_c + eps)``: ``sigma_max(diag(s) W)``. In training ``var_c``
is the current batch's (biased) variance of the conv's output, differentiable as in BN's own
forward; in eval the running variance. BN is invariant to the scale of its input, so
``W -> cW`` leaves ``diag(s) W`` (and the penalty) unchanged: its gradient acts on the BN gains and
on W's direction, which change the function. The authors' definition (raw kernels, BN ignored) only
shrinks W's scale, which the next BN undoes. What it bounds: each conv+BN pair's operator norm (the
BN shift is a constant). In a residual block ``x + F(x)`` it bounds the branch, ``Lip(F) <= prod of
its folded norms``, not the identity path, so a block's bound stays ``>= 1``; in training the batch
statistics also depend on the input, a dependence this (like Lipschitz bounds of BN nets in eval)
leaves out.

Why hand-written: torch's ``parametrizations.spectral_norm`` *normalizes* weights (and
treats a conv kernel as a reshaped matrix, which is not the conv's operator norm); here we
add a penalty on the true operator norms and must leave the weights untouched.
"""
from __future__ import annotations

import warnings
from functools import partial
from typing import Mapping, TypeVar

import torch
from torch import Tensor, nn

from .activation import ActivationTerms
from .bn import BatchNormPairs, bn_scaled_weight
from .estimators import ESTIMATORS, EstimatorUnavailable
from .operator import ConvGeometry
from .power import matrix_power_iteration, sigma_from_vectors
from .select import select_layers
from .state import LayerState, state_key

DIRECT_POWER_ITERS = 10  # power steps before each direct step (the authors': up to 10, tolerance 1e-6)
GAMMA_CONVENTION = "penalty = gamma/2 * sum_l sigma_max(W_l)^2 (Yang et al. 2024, eq. 3)"
DEFAULT_GAMMA = 1e-3  # the strength of a regularizer, a zoo entrypoint and a recipe that set none
_CONVS = (nn.Conv1d, nn.Conv2d)
V = TypeVar("V")


class SpectralRegularizer(nn.Module):
    """gamma/2 * sum_l sigma_max(W_l)^2 over the selected layers of a model.

    Args:
        model: the network; hooks are attached to it (``remove()`` detaches them).
        gamma: strength in the paper's convention (penalty = gamma/2 * sum sigma^2). The
            authors' code adds ``lam * sum sigma^2``, i.e. their lam = gamma/2.
        mode: ``'rep'`` (up to the features, head excluded), ``'ll'`` (head included).
        layers: explicit list of layer names (overrides ``mode``).
        every: one power-iteration update every ``every`` training steps (1 = every step;
            the paper uses 160 for ResNet-50 on ImageNet).
        estimator: how conv layers are measured (Linear layers always use power iteration), one
            of :data:`.estimators.ESTIMATORS`: ``'power'`` (power iteration on the real operator;
            exact for zero padding), ``'fft'`` (exact sigma of the circular-padded operator
            from its DFT symbol at every update) or ``'gram'`` (a Gram-iteration upper bound on the
            layer's own operator, recomputed with autograd by every ``penalty()``).
        bn_aware: penalize the norm of BN∘conv, the BN scale folded into the kernel: the batch
            variance of the conv's output in training (differentiable), the running variance in
            eval (module docstring). Only with the penalty in the loss (not ``direct_step``).
        n_power_iter: power-iteration steps per update.
        warmup_iters: steps run the first time fresh vectors are used.
        activation_term: add the authors' ``eig-ub`` term mean_x max_j phi'(z_j)^2 of every
            smooth activation outside the classifier to sum sigma^2 (module docstring).

    A training step counts as one call of ``penalty()`` (or ``step()``) in training mode.

    Example:
        >>> reg = SpectralRegularizer(model, gamma=1e-3)      # or attach_spectral(model, ...)
        >>> loss = F.cross_entropy(model(x), y) + reg.penalty()
    """

    def __init__(self, model: nn.Module, gamma: float = DEFAULT_GAMMA, mode: str = "rep",
                 layers: list[str] | None = None, every: int = 1, estimator: str = "power",
                 bn_aware: bool = False, n_power_iter: int = 1, warmup_iters: int = 10,
                 activation_term: bool = False):
        super().__init__()
        if not gamma >= 0:
            raise ValueError(f"gamma={gamma!r} must be >= 0 (penalty = gamma/2 * sum sigma^2)")
        if not isinstance(every, int) or every < 1:
            raise ValueError(f"every={every!r} must be an integer >= 1 (1 = a power step every training step)")
        if estimator not in ESTIMATORS:
            raise ValueError(f"unknown estimator {estimator!r}; choose one of {tuple(ESTIMATORS)}")
        if n_power_iter < 1:
            raise ValueError(f"n_power_iter={n_power_iter!r} must be >= 1")
        self.gamma, self.every, self.estimator, self.bn_aware = float(gamma), every, estimator, bn_aware
        self._estimator = ESTIMATORS[estimator]
        self.n_power_iter, self.warmup_iters = n_power_iter, warmup_iters
        self.mode = "layers" if layers is not None else mode
        selected = select_layers(model, mode, layers)
        self.layer_names = list(selected)
        self.states = nn.ModuleDict({state_key(n): LayerState() for n in self.layer_names})
        self.register_buffer("num_steps", torch.zeros((), dtype=torch.long))
        self._step = 0
        # plain dicts (not submodules): the layers belong to the model, not to us
        self.__dict__["_owner"] = model
        self.__dict__["_layers"] = dict(selected)
        self._warned: set[str] = set()
        self._power_fallback: set[str] = set()  # layers the estimator cannot measure (EstimatorUnavailable)
        self._geoms: dict[str, tuple] = {}  # name -> (module, input shape, ConvGeometry): the per-step hot path
        self._hook_handles: dict[str, object] = {}
        for name, module in selected.items():
            self._bind(name, module)
        # plain attribute (no submodule: it holds hooks, not state)
        self.__dict__["bn_pairs"] = (BatchNormPairs(model, {n: m for n, m in selected.items() if isinstance(m, _CONVS)})
                                     if bn_aware else None)
        self.activation_term = activation_term
        self._activations = ActivationTerms(model) if activation_term else None

    def _state(self, name: str) -> LayerState:
        return self.states[state_key(name)]

    # ----------------------------------------------------------------------------- hooks
    def _bind(self, name: str, module: nn.Module) -> None:
        """Track ``module`` as layer ``name``: a shape-recording hook for convs, fresh vectors for Linear."""
        self._layers[name] = module
        old = self._hook_handles.pop(name, None)
        if old is not None:
            old.remove()
        state = self._state(name)
        if isinstance(module, _CONVS):
            self._hook_handles[name] = module.register_forward_pre_hook(partial(self._record_input, name))
            state.shape = None
        elif isinstance(module, nn.Linear):
            state.restart(name, (module.out_features,), (module.in_features,))

    def _active_layers(self):
        """(name, module) of the tracked layers as the model has them now.

        Layers are looked up by name so that a replaced module (``reset_classifier`` in 'll'
        mode) is picked up with fresh state; a layer replaced by something without a weight
        operator (e.g. ``nn.Identity`` for num_classes=0) drops out of the penalty.
        """
        owner = self.__dict__["_owner"]
        for name in self.layer_names:
            try:
                module = owner.get_submodule(name)
            except AttributeError:
                continue
            if module is not self._layers[name]:
                if not isinstance(module, (nn.Linear, *_CONVS)):
                    continue
                self._bind(name, module)
            yield name, module

    def _record_input(self, name: str, module: nn.Module, args) -> None:
        shape = tuple(args[0].shape[1:])
        state = self._state(name)
        if state.shape == shape:
            return
        if state.shape is not None and name not in self._warned:
            self._warned.add(name)
            warnings.warn(f"SpectralRegularizer: input of layer {name!r} changed from {state.shape} to "
                          f"{shape}; its operator norm depends on the input size, so its power-iteration "
                          "state is re-initialized", stacklevel=2)
        geom = ConvGeometry.from_module(module, shape)  # raises if the conv cannot take this input
        state.restart(name, geom.out_shape(module.weight), shape, shape)

    # ------------------------------------------------------------------------- internals
    def _weight(self, name: str) -> Tensor:
        """The layer's weight as the operator we take the norm of, in >= float32."""
        module = self._layers[name]
        weight = module.weight
        if weight.dtype not in (torch.float32, torch.float64):
            weight = weight.float()
        if self.bn_pairs is not None and isinstance(module, _CONVS):
            scale = self.bn_pairs.scale(name)
            if scale is not None:
                weight = bn_scaled_weight(weight, scale.to(weight.dtype))
        return weight

    def _geometry(self, name: str) -> ConvGeometry | None:
        module = self._layers[name]
        if not isinstance(module, _CONVS):
            return None
        state = self._state(name)
        if state.shape is None:
            raise RuntimeError(f"layer {name!r} has not seen an input yet: run a forward pass of the model "
                               "before penalty()/step(), so that each conv's input size is recorded")
        cached = self._geoms.get(name)
        if cached is None or cached[0] is not module or cached[1] != state.shape:  # built once per module/shape
            geom = self._estimator.geometry(module, state.shape)
            cached = self._geoms[name] = (module, state.shape, geom)
        return cached[2]

    @torch.no_grad()
    def _power_update(self, name: str, n_iter: int) -> None:
        state = self._state(name)
        weight = self._weight(name).detach().to(state.u.dtype)
        geom = self._geometry(name)
        if geom is None:
            sigma, u, v = matrix_power_iteration(weight, state.u, state.v, n_iter=n_iter)
        else:
            estimator = ESTIMATORS["power"] if name in self._power_fallback else self._estimator
            try:
                sigma, u, v = estimator.refresh(weight, geom, state.u, state.v, n_iter)
            except EstimatorUnavailable as err:
                warnings.warn(f"SpectralRegularizer: estimator {self.estimator!r} cannot measure layer {name!r} "
                              f"({err}); using power iteration on the same operator", stacklevel=3)
                self._power_fallback.add(name)
                return self._power_update(name, max(n_iter, self.warmup_iters))
        state.u.copy_(u)
        state.v.copy_(v)
        state.sigma.copy_(sigma)
        state.needs_warmup = False

    def _differentiable(self, name: str):
        """The estimator's own differentiable sigma for this conv layer, or None (then ``<u, A(W) v>``)."""
        if name in self._power_fallback or not isinstance(self._layers[name], _CONVS):
            return None
        return self._estimator.differentiable

    def _sigma(self, name: str) -> Tensor:
        """The layer's sigma with autograd to its weight: the estimator's own, or ``<u, A(W) v>``."""
        state = self._state(name)
        weight = self._weight(name).to(state.u.dtype)
        measure = self._differentiable(name)
        if measure is not None:
            state.needs_warmup = False
            return measure(weight, self._geometry(name))
        if state.needs_warmup:  # eval-mode use before any step: get usable vectors first
            self._power_update(name, self.warmup_iters)
        return sigma_from_vectors(weight, state.u, state.v, self._geometry(name))

    # ---------------------------------------------------------------------------- public
    @torch.no_grad()
    def step(self) -> bool:
        """Count one training step; run the amortized power update when it is due.

        Returns whether an update ran. ``penalty()`` calls this in training mode; call it
        yourself during a burn-in phase in which the penalty is not added to the loss.
        """
        return self._advance(skip_differentiable=False)

    def _advance(self, skip_differentiable: bool) -> bool:
        due = self._step % self.every == 0
        self._step += 1
        self.num_steps.add_(1)
        for name, _ in list(self._active_layers()):
            state = self._state(name)
            if skip_differentiable and self._differentiable(name) is not None:
                continue  # penalty() computes it itself, with autograd
            if state.needs_warmup:
                self._power_update(name, self.warmup_iters)
            elif due:
                self._power_update(name, self.n_power_iter)
        return due

    def refresh(self, n_iter: int = 100) -> dict[str, float]:
        """Run ``n_iter`` extra power steps on every layer (e.g. before logging or a bound)."""
        for name, _ in list(self._active_layers()):
            self._power_update(name, n_iter)
        return self.sigmas()

    def penalty(self) -> Tensor:
        """gamma/2 * sum_l sigma_l^2, differentiable, in float32 (float64 for a float64 model) under autocast.

        With ``activation_term`` the activation terms of the latest training forward are added
        inside the sum (and consumed: call once per forward)."""
        if self.training and torch.is_grad_enabled():
            self._advance(skip_differentiable=True)
        sigmas = []
        device_type = self.num_steps.device.type
        with torch.autocast(device_type=device_type, enabled=False):
            for name, _ in list(self._active_layers()):
                sigma = self._sigma(name)
                self._state(name).sigma.copy_(sigma.detach())
                sigmas.append(sigma)
        total = torch.stack(sigmas).square().sum()
        activations = self._activations.pop_sum(total.dtype) if self._activations is not None else None
        if activations is not None:
            total = total + activations
        return 0.5 * self.gamma * total

    def direct_step(self, n_iter: int = DIRECT_POWER_ITERS) -> dict[str, float]:
        """The authors' direct update: ``W <- W - lam * grad_W sigma_max(W)^2`` on every layer, lam = gamma/2.

        ``grad_W sigma^2 = 2 sigma u v^T`` at the converged singular vectors, so a Linear layer
        moves by ``-2 lam sigma u v^T`` and its sigma_max drops to ``(1 - 2 lam) sigma`` (the top
        singular direction only shrinks). Outside the optimizer: no learning rate, no momentum,
        no weight decay. ``n_iter`` power steps refresh (u, v) first; the gradient of a conv's
        sigma comes from autograd through ``sigma = <u, conv(v)>``.

        Returns:
            {layer: sigma before the step}.
        """
        if self.bn_aware:
            raise ValueError("direct_step() steps each kernel by its own sigma; with bn_aware=True the norm depends on the "
                             "batch statistics of the forward pass: add penalty() to the loss instead (apply: loss)")
        lam = 0.5 * self.gamma
        before = {}
        for name, module in list(self._active_layers()):
            if self._differentiable(name) is None:
                self._power_update(name, max(n_iter, self.warmup_iters) if self._state(name).needs_warmup
                                   else n_iter)
            with torch.enable_grad(), torch.autocast(device_type=self.num_steps.device.type, enabled=False):
                weight = module.weight
                sigma = self._sigma(name)
                grad, = torch.autograd.grad(sigma.square(), weight)
            with torch.no_grad():
                weight.sub_(lam * grad.to(weight.dtype))
            before[name] = float(sigma.detach())
        self._step += 1
        self.num_steps.add_(1)
        return before

    def sigmas(self) -> dict[str, float]:
        """Latest sigma_max estimate per layer name (for logging)."""
        return {name: float(self._state(name).sigma) for name, _ in self._active_layers()}

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "num_steps" not in state_dict:
            return  # plain timm weights: the regularizer state is optional (see LayerState)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        saved = state_dict.get(prefix + "num_steps")
        if saved is not None:
            self._step = int(saved)

    def remove(self) -> nn.Module:
        """Detach all hooks and delete ``model.spectral``; returns the plain model."""
        for handle in self._hook_handles.values():
            handle.remove()
        self._hook_handles.clear()
        if self.bn_pairs is not None:
            self.bn_pairs.remove()
        if self._activations is not None:
            self._activations.remove()
        owner = self.__dict__["_owner"]
        if getattr(owner, "spectral", None) is self:
            del owner.spectral
        return owner

    def extra_repr(self) -> str:
        return (f"gamma={self.gamma}, mode={self.mode!r}, layers={len(self.layer_names)}, every={self.every}, "
                f"estimator={self.estimator!r}, bn_aware={self.bn_aware}, activation_term={self.activation_term}")


def without_regularizer(state: Mapping[str, V], prefix: str = "") -> dict[str, V]:
    """The plain model's entries of a state dict: those under ``prefix`` (the model's key in a wrapper's
    state, removed; "" for the model's own), less the regularizer buffers ``spectral.*`` that
    :func:`attach_spectral` adds."""
    return {k[len(prefix):]: v for k, v in state.items()
            if k.startswith(prefix) and not k.startswith(prefix + "spectral.")}


def attach_spectral(model: nn.Module, **kwargs) -> SpectralRegularizer:
    """Create a SpectralRegularizer for ``model`` and store it as ``model.spectral``.

    Its buffers then live in ``model.state_dict()`` under ``spectral.*`` and follow
    ``model.to(...)``; ``model.spectral.remove()`` restores the plain model and keys.
    """
    if hasattr(model, "spectral"):
        raise ValueError(f"{type(model).__name__} already has a `spectral` attribute; call "
                         "model.spectral.remove() first")
    reg = SpectralRegularizer(model, **kwargs)
    model.spectral = reg
    return reg
