"""The self-supervised step in the recipes' Accelerate loop, its data and its end-of-run probe.

:class:`SSLTrainer` is the :class:`~repspec_zoo.training.loop.Trainer` (epochs, accumulation,
checkpoints, resume, metrics, the regularizer's schedule, the step's skeleton) with another loss and
another monitor:

* step: ``loss = ssl_loss(z1, z2) + penalty``, the projections of two views of each image
  (``ssl.method``: :func:`.losses.nt_xent` or :func:`.losses.barlow_twins`), the penalty the
  regularizer's (rep/ll, on from ``regularizer.burn_in_epochs``). Over several processes each
  gathers every process's projections with a differentiable all-gather, so the loss is the one
  of the global batch (SimCLR's negatives from every device, Barlow Twins' C over the global batch).
* metrics.jsonl: ``train_loss`` is the SSL loss, ``train_acc`` the fraction of images whose own
  second view is the most similar of the batch's second views (:func:`.losses.view_matches`),
  ``test_acc`` the leave-one-out k-NN accuracy (k = 20, cosine, majority vote) of the backbone's
  features within the test split: a label-using monitor that needs no fitted head.

The run's ``model.safetensors`` is the backbone alone (timm, ``num_classes: 0``); ``eval.json``
evaluates backbone + a linear probe fitted on the training split (:mod:`repspec_zoo.evaluation.linear_probe`).
"""
from __future__ import annotations

import dataclasses
import os

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from .. import data
from ..training.loaders import EpochSeededDataset, model_data_config, recipe_split
from ..training.loop import Trainer
from ..training.report import write_quick_eval
from .augment import TwoViews, simclr_augmentation
from .losses import barlow_twins, nt_xent, view_matches

__all__ = ["SSLTrainer", "ssl_train_split", "ssl_loss", "knn_accuracy", "probe_eval"]

KNN_K = 20


def ssl_loss(ssl_cfg):
    """The configured objective as a function of (z1, z2)."""
    if ssl_cfg.method == "simclr":
        return lambda z1, z2: nt_xent(z1, z2, ssl_cfg.temperature)
    return lambda z1, z2: barlow_twins(z1, z2, ssl_cfg.lambd)


def ssl_train_split(cfg, network) -> Dataset:
    """The training split as (two SimCLR views, label) items, seeded per (seed, epoch, image)."""
    d = cfg.dataset
    spec = data.DATASETS.get(d.name)
    config = model_data_config(network, cfg)
    dataset = data.load_split(d.name, "train", data_dir=d.data_dir, limit=d.train_limit, seed=cfg.seed)
    augmentation = simclr_augmentation(config["input_size"], cfg.ssl.crop_scale_min, cfg.ssl.color_strength,
                                       hflip=spec.hflip if spec else True)
    views = TwoViews.of_split(dataset, data.make_transform(config, train=False), augmentation)
    return EpochSeededDataset(views, cfg.seed)


def _all_gather(z: torch.Tensor, accelerator) -> torch.Tensor:
    """Every process's rows in process order, differentiable (the backward sums each slice's gradients)."""
    if accelerator.num_processes == 1:
        return z
    import torch.distributed.nn

    return torch.cat(torch.distributed.nn.all_gather(z))


def knn_accuracy(features: torch.Tensor, labels: torch.Tensor, k: int = KNN_K) -> float:
    """Leave-one-out k-NN accuracy (cosine similarity, majority vote, ties to the lower class)."""
    k = min(k, len(labels) - 1)
    if k < 1:
        return 0.0
    u = F.normalize(features.double(), dim=1)
    similarity = (u @ u.T).fill_diagonal_(-torch.inf)
    neighbours = labels[similarity.topk(k, dim=1).indices]  # (N, k)
    votes = F.one_hot(neighbours, int(labels.max()) + 1).sum(1)
    return float((votes.argmax(1) == labels).double().mean())


class SSLTrainer(Trainer):
    """The recipe loop with the self-supervised step (see the module docstring)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.objective = ssl_loss(self.cfg.ssl)

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> tuple:
        """The forward of a micro-batch of views (B, 2, C, H, W): (SSL loss, this process's view matches,
        no logits, no features); the regularizer (none/rep/ll) needs neither."""
        z1, z2 = self.net(x)
        z1, z2 = _all_gather(z1, self.accelerator), _all_gather(z2, self.accelerator)
        loss = self.objective(z1, z2)
        n = len(y)  # this process's images (its rows of the global batch): the sums over processes count each once
        own = slice(self.accelerator.process_index * n, (self.accelerator.process_index + 1) * n)
        return loss, view_matches(z1.detach(), z2.detach())[own].sum().to(loss.dtype), None, None

    @torch.no_grad()
    def evaluate(self) -> float:
        """Leave-one-out k-NN accuracy of the backbone's features on the test split (all processes')."""
        self.net.eval()
        features, labels = [], []
        for x, y in self.test_loader:
            f, y = self.accelerator.gather_for_metrics((self.plain.features(x), y))
            features.append(f.float().cpu())
            labels.append(y.cpu())
        self.net.train()
        return knn_accuracy(torch.cat(features), torch.cat(labels))


def probe_eval(backbone, cfg, run_dir: str | os.PathLike) -> dict:
    """``RUN_DIR/eval.json`` of a self-supervised run: backbone + a logistic-regression probe fitted on the
    training split (``dataset.train_limit`` images, eval transform), evaluated as the recipes' quick
    evaluation (test accuracy, ``eval.attack`` on ``eval.n`` images at ``eval.budget``)."""
    from ..evaluation.linear_probe import fit_probe

    plain = dataclasses.replace(cfg, dataset=dataclasses.replace(cfg.dataset, augment=False))
    probe = fit_probe(backbone, recipe_split(plain, backbone, "train"), batch_size=cfg.micro_batch_size)
    return write_quick_eval(probe.model, recipe_split(plain, backbone, "test"), cfg, run_dir,
                            f"{cfg.model} + linear probe", probe=probe.info())
