"""The registry of quantization variants: every fact about a variant that more than one module needs
(what it promises, which builder makes it, whether it calibrates, whether it is full-integer, which
devices take it, the names of its files), and the check that an exported model keeps its promise.

Users of these tools are often silently handed a float-input model when they asked for uint8, so
every exported .tflite is inspected after export: input and output dtypes, their quantization
parameters, and the tensor types inside. A mismatch is a `VariantMismatch` naming the variant.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol, TypeVar, get_args

import numpy as np

from core.build.records import TFLiteFacts


class _HasVariant(Protocol):
    @property
    def variant(self) -> str: ...


T = TypeVar("T", bound=_HasVariant)

Variant = Literal[
    "float32",
    "dynamic_range",
    "float16",
    "int8_float_io",
    "full_int8",
    "full_uint8",
    "int16x8",
    "full_int16x8",
    "mct_ptq",
    "mct_gptq",
    "mct_mixed_precision",
]
MctMethod = Literal["ptq", "gptq", "mixed_precision"]


@dataclass(frozen=True)
class Promise:
    description: str
    input_dtype: str
    output_dtype: str
    inner: str | None = None  # a tensor type that must appear inside ("int8", "float16", "int16")
    quantized_activations: bool | None = None  # True: QUANTIZE ops (real int activations); False: none allowed


@dataclass(frozen=True)
class VariantSpec:
    """One variant: who builds it and what it is."""

    name: str
    promise: Promise
    builder: Literal["converter", "mct"]
    calibrated: bool = False  # the converter calibrates it on the calibration set
    full_integer: bool = False  # integer input and output: what an Ethos-U NPU runs whole
    optional: bool = False  # the converter cannot make it for every model: reported as unsupported
    default: bool = True  # built when the configuration does not list variants
    mct_method: MctMethod | None = None

    @property
    def integer(self) -> bool:
        """Integer arithmetic inside (quantized activations): the models a repair's accuracy budget is about."""
        return self.calibrated or self.builder == "mct"


_CATALOGUE = (
    VariantSpec("float32", Promise("TFLite float32", "float32", "float32", quantized_activations=False), "converter"),
    VariantSpec(
        "dynamic_range",
        Promise(
            "TFLite dynamic range (int8 weights, float activations)",
            "float32",
            "float32",
            "int8",
            quantized_activations=False,
        ),
        "converter",
    ),
    VariantSpec("float16", Promise("TFLite float16 weights", "float32", "float32", "float16"), "converter"),
    VariantSpec(
        "int8_float_io",
        Promise("TFLite integer, float input/output", "float32", "float32", "int8", quantized_activations=True),
        "converter",
        calibrated=True,
    ),
    VariantSpec(
        "full_int8",
        Promise("TFLite full integer, int8 input/output", "int8", "int8", "int8"),
        "converter",
        calibrated=True,
        full_integer=True,
    ),
    VariantSpec(
        "full_uint8",
        Promise("TFLite full integer, uint8 input/output", "uint8", "uint8", "int8"),
        "converter",
        calibrated=True,
        full_integer=True,
    ),
    VariantSpec(
        "int16x8",
        Promise(
            "TFLite 16x8 (int16 activations, int8 weights)", "float32", "float32", "int16", quantized_activations=True
        ),
        "converter",
        calibrated=True,
        optional=True,
    ),
    VariantSpec(
        "full_int16x8",
        Promise("TFLite full 16x8, int16 input/output (int16 activations, int8 weights)", "int16", "int16", "int16"),
        "converter",
        calibrated=True,
        full_integer=True,  # Vela runs int16 activations on the Ethos-U NPU
        optional=True,
        default=False,  # the repair's precision rung for an Ethos-U; built when listed
    ),
    VariantSpec("mct_ptq", Promise("MCT PTQ, int8 TFLite", "float32", "float32", "int8"), "mct", mct_method="ptq"),
    # GPTQ and mixed precision are slow: built only when the configuration lists them.
    VariantSpec(
        "mct_gptq",
        Promise("MCT GPTQ, int8 TFLite", "float32", "float32", "int8"),
        "mct",
        default=False,
        mct_method="gptq",
    ),
    VariantSpec(
        "mct_mixed_precision",
        Promise("MCT mixed precision, int8 TFLite", "float32", "float32", "int8"),
        "mct",
        default=False,
        mct_method="mixed_precision",
    ),
)
VARIANTS: dict[str, VariantSpec] = {spec.name: spec for spec in _CATALOGUE}
PROMISES: dict[str, Promise] = {name: spec.promise for name, spec in VARIANTS.items()}

