"""Step 4a: convert the float Keras model to TFLite with TensorFlow's own converter, one variant
per call: float32, dynamic_range (the old SDK's Optimize.DEFAULT: int8 weights, float activations),
float16, int8_float_io, full_int8, full_uint8 and int16x8 (the last four calibrate on the
calibration set). Each result is checked against what its variant promises (core.build.variants).

Every variant converts the SavedModel tasks/export_saved_model.py exported once from the Keras model
(`from_saved_model`), which gives the bytes `from_keras_model` gives without saving the model again.
Each conversion runs in a worker process (ConversionWorkers), so conversions run in parallel.
"""

from __future__ import annotations

import atexit
import multiprocessing
import multiprocessing.util
import os
import pickle
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from core.build.keras_conversion import keras_model_converter
from core.build.records import BuiltModel, SavedModelExport, UnsupportedVariant
from core.build.variants import VARIANTS, built_file_name, check_variant
from core.errors import StepError
from core.files import atomic_write_bytes
from core.storage import cache_root

T = TypeVar("T")


def configure(converter, variant: str, calibration: np.ndarray | None) -> None:
    import tensorflow as tf

    if variant == "float32":
        return
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if variant == "float16":
        converter.target_spec.supported_types = [tf.float16]
    if VARIANTS[variant].calibrated:
        if calibration is None:
            raise ValueError(f"variant {variant!r} calibrates: give the calibration images")
        images = calibration
        converter.representative_dataset = lambda: ([images[i : i + 1].astype(np.float32)] for i in range(len(images)))
    if VARIANTS[variant].full_integer:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        io_type = tf.as_dtype(VARIANTS[variant].promise.input_dtype)
        converter.inference_input_type = converter.inference_output_type = io_type
    if variant in ("int16x8", "full_int16x8"):
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]


def convert_and_check(
    *, saved_model: SavedModelExport, variant: str, path: Path, calibration_path: str | None
) -> BuiltModel | Exception:
    """Runs in a conversion worker: the variant's .tflite at `path`, checked against its promise (a broken
    promise raises). What the converter raised is returned instead, as an exception that crosses back."""
    import tensorflow as tf

    spec = VARIANTS[variant]
    calibration = np.load(calibration_path, mmap_mode="r") if calibration_path and spec.calibrated else None
    try:
        converter = keras_model_converter(saved_model.path, saved_model.signature_key)
        configure(converter, variant, calibration)
        flatbuffer = converter.convert()
    except Exception as exc:
        return portable(exc)
    atomic_write_bytes(path, flatbuffer)
    facts = check_variant(path, variant)
    return BuiltModel(variant=variant, path=str(path), facts=facts, builder=f"TensorFlow {tf.__version__} converter")


def portable(exc: Exception) -> Exception:
    """The exception itself when it survives pickling (the parent then re-raises it as it was), else a
    RuntimeError with its type and message (some of TensorFlow's need arguments pickling does not keep)."""
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:
        return RuntimeError(f"{type(exc).__name__}: {exc}")
    return exc


