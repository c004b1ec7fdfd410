"""Linear-probe evaluation of a frozen backbone: fit a linear head on its features, then evaluate.

The self-supervised setting of the rep-spectral paper (Yang et al. 2024, arXiv 2405.17181): the
backbone is trained without labels, its head discarded; it is judged by a linear classifier fitted
on its frozen pre-logit features phi(x) (timm's ``forward_head(forward_features(x),
pre_logits=True)``), and the robustness of backbone + probe is what the attacks measure.

Two fits of the head ``logits = W phi(x) + b``:

* ``'logistic'`` (the paper's): scikit-learn's multinomial ``LogisticRegression`` (L-BFGS, L2
  penalty 1/(2C) ||W||^2 on features standardized to zero mean and unit variance), the
  standardization folded back into W and b. Holds all features in memory.
* ``'linear'`` (large sets): a torch ``nn.Linear`` trained by Adam on minibatches of the cached,
  standardized features with cross-entropy + weight decay 1/(C n) (the same objective per image).

:func:`fit_probe` returns a :class:`~repspec_zoo.models.normalize.NormalizedModel` around a copy of the
backbone whose timm classifier (``reset_classifier`` + ``get_classifier()``) holds the fitted
head: a plain timm classifier that :func:`repspec_zoo.evaluation.evaluate.evaluate` takes as any other model.

Example::

    backbone = repspec_zoo.loader.load_model("runs/ssl")            # headless (num_classes=0) or not
    probe = fit_probe(backbone, train_split)                         # (X, Y) tensors or a Dataset
    result = evaluate(probe.model, test_split, attack="ta")          # clean accuracy + attacks
"""
from __future__ import annotations

import copy
import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from ..models.normalize import NormalizedModel
from ..attacks.oracle import EVAL_BATCH_SIZE
from ..errors import UserError

__all__ = ["ProbeError", "Probe", "PROBE_METHODS", "extract_features", "fit_probe"]

PROBE_METHODS = ("logistic", "linear")


class ProbeError(UserError, ValueError):
    """A backbone or training split a linear probe cannot be fitted on."""


@dataclass
class Probe:
    """A fitted linear probe: ``model`` (backbone + head, images in [0,1] -> logits) and how it was fitted."""

    model: NormalizedModel
    method: str
    C: float
    n_train: int
    train_acc: float  # fraction of the probe's training images it classifies correctly

    def info(self) -> dict:
        return dict(method=self.method, C=self.C, n_train=self.n_train, train_acc=self.train_acc)


def _batches(data, batch_size: int):
    if isinstance(data, tuple):
        x, y = data
        return ((x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size))
    if isinstance(data, Dataset):
        return DataLoader(data, batch_size=batch_size, shuffle=False)
    raise ProbeError(f"probe data must be a (images, labels) tuple of tensors or a torch Dataset, got {type(data).__name__}")


@torch.no_grad()
def extract_features(backbone: NormalizedModel, data, batch_size: int = EVAL_BATCH_SIZE) -> tuple[Tensor, Tensor]:
    """(features (N, D) float64 on CPU, labels (N,)) of images in [0,1], the backbone in eval mode."""
    device = next(backbone.parameters()).device
    modes = [(module, module.training) for module in backbone.modules()]  # restored as found, module by module
    backbone.eval()
    feats, labels = [], []
    try:
        for x, y in _batches(data, batch_size):
            feats.append(backbone.features(x.to(device)).double().cpu())
            labels.append(torch.as_tensor(y))
    finally:
        for module, training in modes:
            module.training = training
    return torch.cat(feats), torch.cat(labels)


def _standardize(features: Tensor) -> tuple[Tensor, Tensor]:
    """Per-feature mean and std (a constant feature gets std 1, so it stays 0)."""
    mean, std = features.mean(0), features.std(0, correction=0)
    return mean, torch.where(std > 1e-12, std, torch.ones_like(std))


def _fit_logistic(z: Tensor, y: Tensor, C: float, max_iter: int) -> tuple[Tensor, Tensor]:
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.linear_model import LogisticRegression

    clf = LogisticRegression(C=C, max_iter=max_iter)
    with warnings.catch_warnings():  # the fit is used as it stands after max_iter, as in the paper's protocol
        warnings.simplefilter("ignore", ConvergenceWarning)
        clf.fit(z.numpy(), y.numpy())
    classes = clf.classes_
    weight, bias = torch.zeros(int(y.max()) + 1, z.shape[1], dtype=torch.float64), torch.full((int(y.max()) + 1,), -1e4,
                                                                                             dtype=torch.float64)
    if len(classes) == 2:  # sklearn keeps one row for two classes: logit difference w^T z + b for class 1
        coef = np.concatenate([-clf.coef_ / 2, clf.coef_ / 2])
        intercept = np.array([-clf.intercept_[0] / 2, clf.intercept_[0] / 2])
    else:
        coef, intercept = clf.coef_, clf.intercept_
    weight[classes] = torch.from_numpy(coef)
    bias[classes] = torch.from_numpy(intercept)  # a class absent from the training split is never predicted
    return weight, bias


