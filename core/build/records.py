"""The records of build/ (see core/records.py for what a record is)."""

from __future__ import annotations

from core.records import Record


class SavedModelExport(Record):
    """The float Keras model exported once as a SavedModel folder: the form TensorFlow's converter converts."""

    path: str
    signature_key: str  # the one signature it holds, the model's call
    tensorflow_version: str


class TFLiteFacts(Record):
    """What a .tflite model is, read back from the file (core.build.variants.inspect_tflite)."""

    input_dtype: str
    output_dtype: str
    input_quantization: tuple[float, int]  # (scale, zero point); (0.0, 0) for a float tensor
    output_quantization: tuple[float, int]
    tensor_types: tuple[str, ...]
    ops: tuple[str, ...]


class QuantizedModel(Record):
    """An MCT-quantized Keras model (MCT's Keras format) and how it was made."""

    variant: str
    path: str
    method: str
    error_method: str
    target_platform: str
    tpc_version: str
    tpc_reason: str | None = None  # why this TPC version: the one paired with the installed IMX500 converter
    imx500_converter_version: str | None = None
    mct_version: str
    gptq_epochs: int | None = None
    weights_memory_ratio: float | None = None
    weights_memory_budget_bytes: float | None = None
    weights_memory_8bit_bytes: float | None = None
    z_threshold: float | None = None
    shift_negative_params_search: bool | None = None
    sixteen_bit_activations: list[str] | None = None  # layers whose outputs MCT quantized with 16 bits
    # for the IMX500: layers its converter refuses, replaced by the same function (core/build/substitute_layers.py)
    substituted_layers: list[str] | None = None

    def details(self) -> dict:
        """As results.json's `mct_variants` shows it."""
        return self.model_dump(exclude={"variant"}, exclude_none=True)


class BuiltModel(Record):
    """A TFLite model one step built, checked against its variant's promise."""

    variant: str
    path: str
    facts: TFLiteFacts
    builder: str  # "TensorFlow <version> converter" or "MCT exporter (int8, float32 input and output)"
    quantization: QuantizedModel | None = None  # the MCT model it was exported from


class UnsupportedVariant(Record):
    """A variant the converter cannot make for this model (16x8 of an ELU model), with its message."""

    variant: str
    reason: str
