"""Step 4a: convert the float Keras model to TFLite with TensorFlow's own converter, one variant
per call: float32, dynamic_range (the old SDK's Optimize.DEFAULT: int8 weights, float activations),
float16, int8_float_io, full_int8, full_uint8 and int16x8 (the last four calibrate on the
calibration set). Each result is checked against what its variant promises (core.build.variants).

Every variant converts the SavedModel tasks/export_saved_model.py exported once from the Keras model
(`from_saved_model`), which gives the bytes `from_keras_model` gives without saving the model again.
Each conversion runs in a worker process (CONVERSION_WORKERS), so conversions run in parallel.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.build.keras_conversion import keras_model_converter
from core.build.records import BuiltModel, SavedModelExport, UnsupportedVariant
from core.build.shared_calibration import calibrations_shared
from core.build.variants import VARIANTS, built_file_name, check_variant
from core.errors import StepError
from core.failures import ModelCodeFailed, ModelFailure, failure, reason_of
from core.files import atomic_write_bytes
from core.isolation import ChildDied, Workers, portable
from core.storage import cache_root


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
) -> BuiltModel | BaseException:
    """Runs in a conversion worker: the variant's .tflite at `path`, checked against its promise (a broken
    promise raises). What the converter raised is returned instead, as an exception that crosses back."""
    import tensorflow as tf

    spec = VARIANTS[variant]
    calibration = np.load(calibration_path, mmap_mode="r") if calibration_path and spec.calibrated else None
    try:
        converter = keras_model_converter(saved_model.path, saved_model.signature_key)
        configure(converter, variant, calibration)
    except Exception as exc:
        return portable(exc)
    try:
        with calibrations_shared(calibration_path if spec.calibrated else None):
            flatbuffer = converter.convert()
    except Exception as exc:  # the converter's verdict on this model (an operator it cannot convert)
        return ConverterRefused(reason_of(exc))
    atomic_write_bytes(path, flatbuffer)
    facts = check_variant(path, variant)
    return BuiltModel(variant=variant, path=str(path), facts=facts, builder=f"TensorFlow {tf.__version__} converter")


class ConverterRefused(Exception):
    """TensorFlow's converter raised on the model: it cannot make this variant of it."""


# The processes TensorFlow's converter runs in, so that conversions run in parallel with each other and with the
# other steps (the converter is not safe to run from several threads of one process), and so that a converter that
# crashes on a model costs that variant, not the command.
CONVERSION_WORKERS = Workers("conversion-worker", lambda: worker_log_dir())


def worker_log_dir() -> Path:
    return cache_root() / "work" / "logs"


def convert_to_tflite(
    *,
    model_path: str,
    saved_model: SavedModelExport,
    variant: str,
    out_dir: Path,
    calibration_path: str | None = None,
) -> BuiltModel | UnsupportedVariant | ModelFailure:
    """The variant's .tflite in `out_dir`, converted in a worker process from `saved_model` (exported from the
    Keras model at `model_path`) and checked against its promise; or, when the converter cannot make it for this
    model (16x8 of an ELU, an operator it has no kernel for), what it said; or, when it crashed on the model, that
    failure."""
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
    except ChildDied as exc:
        # Named by its variant: the flow names the model (core.build.variants.model_id).
        return failure(variant, "convert", ModelCodeFailed(exc))
    if isinstance(outcome, BuiltModel):
        return outcome
    if isinstance(outcome, ConverterRefused) and spec.optional and "not yet supported" in str(outcome):
        return UnsupportedVariant(variant=variant, reason=str(outcome))
    if isinstance(outcome, ConverterRefused):
        return UnsupportedVariant(variant=variant, reason=f"TensorFlow's converter refused the model: {outcome}")
    raise StepError(step, model_path, outcome) from outcome
