"""SimCLR's two augmented views per image, from ``torchvision.transforms.v2``.

The augmentation of Chen et al. 2020 (SimCLR, App. A), applied to an image already brought to
the model's input size and to [0, 1] (the deterministic eval transform):

* random resized crop to the input size, area scale in (``ssl.crop_scale_min``, 1), aspect 3/4..4/3;
* horizontal flip with p 0.5 (where the dataset allows flips);
* colour jitter with p 0.8: brightness, contrast, saturation 0.8 s and hue 0.2 s (s =
  ``ssl.color_strength``); on 1-channel images only brightness and contrast exist;
* grayscale with p 0.2 (3-channel images only);
* Gaussian blur with p 0.5, kernel ~10% of the side, sigma in (0.1, 2), at ImageNet scale only
  (sides above 64 px; the paper leaves blur out for CIFAR-10).

v2 transforms draw one parameter set per call, so every view is augmented per image inside the
dataset, where :class:`~repspec_zoo.training.loaders.EpochSeededDataset` seeds it by (seed, epoch,
index): a resumed run sees the same views as an uninterrupted one.
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset, TensorDataset
from torchvision.transforms import v2

from .. import data
from ..data.transforms import SMALL_IMAGE_MAX

__all__ = ["simclr_augmentation", "TwoViews"]


def simclr_augmentation(input_size: Sequence[int], crop_scale_min: float = 0.08, color_strength: float = 1.0,
                        hflip: bool = True) -> Callable[[torch.Tensor], torch.Tensor]:
    """The SimCLR augmentation of a float image (C, H, W) in [0, 1] at the model's ``input_size``."""
    channels, height, width = (int(v) for v in input_size)
    s = color_strength
    jitter = (v2.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s) if channels == 3
              else v2.ColorJitter(brightness=0.8 * s, contrast=0.8 * s))
    steps = [v2.RandomResizedCrop((height, width), scale=(crop_scale_min, 1.0), antialias=True)]
    steps += [v2.RandomHorizontalFlip()] if hflip else []
    steps += [v2.RandomApply([jitter], p=0.8)]
    steps += [v2.RandomGrayscale(p=0.2)] if channels == 3 else []
    if max(height, width) > SMALL_IMAGE_MAX:
        kernel = 2 * (height // 20) + 1  # odd, ~10% of the side
        steps += [v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5)]
    return v2.Compose([*steps, _Clamp()])


class _Clamp:
    """Back into [0, 1] (antialiased resizing overshoots); a class so that loader workers can pickle it."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return image.clamp(0.0, 1.0)


class TwoViews(Dataset):
    """(two views (2, C, H, W), label) of each image of ``base`` ((image in [0, 1], label) items)."""

    def __init__(self, base: Dataset, augmentation: Callable[[torch.Tensor], torch.Tensor]):
        self.base, self.augmentation = base, augmentation

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        image, label = self.base[index]
        return torch.stack([self.augmentation(image), self.augmentation(image)]), label

    @classmethod
    def of_split(cls, dataset: data.ImageClassificationDataset, eval_transform: Callable,
                 augmentation: Callable) -> "TwoViews":
        """Views of a loaded split: images brought to the input size once when the split is an
        in-memory array (the embedded datasets), else per item."""
        dataset.transform = eval_transform
        if isinstance(dataset, data.ArrayImageDataset):
            return cls(TensorDataset(*data.as_tensors(dataset)), augmentation)
        return cls(dataset, augmentation)
