"""Step 7: measure each model's inference latency per image on this CPU.

One image per call, the median over `repeats` timed calls after a warm-up, with 1 thread and with
all threads (TFLite). The flow runs this step for one model at a time, after the evaluations, so the
figures are not disturbed by other work. Keras cannot change its thread count once TensorFlow has
started, so Keras models get the all-threads figure only. The key covers the machine's name and
core count: a figure measured on another machine is not reused.
"""

from __future__ import annotations

import os
import platform
import statistics
import time

import numpy as np
from prefect import task

from core.caching import ContentCachePolicy
from core.models import TFLitePredictor, load_keras_by_name
from core.records import Latency
from core.retry import RETRY_OPTIONS
from core.variants import is_tflite_model

WARM_UP = 3


def this_machine() -> str:
    return f"{platform.node()} ({os.cpu_count()} cores, {platform.machine()})"


def median_ms(run, image: np.ndarray, repeats: int) -> float:
    for _ in range(WARM_UP):
        run(image)
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(image)
        timings.append(time.perf_counter() - started)
    return round(statistics.median(timings) * 1000, 4)


def measure_latency(
    *, model_name: str, model_path: str, images_path: str, repeats: int = 20, allow_unsafe_code: bool = False
) -> Latency:
    image = np.ascontiguousarray(np.load(images_path, mmap_mode="r")[:1])
    if is_tflite_model(model_name):
        single = TFLitePredictor(model_path, num_threads=1)
        every = TFLitePredictor(model_path, num_threads=os.cpu_count())
        return Latency(
            one_thread_ms=median_ms(single, image, repeats),
            all_threads_ms=median_ms(every, image, repeats),
            repeats=repeats,
            machine=this_machine(),
        )
    model = load_keras_by_name(model_name, model_path, allow_unsafe_code)
    return Latency(
        one_thread_ms=None,
        all_threads_ms=median_ms(lambda x: model(x, training=False), image, repeats),
        repeats=repeats,
        machine=this_machine(),
    )


@task(
    name="measure-latency",
    task_run_name="measure-latency-{model_name}",
    # A figure measured on another machine is not reused.
    cache_policy=ContentCachePolicy(file_inputs=("model_path", "images_path"), environment=lambda _: this_machine()),
    persist_result=True,
    **RETRY_OPTIONS,
)
def measure_latency_task(
    *, model_name: str, model_path: str, images_path: str, repeats: int, allow_unsafe_code: bool = False
) -> Latency:
    """Median latency per image on this CPU, one thread and all threads, after a warm-up."""
    from prefect.logging import get_run_logger

    result = measure_latency(
        model_name=model_name,
        model_path=model_path,
        images_path=images_path,
        repeats=repeats,
        allow_unsafe_code=allow_unsafe_code,
    )
    one_thread = "n/a" if result.one_thread_ms is None else f"{result.one_thread_ms} ms"
    get_run_logger().info(
        "%s: %s per image on 1 thread, %s ms on all threads (median of %d) on %s",
        model_name,
        one_thread,
        result.all_threads_ms,
        repeats,
        result.machine,
    )
    return result
