"""The public entry points: a split as a torch Dataset, what a dataset is, tensors and loaders."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from .image_datasets import ImageClassificationDataset
from .sources import DatasetUnavailableError, Source, describe, open_split, resolve, split_map
from .splits import SPLIT_CANDIDATES, SPLITS
from .transforms import make_transform


@dataclass(frozen=True)
class DatasetInfo:
    """What a dataset is, as far as it is known without downloading it."""

    name: str  # registry name, path or Hub id, as given
    source: str  # 'idx:DIR', 'sklearn:load_digits', 'hub:ORG/NAME', 'imagefolder:DIR' or 'parquet:DIR'
    num_classes: int  # number of classes
    channels: int  # native channels: 1 grayscale, 3 RGB
    image_size: int  # native side in pixels (local data: shorter side of the first image)
    class_names: tuple[str, ...] | None  # index -> name; None when only the Hub knows them
    split_sizes: Mapping[str, int]  # images per split; empty for a registry dataset read from the Hub


def _native_shape(source: Source, dataset: ImageClassificationDataset) -> tuple[int, int]:
    """(channels, side in pixels): the registry's when the name is known, else the first image's."""
    return (source.spec.channels, source.spec.image_size) if source.spec else dataset.native_shape()


def _stratified_indices(labels: np.ndarray, limit: int, seed: int) -> np.ndarray:
    """Sorted indices of a seeded subset of ``limit`` items whose class mix follows ``labels``.

    Each class contributes about limit * n_class / N items (at least one per class while
    limit >= number of classes); the same (labels, limit, seed) always give the same subset.
    """
    order = np.random.default_rng(seed).permutation(len(labels))
    position = np.empty(len(labels))  # within-class quantile of each shuffled item
    for cls in np.unique(labels):
        members = np.flatnonzero(labels[order] == cls)
        position[members] = (np.arange(len(members)) + 0.5) / len(members)
    return np.sort(order[np.argsort(position, kind="stable")[:limit]])


def load_split(name_or_path: str | os.PathLike, split: str = "train", data_dir: str | os.PathLike | None = None,
               image_size: int | None = None, channels: int | None = None, train_transform: bool = False,
               limit: int | None = None, seed: int = 0) -> ImageClassificationDataset:
    """One split of a dataset as a torch Dataset of ``(float32 (C, H, W) in [0, 1], int label)``.

    Args:
        name_or_path: a registry name (``DATASETS``), a local directory (``PATH`` or
            ``local-dir:PATH``) or a Hub dataset id (``org/name`` or ``hf-hub:org/name``).
        split: ``'train'`` or ``'test'`` (the held-out labelled split: test, else validation).
        data_dir: read this local directory instead (image folder, parquet or IDX files); a registry
            name then only supplies column names, native size and class names.
        image_size: output side H = W in pixels; None keeps the native size (registry value, or the
            shorter side of the first image for unregistered data).
        channels: 1 or 3; None keeps the native channels. See :func:`make_transform`.
        train_transform: random training augmentation instead of the deterministic eval transform.
        limit: keep a seeded, class-stratified subset of at most this many items (CPU-scale runs).
        seed: seed of that subset.

    Raises:
        ValueError: unknown name or bad split (the message lists the accepted forms).
        FileNotFoundError: a local directory that does not exist.
        DatasetUnavailableError: a Hub dataset that cannot be read (e.g. offline and not cached).
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r} ('test' reads the held-out labelled "
                         f"split: test, else validation)")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be a positive number of items or None (all), got {limit}")
    source = resolve(name_or_path, data_dir)
    available = split_map(source)
    if split not in available:
        raise DatasetUnavailableError(f"{source.name} has no {split} split (looked for "
                                      f"{' or '.join(SPLIT_CANDIDATES[split])}; it has {', '.join(available)}). "
                                      f"Add a {split}/ folder or file, or ask for another split.")
    dataset = open_split(source, available[split])
    if limit is not None and limit < len(dataset):
        dataset = dataset.subset(_stratified_indices(dataset.labels, limit, seed))
    native_channels, native_size = _native_shape(source, dataset)
    size = image_size or native_size
    dataset.transform = make_transform({"input_size": (channels or native_channels, size, size)},
                                       train=train_transform, hflip=source.spec.hflip if source.spec else True)
    return dataset


def describe_source(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> str:
    """Where :func:`load_split` reads a dataset from, without reading it: 'idx:DIR', 'imagefolder:DIR',
    'parquet:DIR', 'sklearn:load_digits' or 'hub:ORG/NAME' (same arguments as :func:`load_split`)."""
    return describe(resolve(name_or_path, data_dir))


def dataset_info(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
    """Classes, native shape and split sizes of a dataset (same arguments as :func:`load_split`).

    A registry dataset that would come from the Hub is described from the registry alone (no network,
    ``split_sizes`` empty). Embedded and local data are read (cheap); a Hub id outside the registry
    is downloaded, as :func:`load_split` would.
    """
    source = resolve(name_or_path, data_dir)
    spec = source.spec
    if spec is not None and source.local_dir is None and source.hub_id is not None:
        return DatasetInfo(source.name, f"hub:{source.hub_id}", spec.num_classes, spec.channels, spec.image_size,
                           spec.class_names, {})
    opened = {split: open_split(source, theirs) for split, theirs in split_map(source).items()}
    first = next(iter(opened.values()))
    channels, size = _native_shape(source, first)
    return DatasetInfo(source.name, describe(source), len(first.class_names), channels, size, first.class_names,
                       {split: len(dataset) for split, dataset in opened.items()})


def as_tensors(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the first ``limit`` items (all when None) of a small dataset: X (N, C, H, W), Y int64 (N,)."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise ValueError("as_tensors: the dataset is empty (or limit is 0); nothing to stack")
    first, label = dataset[0]
    # filled in place: a list of per-item tensors, then a stacked copy, would hold the split twice
    # and leave the allocator fragmented (+50 MB resident for Fashion-MNIST's test split)
    x = torch.empty((count, *first.shape), dtype=first.dtype)
    y = torch.empty(count, dtype=torch.int64)
    x[0], y[0] = first, label
    for i in range(1, count):
        x[i], y[i] = dataset[i]
    return x, y


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader whose shuffling depends only on ``seed`` (its own torch.Generator).

    Random augmentations draw from torch's global RNG in the main process (seed it, e.g. with
    ``accelerate.utils.set_seed``) or, with ``num_workers > 0``, from worker seeds derived from ``seed``.
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)