def _fit_linear(z: Tensor, y: Tensor, C: float, epochs: int, batch_size: int, seed: int) -> tuple[Tensor, Tensor]:
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(z.shape[1], int(y.max()) + 1).double()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-2)
    decay = 1.0 / (C * len(y))  # sklearn's objective ||W||^2 / 2 + C * sum CE, divided by C * n
    for _ in range(epochs):
        for index in torch.randperm(len(y), generator=generator).split(batch_size):
            loss = nn.functional.cross_entropy(head(z[index]), y[index]) + decay / 2 * head.weight.square().sum()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    return head.weight.detach(), head.bias.detach()


def fit_probe(backbone: nn.Module, train, *, method: str = "logistic", C: float = 1.0, max_iter: int = 1000,
              epochs: int = 30, batch_size: int = 256, seed: int = 0) -> Probe:
    """Fit a linear head on the frozen features of ``backbone`` and return backbone + head.

    Args:
        backbone: a timm model (with or without a head; its own head is replaced) or a
            NormalizedModel around one; without normalization the timm pretrained cfg's mean/std apply.
        train: the probe's training images in [0,1] and labels: (X, Y) tensors or a Dataset.
        method: 'logistic' (sklearn, the paper's) or 'linear' (Adam on minibatches, for large sets).
        C: inverse L2 strength of both fits (sklearn's C).
        max_iter: 'logistic': L-BFGS iterations. epochs, batch_size, seed: 'linear' only.

    Returns:
        A :class:`Probe`; ``probe.model`` maps images in [0,1] to logits over max(label) + 1 classes.
    """
    if method not in PROBE_METHODS:
        raise ProbeError(f"probe method {method!r} is unknown; choose one of {', '.join(PROBE_METHODS)}")
    if not C > 0:
        raise ProbeError(f"probe C={C!r} must be > 0 (the inverse L2 strength of the linear head)")
    wrapped = backbone if isinstance(backbone, NormalizedModel) else NormalizedModel(backbone)
    features, labels = extract_features(wrapped, train, batch_size)
    if not torch.isfinite(features).all():
        raise ProbeError(f"{type(wrapped.model).__name__} gives non-finite features on the probe's training images "
                         "(NaN or inf weights or BatchNorm statistics, e.g. a diverged run); train it again with a lower "
                         "lr or in float32 (mixed_precision: \"no\")")
    if len(labels.unique()) < 2:
        raise ProbeError(f"the probe's training split has {len(labels.unique())} class(es); a linear probe needs "
                         "labelled images of at least two classes")
    labels = labels.long()
    mean, std = _standardize(features)
    z = (features - mean) / std
    if method == "logistic":
        weight, bias = _fit_logistic(z, labels, C, max_iter)
    else:
        weight, bias = _fit_linear(z, labels, C, epochs, batch_size, seed)
    # W (phi - mean) / std + b  =  (W / std) phi + (b - W mean / std)
    weight_phi, bias_phi = weight / std, bias - (weight / std) @ mean
    model = copy.deepcopy(wrapped)
    net = model.model
    net.reset_classifier(len(bias_phi))
    head = net.get_classifier()
    if not isinstance(head, nn.Linear) or head.in_features != features.shape[1]:
        raise ProbeError(f"{type(net).__name__}.reset_classifier() does not give one nn.Linear on the "
                         f"{features.shape[1]} pre-logit features; the linear probe needs a timm model whose "
                         "classifier is a single Linear layer")
    device = next(net.parameters()).device
    with torch.no_grad():
        head.weight.copy_(weight_phi.float())
        head.bias.copy_(bias_phi.float())
    scale = float(getattr(net, "logit_scale", 1.0))  # slp's scale_logits multiplies the head's output
    if scale != 1.0:
        with torch.no_grad():
            head.weight.div_(scale)
            head.bias.div_(scale)
    model = model.to(device).eval()
    train_acc = float(((z @ weight.T + bias).argmax(1) == labels).double().mean())
    return Probe(model, method, C, len(labels), train_acc)