CONVERTER_VARIANTS = tuple(v for v, s in VARIANTS.items() if s.builder == "converter")
MCT_VARIANTS = tuple(v for v, s in VARIANTS.items() if s.builder == "mct")
DEFAULT_VARIANTS = tuple(v for v, s in VARIANTS.items() if s.default)
CALIBRATED_VARIANTS = tuple(v for v, s in VARIANTS.items() if s.calibrated)
FULL_INTEGER_VARIANTS = tuple(v for v, s in VARIANTS.items() if s.full_integer)


def one_of(names: tuple[str, ...] | list[str], quote: bool = False) -> str:
    """'a', 'a or b', 'a, b or c' (each in quotes with `quote`)."""
    shown = [repr(n) if quote else n for n in names]
    return " or ".join(shown) if len(shown) < 3 else f"{', '.join(shown[:-1])} or {shown[-1]}"


OPTIONAL_VARIANTS = tuple(v for v, s in VARIANTS.items() if s.optional)
MCT_METHODS: dict[str, MctMethod] = {v: s.mct_method for v, s in VARIANTS.items() if s.mct_method}

# The devices a model can be compiled for. The IMX500 converter takes the MCT PTQ model; an Ethos-U
# NPU runs a full-integer model whole (Vela maps only integer operators to the NPU).
EthosU = Literal["ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u85-256"]
TargetDevice = Literal["imx500", EthosU]
ETHOS_U_ACCELERATORS: tuple[str, ...] = get_args(EthosU)
IMX500_VARIANT = "mct_ptq"

# The models the results name. The SDK compared four; results.json keeps a top_1_accuracy_<name> key for each.
SDK_MODELS = ("keras", "keras_quantized", "tflite", "tflite_quantized")
# The repair's chosen model when it exists in MCT's Keras format only (16-bit activations, which MCT's TFLite export
# cannot write): what Sony's IMX500 converter takes.
REPAIRED_KERAS_MODEL = "keras_repaired"
KERAS_MODELS = ("keras", "keras_quantized", REPAIRED_KERAS_MODEL)
KERAS_DESCRIPTIONS = {"keras": "Keras (float)", "keras_quantized": "Keras quantized (MCT PTQ)"}
QUANTIZED_KERAS_FILE = "model_quantized.keras"  # the MCT PTQ model in MCT's Keras format, as the SDK named it
# The repair search's chosen model (tasks/search_repair.py), and its MCT Keras model when MCT made it.
REPAIRED_MODEL = "tflite_repaired"
REPAIRED_FILE = "model_repaired.tflite"
REPAIRED_KERAS_FILE = "model_repaired.keras"
REPAIRED_IMX500_FOLDER = "imx500_repaired"  # Sony's converter's output for the repaired MCT model


# What a run writes, or removes as stale, inside each output folder: no input may sit there.
RESULT_FILES = ("results.json", "results.csv", "report.html")
WRITTEN_IN = {
    "output_dir": (
        "model.tflite",
        "model_quantized.tflite",
        QUANTIZED_KERAS_FILE,
        REPAIRED_KERAS_FILE,
        "model_*.tflite",
        "imx500",
        REPAIRED_IMX500_FOLDER,
    ),
    "evaluate_result_dir": RESULT_FILES,
}


def model_id(variant: str, float_tflite: str) -> str:
    """The name a variant's TFLite model has in the results: the SDK's two keep theirs."""
    if variant == float_tflite:
        return "tflite"
    if variant == "mct_ptq":
        return "tflite_quantized"
    return f"tflite_{variant}"


def in_catalogue_order(made: Sequence[T]) -> list[T]:
    """Records with a `variant` (built models, unsupported variants) in the catalogue's order."""
    order = list(VARIANTS)
    return sorted(made, key=lambda record: order.index(record.variant))


def is_tflite_model(model_name: str) -> bool:
    return model_name.startswith("tflite")


