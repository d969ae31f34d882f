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

from core.build.variants import is_tflite_model
from core.evaluate.isolated import MODEL_WORKERS, in_worker
from core.evaluate.models import TFLitePredictor, load_keras_by_name
from core.evaluate.records import Latency
from core.failures import ModelCodeFailed, ModelFailure, failure

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


def tflite_latency(*, model_path: str, image: np.ndarray, repeats: int) -> Latency:
    """Run where the model's crash costs only this step: in a worker process (MODEL_WORKERS)."""
    single = TFLitePredictor(model_path, num_threads=1)
    every = TFLitePredictor(model_path, num_threads=os.cpu_count())
    return Latency(
        one_thread_ms=median_ms(single, image, repeats),
        all_threads_ms=median_ms(every, image, repeats),
        repeats=repeats,
        machine=this_machine(),
    )


def measure_latency(
    *, model_name: str, model_path: str, images_path: str, repeats: int = 20, allow_unsafe_code: bool = False
) -> Latency | ModelFailure:
    """The model's latency, or, for a TFLite model whose interpreter crashed or refused it, that failure."""
    image = np.ascontiguousarray(np.load(images_path, mmap_mode="r")[:1])
    if is_tflite_model(model_name):
        try:
            return in_worker(MODEL_WORKERS, tflite_latency, model_path=model_path, image=image, repeats=repeats)
        except ModelCodeFailed as exc:
            return failure(model_name, "latency", exc)
    model = load_keras_by_name(model_name, model_path, allow_unsafe_code)
    return Latency(
        one_thread_ms=None,
        all_threads_ms=median_ms(lambda x: model(x, training=False), image, repeats),
        repeats=repeats,
        machine=this_machine(),
    )
