"""Step 6: evaluate one model on the shared evaluation set, scored as its kind of model scores it (core/kinds/:
for a classifier, Top-1, Top-5 and the confusion matrix).

The flow submits this step once per model so the four evaluations run concurrently, each
with its own model instance and TFLite interpreter.

Fault injection, for tests and drills: QUANTIZE_FAIL_EVALUATION=tflite_quantized (a comma
list of model names, or 'all'; or @FILE, read while that file exists) makes those evaluations
fail. It is not part of the cache key.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

from core.build.variants import KERAS_MODELS, is_tflite_model
from core.evaluate.core_share import EVALUATION_CORES, SharedPredictor
from core.evaluate.isolated import MODEL_WORKERS, IsolatedPredictor, injected_crash_key, models_forgotten
from core.evaluate.models import keras_predictor, load_keras_by_name
from core.failures import ModelCodeFailed, ModelFailed, ModelFailure, failure
from core.isolation import Child, InProcess
from core.kinds.records import Evaluation
from core.kinds.registry import CLASSIFICATION, kind_named

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
    if inputs.get("model_name") in injected or "all" in injected:
        return uuid.uuid4().hex
    return injected_crash_key(inputs)


def make_predictor(
    model_name: str, model_path: str, allow_unsafe_code: bool = False, worker: Child | InProcess | None = None
):
    """The model as a function of a batch: a Keras model in this process, a TFLite model in `worker` (its
    interpreter is native code that may crash on a model)."""
    if model_name in KERAS_MODELS:
        return keras_predictor(load_keras_by_name(model_name, model_path, allow_unsafe_code))
    if is_tflite_model(model_name):
        # Evaluations run concurrently, up to one per core: one thread each fills the cores without oversubscribing
        # them; a core none of them waits for is lent to a running one (core/evaluate/core_share.py).
        own = IsolatedPredictor(worker or InProcess(), model_name, model_path, num_threads=1)
        if worker is None or isinstance(worker, InProcess):
            return own
        return SharedPredictor(own, lambda: _helper(model_name, model_path))
    raise ValueError(f"unknown model name {model_name!r}: expected keras, keras_quantized or tflite...")


@contextmanager
def _helper(model_name: str, model_path: str) -> Iterator[IsolatedPredictor]:
    """The same TFLite model in another worker, for a lent core."""
    with MODEL_WORKERS.child() as worker, models_forgotten(worker):
        yield IsolatedPredictor(worker, model_name, model_path, num_threads=1)


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
    task: str = CLASSIFICATION.name,
) -> Evaluation | ModelFailure:
    """The model scored as its kind (`task`) scores it. `class_count` sizes the confusion matrix (default: the
    model's output size); `start` and `stop` select a shard of the images (all by default), for the kind's
    `merged` to put together. A TFLite model runs in a worker process: when it crashes there, or the interpreter
    refuses it, the evaluation is the model's failure, not the run's."""
    injected = injected_faults()
    if model_name in injected or "all" in injected:
        raise InjectedFault(f"evaluation of {model_name} failed on purpose ({FAULT_ENV}={os.environ[FAULT_ENV]})")
    in_a_worker = MODEL_WORKERS.child() if is_tflite_model(model_name) else nullcontext(None)
    # At most one evaluation per core runs at a time, whatever the task runner's pool size.
    with EVALUATION_CORES.own(), in_a_worker as worker, models_forgotten(worker):
        try:
            return kind_named(task).evaluate(
                model_name=model_name,
                model_path=model_path,
                load_predictor=lambda: make_predictor(model_name, model_path, allow_unsafe_code, worker),
                images_path=images_path,
                labels_path=labels_path,
                batch_size=batch_size,
                progress=progress,
                class_count=class_count,
                start=start,
                stop=stop,
            )
        except ModelCodeFailed as exc:
            return failure(model_name, "evaluate", exc)


def scored(outcome: Evaluation | ModelFailure) -> Evaluation:
    """The evaluation, where the caller cannot go on without it: a failure raises ModelFailed."""
    if isinstance(outcome, ModelFailure):
        raise ModelFailed(outcome)
    return outcome
