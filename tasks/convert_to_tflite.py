"""Step 4a: convert the float Keras model to TFLite with TensorFlow's own converter, one variant
per call: float32, dynamic_range (the old SDK's Optimize.DEFAULT: int8 weights, float activations),
float16, int8_float_io, full_int8, full_uint8 and int16x8 (the last four calibrate on the
calibration set). Each result is checked against what its variant promises (core.variants).

Every variant converts the SavedModel tasks/export_saved_model.py exported once from the Keras model
(`from_saved_model`), which gives the bytes `from_keras_model` gives without saving the model again.
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
from core.records import BuiltModel, SavedModelExport, UnsupportedVariant
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


def keras_model_converter(saved_model: SavedModelExport):
    """TensorFlow's converter on the exported SavedModel, as `from_keras_model` would have made it.

    `from_keras_model` converts the SavedModel it writes (see tasks/export_saved_model.py); the one
    difference left is the model type the converter records in the model's conversion metadata. The
    model converted is the user's Keras model, so that is what it records here too, and the bytes are
    the same."""
    import tensorflow as tf
    from tensorflow.lite.python.conversion_metadata_schema_py_generated import ModelType

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model.path, signature_keys=[saved_model.signature_key])
    converter._metadata.environment.modelType = ModelType.KERAS_MODEL
    return converter


def convert_to_tflite(
    *,
    model_path: str,
    saved_model: SavedModelExport,
    variant: str,
    out_dir: Path,
    calibration_path: str | None = None,
) -> BuiltModel | UnsupportedVariant:
    """The variant's .tflite in `out_dir`, converted from `saved_model` (exported from the Keras model at
    `model_path`) and checked against its promise; or, for a variant the converter may not support (16x8),
    what it said when it could not make it."""
    import tensorflow as tf

    spec = VARIANTS.get(variant)
    if spec is None or spec.builder != "converter":
        converter_variants = [v for v, s in VARIANTS.items() if s.builder == "converter"]
        raise ValueError(f"unknown converter variant {variant!r}: expected one of {', '.join(converter_variants)}")
    if spec.calibrated and calibration_path is None:
        raise ValueError(f"variant {variant!r} calibrates: give calibration_path")
    calibration = np.load(calibration_path, mmap_mode="r") if calibration_path and spec.calibrated else None
    try:
        with CONVERTER_LOCK:
            converter = keras_model_converter(saved_model)
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
    cache_policy=ContentCachePolicy(file_inputs=("model_path", "saved_model", "calibration_path")),
    persist_result=True,
    **RETRY_OPTIONS,
)
def convert_to_tflite_task(
    *, model_path: str, saved_model: SavedModelExport, variant: str, calibration_path: str | None = None
) -> BuiltModel | UnsupportedVariant:
    """Convert the float Keras model to one TFLite variant with TensorFlow's converter, and check the result."""
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
