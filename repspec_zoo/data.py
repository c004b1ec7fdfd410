"""Datasets for training recipes and evaluation: every source -> (image in [0, 1], int label).

Items are ``(x, y)``: ``x`` a float32 tensor (C, H, W) with values in [0, 1], ``y`` an int class
index. Normalization (mean/std) lives inside the model wrapper
(:class:`repspec_zoo.attacks.normalize.NormalizedModel`), so attack distances are L2 distances in
[0, 1] pixel space.

Where the data comes from, first match wins:

1. A local directory, given as ``data_dir`` (``--data-dir``) or as the name itself (a path, or
   ``local-dir:PATH``). It may hold
   * an image folder: class subfolders, optionally under split folders ``train/`` and ``test/``
     (or ``val/``, ``validation/``), read by the ``datasets`` ``imagefolder`` builder;
   * parquet files (``datasets.Dataset.to_parquet``, or a Hub repo's ``data/`` folder), split by
     ``train`` / ``test`` / ``validation`` in their folder or file names (``parquet`` builder);
   * MNIST-style IDX files ``{train,t10k}-{images-idx3,labels-idx1}-ubyte[.gz]``.
2. Embedded data for registry names, no network needed: ``fashion_mnist`` from the Debian package
   ``dataset-fashion-mnist`` (IDX files in :data:`FASHION_MNIST_DIR`) and ``digits`` from
   scikit-learn. Without the Debian files, ``fashion_mnist`` comes from the Hub.
3. The Hugging Face Hub, ``datasets.load_dataset(hub_id, split=...)``: the ids in
   :data:`DATASETS`, or any ``org/name`` (``hf-hub:org/name``). With HF_HUB_OFFLINE=1 or
   HF_DATASETS_OFFLINE=1 in the environment a dataset missing from the local cache fails at once
   with :class:`DatasetUnavailableError`, which says how to point at local files.

Splits are ``'train'`` and ``'test'``; ``'test'`` is the source's held-out labelled split (its
``test``, else its ``validation``: ImageNet-1k's test labels are not public).

Example::

    train = load_split("fashion_mnist", "train", limit=5000, train_transform=True)
    loader = make_loader(train, batch_size=128, shuffle=True, seed=0)
    x_test, y_test = as_tensors(load_split("fashion_mnist", "test", limit=1000))
"""
from __future__ import annotations

import abc
import contextlib
import functools
import gzip
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Protocol, Sequence

import datasets
import huggingface_hub.constants as hf_constants
import numpy as np
import torch
from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder
from PIL import Image
from timm.data import ImageNetInfo, create_transform
from timm.data.transforms import str_to_interp_mode
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

__all__ = [
    "DATASETS", "SPLITS", "FASHION_MNIST_DIR", "DatasetSpec", "DatasetInfo", "DatasetUnavailableError",
    "ImageClassificationDataset", "ArrayImageDataset", "HFImageDataset", "IdxFiles", "SklearnDigits",
    "load_split", "dataset_info", "make_transform", "as_tensors", "make_loader",
]

SPLITS = ("train", "test")
# Our split -> the source split names that can serve it, in order of preference.
_SPLIT_CANDIDATES = {"train": ("train",), "test": ("test", "validation")}

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian package dataset-fashion-mnist
DIGITS_TEST_FRACTION = 0.2  # sklearn digits: stratified 80/20 train/test split ...
DIGITS_SPLIT_SEED = 0       # ... with this random_state: 1437 train / 360 test images
SMALL_IMAGE_MAX = 64  # target sides <= this get CIFAR-style augmentation, larger get timm's ImageNet one
_LUMA = (0.299, 0.587, 0.114)  # RGB -> grayscale weights, ITU-R 601-2 (as PIL's convert('L'))


class DatasetUnavailableError(ValueError):
    """A Hub dataset could not be read (offline and not cached, unreachable, gated or missing)."""


# --------------------------------------------------------------------------- embedded sources


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


# --------------------------------------------------------------------------- registry


@dataclass(frozen=True)
class DatasetSpec:
    """A named dataset: its Hugging Face Hub location and what its images look like."""

    hub_id: str | None  # Hugging Face Hub dataset id; None when only embedded
    image_column: str  # Hub column holding the image
    label_column: str  # Hub column holding the integer class index
    splits: Mapping[str, str]  # our split ('train' / 'test') -> Hub split name
    num_classes: int  # number of classes
    channels: int  # native channels: 1 grayscale, 3 RGB
    image_size: int  # native side in pixels (variable-size sets: the usual timm eval size)
    class_names: tuple[str, ...] | None = None  # index -> name when known offline, else read from the data
    hub_kwargs: Mapping[str, str] = field(default_factory=dict)  # extra load_dataset args (revision, data_dir)
    embedded: EmbeddedSource | None = None  # read this instead of the Hub when its files are present
    hflip: bool = True  # a horizontal flip keeps the label (training augmentation)


