"""Atomic writes and content hashing of files and folders."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

_CHUNK = 1 << 20


def umask() -> int:
    """The process's umask, read without changing it: os.umask() reads it only by setting another, which
    threads creating files at that moment would see."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic(destination: Path, write: Callable[[Path], object]) -> Path:
    """Run `write` on a temporary name in the destination's folder (its result is ignored), then rename into place.

    A crash or kill leaves either the old file or the new one, never a truncated file. The file gets the
    permissions of any new file (0666 less the umask), not mkstemp's private 0600.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, destination)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return destination


def atomic_write_bytes(destination: Path, data: bytes) -> Path:
    return _atomic(destination, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(destination: Path, text: str) -> Path:
    return _atomic(destination, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(destination: Path, obj: Any) -> Path:
    return atomic_write_text(destination, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_copy(source: Path, destination: Path) -> Path:
    return _atomic(destination, lambda tmp: shutil.copyfile(source, tmp))


def atomic_copy_tree(source: Path, destination: Path) -> Path:
    """Copy a folder to a temporary name beside `destination`, then swap it into place: readers see the
    old folder or the new one, whole."""
    import shutil

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent))
    old = staging.with_name(staging.name + ".old")
    try:
        shutil.copytree(source, staging, dirs_exist_ok=True)
        os.chmod(staging, 0o777 & ~umask())  # mkdtemp's folder is private (0700)
        if destination.exists():
            os.replace(destination, old)
        try:
            os.replace(staging, destination)
        except OSError:
            if old.exists():  # put the previous folder back rather than lose it
                os.replace(old, destination)
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
    return destination


def atomic_save_numpy(destination: Path, array) -> Path:
    import numpy as np

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.save(f, array, allow_pickle=False)

    return _atomic(destination, write)


_FILE_DIGESTS: dict[tuple[str, int, int], str] = {}


def hash_path(path: str | Path) -> str:
    """Hex digest of a file's bytes, or of a folder's files (relative names and bytes, sorted).

    A file's digest is remembered for this process while its size and modification time stay the
    same: a decoded evaluation set can be gigabytes, and every model's evaluation keys on it.
    """
    path = Path(path)
    if path.is_file():
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
        if key not in _FILE_DIGESTS:
            digest = hashlib.blake2b(digest_size=20)
            _update_with_file(digest, path)
            _FILE_DIGESTS[key] = digest.hexdigest()
        return _FILE_DIGESTS[key]
    digest = hashlib.blake2b(digest_size=20)
    if path.is_dir():
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(file.relative_to(path).as_posix().encode())
            digest.update(b"\0")
            _update_with_file(digest, file)
    else:
        _update_with_file(digest, path)
    return digest.hexdigest()


def hash_files(paths: list[str | Path]) -> str:
    """Hex digest of several files' names and bytes, in the order given."""
    digest = hashlib.blake2b(digest_size=20)
    for path in paths:
        digest.update(str(path).encode())
        digest.update(b"\0")
        _update_with_file(digest, Path(path))
    return digest.hexdigest()


def _update_with_file(digest, file: Path) -> None:
    with open(file, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
