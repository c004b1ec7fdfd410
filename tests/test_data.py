"""repspec_zoo.data: every source -> (float32 (C, H, W) in [0, 1], int label), without the network."""
import dataclasses
import gzip
import io
import re
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import datasets
import huggingface_hub.constants as hf_constants
import numpy as np
import pytest
import torch
from PIL import Image
from torchvision.transforms import v2

from repspec_zoo.data import (DATASETS, FASHION_MNIST_DIR, DataFolderError, DatasetUnavailableError, IdxFiles,
                              as_tensors, dataset_info, load_split, make_loader, make_transform)

needs_debian_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz").is_file(),
    reason=f"Debian package dataset-fashion-mnist is not installed (no IDX files in {FASHION_MNIST_DIR}); "
           f"CI installs it")
COLORS = {"cat": (220, 30, 30), "dog": (30, 30, 220)}  # class folder -> RGB fill


@pytest.fixture(autouse=True)
def _offline_and_private_cache(monkeypatch, tmp_path):
    """Any network attempt fails the test; datasets' arrow cache stays inside tmp_path."""
    def refuse(*args, **kwargs):
        raise AssertionError(f"the test tried to reach the network: {args[:2]}")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf_datasets_cache"))


def _idx_head(path: Path, count: int) -> tuple[tuple[int, ...], bytes]:
    """Shape and first ``count`` data bytes of a gzipped IDX file, parsed with gzip + struct only."""
    with gzip.open(path, "rb") as f:
        _, dtype, ndim = struct.unpack(">HBB", f.read(4))
        assert dtype == 0x08
        return struct.unpack(f">{ndim}I", f.read(4 * ndim)), f.read(count)


def _write_idx(path: Path, array: np.ndarray) -> None:
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def _write_image_folder(root: Path, splits=("train", "test"), per_class: int = 3, size=(12, 10)) -> None:
    """``root/<split>/<class>/<i>.png``, each image one flat color (12 wide, 10 high)."""
    for split in splits:
        for name, color in COLORS.items():
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                Image.new("RGB", size, color).save(root / split / name / f"{i}.png")


# --------------------------------------------------------------------------- embedded data


