"""In-memory data that needs no network: MNIST-style IDX files and scikit-learn's digits.

Both give uint8 grayscale images (N, H, W) and int64 labels (N,); ``max_value`` is the pixel value
that maps to 1.0. scikit-learn is imported only when the digits are first read.
"""
from __future__ import annotations

import functools
import gzip
import math
import os
import struct
from pathlib import Path
from typing import Protocol

import numpy as np

from .splits import SPLITS

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
DIGITS_TEST_FRACTION = 0.2  # sklearn digits: stratified 80/20 train/test split ...
DIGITS_SPLIT_SEED = 0       # ... with this random_state: 1437 train / 360 test images


class EmbeddedSource(Protocol):
    """In-memory grayscale data that needs no network: uint8 images (N, H, W), int labels (N,)."""

    description: str  # where the data comes from, e.g. 'idx:/usr/share/datasets/fashion-mnist'
    max_value: int     # pixel value that maps to 1.0

    def splits(self) -> tuple[str, ...]: ...

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]: ...


class IdxFiles:
    """MNIST-style IDX files in one folder: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.

    Parsed with numpy (big-endian header, then raw uint8); arrays are cached in memory (read-only)
    and nothing is written to disk. Images are (N, H, W) with values 0..255.
    """

    max_value = 255
    _PREFIX = {"train": "train", "test": "t10k"}

    def __init__(self, directory: str | os.PathLike):
        self.directory = Path(directory)
        self.description = f"idx:{self.directory}"

    def _file(self, split: str, kind: str) -> Path | None:
        stem = f"{self._PREFIX[split]}-{kind}-ubyte"
        return next((p for p in (self.directory / f"{stem}.gz", self.directory / stem) if p.is_file()), None)

    def splits(self) -> tuple[str, ...]:
        """The splits whose image and label files are both present."""
        return tuple(s for s in SPLITS if self._file(s, "images-idx3") and self._file(s, "labels-idx1"))

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels = (_read_idx(self._file(split, kind)) for kind in ("images-idx3", "labels-idx1"))
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(f"{self.directory}: {split} IDX files hold images {images.shape} and labels "
                             f"{labels.shape}; expected (N, H, W) and (N,)")
        return images, labels.astype(np.int64)


@functools.lru_cache(maxsize=4)
def _read_idx(path: Path) -> np.ndarray:
    """Read an unsigned-byte IDX file (optionally gzipped) into a read-only uint8 array."""
    with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
        magic = f.read(4)
        if len(magic) != 4 or magic[:3] != b"\x00\x00\x08":
            raise ValueError(f"{path} is not an unsigned-byte IDX file (magic {magic.hex()}); expected "
                             f"files like train-images-idx3-ubyte.gz")
        shape = struct.unpack(f">{magic[3]}I", f.read(4 * magic[3]))
        data = f.read()
    if len(data) != math.prod(shape):
        raise ValueError(f"{path}: header says shape {shape} ({math.prod(shape)} bytes) but {len(data)} bytes "
                         f"follow; the file is truncated or corrupt, re-download it")
    return np.frombuffer(data, dtype=np.uint8).reshape(shape)


class SklearnDigits:
    """scikit-learn's bundled 8x8 handwritten digits: 1797 images, integer values 0..16, 10 classes.

    Split: stratified 80/20 (``DIGITS_TEST_FRACTION``) with ``random_state=DIGITS_SPLIT_SEED``,
    i.e. 1437 train / 360 test images, the same on every machine; each split keeps the original order.
    """

    description = "sklearn:load_digits"
    max_value = 16

    def splits(self) -> tuple[str, ...]:
        return SPLITS

    def load(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        images, labels, indices = _digits()
        return images[indices[split]], labels[indices[split]]


@functools.cache
def _digits() -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images, labels = digits.images.astype(np.uint8), digits.target.astype(np.int64)  # exact: values are 0..16
    train, test = train_test_split(np.arange(len(labels)), test_size=DIGITS_TEST_FRACTION, stratify=labels,
                                   random_state=DIGITS_SPLIT_SEED)
    images.setflags(write=False)
    return images, labels, {"train": np.sort(train), "test": np.sort(test)}