_TRAIN_TEST = {"train": "train", "test": "test"}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                         "Bag", "Ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
_IMAGENET_INFO = ImageNetInfo()  # timm's synset order = the Hub dataset's label order

DATASETS: dict[str, DatasetSpec] = {
    # Gated: accept the terms on the Hub and log in. Test labels are hidden, so 'test' = validation.
    "imagenet1k": DatasetSpec(
        "ILSVRC/imagenet-1k", "image", "label", {"train": "train", "test": "validation"}, 1000, 3, 224,
        class_names=tuple(_IMAGENET_INFO.index_to_description(i) for i in range(1000))),
    "cifar10": DatasetSpec("uoft-cs/cifar10", "img", "label", _TRAIN_TEST, 10, 3, 32, CIFAR10_CLASSES),
    # Parquet mirror of Khosla et al. 2011 (120 breeds; official split 12,000 train / 8,580 test).
    "stanford_dogs": DatasetSpec("Donghyun99/Stanford-Dogs", "image", "label", _TRAIN_TEST, 120, 3, 224),
    # Parquet mirror with the official setid.mat splits: 1,020 train / 1,020 validation / 6,149 test.
    "flowers102": DatasetSpec("Donghyun99/Oxford-Flower-102", "image", "label", _TRAIN_TEST, 102, 3, 224),
    # Roboflow's random 70/20/10 re-split of Quattoni & Torralba 2009 (not the paper's 80/20 per class).
    # The repo is a loading script, which datasets>=4 refuses; its parquet export lives on a branch.
    "mit_indoor67": DatasetSpec(
        "keremberke/indoor-scene-classification", "image", "labels", _TRAIN_TEST, 67, 3, 224,
        hub_kwargs={"revision": "refs/convert/parquet", "data_dir": "full"}),
    "fashion_mnist": DatasetSpec("zalando-datasets/fashion_mnist", "image", "label", _TRAIN_TEST, 10, 1, 28,
                                 FASHION_MNIST_CLASSES, embedded=IdxFiles(FASHION_MNIST_DIR)),
    # A flipped digit is another glyph: no flips.
    "digits": DatasetSpec(None, "image", "label", _TRAIN_TEST, 10, 1, 8, tuple(str(d) for d in range(10)),
                          embedded=SklearnDigits(), hflip=False),
}
_SPEC_BY_HUB_ID = {spec.hub_id: spec for spec in DATASETS.values() if spec.hub_id}


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


# --------------------------------------------------------------------------- datasets


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


# --------------------------------------------------------------------------- transforms


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


# --------------------------------------------------------------------------- resolving a name


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LOCAL_PREFIX, _HUB_PREFIX = "local-dir:", "hf-hub:"
_LOCAL_HINT = ("a folder of class subfolders (optionally under train/ and test/ or val/), or of parquet "
               "files (train/test in their folder or file names), or of MNIST-style IDX files")


@dataclass(frozen=True)
class _Source:
    """Where a dataset's data comes from, resolved but not read yet."""

    name: str  # as the caller gave it
    spec: DatasetSpec | None  # registry entry, if any
    local_dir: Path | None  # read this directory ...
    hub_id: str | None  # ... else this Hub id ... (neither: spec.embedded)


def _resolve(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None) -> _Source:
    name = str(name_or_path)
    spec = DATASETS.get(name)
    if data_dir is not None:
        return _Source(name, spec, _existing_dir(data_dir, "data_dir"), None)
    if name.startswith(_LOCAL_PREFIX):
        return _Source(name, None, _existing_dir(name[len(_LOCAL_PREFIX):], name), None)
    if name.startswith(_HUB_PREFIX):
        hub_id = name[len(_HUB_PREFIX):]
        return _Source(name, _SPEC_BY_HUB_ID.get(hub_id), None, hub_id)
    if spec is not None:
        embedded_here = spec.embedded is not None and bool(spec.embedded.splits())
        return _Source(name, spec, None, None if embedded_here else spec.hub_id)
    if Path(name).expanduser().is_dir() or name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return _Source(name, None, _existing_dir(name, "dataset path"), None)
    if _HUB_ID.match(name):
        return _Source(name, _SPEC_BY_HUB_ID.get(name), None, name)
    raise ValueError(
        f"unknown dataset {name!r}. Known names: {', '.join(DATASETS)}. Also accepted: a local directory "
        f"(PATH or {_LOCAL_PREFIX}PATH) holding {_LOCAL_HINT}; a Hugging Face Hub dataset id 'org/name' "
        f"(or {_HUB_PREFIX}org/name); or a known name plus --data-dir PATH for local files.")