@needs_debian_fmnist
def test_fashion_mnist_reads_the_debian_idx_files():
    (n_train,), train_label0 = _idx_head(FASHION_MNIST_DIR / "train-labels-idx1-ubyte.gz", 1)
    (n_test,), test_label0 = _idx_head(FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz", 1)
    (_, h, w), pixels0 = _idx_head(FASHION_MNIST_DIR / "train-images-idx3-ubyte.gz", 28 * 28)

    info = dataset_info("fashion_mnist")
    assert info.source == f"idx:{FASHION_MNIST_DIR}"
    assert dict(info.split_sizes) == {"train": n_train, "test": n_test} == {"train": 60000, "test": 10000}
    assert (info.num_classes, info.channels, info.image_size, (h, w)) == (10, 1, 28, (28, 28))
    assert info.class_names[9] == "Ankle boot"

    train = load_split("fashion_mnist", "train")
    x, y = train[0]
    assert len(train) == 60000 and x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert y == train_label0[0] == 9
    assert torch.equal(x, torch.tensor(list(pixels0), dtype=torch.float32).view(1, 28, 28) / 255)
    assert load_split("fashion_mnist", "test")[0][1] == test_label0[0]

    X, Y = as_tensors(load_split("fashion_mnist", "test", limit=500, seed=0))
    assert X.shape == (500, 1, 28, 28) and X.min() >= 0 and X.max() <= 1 and X.max() > 0.9
    assert Y.dtype == torch.int64 and torch.bincount(Y, minlength=10).tolist() == [50] * 10


def test_fashion_mnist_without_debian_files_goes_to_the_hub(monkeypatch, tmp_path):
    spec = dataclasses.replace(DATASETS["fashion_mnist"], embedded=IdxFiles(tmp_path / "absent"))
    monkeypatch.setitem(DATASETS, "fashion_mnist", spec)
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    with pytest.raises(DatasetUnavailableError, match="zalando-datasets/fashion_mnist"):
        load_split("fashion_mnist", "test")
    assert dataset_info("fashion_mnist").source == "hub:zalando-datasets/fashion_mnist"


def test_digits_split_is_a_deterministic_stratified_80_20_partition():
    from sklearn.datasets import load_digits

    X_train, y_train = as_tensors(load_split("digits", "train"))
    X_test, y_test = as_tensors(load_split("digits", "test"))
    assert X_train.shape == (1437, 1, 8, 8) and X_test.shape == (360, 1, 8, 8)
    assert torch.equal(X_test * 16, (X_test * 16).round()) and X_test.max() == 1.0  # 0..16 -> k / 16 exactly

    digits = load_digits()
    ours = torch.cat([torch.cat([X_train, X_test]).flatten(1) * 16, torch.cat([y_train, y_test])[:, None]], 1)
    theirs = np.concatenate([digits.data, digits.target[:, None]], 1)
    assert sorted(map(tuple, ours.int().tolist())) == sorted(map(tuple, theirs.astype(int).tolist()))

    per_class = np.bincount(digits.target)
    assert np.all(np.abs(torch.bincount(y_test).numpy() - 0.2 * per_class) <= 1)
    assert torch.equal(as_tensors(load_split("digits", "test"))[0], X_test)
    assert y_test[:12].tolist() == [1, 4, 8, 6, 5, 9, 9, 1, 3, 2, 2, 2]  # pinned: the split never changes
    info = dataset_info("digits")
    assert dict(info.split_sizes) == {"train": 1437, "test": 360} and info.image_size == 8


def test_digits_resize_and_gray_to_rgb():
    x, _ = load_split("digits", "test", image_size=28)[0]
    x3, _ = load_split("digits", "test", image_size=28, channels=3)[0]
    assert x.shape == (1, 28, 28) and x3.shape == (3, 28, 28)
    assert 0 <= x.min() and x.max() <= 1 and x.max() > 0.5
    assert torch.equal(x3, x.expand(3, -1, -1))


def test_limit_takes_a_seeded_stratified_subset():
    a, b = (load_split("digits", "train", limit=100, seed=0) for _ in range(2))
    c = load_split("digits", "train", limit=100, seed=1)
    assert len(a) == 100 and torch.equal(as_tensors(a)[0], as_tensors(b)[0])
    assert not torch.equal(as_tensors(a)[0], as_tensors(c)[0])
    counts = np.bincount(a.labels, minlength=10)
    assert counts.min() >= 9 and counts.max() <= 11
    assert len(load_split("digits", "train", limit=10**6)) == 1437


def test_idx_directory_as_data_dir(tmp_path):
    images = np.arange(3 * 4 * 4).reshape(3, 4, 4) * 5
    _write_idx(tmp_path / "train-images-idx3-ubyte.gz", images)
    _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", np.array([2, 0, 1]))
    X, Y = as_tensors(load_split(tmp_path, "train"))
    assert torch.equal(X, torch.tensor(images, dtype=torch.float32)[:, None] / 255)
    assert Y.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match="no test split"):
        load_split(tmp_path, "test")


# --------------------------------------------------------------------------- local folders


def test_image_folder_loads_labels_and_class_names(tmp_path):
    root = tmp_path / "pets"
    _write_image_folder(root)
    info = dataset_info(root)
    assert info.source == f"imagefolder:{root}" and info.class_names == ("cat", "dog")
    assert dict(info.split_sizes) == {"train": 6, "test": 6}
    assert (info.num_classes, info.channels, info.image_size) == (2, 3, 10)  # shorter side of 12x10

    X, Y = as_tensors(load_split(str(root), "test"))
    assert X.shape == (6, 3, 10, 10) and sorted(Y.tolist()) == [0, 0, 0, 1, 1, 1]
    for label, name in enumerate(("cat", "dog")):
        expected = torch.tensor(COLORS[name], dtype=torch.float32).view(3, 1, 1) / 255
        torch.testing.assert_close(X[Y == label], expected.expand(3, 3, 10, 10))
    gray = load_split(root, "train", channels=1, image_size=16, train_transform=True)
    assert gray[0][0].shape == (1, 16, 16)


