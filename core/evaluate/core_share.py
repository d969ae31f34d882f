"""The evaluations' share of the machine's cores.

Each evaluation waits for a core of its own (one TFLite interpreter, one thread). A core no evaluation waits for is
lent to a TFLite evaluation already running: a second interpreter, in another worker process, takes batches from the
rest of its images, and the core is given back after the batch under way as soon as an evaluation waits for one. So
the last evaluations of a run, and the slowest (int16x8's reference kernels use one thread whatever they are given),
finish on every core, while a run with more evaluations than cores keeps one per core.

A core is lent only to an evaluation with at least `LEND_AFTER_S` seconds of work left (measured on its first
batch): opening the model in another worker costs a second or two.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import numpy as np

from core.data.image_store import iter_batches

LEND_AFTER_S = 20.0  # the work an evaluation must have left for a lent core to pay for its second interpreter


class CoreShare:
    """Cores held by evaluations: `own()` waits for one; `lend()` takes a spare one only when nobody waits."""

    def __init__(self, cores: int | None = None):
        self.cores = cores or os.cpu_count() or 1
        self._changed = threading.Condition()
        self._free = self.cores
        self._waiting = 0

    @contextmanager
    def own(self) -> Iterator[None]:
        with self._changed:
            self._waiting += 1
            try:
                while self._free == 0:
                    self._changed.wait()
            finally:
                self._waiting -= 1
            self._free -= 1
        try:
            yield
        finally:
            self.give_back()

    def lend(self) -> bool:
        """A core for a running evaluation's helper, when one is free and no evaluation waits for it."""
        with self._changed:
            if self._free > 0 and self._waiting == 0:
                self._free -= 1
                return True
            return False

    def wanted(self) -> bool:
        """Whether an evaluation waits for a core (a helper then gives its own back)."""
        with self._changed:
            return self._waiting > 0

    def give_back(self) -> None:
        with self._changed:
            self._free += 1
            self._changed.notify_all()


EVALUATION_CORES = CoreShare()


class SharedPredictor:
    """A model's predictor that can take helpers: `helper()` opens another predictor of the same model (a context
    manager), used on cores the share lends."""

    def __init__(
        self,
        predict: Callable[[np.ndarray], Any],
        helper: Callable[[], AbstractContextManager[Callable[[np.ndarray], Any]]],
        share: CoreShare = EVALUATION_CORES,
    ):
        self.predict = predict
        self.helper = helper
        self.share = share
        self.helpers_used = 0  # how many helpers took part, for the tests and the log

    def __call__(self, batch: np.ndarray) -> Any:
        return self.predict(batch)

    def outputs(self, images_path: str, batch_size: int, start: int, stop: int) -> Iterator[tuple[int, Any]]:
        """(first image index, outputs) of every batch of images [start, stop), not necessarily in order."""
        firsts = deque(range(start, stop, batch_size))
        taking = threading.Lock()
        finished: queue.SimpleQueue = queue.SimpleQueue()
        ending = threading.Event()
        threads: list[threading.Thread] = []

        def take() -> int | None:
            with taking:
                return firsts.popleft() if firsts and not ending.is_set() else None

        def read(first: int) -> np.ndarray:
            return next(iter_batches(images_path, batch_size, first, min(first + batch_size, stop)))

        def help_on_lent_core() -> None:
            try:
                with self.helper() as predict:
                    while not self.share.wanted() and (first := take()) is not None:
                        finished.put((first, predict(read(first))))
            except BaseException as exc:  # the model's failure, raised in the evaluation's own thread
                finished.put(exc)
            finally:
                self.share.give_back()

        remaining = len(firsts)
        seconds_per_batch: float | None = None
        try:
            while remaining:
                left = seconds_per_batch * len(firsts) / (len(threads) + 1) if seconds_per_batch else 0.0
                if left >= LEND_AFTER_S and len(threads) < self.share.cores - 1 and self.share.lend():
                    threads.append(threading.Thread(target=help_on_lent_core, name="lent-core", daemon=True))
                    threads[-1].start()
                    self.helpers_used += 1
                first = take()
                if first is not None:
                    started = time.perf_counter()
                    outputs = self.predict(read(first))
                    seconds_per_batch = seconds_per_batch or time.perf_counter() - started
                    remaining -= 1
                    yield first, outputs
                while remaining and (first is None or not finished.empty()):
                    item = finished.get()
                    if isinstance(item, BaseException):
                        raise item
                    remaining -= 1
                    yield item
        finally:
            ending.set()
            for thread in threads:
                thread.join()
