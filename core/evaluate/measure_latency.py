"""Step 7: measure each model's inference latency per image on this CPU.

One image per call, the median over `repeats` timed calls after a warm-up, with 1 thread and with
all threads (TFLite). The flow runs this step for one model at a time, after the evaluations, so the
figures are not disturbed by its own work. Keras cannot change its thread count once TensorFlow has
started, so Keras models get the all-threads figure only. The key covers the machine's name and
core count: a figure measured on another machine is not reused.

Other work on the machine (another run, a build) can still take the CPU from the timing and make a figure
several times too slow. So each timing also notes how much of the CPU its threads got of what they were
ready to use (`cpu_share`); under MIN_CPU_SHARE it is timed again after a pause, a few times within
QUIET_BUDGET_S, and a figure that never got a quiet moment is kept (the least disturbed one) but named in the
record's `under_load`, which the tables and the report mark.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from core.build.variants import is_tflite_model
from core.evaluate.isolated import LATENCY_WORKERS, in_worker
from core.evaluate.models import TFLitePredictor, load_keras_by_name
from core.evaluate.records import Latency
from core.failures import ModelCodeFailed, ModelFailure, failure

WARM_UP = 3
# A timing whose threads got less than this share of the CPU time they were ready to use was taken under load.
# On a quiet machine they get all of it (0.99 and more measured); with more busy processes than cores, 0.1 to 0.5
# (measured on 2 cores), and the all-threads figure grows tenfold.
MIN_CPU_SHARE = 0.8
QUIET_ATTEMPTS = 3  # timings of one figure at most, the first included
QUIET_WAIT_S = 0.5  # the pause before timing again, for the other work's burst to pass
QUIET_BUDGET_S = 3.0  # seconds: no retry of a model's figures starts that would end past this (waits included)

_TASKS = Path("/proc/self/task")


def this_machine() -> str:
    return f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})"


def cpu_share(cpu_seconds: float, ready_seconds: float) -> float:
    """The share of the time the timing's threads were ready to run that they ran: 1.0 when nothing took the CPU."""
    return 1.0 if ready_seconds <= 0 else min(1.0, max(0.0, cpu_seconds / ready_seconds))


def contended(cpu_seconds: float, ready_seconds: float) -> bool:
    """Whether other work took enough of the CPU from a timing that its figure is not this model's latency."""
    return cpu_share(cpu_seconds, ready_seconds) < MIN_CPU_SHARE


def _threads_schedstat() -> dict[str, tuple[int, int]] | None:
    """Per thread of this process: nanoseconds on a CPU and nanoseconds runnable but waiting for one (Linux)."""
    found: dict[str, tuple[int, int]] = {}
    try:
        stats = list(_TASKS.glob("*/schedstat"))
    except OSError:
        return None
    for stat in stats:
        try:
            on_cpu, waiting, *_ = stat.read_text().split()
            found[stat.parent.name] = (int(on_cpu), int(waiting))
        except (OSError, ValueError):  # the thread ended meanwhile
            continue
    return found or None


class CpuClock:
    """What a timing's threads got of the CPU since this clock started: (CPU seconds, seconds ready to run).

    Linux says, per thread, how long it ran and how long it waited, runnable, for a CPU (schedstat): that covers
    every thread the timing uses, and a thread that sleeps (an all-threads interpreter's pool thread
    with nothing to do on a small model, TensorFlow's threads waiting at a barrier) counts neither way. Comparing
    the process's CPU time with wall clock x threads instead would call every small model on a quiet machine
    loaded. Where Linux's figures are missing, the calling thread's CPU time against the wall clock: exact for
    the 1-thread figure, which runs on that thread."""

    def __init__(self) -> None:
        self.threads = _threads_schedstat()
        self.wall = time.perf_counter()
        self.thread_cpu = time.thread_time()

    def read(self) -> tuple[float, float]:
        now = _threads_schedstat()
        if self.threads is not None and now is not None:
            before = self.threads
            on_cpu = sum(cpu - before.get(tid, (0, 0))[0] for tid, (cpu, _) in now.items())
            waiting = sum(wait - before.get(tid, (0, 0))[1] for tid, (_, wait) in now.items())
            return on_cpu / 1e9, (on_cpu + waiting) / 1e9
        return time.thread_time() - self.thread_cpu, time.perf_counter() - self.wall