def test_image_folder_split_detection(tmp_path):
    _write_image_folder(tmp_path / "with_val", splits=("train", "val"))
    assert len(load_split(tmp_path / "with_val", "test")) == 6
    _write_image_folder(tmp_path / "flat", splits=("",))
    assert len(load_split(tmp_path / "flat", "train")) == 6
    with pytest.raises(ValueError, match="no test split.*it has train"):
        load_split(tmp_path / "flat", "test")


def test_image_folder_with_one_class_folder_says_so_and_shows_the_layout(tmp_path):
    root = tmp_path / "cats"
    _write_image_folder(root)
    for split in ("train", "test"):
        shutil.rmtree(root / split / "dog")
    with pytest.raises(DataFolderError, match=r"found one class folder \('cat', 3 images\); an image folder needs "
                                              r"one sub-folder per class, at least two"):
        load_split(root, "train")
    with pytest.raises(DataFolderError, match="found one class folder"):
        dataset_info(root)


def test_images_directly_in_split_folders_are_not_taken_for_classes(tmp_path):
    root = tmp_path / "flat_splits"  # without the check: two "classes", train and test
    for split in ("train", "test"):
        (root / split).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (8, 8), COLORS["cat"]).save(root / split / f"{i}.png")
    with pytest.raises(DataFolderError, match="class folders found are test, train, which are split folders"):
        load_split(root, "train")


