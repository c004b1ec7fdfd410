"""Where a dataset comes from, and reading one split of it without a transform.

A name resolves to one :class:`Source`, first match wins: a local directory (image folder, parquet
or IDX files), the embedded data of a registry name (IDX files of the Debian package, sklearn
digits), or a Hugging Face Hub dataset id.

The Hugging Face ``datasets`` package is imported inside the functions that read with it, so that
importing :mod:`repspec_zoo.data` (and building models) works where it is not installed; embedded
data and local IDX files never import it.
"""
from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

import huggingface_hub.constants as hf_constants

from ..errors import UserError
from .embedded import EmbeddedSource, IdxFiles
from .folder_checks import check_class_names, check_image_files, explain_missing_labels
from .image_datasets import ArrayImageDataset, HFImageDataset, ImageClassificationDataset
from .registry import DATASETS, SPEC_BY_HUB_ID, DatasetSpec
from .splits import match_splits

if TYPE_CHECKING:
    import datasets

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_LOCAL_PREFIX, _HUB_PREFIX = "local-dir:", "hf-hub:"
_LOCAL_HINT = ("a folder of class subfolders (optionally under train/ and test/ or val/), or of parquet "
               "files (train/test in their folder or file names), or of MNIST-style IDX files")


class DatasetUnavailableError(UserError, ValueError):
    """A dataset cannot be read: an unknown name, a local folder without data, a Hub dataset offline
    and not cached, unreachable, gated or missing."""


class DataDirNotFoundError(DatasetUnavailableError, FileNotFoundError):
    """A local dataset folder that does not exist (or is a file)."""


# --------------------------------------------------------------------------- resolving a name


@dataclass(frozen=True)
class Source:
    """Where a dataset's data comes from, resolved but not read yet."""

    name: str  # as the caller gave it
    spec: DatasetSpec | None  # registry entry, if any
    local_dir: Path | None  # read this directory ...
    hub_id: str | None  # ... else this Hub id ... (neither: spec.embedded)


def resolve(name_or_path: str | os.PathLike, data_dir: str | os.PathLike | None) -> Source:
    """The source a name (registry name, path, ``local-dir:PATH``, Hub id, ``hf-hub:ID``) refers to."""
    name = str(name_or_path)
    spec = DATASETS.get(name)
    if data_dir is not None:
        return Source(name, spec, _existing_dir(data_dir, "data_dir"), None)
    if name.startswith(_LOCAL_PREFIX):
        return Source(name, None, _existing_dir(name[len(_LOCAL_PREFIX):], name), None)
    if name.startswith(_HUB_PREFIX):
        hub_id = name[len(_HUB_PREFIX):]
        return Source(name, SPEC_BY_HUB_ID.get(hub_id), None, hub_id)
    if spec is not None:
        embedded_here = spec.embedded is not None and bool(spec.embedded.splits())
        return Source(name, spec, None, None if embedded_here else spec.hub_id)
    if Path(name).expanduser().is_dir() or name.startswith(("/", "./", "../", "~")) or name.count("/") > 1:
        return Source(name, None, _existing_dir(name, "dataset path"), None)
    if _HUB_ID.match(name):
        return Source(name, SPEC_BY_HUB_ID.get(name), None, name)
    raise DatasetUnavailableError(
        f"unknown dataset {name!r}. Known names: {', '.join(DATASETS)}. Also accepted: a local directory "
        f"(PATH or {_LOCAL_PREFIX}PATH) holding {_LOCAL_HINT}; a Hugging Face Hub dataset id 'org/name' "
        f"(or {_HUB_PREFIX}org/name); or a known name plus --data-dir PATH for local files.")


def _existing_dir(path: str | os.PathLike, what: str) -> Path:
    directory = Path(path).expanduser()
    if not directory.is_dir():
        state = "is a file, not a directory" if directory.exists() else "does not exist"
        raise DataDirNotFoundError(f"{what}: {directory} {state}. Point --data-dir (data_dir=) at {_LOCAL_HINT}.")
    return directory


def _local_format(directory: Path) -> str:
    """'idx', 'parquet' or 'imagefolder': what a local directory holds (the first data file found decides)."""
    if IdxFiles(directory).splits():
        return "idx"
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    image_suffixes = set(ImageFolder.EXTENSIONS)  # what the imagefolder builder reads
    for path in directory.rglob("*"):
        suffix = path.suffix.lower()
        if suffix == ".parquet" or suffix in image_suffixes:
            return "parquet" if suffix == ".parquet" else "imagefolder"
    raise DatasetUnavailableError(f"{directory} holds no parquet files, images or IDX files; expected {_LOCAL_HINT}")