class ConversionWorkers:
    """The processes TensorFlow's converter runs in, so that conversions run in parallel with each other and
    with the other steps (the converter is not safe to run from several threads of one process).

    At most one per core, started ('spawn': a fresh interpreter each) when the first conversion needs one and
    shared by every conversion of this process. A run submits its conversions within seconds of each other, so they
    exit after `idle_seconds` without work: then, not at the command's exit, where waiting for them costs a second.
    A daemonic process (a Dask worker running a flow) may not start processes: there conversions run in the process,
    one at a time.
    """

    def __init__(self, idle_seconds: float = 10.0):
        self.idle_seconds = idle_seconds
        self._lock = threading.Lock()
        self._in_process = threading.Lock()
        self._pool: ProcessPoolExecutor | None = None
        self._busy = 0
        self._idle_timer: threading.Timer | None = None
        self._close_registered = False
        self._closed = False  # at the command's exit: no worker starts again (a step's retry after Ctrl-C)

    def run(self, fn: Callable[..., T], /, **kwargs: Any) -> T:
        """`fn(**kwargs)` in a worker process (fn and its arguments must pickle): its result, or what it raised."""
        if multiprocessing.current_process().daemon:
            with self._in_process:
                return fn(**kwargs)
        with self._lock:
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            if self._closed:
                raise RuntimeError("the conversion workers are stopped: the command is ending")
            if self._pool is None:
                if not self._close_registered:
                    # Registered after multiprocessing's own exit handler, so it runs first: that one waits for
                    # every worker to end, but first closes the queue that would have told them to. Its logger's
                    # first use registers that handler again, last: done here first, so it cannot overtake this.
                    multiprocessing.util.get_logger()
                    atexit.register(self.close)
                    self._close_registered = True
                self._pool = ProcessPoolExecutor(
                    max_workers=os.cpu_count() or 1,
                    mp_context=multiprocessing.get_context("spawn"),
                    initializer=write_native_output_to,
                    initargs=(str(worker_log_dir()),),
                )
            pool = self._pool
            self._busy += 1
        try:
            return pool.submit(fn, **kwargs).result()
        except BrokenProcessPool:
            with self._lock:  # a worker died (killed, out of memory): the next conversion starts new ones
                if self._pool is pool:
                    self._pool = None
            pool.shutdown(wait=False)
            raise
        finally:
            with self._lock:
                self._busy -= 1
                if self._busy == 0 and self._pool is not None:
                    self._idle_timer = threading.Timer(self.idle_seconds, self._close_if_idle)
                    self._idle_timer.daemon = True
                    self._idle_timer.start()

    def _close_if_idle(self) -> None:
        with self._lock:
            if self._busy or self._pool is None:
                return
            pool, self._pool = self._pool, None
        pool.shutdown(wait=True)

    def close(self) -> None:
        """Stop the workers now, idle or busy, for good: at the command's exit, where nobody waits for a result."""
        with self._lock:
            self._closed = True
            if self._idle_timer is not None:
                self._idle_timer.cancel()
                self._idle_timer = None
            pool, self._pool = self._pool, None
        if pool is None:
            return
        workers = list((pool._processes or {}).values())  # the executor's own record of them (no public one)
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in workers:  # a worker writes only to temporary names: nothing is lost
            worker.kill()
        for worker in workers:
            worker.join()


CONVERSION_WORKERS = ConversionWorkers()


def worker_log_dir() -> Path:
    return cache_root() / "work" / "logs"


def write_native_output_to(log_dir: str) -> None:
    """In a conversion worker: what the converter's native code prints (a summary of the operators it did not
    convert, for every model; TensorFlow's messages at import) goes to a log file of the worker's own instead of the
    command's output, where it buried the run's log. What the converter raises still reaches the step."""
    folder = Path(log_dir)
    folder.mkdir(parents=True, exist_ok=True)
    log = os.open(folder / f"conversion-worker-{os.getpid()}.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(log, 1)
    os.dup2(log, 2)
    os.close(log)


def convert_to_tflite(
    *,
    model_path: str,
    saved_model: SavedModelExport,
    variant: str,
    out_dir: Path,
    calibration_path: str | None = None,
) -> BuiltModel | UnsupportedVariant:
    """The variant's .tflite in `out_dir`, converted in a worker process from `saved_model` (exported from the
    Keras model at `model_path`) and checked against its promise; or, for a variant the converter may not
    support (16x8), what it said when it could not make it."""
    spec = VARIANTS.get(variant)
    if spec is None or spec.builder != "converter":
        converter_variants = [v for v, s in VARIANTS.items() if s.builder == "converter"]
        raise ValueError(f"unknown converter variant {variant!r}: expected one of {', '.join(converter_variants)}")
    if spec.calibrated and calibration_path is None:
        raise ValueError(f"variant {variant!r} calibrates: give calibration_path")
    step = f"convert-to-tflite ({variant})"
    try:
        outcome = CONVERSION_WORKERS.run(
            convert_and_check,
            saved_model=saved_model,
            variant=variant,
            path=Path(out_dir) / built_file_name(variant),
            calibration_path=calibration_path,
        )
    except BrokenProcessPool as exc:
        died = RuntimeError(f"{exc} (its output is in {worker_log_dir()}/conversion-worker-*.log)")
        raise StepError(step, model_path, died) from exc
    if isinstance(outcome, BuiltModel):
        return outcome
    if spec.optional and "not yet supported" in str(outcome):
        return UnsupportedVariant(variant=variant, reason=f"{type(outcome).__name__}: {outcome}")
    raise StepError(step, model_path, outcome) from outcome