def _existing_dir(path: str | os.PathLike, what: str) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        state = "is a file, not a directory" if directory.exists() else "does not exist"
        raise FileNotFoundError(f"{what}: {directory} {state}. Point --data-dir (data_dir=) at {_LOCAL_HINT}.")
    return directory


def _local_format(directory: Path) -> str:
    """'idx', 'parquet' or 'imagefolder': what a local directory holds (the first data file found decides)."""
    if IdxFiles(directory).splits():
        return "idx"
    image_suffixes = set(ImageFolder.EXTENSIONS)  # what the imagefolder builder reads
    for path in directory.rglob("*"):
        suffix = path.suffix.lower()
        if suffix == ".parquet" or suffix in image_suffixes:
            return "parquet" if suffix == ".parquet" else "imagefolder"
    raise ValueError(f"{directory} holds no parquet files, images or IDX files; expected {_LOCAL_HINT}")


def _describe(source: _Source) -> str:
    if source.local_dir is not None:
        return f"{_local_format(source.local_dir)}:{source.local_dir}"
    return f"hub:{source.hub_id}" if source.hub_id is not None else source.spec.embedded.description


# --------------------------------------------------------------------------- reading


def _offline_requested() -> bool:
    truthy = datasets.config.ENV_VARS_TRUE_VALUES
    return any(os.environ.get(var, "").upper() in truthy for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@contextlib.contextmanager
def _hub_access(hub_id: str) -> Iterator[None]:
    """Honour the offline variables as set now; turn Hub failures into DatasetUnavailableError.

    ``datasets`` and ``huggingface_hub`` read HF_HUB_OFFLINE / HF_DATASETS_OFFLINE once, at import.
    A process that sets them later (a test, a notebook) would still try the network and fail only
    after ~25 s of retries, so the flags are switched on for the duration of the call.
    """
    saved = datasets.config.HF_HUB_OFFLINE, hf_constants.HF_HUB_OFFLINE
    if _offline_requested():
        datasets.config.HF_HUB_OFFLINE = hf_constants.HF_HUB_OFFLINE = True
    try:
        yield
    except OSError as err:  # ConnectionError: offline or unreachable; FileNotFoundError: missing or gated
        raise DatasetUnavailableError(
            f"could not load the Hugging Face Hub dataset '{hub_id}': {err}\n"
            f"Fix: pass --data-dir PATH (data_dir=PATH in Python) with local files: {_LOCAL_HINT}. Or "
            f"download it once on a connected machine with datasets.load_dataset('{hub_id}') and set "
            f"HF_DATASETS_OFFLINE=1 to read that cache.") from err
    finally:
        datasets.config.HF_HUB_OFFLINE, hf_constants.HF_HUB_OFFLINE = saved


def _local_builder(directory: Path) -> datasets.DatasetBuilder:
    return datasets.load_dataset_builder(_local_format(directory), data_dir=str(directory))


def _match_splits(available: Sequence[str], where: str) -> dict[str, str]:
    """Our split -> the first source split that can serve it."""
    available = [str(s) for s in available]
    matched = {ours: next((c for c in options if c in available), None) for ours, options in _SPLIT_CANDIDATES.items()}
    matched = {ours: theirs for ours, theirs in matched.items() if theirs is not None}
    if not matched:
        raise ValueError(f"{where} has no train, test or validation split (found: {', '.join(available) or 'none'})")
    return matched


def _split_map(source: _Source) -> dict[str, str]:
    """Our split ('train' / 'test') -> the split name in the source, for the splits it has."""
    if source.local_dir is not None:
        if _local_format(source.local_dir) == "idx":
            return {s: s for s in IdxFiles(source.local_dir).splits()}
        return _match_splits(list(_local_builder(source.local_dir).config.data_files), str(source.local_dir))
    if source.hub_id is None:
        return {s: s for s in source.spec.embedded.splits()}
    if source.spec is not None:
        return dict(source.spec.splits)
    with _hub_access(source.hub_id):
        builder = datasets.load_dataset_builder(source.hub_id)
    return _match_splits(list(builder.config.data_files or builder.info.splits or ()), f"Hub dataset {source.hub_id}")


def _open(source: _Source, source_split: str) -> ImageClassificationDataset:
    """The raw split (no transform) from a resolved source."""
    spec = source.spec
    if source.local_dir is not None and _local_format(source.local_dir) == "idx":
        dataset = _array_dataset(IdxFiles(source.local_dir), source_split, spec)
    elif source.local_dir is not None:
        builder = _local_builder(source.local_dir)
        builder.download_and_prepare()
        dataset = _hf_dataset(builder.as_dataset(split=source_split), spec, str(source.local_dir))
    elif source.hub_id is None:
        dataset = _array_dataset(spec.embedded, source_split, spec)
    else:
        with _hub_access(source.hub_id):
            hf = datasets.load_dataset(source.hub_id, split=source_split, **(spec.hub_kwargs if spec else {}))
        dataset = _hf_dataset(hf, spec, f"Hub dataset {source.hub_id}")
    if len(dataset) == 0:
        raise ValueError(f"{source.name}: split '{source_split}' has no examples")
    return dataset


def _array_dataset(embedded: EmbeddedSource, split: str, spec: DatasetSpec | None) -> ArrayImageDataset:
    images, labels = embedded.load(split)
    names = spec.class_names if spec and spec.class_names else tuple(str(i) for i in range(int(labels.max()) + 1))
    return ArrayImageDataset(images, labels, embedded.max_value, names)


def _hf_dataset(hf: datasets.Dataset, spec: DatasetSpec | None, where: str) -> HFImageDataset:
    """Wrap a HF dataset: the spec's columns when present, else the first Image / ClassLabel column."""
    features = hf.features

    def pick(preferred: str | None, kind: type, fallbacks: tuple[str, ...], what: str) -> str:
        typed = [name for name, feature in features.items() if isinstance(feature, kind)]
        found = next((c for c in (preferred, *typed, *fallbacks) if c in features), None)
        if found is None:
            raise ValueError(f"{where}: no {what} column among {list(features)}; expected a "
                             f"datasets.{kind.__name__} column or one named {' / '.join(fallbacks)}")
        return found

    image = pick(spec.image_column if spec else None, datasets.Image, ("image", "img"), "image")
    label = pick(spec.label_column if spec else None, datasets.ClassLabel, ("label", "labels"), "label")
    if isinstance(features[label], datasets.ClassLabel):
        names = tuple(features[label].names)
    elif str(getattr(features[label], "dtype", "")).startswith(("int", "uint")):
        names = tuple(str(i) for i in range(int(max(hf[label])) + 1))
    else:
        raise ValueError(f"{where}: label column '{label}' is {features[label]}, not integer class indices; "
                         f"store labels as a datasets.ClassLabel or as ints")
    return HFImageDataset(hf, image, label, names)


def _native_shape(source: _Source, dataset: ImageClassificationDataset) -> tuple[int, int]:
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


# --------------------------------------------------------------------------- public API


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
    source = _resolve(name_or_path, data_dir)
    available = _split_map(source)
    if split not in available:
        raise ValueError(f"{source.name} has no {split} split (looked for {' or '.join(_SPLIT_CANDIDATES[split])}; "
                         f"it has {', '.join(available)}). Add a {split}/ folder or file, or ask for another split.")
    dataset = _open(source, available[split])
    if limit is not None and limit < len(dataset):
        dataset = dataset.subset(_stratified_indices(dataset.labels, limit, seed))
    native_channels, native_size = _native_shape(source, dataset)
    size = image_size or native_size
    dataset.transform = make_transform({"input_size": (channels or native_channels, size, size)},
                                       train=train_transform, hflip=source.spec.hflip if source.spec else True)
    return dataset


def dataset_info(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None = None) -> DatasetInfo:
    """Classes, native shape and split sizes of a dataset (same arguments as :func:`load_split`).

    A registry dataset that would come from the Hub is described from the registry alone (no network,
    ``split_sizes`` empty). Embedded and local data are read (cheap); a Hub id outside the registry
    is downloaded, as :func:`load_split` would.
    """
    source = _resolve(name_or_path, data_dir)
    spec = source.spec
    if spec is not None and source.local_dir is None and source.hub_id is not None:
        return DatasetInfo(source.name, f"hub:{source.hub_id}", spec.num_classes, spec.channels, spec.image_size,
                           spec.class_names, {})
    opened = {split: _open(source, theirs) for split, theirs in _split_map(source).items()}
    first = next(iter(opened.values()))
    channels, size = _native_shape(source, first)
    return DatasetInfo(source.name, _describe(source), len(first.class_names), channels, size, first.class_names,
                       {split: len(dataset) for split, dataset in opened.items()})


def as_tensors(dataset: Dataset, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack the first ``limit`` items (all when None) of a small dataset: X (N, C, H, W), Y int64 (N,)."""
    count = len(dataset) if limit is None else min(limit, len(dataset))
    if count == 0:
        raise ValueError("as_tensors: the dataset is empty (or limit is 0); nothing to stack")
    items = [dataset[i] for i in range(count)]
    return torch.stack([x for x, _ in items]), torch.tensor([y for _, y in items], dtype=torch.int64)


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, seed: int, num_workers: int = 0) -> DataLoader:
    """A DataLoader whose shuffling depends only on ``seed`` (its own torch.Generator).

    Random augmentations draw from torch's global RNG in the main process (seed it, e.g. with
    ``accelerate.utils.set_seed``) or, with ``num_workers > 0``, from worker seeds derived from ``seed``.
    """
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=num_workers > 0)