def describe(source: Source) -> str:
    """'idx:DIR', 'imagefolder:DIR', 'parquet:DIR', 'hub:ORG/NAME' or the embedded source's description."""
    if source.local_dir is not None:
        return f"{_local_format(source.local_dir)}:{source.local_dir}"
    return f"hub:{source.hub_id}" if source.hub_id is not None else source.spec.embedded.description


# --------------------------------------------------------------------------- reading


@contextlib.contextmanager
def _hub_access(hub_id: str) -> Iterator[None]:
    """Honour the offline variables as set now; turn Hub failures into DatasetUnavailableError.

    ``datasets`` and ``huggingface_hub`` read HF_HUB_OFFLINE / HF_DATASETS_OFFLINE once, at import.
    A process that sets them later (a test, a notebook) would still try the network and fail only
    after ~25 s of retries, so the flags are switched on for the duration of the call.
    """
    import datasets

    saved = datasets.config.HF_HUB_OFFLINE, hf_constants.HF_HUB_OFFLINE
    truthy = datasets.config.ENV_VARS_TRUE_VALUES
    if any(os.environ.get(var, "").upper() in truthy for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")):
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
    import datasets

    return datasets.load_dataset_builder(_local_format(directory), data_dir=str(directory))


def split_map(source: Source) -> dict[str, str]:
    """Our split ('train' / 'test') -> the split name in the source, for the splits it has."""
    if source.local_dir is not None:
        if _local_format(source.local_dir) == "idx":
            return {s: s for s in IdxFiles(source.local_dir).splits()}
        return match_splits(list(_local_builder(source.local_dir).config.data_files), str(source.local_dir))
    if source.hub_id is None:
        return {s: s for s in source.spec.embedded.splits()}
    if source.spec is not None:
        return dict(source.spec.splits)
    import datasets

    with _hub_access(source.hub_id):
        builder = datasets.load_dataset_builder(source.hub_id)
    return match_splits(list(builder.config.data_files or builder.info.splits or ()), f"Hub dataset {source.hub_id}")


def open_split(source: Source, source_split: str) -> ImageClassificationDataset:
    """The raw split (no transform) from a resolved source; ``source_split`` is a value of :func:`split_map`."""
    spec = source.spec
    if source.local_dir is not None and _local_format(source.local_dir) == "idx":
        dataset = _array_dataset(IdxFiles(source.local_dir), source_split, spec)
    elif source.local_dir is not None:
        builder = _local_builder(source.local_dir)
        builder.download_and_prepare()
        hf = builder.as_dataset(split=source_split)
        if builder.name == "imagefolder":
            _check_image_folder(hf, [str(f) for f in builder.config.data_files[source_split]], source.local_dir)
        dataset = _hf_dataset(hf, spec, str(source.local_dir))
    elif source.hub_id is None:
        dataset = _array_dataset(spec.embedded, source_split, spec)
    else:
        import datasets

        with _hub_access(source.hub_id):
            hf = datasets.load_dataset(source.hub_id, split=source_split, **(spec.hub_kwargs if spec else {}))
        dataset = _hf_dataset(hf, spec, f"Hub dataset {source.hub_id}")
    if len(dataset) == 0:
        raise ValueError(f"{source.name}: split '{source_split}' has no examples")
    return dataset


def _check_image_folder(hf: datasets.Dataset, files: list[str], directory: Path) -> None:
    """Before a split of an image folder is used: one folder per class, and every image decodes."""
    import datasets
    from datasets.packaged_modules.imagefolder.imagefolder import ImageFolder

    images = [f for f in files if Path(f).suffix.lower() in ImageFolder.EXTENSIONS]
    if "label" not in hf.features:
        raise explain_missing_labels(images, directory)
    if isinstance(hf.features["label"], datasets.ClassLabel):  # from folders, not from a metadata file
        check_class_names(hf.features["label"].names, directory)
    check_image_files(images, directory)


def _array_dataset(embedded: EmbeddedSource, split: str, spec: DatasetSpec | None) -> ArrayImageDataset:
    images, labels = embedded.load(split)
    names = spec.class_names if spec and spec.class_names else tuple(str(i) for i in range(int(labels.max()) + 1))
    return ArrayImageDataset(images, labels, embedded.max_value, names)


def _hf_dataset(hf: datasets.Dataset, spec: DatasetSpec | None, where: str) -> HFImageDataset:
    """Wrap a HF dataset: the spec's columns when present, else the first Image / ClassLabel column."""
    import datasets

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
