"""Step 4b: export an MCT-quantized model to TFLite with MCT's exporter (TFLITE + INT8: int8 inside,
float32 input and output), checked against its variant's promise; for MCT PTQ, `model_quantized.tflite`.

The step's logic: core/build/export_quantized_tflite.py.
"""

from __future__ import annotations

import time

from prefect import task

from core.build.export_quantized_tflite import export_quantized_tflite
from core.build.records import BuiltModel, QuantizedModel, UnsupportedVariant
from core.caching import ContentCachePolicy
from core.errors import StepError
from core.failures import library_said
from core.retry import RETRY_OPTIONS, last_attempt
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
def export_quantized_tflite_task(*, quantized_model: QuantizedModel) -> BuiltModel | UnsupportedVariant:
    """Export the MCT-quantized Keras model to an int8 TFLite model with MCT's exporter, and check the result (or
    say what the exporter said when it cannot export this model)."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    try:
        result = export_quantized_tflite(quantized_model=quantized_model, out_dir=new_work_dir("export"))
    except StepError as exc:
        if not last_attempt():
            raise
        reason = f"MCT's TFLite exporter cannot export the model: {library_said(exc)}"
        get_run_logger().warning("%s: %s", quantized_model.variant, reason)
        return UnsupportedVariant(variant=quantized_model.variant, reason=reason)
    get_run_logger().info(
        "MCT exported %s (%s) as an INT8 TFLite model -> %s in %.1f s",
        quantized_model.path,
        quantized_model.variant,
        result.path,
        time.perf_counter() - started,
    )
    return result
