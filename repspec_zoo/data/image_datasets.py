"""The torch Datasets every source becomes: items ``(transform(raw image), int label)``.

:class:`ArrayImageDataset` holds grayscale arrays in memory (IDX files, sklearn digits);
:class:`HFImageDataset` wraps a Hugging Face ``datasets.Dataset`` (Hub, image folders, parquet).
"""
from __future__ import annotations

import abc
import functools
from typing import TYPE_CHECKING, Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

if TYPE_CHECKING:
    import datasets


class ImageClassificationDataset(Dataset, abc.ABC):
    """Items ``(transform(image), label)``. ``transform`` is public: replace it to change preprocessing.

    Attributes:
        class_names: index -> class name.
        transform: callable on the raw image (see subclasses); None returns the raw image.
    """

    class_names: tuple[str, ...]
    transform: Callable | None

    @property
    @abc.abstractmethod
    def labels(self) -> np.ndarray:
        """All labels, int64 (N,), without decoding images."""

    @abc.abstractmethod
    def subset(self, indices: Sequence[int]) -> ImageClassificationDataset:
        """A dataset of the items at ``indices`` (same class names and transform)."""

    @abc.abstractmethod
    def native_shape(self) -> tuple[int, int]:
        """(channels, shorter side in pixels) of the first raw image."""


class ArrayImageDataset(ImageClassificationDataset):
    """Grayscale images held in memory: uint8 (N, H, W) with values 0..max_value.

    The raw image is a float32 tensor (1, H, W) = pixels / max_value, so digits' 0..16 map exactly to
    multiples of 1/16.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, max_value: int, class_names: Sequence[str],
                 transform: Callable | None = None):
        if images.ndim != 3 or images.dtype != np.uint8 or len(images) != len(labels):
            raise ValueError(f"expected uint8 images (N, H, W) and labels (N,), got {images.dtype} "
                             f"{images.shape} and {labels.shape}")
        self.images, self._labels, self.max_value = images, np.asarray(labels, dtype=np.int64), max_value
        self.class_names, self.transform = tuple(class_names), transform

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image = torch.tensor(self.images[index], dtype=torch.float32).div_(self.max_value).unsqueeze_(0)
        return (image if self.transform is None else self.transform(image)), int(self._labels[index])

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def subset(self, indices: Sequence[int]) -> ArrayImageDataset:
        return ArrayImageDataset(self.images[indices], self._labels[indices], self.max_value, self.class_names,
                                 self.transform)

    def native_shape(self) -> tuple[int, int]:
        return 1, min(self.images.shape[1:])


class HFImageDataset(ImageClassificationDataset):
    """A Hugging Face ``datasets.Dataset`` with an image column and an integer label column.

    The raw image is the decoded PIL image; images are decoded on access, one item at a time.
    """

    def __init__(self, hf_dataset: datasets.Dataset, image_column: str, label_column: str,
                 class_names: Sequence[str], transform: Callable | None = None):
        self.hf_dataset = hf_dataset.select_columns([image_column, label_column])
        self.image_column, self.label_column = image_column, label_column
        self.class_names, self.transform = tuple(class_names), transform

    def __len__(self) -> int:
        return len(self.hf_dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        row = self.hf_dataset[int(index)]
        image = row[self.image_column]
        return (image if self.transform is None else self.transform(image)), int(row[self.label_column])

    @functools.cached_property
    def labels(self) -> np.ndarray:
        return np.asarray(self.hf_dataset[self.label_column], dtype=np.int64)

    def subset(self, indices: Sequence[int]) -> HFImageDataset:
        return HFImageDataset(self.hf_dataset.select(indices), self.image_column, self.label_column,
                              self.class_names, self.transform)

    def native_shape(self) -> tuple[int, int]:
        image = self.hf_dataset[0][self.image_column]
        return (1 if image.getbands()[0] in ("1", "L", "I", "F") else 3), min(image.size)
