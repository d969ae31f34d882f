"""Step 4b: export the MCT-quantized model to `model_quantized.tflite` with MCT's exporter
(TFLITE + INT8: int8 inside, float32 input and output), checked against its variant's promise.

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
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir
from core.variants import check_variant


def export_quantized_tflite(quantized_model_path: str, out_dir: Path, variant: str = "mct_ptq") -> dict:
    import model_compression_toolkit as mct

    model = load_quantized_keras_model(quantized_model_path)
    path = Path(out_dir) / f"model_{variant}.tflite"
    try:
        mct.exporter.keras_export_model(
            model=model,
            save_model_path=str(path),
            serialization_format=mct.exporter.KerasExportSerializationFormat.TFLITE,
            quantization_format=mct.exporter.QuantizationFormat.INT8,
        )
    except Exception as exc:
        raise StepError(f"export-quantized-tflite ({variant})", quantized_model_path, exc) from exc
    found = check_variant(path, variant)
    return {"path": str(path), "variant": variant, "kind": "int8 (MCT exporter, float32 input and output)", **found}


@task(
    name="export-quantized-tflite",
    task_run_name="export-quantized-tflite-{variant}",
    cache_policy=ContentCachePolicy(file_inputs=("quantized_model_path",)),
    persist_result=True,
    **RETRY_OPTIONS,
)
def export_quantized_tflite_task(quantized_model_path: str, variant: str = "mct_ptq") -> dict:
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = export_quantized_tflite(quantized_model_path, new_work_dir("export"), variant)
    get_run_logger().info(
        "MCT exported %s (%s) as an INT8 TFLite model -> %s in %.1f s",
        quantized_model_path,
        variant,
        result["path"],
        time.perf_counter() - started,
    )
    return result
