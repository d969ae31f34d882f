"""A lock per output folder, so two runs never mix their outputs.

The lock is the operating system's (`flock`, through the `filelock` package) on a file in the folder: it
ends with the process that holds it, however that process ends (a crash, SIGKILL, a full disk), so no lock
is ever left behind to block later runs, and there is nothing to clean up by hand. The lock file is
removed when the lock is let go; a run killed while holding it leaves the empty file, which the next run
locks and removes.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import filelock

from core.errors import InputError

LOCK_NAME = ".quantize-evaluate.lock"
log = logging.getLogger(__name__)


class FolderLock(filelock.UnixFileLock):
    """An flock on a file removed on release. Removing it is safe because a waiter that locked a file the
    previous owner had just removed finds the path no longer names that file, lets it go and tries again."""

    def _acquire(self) -> None:
        try:
            super()._acquire()
        except FileNotFoundError:  # removed by its owner between filelock's exists() and open(): try again
            return
        fd = self._context.lock_file_fd
        if fd is not None and not _names_open_file(self.lock_file, fd):
            super()._release()

    def _release(self) -> None:
        Path(self.lock_file).unlink(missing_ok=True)  # while still holding it: see _acquire
        super()._release()


def _names_open_file(path: str, fd: int) -> bool:
    try:
        on_disk = os.stat(path)
    except FileNotFoundError:
        return False
    opened = os.fstat(fd)
    return (on_disk.st_dev, on_disk.st_ino) == (opened.st_dev, opened.st_ino)


@contextlib.contextmanager
def locked_folders(folders: list[Path], timeout: float = 120.0, poll: float = 0.5) -> Iterator[None]:
    """Hold the lock of every folder (created if missing) while the block runs; wait up to `timeout` s for each."""
    with contextlib.ExitStack() as held:
        for folder in sorted({Path(f) for f in folders}):  # one order for every run: no deadlock
            folder.mkdir(parents=True, exist_ok=True)
            held.enter_context(_locked(folder, timeout, poll))
        yield


@contextlib.contextmanager
def _locked(folder: Path, timeout: float, poll: float) -> Iterator[None]:
    lock = FolderLock(folder / LOCK_NAME)
    try:
        try:
            lock.acquire(timeout=0)
        except filelock.Timeout:
            log.warning(
                "folder %s is in use by another run: waiting up to %.0f s for it (`fuser -v %s` names the process)",
                folder,
                timeout,
                folder / LOCK_NAME,
            )
            lock.acquire(timeout=timeout, poll_interval=poll)
    except filelock.Timeout:
        raise InputError(
            f"folder {folder} is in use by another run (it holds {folder / LOCK_NAME}); waited {timeout:.0f} s. "
            f"Wait for that run to finish, or use another folder (`fuser -v {folder / LOCK_NAME}` names the process). "
            "The lock ends with its process, even a killed one: there is nothing to delete"
        ) from None
    except OSError as exc:  # a full disk or a read-only folder: nothing is held
        raise OSError(
            exc.errno,
            f"cannot create the lock file {folder / LOCK_NAME} ({exc.strerror}): "
            "free space on that disk or make the folder writable, then run again",
        ) from exc
    try:
        yield
    finally:
        lock.release()
