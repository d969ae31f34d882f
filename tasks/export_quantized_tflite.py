"""Step 4b: export an MCT-quantized model to TFLite with MCT's exporter (TFLITE + INT8: int8 inside,
float32 input and output), checked against its variant's promise; for MCT PTQ, `model_quantized.tflite`.

The step's logic: core/build/export_quantized_tflite.py.
"""

from __future__ import annotations

import time

from prefect import task

from core.build.export_quantized_tflite import export_quantized_tflite
from core.build.records import BuiltModel, QuantizedModel
from core.caching import ContentCachePolicy
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir


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
