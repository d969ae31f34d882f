"""Step 4a, once per model: export the float Keras model as the SavedModel from which TensorFlow's
converter makes every converter variant (tasks/convert_to_tflite.py).

The step's logic: core/build/export_saved_model.py.
"""

from __future__ import annotations

import time

from prefect import task

from core.build.export_saved_model import export_saved_model
from core.build.records import SavedModelExport
from core.caching import ContentCachePolicy
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir


@task(
    name="export-saved-model",
    cache_policy=ContentCachePolicy(file_inputs=("model_path",)),
    persist_result=True,
    **RETRY_OPTIONS,
)
def export_saved_model_task(
    *, model_path: str, allow_unsafe_code: bool = False, input_size: int | None = None
) -> SavedModelExport:
    """Export the float Keras model once as a SavedModel holding its serving signature, for TensorFlow's converter
    (a model whose input size is not fixed, for `input_size` x `input_size` inputs)."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = export_saved_model(
        model_path=model_path,
        out_dir=new_work_dir("saved-model"),
        allow_unsafe_code=allow_unsafe_code,
        input_size=input_size,
    )
    get_run_logger().info(
        "Exported %s as a SavedModel (signature %s) -> %s in %.1f s",
        model_path,
        result.signature_key,
        result.path,
        time.perf_counter() - started,
    )
    return result
