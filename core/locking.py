"""A lock file per output folder, so two runs never mix their outputs.

The lock holds the owner's process id and host; a lock left by a process that no longer
exists on this host is stale and is taken over.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from core.errors import InputError

LOCK_NAME = ".quantize-evaluate.lock"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _try_acquire(lock: Path) -> dict | None:
    """Create the lock; on failure return its owner (None if a stale lock was removed)."""
    owner = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": dt.datetime.now().isoformat(timespec="seconds"),
    }
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        try:
            holder = json.loads(lock.read_text())
        except (OSError, ValueError):
            holder = {}
        if holder.get("host") == owner["host"] and isinstance(holder.get("pid"), int) and not _alive(holder["pid"]):
            lock.unlink(missing_ok=True)
            return None
        return holder or {"pid": "unknown"}
    with os.fdopen(fd, "w") as f:
        json.dump(owner, f)
    return {}


@contextlib.contextmanager
def locked_folders(folders: list[Path], timeout: float = 120.0, poll: float = 0.5) -> Iterator[None]:
    """Hold the lock of every folder (created if missing) while the block runs; wait up to `timeout` seconds for each."""
    held: list[Path] = []
    try:
        for folder in sorted({Path(f) for f in folders}):
            folder.mkdir(parents=True, exist_ok=True)
            lock = folder / LOCK_NAME
            deadline = time.monotonic() + timeout
            while (holder := _try_acquire(lock)) != {}:
                if holder is not None and time.monotonic() > deadline:
                    raise InputError(
                        f"folder {folder} is in use by another run (process {holder.get('pid')} on {holder.get('host', '?')}, "
                        f"started {holder.get('started', '?')}); waited {timeout:.0f} s. Wait for that run to finish, use another "
                        f"folder, or, if no such run is going on, delete {lock}"
                    )
                if holder is not None:
                    time.sleep(poll)
            held.append(lock)
        yield
    finally:
        for lock in held:
            lock.unlink(missing_ok=True)