def test_undecodable_images_are_named_before_any_item_is_read(tmp_path):
    root = tmp_path / "pets"
    _write_image_folder(root, per_class=4)
    good = (root / "train" / "dog" / "0.png").read_bytes()
    jpeg = io.BytesIO()
    Image.new("RGB", (64, 64), COLORS["dog"]).save(jpeg, format="JPEG")
    damaged = {"train/cat/0.png": b"<html><body>404</body></html>", "train/cat/1.png": b"",
               "train/dog/1.png": good[:len(good) // 2],
               "train/dog/9.jpg": jpeg.getvalue()[:len(jpeg.getvalue()) // 2]}  # Image.verify() passes this one
    for name, content in damaged.items():
        (root / name).write_bytes(content)
    with pytest.raises(DataFolderError) as err:
        load_split(root, "train")
    message = str(err.value)
    assert message.startswith(f"{root}: 4 of 9 image files cannot be decoded: ")
    assert all(name in message for name in damaged) and "train/cat/2.png" not in message
    assert len(load_split(root, "test")) == 8  # the other split is fine

    for i in range(6):  # more bad files than the message lists
        (root / "train" / "cat" / f"x{i}.png").write_bytes(b"")
    with pytest.raises(DataFolderError, match=r"10 of 15 image files cannot be decoded: .* and 5 more\. Delete"):
        load_split(root, "train")


def test_each_image_is_decoded_once_per_process(tmp_path, monkeypatch):
    from repspec_zoo.data import folder_checks

    decoded = []
    decode = folder_checks._decode_error
    monkeypatch.setattr(folder_checks, "_decode_error", lambda path: decoded.append(path) or decode(path))
    root = tmp_path / "pets"
    _write_image_folder(root)
    dataset_info(root)  # what a training run does first (class count), then each split
    load_split(root, "train")
    load_split(root, "test")
    assert sorted(decoded) == sorted(str(p) for p in root.rglob("*.png")) and len(decoded) == 12
    (root / "train" / "cat" / "0.png").write_bytes(b"")  # a file changed since: decoded again
    with pytest.raises(DataFolderError, match="1 of 6 image files cannot be decoded: train/cat/0.png"):
        load_split(root, "train")


def test_registry_name_with_data_dir_reads_local_files_at_the_registry_size(tmp_path):
    _write_image_folder(tmp_path / "mine")
    ds = load_split("cifar10", "test", data_dir=tmp_path / "mine")
    assert ds[0][0].shape == (3, 32, 32) and ds.class_names == ("cat", "dog")


def test_parquet_files_load(tmp_path):
    features = datasets.Features({"img": datasets.Image(), "label": datasets.ClassLabel(names=["dark", "light"])})
    (tmp_path / "pq" / "data").mkdir(parents=True)
    for split, n in (("train", 8), ("test", 4)):
        values = [20, 230] * (n // 2)
        table = {"img": [Image.new("L", (9, 9), v) for v in values], "label": [int(v > 128) for v in values]}
        datasets.Dataset.from_dict(table, features=features).to_parquet(
            str(tmp_path / "pq" / "data" / f"{split}-00000-of-00001.parquet"))

    info = dataset_info(tmp_path / "pq")
    assert info.source == f"parquet:{tmp_path / 'pq'}" and info.class_names == ("dark", "light")
    assert dict(info.split_sizes) == {"train": 8, "test": 4} and (info.channels, info.image_size) == (1, 9)
    X, Y = as_tensors(load_split(tmp_path / "pq", "test"))
    assert X.shape == (4, 1, 9, 9) and Y.tolist() == [0, 1, 0, 1]
    torch.testing.assert_close(X.mean((1, 2, 3)), torch.where(Y == 1, 230 / 255, 20 / 255).float())


# --------------------------------------------------------------------------- transforms


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
@pytest.mark.parametrize("size", [28, 96], ids=["small", "timm"])
@pytest.mark.parametrize("channels", [1, 3])
def test_transform_output_shape_dtype_and_range(channels, size, train):
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (50, 70, 3), dtype=np.uint8))
    config = {"input_size": (channels, size, size), "interpolation": "bicubic", "crop_pct": 0.875,
              "mean": (0.5,) * channels, "std": (0.1,) * channels}
    x = make_transform(config, train=train)(image)
    assert type(x) is torch.Tensor and x.dtype == torch.float32 and x.shape == (channels, size, size)
    assert x.min() >= 0 and x.max() <= 1 and x.std() > 0.05


def test_transform_does_not_normalize_and_converts_channels():
    imagenet = {"input_size": (3, 96, 96), "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225)}
    torch.testing.assert_close(make_transform(imagenet)(Image.new("L", (40, 40), 51)), torch.full((3, 96, 96), 0.2))
    rgb = Image.new("RGB", (20, 20), (200, 100, 50))
    luma = rgb.convert("L").getpixel((0, 0)) / 255
    torch.testing.assert_close(make_transform({"input_size": (1, 20, 20)})(rgb), torch.full((1, 20, 20), luma))
    t = torch.rand(3, 8, 8)  # tensor input, as from the embedded datasets
    expected = 0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2]
    torch.testing.assert_close(make_transform({"input_size": (1, 8, 8)})(t)[0], expected)
    with pytest.raises(ValueError, match="channels must be 1 or 3"):
        make_transform({"input_size": (2, 8, 8)})


def test_small_train_transform_pads_crops_and_flips_but_not_for_digits():
    white = Image.new("L", (32, 32), 255)
    config = {"input_size": (1, 32, 32)}
    train, evaluate = make_transform(config, train=True), make_transform(config)
    assert all(bool((evaluate(white) == 1).all()) for _ in range(5))
    assert any(bool((train(white) == 0).any()) for _ in range(20))  # shifted into the zero padding
    flips = lambda transform: [t for t in transform.transforms if isinstance(t, v2.RandomHorizontalFlip)]
    assert flips(train)
    assert not flips(load_split("digits", "train", train_transform=True).transform)  # a flipped digit is no digit


# --------------------------------------------------------------------------- errors


def test_unknown_name_lists_known_names_and_accepted_forms():
    with pytest.raises(ValueError) as err:
        load_split("cifar11")
    message = str(err.value)
    assert "'cifar11'" in message and all(name in message for name in DATASETS)
    assert "org/name" in message and "--data-dir" in message and "local-dir:" in message


def test_bad_split_and_limit_are_rejected():
    with pytest.raises(ValueError, match="split must be one of"):
        load_split("digits", "validation")
    with pytest.raises(ValueError, match="limit must be a positive"):
        load_split("digits", limit=0)


def test_missing_or_empty_directory_is_named_in_the_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(FileNotFoundError, match=re.escape(f"{missing} does not exist")):
        load_split(str(missing))
    with pytest.raises(FileNotFoundError, match="data_dir.*--data-dir"):
        load_split("cifar10", data_dir=missing)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        dataset_info(f"local-dir:{missing}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no parquet files, images or IDX files"):
        load_split(tmp_path / "empty")


@pytest.mark.parametrize("name, hub_id", [
    ("cifar10", "uoft-cs/cifar10"),  # registry name
    ("hf-hub:ILSVRC/imagenet-1k", "ILSVRC/imagenet-1k"),  # registry id, explicit prefix
    ("some-org/some-dataset", "some-org/some-dataset"),  # any Hub id: split discovery fails too
])
def test_hub_dataset_offline_fails_fast_and_says_how_to_use_local_files(monkeypatch, name, hub_id):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # As if datasets / huggingface_hub had been imported before the variables were set.
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    start = time.perf_counter()
    with pytest.raises(DatasetUnavailableError) as err:
        load_split(name, "test")
    assert time.perf_counter() - start < 10
    message = str(err.value)
    assert f"'{hub_id}'" in message and "--data-dir" in message and "HF_DATASETS_OFFLINE=1" in message
    assert datasets.config.HF_HUB_OFFLINE is False and hf_constants.HF_HUB_OFFLINE is False  # restored


def test_importing_the_package_needs_neither_datasets_nor_sklearn():
    """A GPU machine without ``datasets`` installed can import the package and build models; the
    embedded digits then load with sklearn alone."""
    script = ("import sys; import repspec_zoo, repspec_zoo.data, repspec_zoo.attacks, repspec_zoo.training; "
              "assert 'datasets' not in sys.modules and 'sklearn' not in sys.modules, 'imported at import time'; "
              "repspec_zoo.data.load_split('digits', 'test'); "
              "assert 'datasets' not in sys.modules, 'imported to read embedded data'")
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]), OMP_NUM_THREADS="1")
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


