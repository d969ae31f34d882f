"""Step 4a: convert the float Keras model to TFLite with TensorFlow's own converter, one variant
per call: float32, dynamic_range (the old SDK's Optimize.DEFAULT: int8 weights, float activations),
float16, int8_float_io, full_int8, full_uint8 and int16x8 (the last four calibrate on the
calibration set). Each result is checked against what its variant promises (core.build.variants).

The step's logic: core/build/convert_to_tflite.py.
"""

from __future__ import annotations

import time

from prefect import task

from core.build.convert_to_tflite import convert_to_tflite
from core.build.records import BuiltModel, SavedModelExport, UnsupportedVariant
from core.caching import ContentCachePolicy
from core.failures import ModelFailure
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir


@task(
    name="convert-to-tflite",
    task_run_name="convert-to-tflite-{variant}",
    cache_policy=ContentCachePolicy(file_inputs=("model_path", "saved_model", "calibration_path")),
    persist_result=True,
    **RETRY_OPTIONS,
)
def convert_to_tflite_task(
    *, model_path: str, saved_model: SavedModelExport, variant: str, calibration_path: str | None = None
) -> BuiltModel | UnsupportedVariant | ModelFailure:
    """Convert the float Keras model to one TFLite variant with TensorFlow's converter, and check the result (or say
    why the converter could not make it, or how it crashed on the model)."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = convert_to_tflite(
        model_path=model_path,
        saved_model=saved_model,
        variant=variant,
        out_dir=new_work_dir("convert"),
        calibration_path=calibration_path,
    )
    if isinstance(result, UnsupportedVariant):
        get_run_logger().warning(
            "TensorFlow's converter cannot make the %s variant of %s: %s", variant, model_path, result.reason
        )
        return result
    if isinstance(result, ModelFailure):
        get_run_logger().warning(
            "TensorFlow's converter crashed on the %s variant of %s: %s", variant, model_path, result.reason
        )
        return result
    get_run_logger().info(
        "TensorFlow's converter made the %s variant of %s (input %s, output %s) -> %s in %.1f s",
        variant,
        model_path,
        result.facts.input_dtype,
        result.facts.output_dtype,
        result.path,
        time.perf_counter() - started,
    )
    return result
