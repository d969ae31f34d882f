"""Step 6: evaluate one model on the shared evaluation set (Top-1).

The flow submits this step once per model so the four evaluations run concurrently, each
with its own model instance and TFLite interpreter.

Fault injection, for tests and drills: QUANTIZE_FAIL_EVALUATION=tflite_quantized (a comma
list of model names, or 'all'; or @FILE, read while that file exists) makes those evaluations
fail. It is not part of the cache key.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
from prefect import task
from tqdm import tqdm

from core.caching import ContentCachePolicy
from core.models import TFLitePredictor, keras_predictor, load_keras_model, load_quantized_keras_model
from core.retry import RETRY_OPTIONS

MODEL_NAMES = ("keras", "keras_quantized", "tflite", "tflite_quantized")
FAULT_ENV = "QUANTIZE_FAIL_EVALUATION"


class InjectedFault(RuntimeError):
    """Raised on purpose, through QUANTIZE_FAIL_EVALUATION."""


def injected_faults() -> set[str]:
    """The evaluations to fail on purpose: QUANTIZE_FAIL_EVALUATION holds a comma list of model names
    (or `all`), or `@FILE` to read that list from FILE while it exists, so a test can fail a deployed
    run and then "fix" the fault before pressing Retry."""
    value = os.environ.get(FAULT_ENV, "")
    if value.startswith("@"):
        fault_file = Path(value[1:])
        value = fault_file.read_text() if fault_file.is_file() else ""
    return {name.strip() for name in value.split(",") if name.strip()}


def make_predictor(model_name: str, model_path: str, allow_unsafe_code: bool = False):
    if model_name == "keras":
        return keras_predictor(load_keras_model(model_path, allow_unsafe_code))
    if model_name == "keras_quantized":
        return keras_predictor(load_quantized_keras_model(model_path))
    if model_name in ("tflite", "tflite_quantized"):
        return TFLitePredictor(model_path, num_threads=os.cpu_count())
    raise ValueError(f"unknown model name {model_name!r}: expected one of {MODEL_NAMES}")


def predict_classes(
    model_name: str, model_path: str, images_path: str, batch_size: int, progress: bool = True, allow_unsafe_code: bool = False
) -> np.ndarray:
    images = np.load(images_path, mmap_mode="r")
    predict = make_predictor(model_name, model_path, allow_unsafe_code)
    predicted = np.empty(len(images), np.int64)
    with tqdm(total=len(images), desc=f"evaluate {model_name}", unit="img", disable=not progress) as bar:
        for start in range(0, len(images), batch_size):
            batch = np.ascontiguousarray(images[start : start + batch_size])
            predicted[start : start + len(batch)] = np.argmax(predict(batch), axis=-1)
            bar.update(len(batch))
    return predicted


def evaluate_model(
    model_name: str, model_path: str, images_path: str, labels_path: str, batch_size: int, progress: bool = True, allow_unsafe_code: bool = False
) -> dict:
    injected = injected_faults()
    if model_name in injected or "all" in injected:
        raise InjectedFault(f"evaluation of {model_name} failed on purpose ({FAULT_ENV}={os.environ[FAULT_ENV]})")
    started = time.perf_counter()
    predicted = predict_classes(model_name, model_path, images_path, batch_size, progress, allow_unsafe_code)
    labels = np.load(labels_path)
    correct = int(np.sum(predicted == labels))
    return {
        "model": model_name,
        "model_path": model_path,
        "top_1_accuracy": correct / len(labels) if len(labels) else 0.0,
        "correct": correct,
        "image_count": int(len(labels)),
        "seconds": round(time.perf_counter() - started, 3),
        "predicted": predicted.tolist(),
    }


@task(
    name="evaluate-model",
    task_run_name="evaluate-{model_name}",
    cache_policy=ContentCachePolicy(file_inputs=("model_path", "images_path", "labels_path"), ignore=("progress",)),
    persist_result=True,
    **RETRY_OPTIONS,
)
def evaluate_model_task(
    model_name: str, model_path: str, images_path: str, labels_path: str, batch_size: int, progress: bool = True, allow_unsafe_code: bool = False
) -> dict:
    from prefect.logging import get_run_logger

    result = evaluate_model(model_name, model_path, images_path, labels_path, batch_size, progress, allow_unsafe_code)
    get_run_logger().info(
        "%s: Top-1 %.4f (%d of %d images) in %.1f s", model_name, result["top_1_accuracy"], result["correct"], result["image_count"], result["seconds"]
    )
    return result
