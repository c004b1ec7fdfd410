"""One training at a time per run directory: an advisory lock on ``RUN_DIR/.lock``.

Two trainings into the same ``--output`` would both append every epoch to ``metrics.jsonl`` and
overwrite each other's checkpoints. `RunLock` takes an exclusive ``fcntl.flock`` on
``RUN_DIR/.lock`` and writes the holder (pid, host, command) into it; a second training finds the
lock held and stops with a `RunLockedError` naming that process. The kernel releases a flock when
its process ends, however it ends, so the lock of a killed training is stale by construction: the
next training takes it (the file stays, with the dead holder's line, until overwritten). Locks are
per machine on local file systems (NFS needs lockd; a shared cluster file system may not honour
them).

Multi-process (Accelerate): only the main process holds the lock; the others learn the outcome
from it, so every process of a refused launch raises the same error.
"""
from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path

from ..errors import UserError

__all__ = ["LOCK_FILE", "RunLock", "RunLockedError", "lock_run_dir"]

LOCK_FILE = ".lock"


class RunLockedError(UserError, RuntimeError):
    """Another training process holds the run directory."""


class RunLock:
    """The exclusive lock of one run directory, held until `release` (or the process ends)."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        """Take the lock (creating the run directory); RunLockedError naming the holder if it is taken."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)  # no O_TRUNC: the holder's line stays readable
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                os.close(fd)
                raise RunLockedError(
                    f"{self.path.parent} is being trained by {holder} (lock {self.path}); wait for it to finish, "
                    "stop it, or train into another directory with --output") from None
            try:  # a releasing holder may have unlinked the file we opened: lock the file at the path
                same = os.path.samestat(os.fstat(fd), os.stat(self.path))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()} ({' '.join(sys.argv)})\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Remove the lock file and drop the lock (idempotent)."""
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)  # while still locked: no other process holds an unlinked copy
        os.close(self._fd)  # closing the last descriptor releases the flock
        self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def lock_run_dir(run_dir: str | os.PathLike) -> RunLock | None:
    """Lock ``run_dir`` for this training launch: the main process takes `RunLock` (None elsewhere), and
    every process raises the same RunLockedError if another training holds it."""
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list, parse_flag_from_env

    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))  # as Accelerator() reads it: CPU processes
    lock, refusal = None, [None]
    if state.is_main_process:
        try:
            lock = RunLock(run_dir).acquire()
        except RunLockedError as err:
            refusal = [str(err)]
    if state.num_processes > 1:
        broadcast_object_list(refusal)
    if refusal[0] is not None:
        raise RunLockedError(refusal[0])
    return lock