# TensorFlow Lite runs 16x8 models on its reference kernels, on one thread: 17 times full_int8's time on the small
# benchmark model. From this many evaluation images x input pixels on, they leave the default set (a configuration
# that lists them gets them; the repair's 16-bit rungs build them when a budget needs them).
REFERENCE_KERNEL_VARIANTS = ("int16x8",)
LARGE_EVALUATION_PIXELS = 50_000_000  # 1,000 images at 224 x 224


def left_out_by_default(requested: Sequence[str] | None, evaluation_pixels: int) -> tuple[str, ...]:
    """The default variants not built for an evaluation this large (none when the configuration lists variants)."""
    if requested is not None or evaluation_pixels < LARGE_EVALUATION_PIXELS:
        return ()
    return tuple(v for v in REFERENCE_KERNEL_VARIANTS if v in DEFAULT_VARIANTS)


def variants_to_build(requested: Sequence[str] | None, float_tflite: str, evaluation_pixels: int = 0) -> list[str]:
    """The requested variants (default DEFAULT_VARIANTS, less those `left_out_by_default`), always with the SDK's
    two, in catalogue order."""
    default = set(DEFAULT_VARIANTS) - set(left_out_by_default(requested, evaluation_pixels))
    wanted = set(requested if requested is not None else default) | {float_tflite, "mct_ptq"}
    return [v for v in VARIANTS if v in wanted]


def variant_file_name(variant: str, float_tflite: str) -> str:
    """The file named as the model: model.tflite, model_quantized.tflite, model_<variant>.tflite."""
    return f"model{model_id(variant, float_tflite).removeprefix('tflite')}.tflite"


def built_file_name(variant: str) -> str:
    """The name a step gives the TFLite model it builds in its work folder."""
    return f"model_{variant}.tflite"


def mct_keras_file_name(method: str) -> str:
    """The MCT-quantized Keras model's file: the SDK's name for PTQ, the method's for the others."""
    return QUANTIZED_KERAS_FILE if method == "ptq" else f"model_mct_{method}.keras"


def vela_file_name(published_model: str | Path) -> str:
    """Vela's model is published beside the model it compiled: model_full_int8_vela.tflite."""
    return f"{Path(published_model).stem}_vela.tflite"


def own_output_file_names() -> set[str]:
    """Every model_<variant>[_vela].tflite this tool may have published: the candidates for stale outputs."""
    models = [built_file_name(v) for v in VARIANTS] + [REPAIRED_FILE]
    return {*models, *(vela_file_name(m) for m in models), REPAIRED_KERAS_FILE}


class VariantMismatch(Exception):
    """An exported model is not what its variant promises."""


def inspect_tflite(path: str | Path) -> TFLiteFacts:
    """What a .tflite model actually is: input/output dtypes and quantization, tensor and op types."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    tensor_in, tensor_out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    return TFLiteFacts(
        input_dtype=np.dtype(tensor_in["dtype"]).name,
        output_dtype=np.dtype(tensor_out["dtype"]).name,
        input_quantization=(float(tensor_in["quantization"][0]), int(tensor_in["quantization"][1])),
        output_quantization=(float(tensor_out["quantization"][0]), int(tensor_out["quantization"][1])),
        tensor_types=tuple(sorted({np.dtype(t["dtype"]).name for t in interpreter.get_tensor_details()})),
        # The public API has no op listing; this one is stable across TF 2.x.
        ops=tuple(sorted({op["op_name"] for op in interpreter._get_ops_details()})),
    )


def check_variant(path: str | Path, variant: str, promise: Promise | None = None) -> TFLiteFacts:
    """Raise VariantMismatch unless the model at `path` is what `variant` promises; return what it is."""
    promise = promise or PROMISES[variant]
    found = inspect_tflite(path)
    problems = []
    for side in ("input", "output"):
        expected, actual = getattr(promise, f"{side}_dtype"), getattr(found, f"{side}_dtype")
        if actual != expected:
            problems.append(f"{side} is {actual}, expected {expected}")
        elif expected in ("int8", "uint8", "int16") and getattr(found, f"{side}_quantization")[0] == 0:
            problems.append(f"{side} is {actual} but carries no quantization scale")
    if promise.inner and promise.inner not in found.tensor_types:
        problems.append(f"no {promise.inner} tensor inside (found {', '.join(found.tensor_types)})")
    has_quantize_ops = "QUANTIZE" in found.ops
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
