"""Step 6: evaluate one model on the shared evaluation set: Top-1, Top-5 and the confusion matrix.

The flow submits this step once per model so the four evaluations run concurrently, each
with its own model instance and TFLite interpreter.

Fault injection, for tests and drills: QUANTIZE_FAIL_EVALUATION=tflite_quantized (a comma
list of model names, or 'all'; or @FILE, read while that file exists) makes those evaluations
fail. It is not part of the cache key.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.build.variants import KERAS_MODELS, is_tflite_model
from core.data.image_store import image_count, iter_batches
from core.evaluate.metrics import confusion_matrix, top_k_correct
from core.evaluate.models import TFLitePredictor, keras_predictor, load_keras_by_name
from core.evaluate.records import Evaluation

# At most one evaluation per core runs at a time, whatever the task runner's pool size.
EVALUATION_SLOTS = threading.BoundedSemaphore(os.cpu_count() or 1)
TOP_K = 5
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


def injected_fault_key(inputs: dict) -> str | None:
    """An evaluation named in QUANTIZE_FAIL_EVALUATION gets a key of its own each time, so a rehearsal's fault
    fires even when the evaluation is cached; the others keep theirs."""
    injected = injected_faults()
    return uuid.uuid4().hex if inputs.get("model_name") in injected or "all" in injected else None


def make_predictor(model_name: str, model_path: str, allow_unsafe_code: bool = False):
    if model_name in KERAS_MODELS:
        return keras_predictor(load_keras_by_name(model_name, model_path, allow_unsafe_code))
    if is_tflite_model(model_name):
        # Evaluations run concurrently, up to one per core: one thread each fills the cores
        # without oversubscribing them.
        return TFLitePredictor(model_path, num_threads=1)
    raise ValueError(f"unknown model name {model_name!r}: expected keras, keras_quantized or tflite...")


def predict_top_k(
    *,
    model_name: str,
    model_path: str,
    images_path: str,
    batch_size: int,
    progress: bool = True,
    allow_unsafe_code: bool = False,
    start: int = 0,
    stop: int | None = None,
) -> tuple[np.ndarray, int]:
    """(images, min(5, classes)) class ids, best first, of images [start, stop), and the model's class count."""
    stop = image_count(images_path) if stop is None else stop
    total = stop - start
    predict = make_predictor(model_name, model_path, allow_unsafe_code)
    predicted, class_count, done = None, 0, 0
    with tqdm(total=total, desc=f"evaluate {model_name}", unit="img", disable=not progress) as bar:
        for batch in iter_batches(images_path, batch_size, start, stop):
            scores = predict(batch)
            if predicted is None:
                class_count = scores.shape[-1]
                predicted = np.empty((total, min(TOP_K, class_count)), np.int64)
            predicted[done : done + len(batch)] = np.argsort(-scores, axis=-1, kind="stable")[:, : predicted.shape[1]]
            done += len(batch)
            bar.update(len(batch))
    return (predicted if predicted is not None else np.empty((0, 1), np.int64)), class_count


def evaluate_model(
    *,
    model_name: str,
    model_path: str,
    images_path: str,
    labels_path: str,
    batch_size: int,
    progress: bool = True,
    allow_unsafe_code: bool = False,
    class_count: int | None = None,
    start: int = 0,
    stop: int | None = None,
) -> Evaluation:
    """`class_count` sizes the confusion matrix (default: the model's output size); `start` and `stop`
    select a shard of the images (all by default), for `Evaluation.merged` to put together."""
    injected = injected_faults()
    if model_name in injected or "all" in injected:
        raise InjectedFault(f"evaluation of {model_name} failed on purpose ({FAULT_ENV}={os.environ[FAULT_ENV]})")
    with EVALUATION_SLOTS:
        started = time.perf_counter()
        top_k, model_classes = predict_top_k(
            model_name=model_name,
            model_path=model_path,
            images_path=images_path,
            batch_size=batch_size,
            progress=progress,
            allow_unsafe_code=allow_unsafe_code,
            start=start,
            stop=stop,
        )
        seconds = time.perf_counter() - started
    labels = np.load(labels_path)[start:stop]
    predicted = top_k[:, 0]
    return Evaluation.counted(
        model=model_name,
        model_path=model_path,
        correct=top_k_correct(top_k[:, :1], labels),
        correct_top_5=top_k_correct(top_k, labels),
        seconds=seconds,
        confusion_matrix=confusion_matrix(predicted, labels, class_count or model_classes).tolist(),
        predicted=predicted.tolist(),
        shard=(start, start + len(labels)),
    )
