"""Step 4a: convert the float Keras model to `model.tflite` with TensorFlow's own converter.

`float_tflite` says what it is: 'float32' (the plain conversion, the default) or
'dynamic_range' (the old SDK's Optimize.DEFAULT without representative data: int8 weights,
float activations, float input and output).
"""
from __future__ import annotations

import time
from pathlib import Path

from prefect import task

from core.caching import ContentCachePolicy
from core.errors import StepError
from core.files import atomic_write_bytes
from core.models import load_keras_model
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir


def convert_to_tflite(model_path: str, mode: str, out_dir: Path, allow_unsafe_code: bool = False) -> dict:
    import tensorflow as tf

    model = load_keras_model(model_path, allow_unsafe_code)
    try:
        converter = tf.lite.TFLiteConverter.from_keras_model(model)
        if mode == "dynamic_range":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
    except Exception as exc:
        raise StepError("convert-to-tflite", model_path, exc) from exc
    path = atomic_write_bytes(Path(out_dir) / "model.tflite", flatbuffer)
    return {"path": str(path), "kind": mode, "tensorflow_version": tf.__version__}


@task(name="convert-to-tflite", cache_policy=ContentCachePolicy(file_inputs=("model_path",)), persist_result=True, **RETRY_OPTIONS)
def convert_to_tflite_task(model_path: str, mode: str, allow_unsafe_code: bool = False) -> dict:
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = convert_to_tflite(model_path, mode, new_work_dir("convert"), allow_unsafe_code)
    get_run_logger().info("TensorFlow's converter made a %s TFLite model of %s -> %s in %.1f s", mode, model_path, result["path"], time.perf_counter() - started)
    return result
