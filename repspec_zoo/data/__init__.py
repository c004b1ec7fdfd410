"""Datasets for training recipes and evaluation: every source -> (image in [0, 1], int label).

Items are ``(x, y)``: ``x`` a float32 tensor (C, H, W) with values in [0, 1], ``y`` an int class
index. Normalization (mean/std) lives inside the model wrapper
(:class:`repspec_zoo.models.normalize.NormalizedModel`), so attack distances are L2 distances in
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

Modules: :mod:`.registry` (the dataset table), :mod:`.sources` (resolving a name, reading a split),
:mod:`.embedded` (IDX files, sklearn digits), :mod:`.image_datasets` (the torch Datasets),
:mod:`.transforms` (preprocessing), :mod:`.splits` (split names), :mod:`.loading` (load_split,
dataset_info, describe_source, as_tensors, make_loader), :mod:`.folder_checks` (an image folder's layout and images,
checked before use). Importing this package imports neither ``datasets`` nor
scikit-learn: a source that needs one imports it when it is read.
"""
from .embedded import FASHION_MNIST_DIR, IdxFiles, SklearnDigits
from .folder_checks import DataFolderError
from .image_datasets import ArrayImageDataset, HFImageDataset, ImageClassificationDataset
from .loading import DatasetInfo, as_tensors, dataset_info, describe_source, load_split, make_loader
from .registry import DATASETS, TOY_DATASETS, DatasetSpec, ToySpec
from .sources import DatasetUnavailableError
from .splits import SPLITS
from .transforms import make_transform

__all__ = [
    "DATASETS", "TOY_DATASETS", "ToySpec", "SPLITS", "FASHION_MNIST_DIR", "DatasetSpec", "DatasetInfo", "DatasetUnavailableError",
    "DataFolderError", "ImageClassificationDataset", "ArrayImageDataset", "HFImageDataset", "IdxFiles", "SklearnDigits",
    "load_split", "dataset_info", "describe_source", "make_transform", "as_tensors", "make_loader",
]
