"""TensorFlow Lite models run in worker processes (core/isolation.py): the interpreter is native code, and on some
models it aborts (EfficientNetB0's 16x8 model) or refuses a tensor; that must cost the model, not the command.

`IsolatedPredictor` is a TFLitePredictor in a worker: the evaluation's loop, its progress bar and its scoring stay in
the step's process and send it batch after batch. `tflite_latency` measures a model in a worker likewise. Whatever
goes wrong in the worker reaches the caller as ModelCodeFailed.

Fault injection, for tests and drills: QUANTIZE_CRASH_MODEL=tflite_int16x8 (a comma list of model names) makes the
worker abort natively (SIGABRT) when it opens that model, as TensorFlow Lite does on EfficientNetB0's 16x8 model.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from core.evaluate.models import TFLitePredictor
from core.failures import ModelCodeFailed
from core.isolation import YIELDING, Child, InProcess, Workers, WorkersStopped
from core.storage import cache_root

CRASH_ENV = "QUANTIZE_CRASH_MODEL"

# One per core: the evaluations themselves are bounded to one per core (core/evaluate/evaluate_model.py).
MODEL_WORKERS = Workers("model-worker", lambda: cache_root() / "work" / "logs", nice=YIELDING)
# Latencies are measured one model at a time, on a quiet machine, at the command's own priority.
LATENCY_WORKERS = Workers("latency-worker", lambda: cache_root() / "work" / "logs", size=1)

_open: dict[str, TFLitePredictor] = {}  # in a worker: the models it holds, by key


def injected_crashes() -> set[str]:
    return {name.strip() for name in os.environ.get(CRASH_ENV, "").split(",") if name.strip()}


def injected_crash_key(inputs: dict) -> str | None:
    """A model named in QUANTIZE_CRASH_MODEL has a cache key of the drill's own: its failure is remembered for a rerun
    of the drill (as a real crash's is), and serves no run without it."""
    return f"crash drill on {inputs['model_name']}" if inputs.get("model_name") in injected_crashes() else None


def _open_model(key: str, path: str, num_threads: int | None, crash: bool) -> None:
    if crash:
        os.abort()
    _open[key] = TFLitePredictor(path, num_threads=num_threads)


def _predict(key: str, batch: np.ndarray) -> np.ndarray:
    return _open[key](batch)


def _forget_models() -> None:
    _open.clear()


@contextmanager
def models_forgotten(worker: Child | InProcess | None) -> Iterator[None]:
    """The worker, given back to the others when this ends, holds none of the models opened meanwhile."""
    try:
        yield
    finally:
        if isinstance(worker, Child) and worker.alive:
            worker.call(_forget_models)
        elif isinstance(worker, InProcess):
            _forget_models()


def in_worker(where: Child | InProcess | Workers, fn: Callable[..., Any], /, **kwargs: Any) -> Any:
    """`fn(**kwargs)` in that worker (or any of those), where what fails is the model's: ModelCodeFailed."""
    try:
        return where.run(fn, **kwargs) if isinstance(where, Workers) else where.call(fn, **kwargs)
    except WorkersStopped:
        raise
    except Exception as exc:  # the model's code failed: its crash or what the library raised on it
        raise ModelCodeFailed(exc) from exc


class IsolatedPredictor:
    """Runs a .tflite model in `child`, as TFLitePredictor would here."""

    def __init__(self, child: Child | InProcess, model_name: str, path: str, num_threads: int | None = None):
        self.child = child
        self.key = uuid.uuid4().hex
        crash = model_name in injected_crashes()
        in_worker(child, _open_model, key=self.key, path=str(path), num_threads=num_threads, crash=crash)

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return in_worker(self.child, _predict, key=self.key, batch=np.ascontiguousarray(batch))
