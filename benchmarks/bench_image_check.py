"""Cost of checking a local image folder before training (decode every image once) vs one pass over it.

    OMP_NUM_THREADS=1 PYTHONPATH=. python benchmarks/bench_image_check.py

Generates two image folders (2 classes each): 28x28 grayscale PNGs (Fashion-MNIST-like) and
224x224 RGB JPEGs (quality 90, smooth random images, ImageNet-like). For each, in this process:
``check``, the up-front check (``repspec_zoo.data.folder_checks.check_image_files``, decoded-file cache
cleared first), and ``one pass``, reading every item of the train split from ``load_split``
(decode + eval transform of each item, one thread: what one epoch's data loading costs with ``num_workers: 0``).
Reported: seconds per image of each, best of ``--repeats``, and check / one pass. Goal: the check
costs less than one pass over the data (ratio < 1).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

from repspec_zoo.data import folder_checks, load_split
from repspec_zoo.io import atomic_write_text

ROOT = Path(__file__).resolve().parents[1]
FORMATS = {"png_28_gray": ("png", 28, "L"), "jpeg_224_rgb": ("jpg", 224, "RGB")}


def write_folder(root: Path, suffix: str, side: int, mode: str, per_class: int, rng: np.random.Generator) -> list[str]:
    """root/train/{a,b}/i.suffix: smooth random images (8x8 noise upsampled), as real photos compress."""
    files = []
    channels = 1 if mode == "L" else 3
    for label in ("a", "b"):
        (root / "train" / label).mkdir(parents=True)
        for i in range(per_class):
            small = rng.integers(0, 256, (8, 8, channels), dtype=np.uint8).squeeze()
            image = Image.fromarray(small, mode).resize((side, side), Image.BILINEAR)
            path = root / "train" / label / f"{i}.{suffix}"
            image.save(path, **({"quality": 90} if suffix == "jpg" else {}))
            files.append(str(path))
    return files


def best_seconds(action, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(root: Path, files: list[str], repeats: int) -> dict:
    def check():
        folder_checks._decoded.clear()
        folder_checks.check_image_files(files, root)

    dataset = load_split(root, "train")  # builds the datasets arrow cache, checks once: not part of either timing

    def one_pass():
        for i in range(len(dataset)):
            dataset[i]

    check_s, pass_s = best_seconds(check, repeats), best_seconds(one_pass, repeats)
    return {"images": len(files), "check_ms_per_image": 1e3 * check_s / len(files),
            "one_pass_ms_per_image": 1e3 * pass_s / len(files), "ratio_check_to_one_pass": check_s / pass_s}


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--per-class", type=int, default=500, help="images per class (2 classes)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results_image_check.json")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(0)
    result = {"omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
              "check_workers": min(8, os.cpu_count() or 1), "repeats": args.repeats}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (suffix, side, mode) in FORMATS.items():
            root = Path(tmp) / name
            files = write_folder(root, suffix, side, mode, args.per_class, rng)
            result[name] = measure(root, files, args.repeats)
    print(json.dumps(result, indent=1))
    atomic_write_text(args.out, json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
