"""Step 4a: convert the float Keras model to TFLite with TensorFlow's own converter, one variant
per call: float32, dynamic_range (the old SDK's Optimize.DEFAULT: int8 weights, float activations),
float16, int8_float_io, full_int8, full_uint8 and int16x8 (the last four calibrate on the
calibration set). Each result is checked against what its variant promises (core.variants).
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
from prefect import task

from core.caching import ContentCachePolicy
from core.errors import StepError
from core.files import atomic_write_bytes
from core.models import load_keras_model
from core.records import BuiltModel, UnsupportedVariant
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir
from core.variants import VARIANTS, built_file_name, check_variant

# The converter's bindings keep process-wide state that is not documented as safe to use from
# several threads at once; conversions take seconds, so they run one at a time.
CONVERTER_LOCK = threading.Lock()


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
    if variant == "int16x8":
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8
        ]


def convert_to_tflite(
    *,
    model_path: str,
    variant: str,
    out_dir: Path,
    calibration_path: str | None = None,
    allow_unsafe_code: bool = False,
) -> BuiltModel | UnsupportedVariant:
    """The variant's .tflite in `out_dir`, checked against its promise; or, for a variant the converter may
    not support (16x8), what it said when it could not make it."""
    import tensorflow as tf

    spec = VARIANTS.get(variant)
    if spec is None or spec.builder != "converter":
        converter_variants = [v for v, s in VARIANTS.items() if s.builder == "converter"]
        raise ValueError(f"unknown converter variant {variant!r}: expected one of {', '.join(converter_variants)}")
    if spec.calibrated and calibration_path is None:
        raise ValueError(f"variant {variant!r} calibrates: give calibration_path")
    model = load_keras_model(model_path, allow_unsafe_code)
    calibration = np.load(calibration_path, mmap_mode="r") if calibration_path and spec.calibrated else None
    try:
        with CONVERTER_LOCK:
            converter = tf.lite.TFLiteConverter.from_keras_model(model)
            configure(converter, variant, calibration)
            flatbuffer = converter.convert()
    except Exception as exc:
        if spec.optional and "not yet supported" in str(exc):
            return UnsupportedVariant(variant=variant, reason=f"{type(exc).__name__}: {exc}")
        raise StepError(f"convert-to-tflite ({variant})", model_path, exc) from exc
    path = atomic_write_bytes(Path(out_dir) / built_file_name(variant), flatbuffer)
    facts = check_variant(path, variant)
    return BuiltModel(variant=variant, path=str(path), facts=facts, builder=f"TensorFlow {tf.__version__} converter")


@task(
    name="convert-to-tflite",
    task_run_name="convert-to-tflite-{variant}",
    cache_policy=ContentCachePolicy(file_inputs=("model_path", "calibration_path")),
    persist_result=True,
    **RETRY_OPTIONS,
)
def convert_to_tflite_task(
    *, model_path: str, variant: str, calibration_path: str | None = None, allow_unsafe_code: bool = False
) -> BuiltModel | UnsupportedVariant:
    """Convert the float Keras model to one TFLite variant with TensorFlow's converter, and check the result."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = convert_to_tflite(
        model_path=model_path,
        variant=variant,
        out_dir=new_work_dir("convert"),
        calibration_path=calibration_path,
        allow_unsafe_code=allow_unsafe_code,
    )
    if isinstance(result, UnsupportedVariant):
        get_run_logger().warning(
            "TensorFlow's converter cannot make the %s variant of %s: %s", variant, model_path, result.reason
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
