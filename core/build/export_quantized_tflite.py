"""Step 4b: export an MCT-quantized model to TFLite with MCT's exporter (TFLITE + INT8: int8 inside,
float32 input and output), checked against its variant's promise; for MCT PTQ, `model_quantized.tflite`.

The old notebook converted it itself with TFLiteConverter and uint8 input, which fails under
MCT 2.x ("'tfl.transpose' op has mismatched quantized axes"); MCT's exporter does not.

MCT's INT8 exporter prepares the model (each quantized Dense becomes a pointwise convolution, for per-channel
quantization) and converts it with `from_keras_model`, which saves the whole model to a SavedModel first: most of
the export's time. `FasterINT8TFLiteExporter` is that exporter with the conversion made as the converter variants
make theirs (core/build/keras_conversion.py): the same operators, tensor types, quantization and outputs, bit for bit
(tests/test_export_quantized_tflite.py; MCT's own export is not byte-for-byte repeatable, so bytes cannot be compared).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from core.build.keras_conversion import keras_model_converter, save_serving_signature
from core.build.records import BuiltModel, QuantizedModel
from core.build.variants import built_file_name, check_variant
from core.errors import StepError
from core.evaluate.models import load_quantized_keras_model


def faster_int8_exporter(model: Any, save_model_path: str) -> Any:
    """MCT 2.6.1's INT8TFLiteExporter (what `mct.exporter.keras_export_model` uses for TFLITE + INT8), converting
    through a signature-only SavedModel instead of `from_keras_model`."""
    import tensorflow as tf
    from keras.models import clone_model
    from mct_quantizers import KerasQuantizationWrapper
    from model_compression_toolkit.exporter.model_exporter.keras.int8_tflite_exporter import INT8TFLiteExporter
    from model_compression_toolkit.exporter.model_wrapper.keras.validate_layer import is_keras_layer_exportable

    class FasterINT8TFLiteExporter(INT8TFLiteExporter):
        def export(self) -> None:
            # MCT's own steps (int8_tflite_exporter.py, export), up to the conversion.
            def substitute(layer: Any) -> Any:
                assert self.is_layer_exportable_fn(layer), f"Layer {layer.get_config()} did not pass validation"
                if isinstance(layer, KerasQuantizationWrapper) and isinstance(layer.layer, tf.keras.layers.Dense):
                    return self._get_pointwise_layer_to_replace_dense(layer)
                return layer

            if hasattr(self.model, "metadata_layer"):
                delattr(self.model, "metadata_layer")
            self.transformed_model = clone_model(self.model, clone_function=substitute)
            with tempfile.TemporaryDirectory(prefix="mct-export-", dir=Path(self.save_model_path).parent) as scratch:
                saved_model = Path(scratch) / "saved_model"
                save_serving_signature(self.transformed_model, saved_model)
                converter = keras_model_converter(str(saved_model))
                converter.optimizations = [tf.lite.Optimize.DEFAULT]
                self.exported_model = converter.convert()
            with open(self.save_model_path, "wb") as f:
                f.write(self.exported_model)

    return FasterINT8TFLiteExporter(model, is_keras_layer_exportable, save_model_path)


def export_quantized_tflite(*, quantized_model: QuantizedModel, out_dir: Path) -> BuiltModel:
    variant = quantized_model.variant
    model = load_quantized_keras_model(quantized_model.path)
    path = Path(out_dir) / built_file_name(variant)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        faster_int8_exporter(model, str(path)).export()
    except Exception as exc:
        raise StepError(f"export-quantized-tflite ({variant})", quantized_model.path, exc) from exc
    facts = check_variant(path, variant)
    return BuiltModel(
        variant=variant,
        path=str(path),
        facts=facts,
        builder="MCT exporter (int8, float32 input and output)",
        quantization=quantized_model,
    )
