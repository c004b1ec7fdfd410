"""Datasets and loaders of a recipe: repspec_zoo.data splits with the model's timm transforms.

Images stay in [0, 1]; the model's mean/std normalization happens inside
:class:`~repspec_zoo.training.model.TrainingModule`. Besides the ``repspec_zoo.data`` sources, a
recipe can train on a toy problem of ``data.TOY_DATASETS`` (``xor``: the paper's 4-point problem,
Yang et al. 2024, App. F.1).
"""
from __future__ import annotations

import random
import warnings
import zlib

import torch
from timm.data import resolve_model_data_config
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from .. import data
from .config import ConfigError, TrainConfig

__all__ = ["ToyDataset", "EpochSeededDataset", "toy_spec", "dataset_num_classes", "data_summary",
           "model_data_config", "recipe_split", "make_loaders"]


class ToyDataset(Dataset):
    """The points of a toy problem (:class:`repspec_zoo.data.ToySpec`) as (1, 1, D) tensors with their labels.

    Not [0, 1] images: for XOR a 2-input network (``slp`` with ``img_size: [1, 2]``); the test split
    is the same points.
    """

    def __init__(self, spec: data.ToySpec):
        self.points, self.labels = torch.tensor(spec.points), spec.labels

    def __len__(self) -> int:
        return len(self.points)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.points[index].view(1, 1, -1), self.labels[index]


def toy_spec(cfg: TrainConfig) -> data.ToySpec | None:
    """The toy problem the recipe trains on, None for image data."""
    return data.TOY_DATASETS.get(cfg.dataset.name)


class EpochSeededDataset(Dataset):
    """Draws each item's random augmentation from a seed fixed by (seed, epoch, index).

    Augmentation then does not depend on which process or worker loads an item, or on how
    far the loader had prefetched when a checkpoint was taken: a resumed run and an
    uninterrupted one see the same images, and one process sees what two processes see. The
    global ``torch`` and ``random`` states are left untouched (forked around each item).
    ``set_epoch`` is called by Accelerate's prepared loader.
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed, self.epoch = dataset, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        item_seed = zlib.crc32(f"{self.seed}/{self.epoch}/{index}".encode())
        python_state = random.getstate()
        try:
            with torch.random.fork_rng(devices=[]):
                torch.default_generator.manual_seed(item_seed)  # CPU only: torch.manual_seed also queues
                random.seed(item_seed)                          # lazy CUDA/XPU seeding, ~3 ms per call
                return self.dataset[index]
        finally:
            random.setstate(python_state)


def dataset_num_classes(cfg: TrainConfig) -> int:
    """Number of classes of the configured dataset (no download for registry names)."""
    toy = toy_spec(cfg)
    return toy.num_classes if toy else data.dataset_info(cfg.dataset.name, cfg.dataset.data_dir).num_classes


def data_summary(cfg: TrainConfig, train: Dataset, test: Dataset) -> str:
    """The log line that names where the run's data came from and the split sizes used.

    Warns when ``dataset.train_limit`` / ``test_limit`` exceeds its split (the whole split is used).
    """
    toy = toy_spec(cfg)  # else 'idx:DIR', 'imagefolder:DIR', 'parquet:DIR', 'sklearn:load_digits' or 'hub:ORG/NAME'
    source = toy.description if toy else data.describe_source(cfg.dataset.name, cfg.dataset.data_dir)
    for split, dataset, limit in (("train", train, cfg.dataset.train_limit), ("test", test, cfg.dataset.test_limit)):
        if limit is not None and limit > len(dataset):
            warnings.warn(f"dataset.{split}_limit={limit} is larger than the {split} split of {source} "
                          f"({len(dataset)} images): using all {len(dataset)}", stacklevel=2)
    return f"data: {cfg.dataset.name} from {source}: train {len(train)} images, test {len(test)}"


def model_data_config(model: nn.Module, cfg: TrainConfig) -> dict:
    """The model's timm data config with ``dataset.img_size`` (when set) as the input side."""
    config = resolve_model_data_config(model)
    if cfg.dataset.img_size is not None:
        config["input_size"] = (config["input_size"][0], cfg.dataset.img_size, cfg.dataset.img_size)
    return config


def recipe_split(cfg: TrainConfig, model: nn.Module, split: str) -> Dataset:
    """One split (``'train'`` or ``'test'``) of ``(image in [0, 1], label)`` shaped for ``model``.

    Training images get the random augmentation when ``dataset.augment`` is on, seeded per
    item by :class:`EpochSeededDataset`; test images the deterministic eval transform. A split
    held in memory as an array (the embedded datasets) and not augmented is transformed once
    into a TensorDataset: the items are the same, and loading a Fashion-MNIST epoch at batch 1024
    takes 0.4 s instead of 4.2 s (one thread; the per-item transform is about as slow as the slp's
    training step itself).
    """
    d, toy = cfg.dataset, toy_spec(cfg)
    if toy:
        return ToyDataset(toy)
    train = split == "train"
    spec = data.DATASETS.get(d.name)
    dataset = data.load_split(d.name, split, data_dir=d.data_dir, limit=d.train_limit if train else d.test_limit,
                              seed=cfg.seed)
    dataset.transform = data.make_transform(model_data_config(model, cfg), train=train and d.augment,
                                            hflip=spec.hflip if spec else True)
    if train and d.augment:
        return EpochSeededDataset(dataset, cfg.seed)
    if isinstance(dataset, data.ArrayImageDataset):
        return TensorDataset(*data.as_tensors(dataset))
    return dataset


def make_loaders(cfg: TrainConfig, train: Dataset, test: Dataset, num_processes: int) -> tuple[DataLoader, DataLoader]:
    """Unprepared loaders of global micro-batches; ``accelerator.prepare`` splits each across processes.

    Training drops the last incomplete batch (every optimizer step sees ``batch_size`` images);
    shuffling is re-seeded per epoch by Accelerate's seedable sampler. Workers are not
    persistent, so each epoch's workers see the epoch of :class:`EpochSeededDataset`.
    """
    micro = cfg.micro_batch_size
    if micro % num_processes:
        raise ConfigError(f"batch_size / grad_accum_steps = {micro} images per forward pass cannot be split evenly over "
                          f"{num_processes} processes; choose batch_size as a multiple of "
                          f"{num_processes * cfg.grad_accum_steps}")
    if len(train) < micro:
        raise ConfigError(f"the training split has {len(train)} images but one forward pass needs "
                          f"batch_size / grad_accum_steps = {micro}; lower batch_size or raise dataset.train_limit")
    workers = cfg.dataset.num_workers
    train_loader = DataLoader(train, batch_size=micro, shuffle=True, drop_last=True, num_workers=workers,
                              generator=torch.Generator().manual_seed(cfg.seed))
    test_loader = DataLoader(test, batch_size=micro, shuffle=False, num_workers=workers)
    return train_loader, test_loader
