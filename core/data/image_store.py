"""Decoded images kept on disk as a .npy file, written and read in batches of bounded memory.

The evaluation set of a real user is ImageNet-size (50,000 images): decoded, it is far larger than
memory. It is decoded once, batch by batch, appended to the file, and every model's evaluation reads
it back batch by batch with plain reads (not a memory map, whose touched pages would stay resident).
The file is a standard .npy: `np.load(path, mmap_mode="r")` opens it too.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np

HEADER_BYTES = 256  # room for the .npy header, written last when the image count is known


class NpyBatchWriter:
    """Append batches of equal-shaped arrays to a .npy file; `close()` writes the header and renames
    the file into place, so a crash never leaves a truncated file under the final name."""

    def __init__(self, path: str | Path, item_shape: tuple[int, ...], dtype=np.float32):
        self.path, self.item_shape, self.dtype = Path(path), tuple(item_shape), np.dtype(dtype)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        self.file = open(self.tmp, "wb")
        self.file.seek(HEADER_BYTES)
        self.count = 0

    def append(self, batch: np.ndarray) -> None:
        batch = np.ascontiguousarray(batch, dtype=self.dtype)
        if batch.shape[1:] != self.item_shape:
            raise ValueError(f"batch of shape {batch.shape[1:]} appended to a store of {self.item_shape}")
        self.file.write(batch.tobytes())
        self.count += len(batch)

    def close(self) -> Path:
        try:
            return self._finish()
        except BaseException:
            self.abort()
            raise

    def _finish(self) -> Path:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.count, *self.item_shape),
        }
        text = repr(header).encode("latin1")
        padding = HEADER_BYTES - len(np.lib.format.MAGIC_PREFIX) - 2 - 2 - len(text) - 1
        if padding < 0:
            raise ValueError(f"shape {header['shape']} does not fit the reserved header")
        self.file.seek(0)
        self.file.write(
            np.lib.format.magic(1, 0) + (HEADER_BYTES - 10).to_bytes(2, "little") + text + b" " * padding + b"\n"
        )
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        if not self.file.closed:
            self.file.close()
        self.tmp.unlink(missing_ok=True)

    def __enter__(self) -> NpyBatchWriter:
        return self

    def __exit__(self, kind, value, traceback) -> None:
        if kind is None:
            self.close()
        else:
            self.abort()


def npy_layout(path: str | Path) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) of a .npy file, read from its header."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, fortran_order, dtype = read_header(f)
        if fortran_order:
            raise ValueError(f"{path} is in Fortran order")
        return shape, dtype, f.tell()


def iter_batches(path: str | Path, batch_size: int, start: int = 0, stop: int | None = None) -> Iterator[np.ndarray]:
    """Images [start, stop) of the .npy file, `batch_size` at a time, each batch a fresh array."""
    shape, dtype, offset = npy_layout(path)
    stop = shape[0] if stop is None else min(stop, shape[0])
    item_count = int(np.prod(shape[1:], dtype=np.int64))
    item_bytes = item_count * dtype.itemsize
    with open(path, "rb") as f:
        for first in range(start, stop, batch_size):
            n = min(batch_size, stop - first)
            f.seek(offset + first * item_bytes)
            yield np.fromfile(f, dtype=dtype, count=n * item_count).reshape((n, *shape[1:]))


def image_count(path: str | Path) -> int:
    return npy_layout(path)[0][0]