@dataclass(frozen=True)
class Timing:
    ms: float  # the median per call
    cpu_share: float  # what the calls' threads got of the CPU they were ready to use

    @property
    def under_load(self) -> bool:
        return self.cpu_share < MIN_CPU_SHARE


def timing(run: Callable[[np.ndarray], Any], image: np.ndarray, repeats: int) -> Timing:
    for _ in range(WARM_UP):
        run(image)
    clock = CpuClock()
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(image)
        timings.append(time.perf_counter() - started)
    cpu, ready = clock.read()
    return Timing(ms=round(statistics.median(timings) * 1000, 4), cpu_share=round(cpu_share(cpu, ready), 3))


def quiet_timing(run: Callable[[np.ndarray], Any], image: np.ndarray, repeats: int, deadline: float) -> Timing:
    """The first timing on a quiet CPU; when other work loaded it each time (QUIET_ATTEMPTS, or no time left before
    `deadline`, a time.monotonic()), the one that got the most of it."""
    best: Timing | None = None
    for attempt in range(QUIET_ATTEMPTS):
        if attempt:
            time.sleep(QUIET_WAIT_S)
        started = time.monotonic()
        found = timing(run, image, repeats)
        if best is None or found.cpu_share > best.cpu_share:
            best = found
        if not best.under_load or time.monotonic() + QUIET_WAIT_S + (time.monotonic() - started) > deadline:
            break
    assert best is not None
    return best


def load_text(timings: dict[str, Timing]) -> str:
    """What each figure's timing got of the CPU, and the machine's load average: 'CPU share: 1 thread 97%, ...'."""
    shares = ", ".join(f"{name.replace('_', ' ')} {t.cpu_share:.0%}" for name, t in timings.items())
    try:
        average = f"; load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} cores"
    except (AttributeError, OSError):  # not on this system
        average = ""
    return f"CPU share the timing got: {shares}{average}"


def latency_record(timings: dict[str, Timing], repeats: int) -> Latency:
    """`timings` by as_results' names: "1_thread" (TFLite only) and "all_threads"."""
    one_thread = timings.get("1_thread")
    return Latency(
        one_thread_ms=one_thread.ms if one_thread else None,
        all_threads_ms=timings["all_threads"].ms,
        repeats=repeats,
        machine=this_machine(),
        under_load=tuple(name for name, t in timings.items() if t.under_load),
        load=load_text(timings),
    )


def tflite_latency(*, model_path: str, image: np.ndarray, repeats: int) -> Latency:
    """Run where the model's crash costs only this step: in a worker process (LATENCY_WORKERS)."""
    single = TFLitePredictor(model_path, num_threads=1)
    every = TFLitePredictor(model_path, num_threads=os.cpu_count())
    deadline = time.monotonic() + QUIET_BUDGET_S
    timings = {
        "1_thread": quiet_timing(single, image, repeats, deadline),
        "all_threads": quiet_timing(every, image, repeats, deadline),
    }
    return latency_record(timings, repeats)


def measure_latency(
    *, model_name: str, model_path: str, images_path: str, repeats: int = 20, allow_unsafe_code: bool = False
) -> Latency | ModelFailure:
    """The model's latency, or, for a TFLite model whose interpreter crashed or refused it, that failure."""
    image = np.ascontiguousarray(np.load(images_path, mmap_mode="r")[:1])
    if is_tflite_model(model_name):
        try:
            return in_worker(LATENCY_WORKERS, tflite_latency, model_path=model_path, image=image, repeats=repeats)
        except ModelCodeFailed as exc:
            return failure(model_name, "latency", exc)
    model = load_keras_by_name(model_name, model_path, allow_unsafe_code)
    deadline = time.monotonic() + QUIET_BUDGET_S
    return latency_record(
        {"all_threads": quiet_timing(lambda x: model(x, training=False), image, repeats, deadline)}, repeats
    )
