"""Step 4a, once per model: export the float Keras model as the SavedModel from which TensorFlow's
converter makes every converter variant (tasks/convert_to_tflite.py).

Every variant converts it (`from_saved_model`), which gives the bytes `from_keras_model` gives, once per model
instead of once per variant: see core/keras_conversion.py for why that is much faster.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task

from core.caching import ContentCachePolicy
from core.errors import StepError
from core.keras_conversion import SIGNATURE_KEY, save_serving_signature
from core.models import load_keras_model
from core.records import SavedModelExport
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir


def export_saved_model(*, model_path: str, out_dir: Path, allow_unsafe_code: bool = False) -> SavedModelExport:
    """The Keras model's serving signature and variables as a SavedModel folder in `out_dir`."""
    import tensorflow as tf

    model = load_keras_model(model_path, allow_unsafe_code)
    path = Path(out_dir) / "saved_model"
    try:
        save_serving_signature(model, path)
    except Exception as exc:
        raise StepError("export-saved-model", model_path, exc) from exc
    return SavedModelExport(path=str(path), signature_key=SIGNATURE_KEY, tensorflow_version=tf.__version__)


@task(
    name="export-saved-model",
    cache_policy=ContentCachePolicy(file_inputs=("model_path",)),
    persist_result=True,
    **RETRY_OPTIONS,
)
def export_saved_model_task(*, model_path: str, allow_unsafe_code: bool = False) -> SavedModelExport:
    """Export the float Keras model once as a SavedModel holding its serving signature, for TensorFlow's converter."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = export_saved_model(
        model_path=model_path, out_dir=new_work_dir("saved-model"), allow_unsafe_code=allow_unsafe_code
    )
    get_run_logger().info(
        "Exported %s as a SavedModel (signature %s) -> %s in %.1f s",
        model_path,
        result.signature_key,
        result.path,
        time.perf_counter() - started,
    )
    return result
