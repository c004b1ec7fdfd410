"""Checkpoints of a run: ``RUN_DIR/checkpoints/step_0000123``, written atomically, newest K kept.

Each checkpoint is a folder from ``accelerator.save_state`` (model incl. regularizer buffers,
optimizer, RNG states of every process) plus ``train_state.json`` (epoch, position in the epoch,
optimizer step, the epoch's running sums). It is written into ``.step_0000123.tmp``, flushed to
disk and then renamed, so a run killed at any moment leaves every earlier checkpoint intact
and never a half-written one under a ``step_*`` name. Old checkpoints are renamed to a
``.trash`` name before they are deleted.
"""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from ..io import atomic_write_text
from ..runs import STATE_FILE

__all__ = ["Checkpoints"]

_NAME = re.compile(r"^step_(\d{7,})$")


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
