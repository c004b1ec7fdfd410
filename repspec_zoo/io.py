"""Atomic file writes: a crash leaves either the old file or the new one, never half of one.

A write that fails because the file system is full (or over quota) raises `DiskFullError`, a
`UserError` naming the path, after the temp file is removed: the command answers in one line.
"""
from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from .errors import UserError

__all__ = ["DiskFullError", "atomic_write_bytes", "atomic_write_text", "full_disk_is_user_error"]

#: free bytes under which a failed write is put down to a full disk: torch.save reports ENOSPC as a
#: RuntimeError ("unexpected pos ...") and safetensors as its own error, neither with an errno
FULL_DISK_BYTES = 1 << 20


class DiskFullError(UserError, OSError):
    """A write failed because its file system is full or over quota; the message names the path and the fix."""


def _is_disk_full(err: Exception, path: Path) -> bool:
    if isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    folder = path if path.is_dir() else path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        return shutil.disk_usage(folder).free < FULL_DISK_BYTES
    except OSError:
        return False


@contextlib.contextmanager
def full_disk_is_user_error(path: str | os.PathLike, fix: str) -> Iterator[None]:
    """Turn an error of a write under ``path`` into a `DiskFullError` (message: the path, the error, ``fix``)
    when the file system is full: an OSError ENOSPC/EDQUOT, or any error while under FULL_DISK_BYTES are free.
    Nested, the outermost names the path and fix (what the user asked to write, e.g. the export folder)."""
    try:
        yield
    except DiskFullError as err:
        cause = err.__cause__ or err
        raise DiskFullError(f"no space left on the device of {path} ({type(cause).__name__}: {cause}); {fix}") \
            from cause
    except UserError:
        raise
    except Exception as err:
        if not _is_disk_full(err, Path(path)):
            raise
        raise DiskFullError(f"no space left on the device of {path} ({type(err).__name__}: {err}); {fix}") from err


def atomic_write_bytes(path: str | os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to a temp file in the target directory, fsync, then rename over ``path``."""
    path = Path(path)
    with full_disk_is_user_error(path, f"free space or write elsewhere ({path} is unchanged)"):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(payload)
                f.flush()
                os.fsync(f.fileno())
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file normal permissions
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode())