# --------------------------------------------------------------------------- registry and loaders


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_registry_entry_is_complete_and_described_offline(name):
    spec = DATASETS[name]
    assert set(spec.splits) == {"train", "test"} and spec.num_classes >= 2 and spec.channels in (1, 3)
    assert spec.embedded is not None or re.fullmatch(r"[\w.-]+/[\w.-]+", spec.hub_id)
    info = dataset_info(name)
    assert (info.num_classes, info.channels, info.image_size) == (spec.num_classes, spec.channels, spec.image_size)
    assert info.class_names is None or len(info.class_names) == spec.num_classes


def test_registry_hub_ids_and_columns():
    cifar, fmnist, imagenet = DATASETS["cifar10"], DATASETS["fashion_mnist"], DATASETS["imagenet1k"]
    assert (cifar.hub_id, cifar.image_column, cifar.label_column) == ("uoft-cs/cifar10", "img", "label")
    assert (fmnist.hub_id, fmnist.image_column, fmnist.label_column) == (
        "zalando-datasets/fashion_mnist", "image", "label")
    assert imagenet.hub_id == "ILSVRC/imagenet-1k" and imagenet.splits["test"] == "validation"


def test_make_loader_shuffles_by_seed_and_batches_in_order():
    ds = load_split("digits", "test")
    first_labels = lambda seed: next(iter(make_loader(ds, 32, shuffle=True, seed=seed)))[1]
    assert torch.equal(first_labels(0), first_labels(0)) and not torch.equal(first_labels(0), first_labels(1))
    xb, yb = next(iter(make_loader(ds, 32, shuffle=False, seed=0)))
    assert xb.shape == (32, 1, 8, 8) and torch.equal(yb, torch.as_tensor(ds.labels[:32]))
