"""Checks of a local image folder, made once before it is used: its class layout, and every image decodes.

The ``datasets`` imagefolder builder labels an image by its parent folder, and only when the folder
holds at least two such class folders at one depth; otherwise it returns images without labels.
It decodes images only when an item is read, so a damaged file would stop a run mid-epoch.
:func:`check_image_files` decodes every file up front instead (in threads: Pillow releases the GIL while
decoding) and names the bad ones, and those under MIN_SIDE pixels a side (a 1x1 "image" upscaled to the
model's input is a flat patch); a file that passed once in this process is not checked again.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Sequence

from PIL import Image
from tqdm.auto import tqdm

from ..errors import UserError

__all__ = ["DataFolderError", "check_class_names", "check_image_files", "explain_missing_labels"]

_SPLIT_FOLDERS = {"train", "test", "val", "valid", "validation"}  # folder names the builder reads as splits
_SHOWN = 5  # bad files named in the message
_BAR_FROM = 2000  # images: below this the check takes well under a second, so no progress bar
_decoded: set[tuple[str, int, int]] = set()  # (path, size, mtime_ns) of files that decoded in this process
#: smallest image side accepted, in pixels: that of the smallest registered dataset (digits, 8x8)
MIN_SIDE = 8


class DataFolderError(UserError, ValueError):
    """A local image folder has the wrong layout or files that cannot be decoded."""


def _layout_hint(directory: Path) -> str:
    return (f"an image folder needs one sub-folder per class, at least two, each image directly inside its class "
            f"folder: {directory}/[train/|test/]CLASS/IMAGE (e.g. train/cat/1.png, train/dog/1.png)")


def explain_missing_labels(files: Sequence[str], directory: Path) -> DataFolderError:
    """Why the imagefolder builder gave ``files`` (one split's images) no labels, as an error to raise."""
    names = sorted({Path(f).parent.name for f in files})
    depths = sorted({len(Path(f).relative_to(directory).parts) for f in files})
    if len(names) == 1:
        found = f"found one class folder ({names[0]!r}, {len(files)} images)"
    elif len(depths) > 1:
        found = f"found images at different folder depths ({', '.join(map(str, depths))} levels below it)"
    else:  # the builder takes labels from a metadata.csv / .jsonl instead of folders when there is one
        found = "found a metadata file without a label column"
    return DataFolderError(f"{directory}: {found}; {_layout_hint(directory)}")


def check_class_names(class_names: Sequence[str], directory: Path) -> None:
    """DataFolderError when the "classes" are split folders: images put directly in train/ and test/."""
    if set(class_names) <= _SPLIT_FOLDERS:
        raise DataFolderError(f"{directory}: the class folders found are {', '.join(class_names)}, which are split "
                              f"folders: the images sit directly in them; {_layout_hint(directory)}")


def _decode_error(path: str) -> tuple[str | None, tuple[int, int]]:
    """(None if the image at ``path`` decodes fully, else why not; its (width, height) in pixels)."""
    size = (0, 0)
    try:
        with Image.open(path) as image:
            size = image.size  # from the header, before draft() shrinks it
            image.draft(image.mode, (1, 1))  # JPEG: decode at 1/8 scale (every byte is still parsed); others: no-op
            image.load()  # Image.verify() alone passes truncated JPEGs
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        return str(err).replace(f" '{path}'", "") or type(err).__name__, size  # the message names the file already
    return None, size


def check_image_files(files: Sequence[str], directory: Path) -> None:
    """Decode every image file once; DataFolderError naming the first few that fail and their count."""
    keys = {}
    for f in files:
        stat = os.stat(f)
        keys[f] = (f, stat.st_size, stat.st_mtime_ns)
    todo = [f for f in files if keys[f] not in _decoded]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        found = list(tqdm(pool.map(_decode_error, todo), total=len(todo), desc="checking images", unit="image",
                          leave=False, disable=len(todo) < _BAR_FROM))
    bad = [(f, err) for f, (err, _) in zip(todo, found) if err is not None]
    tiny = [(f, f"{w}x{h}") for f, (err, (w, h)) in zip(todo, found) if err is None and min(w, h) < MIN_SIDE]
    _decoded.update(keys[f] for f, (err, (w, h)) in zip(todo, found) if err is None and min(w, h) >= MIN_SIDE)
    for problems, what, fix in ((bad, "cannot be decoded", "Delete or replace them"),
                                (tiny, f"are smaller than {MIN_SIDE}x{MIN_SIDE} pixels, too small to hold a picture "
                                       "to classify (upscaled they are flat patches)", "Use the full-size images")):
        if problems:
            named = "; ".join(f"{Path(f).relative_to(directory)} ({err})" for f, err in problems[:_SHOWN])
            more = f" and {len(problems) - _SHOWN} more" if len(problems) > _SHOWN else ""
            raise DataFolderError(f"{directory}: {len(problems)} of {len(files)} image files {what}: {named}{more}. "
                                  f"{fix}, then run again")
