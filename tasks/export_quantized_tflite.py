"""Step 4b: export an MCT-quantized model to TFLite with MCT's exporter (TFLITE + INT8: int8 inside,
float32 input and output), checked against its variant's promise; for MCT PTQ, `model_quantized.tflite`.

The old notebook converted it itself with TFLiteConverter and uint8 input, which fails under
MCT 2.x ("'tfl.transpose' op has mismatched quantized axes"); MCT's exporter does not.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task

from core.caching import ContentCachePolicy
from core.errors import StepError
from core.models import load_quantized_keras_model
from core.records import BuiltModel, QuantizedModel
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir
from core.variants import built_file_name, check_variant


def export_quantized_tflite(*, quantized_model: QuantizedModel, out_dir: Path) -> BuiltModel:
    import model_compression_toolkit as mct

    variant = quantized_model.variant
    model = load_quantized_keras_model(quantized_model.path)
    path = Path(out_dir) / built_file_name(variant)
    try:
        mct.exporter.keras_export_model(
            model=model,
            save_model_path=str(path),
            serialization_format=mct.exporter.KerasExportSerializationFormat.TFLITE,
            quantization_format=mct.exporter.QuantizationFormat.INT8,
        )
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


def _run_name() -> str:
    from prefect.runtime import task_run

    return f"export-quantized-tflite-{task_run.parameters['quantized_model'].variant}"


@task(
    name="export-quantized-tflite",
    task_run_name=_run_name,
    cache_policy=ContentCachePolicy(file_inputs=("quantized_model",)),
    persist_result=True,
    **RETRY_OPTIONS,
)
def export_quantized_tflite_task(*, quantized_model: QuantizedModel) -> BuiltModel:
    """Export the MCT-quantized Keras model to an int8 TFLite model with MCT's exporter, and check the result."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = export_quantized_tflite(quantized_model=quantized_model, out_dir=new_work_dir("export"))
    get_run_logger().info(
        "MCT exported %s (%s) as an INT8 TFLite model -> %s in %.1f s",
        quantized_model.path,
        quantized_model.variant,
        result.path,
        time.perf_counter() - started,
    )
    return result
