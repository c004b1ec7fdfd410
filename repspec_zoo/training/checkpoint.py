"""Checkpoints of a run: ``RUN_DIR/checkpoints/step_0000123``, written atomically, newest K kept.

Each checkpoint is a folder from ``accelerator.save_state`` (model incl. regularizer buffers,
optimizer, RNG states of every process) plus ``train_state.json`` (epoch, position in the epoch,
optimizer step, the epoch's running sums). It is written into ``.step_0000123.tmp``, flushed to
disk and then renamed, so a run killed at any moment leaves every earlier checkpoint intact
and never a half-written one under a ``step_*`` name. Old checkpoints are renamed to a
``.trash`` name before they are deleted.

Files can still go bad afterwards (a full disk, a copy cut short, an HTML error page saved under a
checkpoint's name). Resume therefore reads every file of the newest checkpoint first
(:func:`checkpoint_problem`) and falls back to the newest one that reads, setting the bad ones aside
as ``step_0000123.corrupt``; it fails, naming them, only when none reads.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import warnings
import zipfile
from pathlib import Path

import safetensors

from ..errors import UserError
from ..io import atomic_write_text
from ..runs import STATE_FILE

__all__ = ["Checkpoints", "CheckpointError", "checkpoint_problem"]

_NAME = re.compile(r"^step_(\d{7,})$")
_CORRUPT = ".corrupt"  # suffix of a checkpoint set aside by resume
# What accelerate.save_state writes for one model and one optimizer (besides RNG/sampler states).
_REQUIRED = ((STATE_FILE,), ("model.safetensors", "pytorch_model.bin"), ("optimizer.bin",))


class CheckpointError(UserError, RuntimeError):
    """No checkpoint of a run can be resumed from: every one has an unreadable or missing file."""


def checkpoint_problem(checkpoint: Path) -> str | None:
    """Why ``checkpoint`` cannot be resumed from (its first bad file), or None when every file reads.

    Each file is read once, without building tensors (load_state then loads them, once):
    ``train_state.json`` must parse as a JSON object; every ``*.safetensors`` header must describe
    exactly the bytes that follow (``safetensors.safe_open``: catches truncated, empty and HTML
    files); every torch.save file (``*.bin``, ``*.pkl``, ``*.pt``: zip archives) must pass the CRC-32 of each
    member (``zipfile.testzip``), which also catches flipped bytes that ``torch.load`` would not.
    """
    for names in _REQUIRED:
        if not any((checkpoint / name).is_file() for name in names):
            return f"{' or '.join(names)} is missing"
    try:
        if not isinstance(json.loads((checkpoint / STATE_FILE).read_text()), dict):
            return f"{STATE_FILE} is not a JSON object"
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return f"{STATE_FILE} is not valid JSON ({err})"
    for path in sorted(checkpoint.iterdir()):
        try:
            if path.suffix == ".safetensors":
                with safetensors.safe_open(path, "pt"):
                    pass
            elif path.suffix in (".bin", ".pkl", ".pt"):
                with zipfile.ZipFile(path) as archive:
                    damaged = archive.testzip()
                if damaged is not None:
                    return f"{path.name} is damaged (checksum of {damaged} differs)"
        except (safetensors.SafetensorError, zipfile.BadZipFile, OSError, EOFError) as err:
            return f"{path.name} is unreadable ({err})"
    return None


def _fsync_tree(folder: Path) -> None:
    """Flush every file of ``folder`` and the folder itself to disk."""
    for path in [*folder.rglob("*"), folder]:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class Checkpoints:
    """The checkpoint folders of one run.

    Args:
        directory: ``RUN_DIR/checkpoints``.
        keep: how many of the newest checkpoints to keep (>= 1).
    """

    def __init__(self, directory: str | os.PathLike, keep: int):
        self.directory, self.keep = Path(directory), keep

    def all(self) -> list[Path]:
        """Complete checkpoints, oldest first."""
        if not self.directory.is_dir():
            return []
        found = [p for p in self.directory.iterdir() if _NAME.match(p.name) and (p / STATE_FILE).is_file()]
        return sorted(found, key=lambda p: int(_NAME.match(p.name).group(1)))

    def latest(self) -> Path | None:
        found = self.all()
        return found[-1] if found else None

    def newest_good(self, accelerator) -> Path | None:
        """The newest checkpoint every file of which reads (None: the run has none yet); call on every process.

        Newer, unreadable checkpoints are renamed to ``step_N.corrupt`` (so later saves and the
        newest-K pruning never count them) with a warning naming each.

        Raises:
            CheckpointError: the run has checkpoints but none reads; names each and why.
        """
        bad: list[tuple[Path, str]] = []
        for checkpoint in reversed(self.all()):  # every process reads the same files: the same verdict
            problem = checkpoint_problem(checkpoint)
            if problem is None:
                break
            bad.append((checkpoint, problem))
        else:
            if bad:
                named = "; ".join(f"{folder} ({problem})" for folder, problem in bad)
                raise CheckpointError(f"no checkpoint of this run can be resumed from: {named}. Delete these "
                                      f"folders to train from the start, or restore them from a copy")
            return None
        accelerator.wait_for_everyone()  # no process reads a folder while it is renamed
        if accelerator.is_main_process:
            for folder, problem in bad:
                aside = folder.with_name(folder.name + _CORRUPT)
                shutil.rmtree(aside, ignore_errors=True)
                os.replace(folder, aside)
                warnings.warn(f"checkpoint {folder} cannot be resumed from: {problem}. Resuming from "
                              f"{checkpoint.name} instead; the bad folder is kept as {aside.name} (delete it once "
                              f"inspected)", stacklevel=2)
        accelerator.wait_for_everyone()
        return checkpoint

    def discard_partial(self) -> None:
        """Delete what a killed run left half-written (temp and trash folders). Main process only."""
        if self.directory.is_dir():
            for path in self.directory.iterdir():
                if path.name.startswith(".") and path.name.endswith((".tmp", ".trash")):
                    shutil.rmtree(path, ignore_errors=True)

    def save(self, accelerator, step: int, train_state: dict) -> Path:
        """Save the full training state at optimizer step ``step``; call on every process."""
        final = self.directory / f"step_{step:07d}"
        staging = self.directory / f".{final.name}.tmp"
        if accelerator.is_main_process:
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            atomic_write_text(staging / STATE_FILE, json.dumps(train_state, indent=1))
            _fsync_tree(staging)
            if final.exists():  # the same step saved again (e.g. a re-run after the end): replace it
                self._trash(final)
            os.replace(staging, final)
            for old in self.all()[:-self.keep]:
                self._trash(old)
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator, checkpoint: Path) -> dict:
        """Restore ``checkpoint`` into the prepared objects (every process); returns its train state."""
        accelerator.load_state(str(checkpoint))
        return json.loads((checkpoint / STATE_FILE).read_text())

    def _trash(self, path: Path) -> None:
        trash = path.with_name(f".{path.name}.trash")
        shutil.rmtree(trash, ignore_errors=True)
        os.replace(path, trash)
        shutil.rmtree(trash)
