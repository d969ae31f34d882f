"""The quantization variants a user would consider, what each promises, and the check that an
exported model keeps that promise.

Users of these tools are often silently handed a float-input model when they asked for uint8, so
every exported .tflite is inspected after export: input and output dtypes, their quantization
parameters, and the tensor types inside. A mismatch is a `VariantMismatch` naming the variant.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

Variant = Literal[
    "float32",
    "dynamic_range",
    "float16",
    "int8_float_io",
    "full_int8",
    "full_uint8",
    "int16x8",
    "mct_ptq",
    "mct_gptq",
    "mct_mixed_precision",
]
# The four models the SDK compared; results.json keeps a top_1_accuracy_<name> key for each.
SDK_MODELS = ("keras", "keras_quantized", "tflite", "tflite_quantized")
CONVERTER_VARIANTS = ("float32", "dynamic_range", "float16", "int8_float_io", "full_int8", "full_uint8", "int16x8")
MCT_VARIANTS = ("mct_ptq", "mct_gptq", "mct_mixed_precision")
# GPTQ and mixed precision are slow: built only when the configuration lists them.
DEFAULT_VARIANTS = CONVERTER_VARIANTS + ("mct_ptq",)
# The converter variants that calibrate on representative data.
CALIBRATED_VARIANTS = ("int8_float_io", "full_int8", "full_uint8", "int16x8")


@dataclass(frozen=True)
class Promise:
    description: str
    input_dtype: str
    output_dtype: str
    inner: str | None = None  # a tensor type that must appear inside ("int8", "float16", "int16")
    quantized_activations: bool | None = None  # True: QUANTIZE ops (real int activations); False: none allowed


PROMISES: dict[str, Promise] = {
    "float32": Promise("TFLite float32", "float32", "float32", quantized_activations=False),
    "dynamic_range": Promise(
        "TFLite dynamic range (int8 weights, float activations)",
        "float32",
        "float32",
        "int8",
        quantized_activations=False,
    ),
    "float16": Promise("TFLite float16 weights", "float32", "float32", "float16"),
    "int8_float_io": Promise(
        "TFLite integer, float input/output", "float32", "float32", "int8", quantized_activations=True
    ),
    "full_int8": Promise("TFLite full integer, int8 input/output", "int8", "int8", "int8"),
    "full_uint8": Promise("TFLite full integer, uint8 input/output", "uint8", "uint8", "int8"),
    "int16x8": Promise(
        "TFLite 16x8 (int16 activations, int8 weights)", "float32", "float32", "int16", quantized_activations=True
    ),
    "mct_ptq": Promise("MCT PTQ, int8 TFLite", "float32", "float32", "int8"),
    "mct_gptq": Promise("MCT GPTQ, int8 TFLite", "float32", "float32", "int8"),
    "mct_mixed_precision": Promise("MCT mixed precision, int8 TFLite", "float32", "float32", "int8"),
}


def model_id(variant: str, float_tflite: str) -> str:
    """The name a variant's TFLite model has in the results: the SDK's two keep theirs."""
    if variant == float_tflite:
        return "tflite"
    if variant == "mct_ptq":
        return "tflite_quantized"
    return f"tflite_{variant}"


def variants_to_build(requested: list[str] | None, float_tflite: str) -> list[str]:
    """The requested variants (default DEFAULT_VARIANTS), always with the SDK's two, in catalogue order."""
    wanted = set(requested if requested is not None else DEFAULT_VARIANTS) | {float_tflite, "mct_ptq"}
    return [v for v in CONVERTER_VARIANTS + MCT_VARIANTS if v in wanted]


def variant_file_name(variant: str, float_tflite: str) -> str:
    """The file named as the model: model.tflite, model_quantized.tflite, model_<variant>.tflite."""
    return f"model{model_id(variant, float_tflite).removeprefix('tflite')}.tflite"


class VariantMismatch(Exception):
    """An exported model is not what its variant promises."""


def inspect_tflite(path: str | Path) -> dict:
    """What a .tflite model actually is: input/output dtypes and quantization, tensor and op types."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    tensor_in, tensor_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return {
        "input_dtype": np.dtype(tensor_in["dtype"]).name,
        "output_dtype": np.dtype(tensor_out["dtype"]).name,
        "input_quantization": [float(tensor_in["quantization"][0]), int(tensor_in["quantization"][1])],
        "output_quantization": [float(tensor_out["quantization"][0]), int(tensor_out["quantization"][1])],
        "tensor_types": sorted({np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()}),
        # The public API has no op listing; this one is stable across TF 2.x.
        "ops": sorted({op["op_name"] for op in interpreter._get_ops_details()}),
    }


def check_variant(path: str | Path, variant: str, promise: Promise | None = None) -> dict:
    """Raise VariantMismatch unless the model at `path` is what `variant` promises; return what it is."""
    promise = promise or PROMISES[variant]
    found = inspect_tflite(path)
    problems = []
    for side in ("input", "output"):
        expected, actual = getattr(promise, f"{side}_dtype"), found[f"{side}_dtype"]
        if actual != expected:
            problems.append(f"{side} is {actual}, expected {expected}")
        elif expected in ("int8", "uint8", "int16") and found[f"{side}_quantization"][0] == 0:
            problems.append(f"{side} is {actual} but carries no quantization scale")
    if promise.inner and promise.inner not in found["tensor_types"]:
        problems.append(f"no {promise.inner} tensor inside (found {', '.join(found['tensor_types'])})")
    has_quantize_ops = "QUANTIZE" in found["ops"]
    if promise.quantized_activations is True and not has_quantize_ops:
        problems.append("activations are not quantized (no QUANTIZE op)")
    if promise.quantized_activations is False and has_quantize_ops:
        problems.append("activations are quantized, expected float activations")
    if problems:
        raise VariantMismatch(
            f"variant '{variant}' ({promise.description}) exported {Path(path).name} that does not keep its promise: "
            + "; ".join(problems)
        )
    return found
