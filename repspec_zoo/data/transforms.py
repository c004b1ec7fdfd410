"""Preprocessing to a float32 tensor (C, H, W) in [0, 1]: timm's transforms without normalization."""
from __future__ import annotations

import math
from typing import Callable, Mapping

import torch
from PIL import Image
from timm.data import create_transform
from timm.data.transforms import str_to_interp_mode
from torchvision.transforms import v2

SMALL_IMAGE_MAX = 64  # target sides <= this get CIFAR-style augmentation, larger get timm's ImageNet one
_LUMA = (0.299, 0.587, 0.114)  # RGB -> grayscale weights, ITU-R 601-2 (as PIL's convert('L'))


class _ToChannels:
    """Give an image ``channels`` channels (1 or 3); takes a PIL image or a float tensor (C, H, W)."""

    def __init__(self, channels: int):
        self.channels = channels

    def __call__(self, image: Image.Image | torch.Tensor) -> Image.Image | torch.Tensor:
        if isinstance(image, Image.Image):
            mode = "L" if self.channels == 1 else "RGB"
            return image if image.mode == mode else image.convert(mode)
        have = image.shape[-3]
        if have == self.channels:
            return image
        if (have, self.channels) == (1, 3):
            return image.repeat(3, 1, 1)
        if (have, self.channels) == (3, 1):
            return (image * image.new_tensor(_LUMA).view(3, 1, 1)).sum(-3, keepdim=True)
        raise ValueError(f"cannot convert a {have}-channel tensor image to {self.channels} channels")


class _ToUnitFloat:
    """Tensor image -> plain float32 tensor in [0, 1]: uint8 / 255; floats clamped (bicubic overshoots)."""

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        image = image.as_subclass(torch.Tensor)
        if image.dtype == torch.uint8:
            return image.float().div_(255)
        if not image.is_floating_point():
            raise TypeError(f"expected a uint8 or float image tensor, got {image.dtype}")
        return image.float().clamp_(0.0, 1.0)


def make_transform(data_config: Mapping, train: bool = False, hflip: bool = True) -> Callable:
    """Preprocessing to a float32 tensor (C, H, W) in [0, 1]: timm's, without normalization.

    Args:
        data_config: a timm data config, e.g. ``timm.data.resolve_data_config(model=model)``, or just
            ``{"input_size": (C, H, W)}``. Reads ``input_size`` and, when present, ``interpolation``
            (default bilinear), ``crop_pct`` (default 1.0 for small targets, timm's 0.875 for larger
            ones) and ``crop_mode``. ``mean``/``std`` are ignored: normalization lives in the model.
        train: random augmentation for training; otherwise deterministic resize + center crop.
        hflip: allow random horizontal flips when training (False where a flip changes the class).

    Returns:
        A callable taking a PIL image (any mode) or a float tensor (C', H', W') in [0, 1].

    Channels: the output has C channels whatever the input. Grayscale is repeated to 3 channels when
    the model expects RGB (e.g. an ImageNet backbone on Fashion-MNIST); RGB becomes 1-channel luma
    0.299 R + 0.587 G + 0.114 B (PIL's ``convert('L')``) when the model expects grayscale; alpha is
    dropped.

    Targets with max(H, W) <= ``SMALL_IMAGE_MAX`` (MNIST/CIFAR scale): resize the shorter side to
    H / crop_pct and center crop (H, W); for training then a random (H, W) crop of the image
    zero-padded by max(1, min(H, W) // 8) pixels (4 at 32 px) and a random horizontal flip.
    Larger targets (ImageNet scale): ``timm.data.create_transform(..., normalize=False)``, i.e.
    resize + center crop for eval, RandomResizedCrop + flip + color jitter 0.4 for training.

    To give a loaded split a model's exact preprocessing::

        ds.transform = make_transform(timm.data.resolve_data_config(model=model), train=True)
    """
    channels, height, width = (int(v) for v in data_config["input_size"])
    if channels not in (1, 3):
        raise ValueError(f"input_size {tuple(data_config['input_size'])}: channels must be 1 or 3")
    interpolation = data_config.get("interpolation") or "bilinear"
    if max(height, width) > SMALL_IMAGE_MAX:
        timm_transform = create_transform(
            input_size=(channels, height, width), is_training=train, interpolation=interpolation,
            crop_pct=data_config.get("crop_pct"), crop_mode=data_config.get("crop_mode"),
            hflip=0.5 if hflip else 0.0, normalize=False)
        return v2.Compose([_ToChannels(channels), timm_transform, _ToUnitFloat()])
    crop_pct = data_config.get("crop_pct") or 1.0
    scale = (math.floor(height / crop_pct), math.floor(width / crop_pct))
    steps = [
        _ToChannels(channels), v2.ToImage(), v2.ToDtype(torch.float32, scale=True),
        v2.Resize(scale[0] if height == width else scale, interpolation=str_to_interp_mode(interpolation)),
        v2.CenterCrop((height, width)),
    ]
    if train:
        steps.append(v2.RandomCrop((height, width), padding=max(1, min(height, width) // 8)))
        if hflip:
            steps.append(v2.RandomHorizontalFlip())
    return v2.Compose([*steps, _ToUnitFloat()])
