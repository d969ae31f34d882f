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
from core.retry import RETRY_OPTIONS

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
    model_name: str, model_path: str, images_path: str, repeats: int = 20, allow_unsafe_code: bool = False
) -> dict:
    image = np.ascontiguousarray(np.load(images_path, mmap_mode="r")[:1])
    if model_name.startswith("tflite"):
        single, every = (
            TFLitePredictor(model_path, num_threads=1),
            TFLitePredictor(model_path, num_threads=os.cpu_count()),
        )
        return {
            "1_thread": median_ms(single, image, repeats),
            "all_threads": median_ms(every, image, repeats),
            "repeats": repeats,
        }
    model = load_keras_by_name(model_name, model_path, allow_unsafe_code)
    return {
        "1_thread": None,
        "all_threads": median_ms(lambda x: model(x, training=False), image, repeats),
        "repeats": repeats,
    }


@task(
    name="measure-latency",
    task_run_name="measure-latency-{model_name}",
    cache_policy=ContentCachePolicy(file_inputs=("model_path", "images_path")),
    persist_result=True,
    **RETRY_OPTIONS,
)
def measure_latency_task(
    model_name: str, model_path: str, images_path: str, repeats: int, machine: str, allow_unsafe_code: bool = False
) -> dict:
    from prefect.logging import get_run_logger

    result = measure_latency(model_name, model_path, images_path, repeats, allow_unsafe_code)
    get_run_logger().info(
        "%s: %s ms per image on 1 thread, %s ms on all threads (median of %d) on %s",
        model_name,
        result["1_thread"],
        result["all_threads"],
        repeats,
        machine,
    )
    return {**result, "machine": machine}
