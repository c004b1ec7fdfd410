"""The dataset table: registry names -> Hugging Face Hub location, columns, native shape, classes.

Tables only: an embedded source (:mod:`.embedded`) is named here and read only when a split is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

from timm.data import ImageNetInfo

from .embedded import FASHION_MNIST_DIR, EmbeddedSource, IdxFiles, SklearnDigits


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
SPEC_BY_HUB_ID = {spec.hub_id: spec for spec in DATASETS.values() if spec.hub_id}


@dataclass(frozen=True)
class ToySpec:
    """A toy problem a training recipe can name as its dataset: a few points, both splits.

    Its inputs are points, not images in [0, 1]: a recipe's quick evaluation runs no attack (attacks
    search the [0, 1] box) and the run records no class names.
    """

    points: tuple[tuple[float, ...], ...]  # each point, fed to the model as a (1, 1, len(point)) tensor
    labels: tuple[int, ...]  # the class index of each point
    num_classes: int
    description: str  # how the run's log names the data


TOY_DATASETS: dict[str, ToySpec] = {
    # the paper's App. F.1: x in {-1, +1}^2, label 1 where the signs differ (an slp with img_size [1, 2])
    "xor": ToySpec(((-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)), (0, 1, 1, 0), 2,
                   "the 4 points of the toy problem"),
}
