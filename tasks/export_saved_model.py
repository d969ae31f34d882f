"""Step 4a, once per model: export the float Keras model as the SavedModel from which TensorFlow's
converter makes every converter variant (tasks/convert_to_tflite.py).

`TFLiteConverter.from_keras_model` saves the model to a SavedModel inside every call (TF 2.15,
tensorflow/lite/python/lite.py: `tf.saved_model.save(model, tmp, SaveOptions(save_debug_info=True))`,
then `from_saved_model`'s import of its `serving_default` signature). That full Keras SavedModel also
serializes every layer's call functions, which makes it slow to write and slow to load again (on a
MobileNetV2, tens of seconds per conversion). The converter only reads the signature, so this step writes
just that: Keras's own default signature (the function `tf.saved_model.save` would export for the model)
and the variables it reads, with the same options. Converting it gives the same bytes as
`from_keras_model` (tests/test_export_saved_model.py), once per model instead of once per variant.
"""

from __future__ import annotations

import time
from pathlib import Path

from prefect import task

from core.caching import ContentCachePolicy
from core.errors import StepError
from core.models import load_keras_model
from core.records import SavedModelExport
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir

SIGNATURE_KEY = "serving_default"  # what from_keras_model converts, and from_saved_model's default


def export_saved_model(*, model_path: str, out_dir: Path, allow_unsafe_code: bool = False) -> SavedModelExport:
    """The Keras model's serving signature and variables as a SavedModel folder in `out_dir`."""
    import tensorflow as tf
    from keras.src.saving.legacy.saved_model.save_impl import default_save_signature

    model = load_keras_model(model_path, allow_unsafe_code)
    path = Path(out_dir) / "saved_model"
    try:
        # The function Keras exports as the model's default signature when the model is saved whole.
        signature = default_save_signature(model)
        module = tf.Module()
        module.variables_read = model.variables  # tracked, so the SavedModel holds their values
        tf.saved_model.save(
            module,
            str(path),
            signatures={SIGNATURE_KEY: signature},
            options=tf.saved_model.SaveOptions(save_debug_info=True),
        )
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
