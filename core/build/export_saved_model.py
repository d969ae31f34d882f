"""Step 4a, once per model: export the float Keras model as the SavedModel from which TensorFlow's
converter makes every converter variant (tasks/convert_to_tflite.py).

Every variant converts it (`from_saved_model`), which gives the bytes `from_keras_model` gives, once per model
instead of once per variant: see core/build/keras_conversion.py for why that is much faster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from core.build.keras_conversion import SIGNATURE_KEY, save_serving_signature, with_input_size
from core.build.records import SavedModelExport
from core.errors import StepError
from core.evaluate.models import load_keras_model


def export_saved_model(
    *, model_path: str, out_dir: Path, allow_unsafe_code: bool = False, input_size: int | None = None
) -> SavedModelExport:
    """The Keras model's serving signature and variables as a SavedModel folder in `out_dir`; a model whose input
    size is not fixed is exported for `input_size` x `input_size` inputs (the configuration's input_tensor_size)."""
    import tensorflow as tf

    model = load_keras_model(model_path, allow_unsafe_code)
    path = Path(out_dir) / "saved_model"
    try:
        if input_size is not None:
            model = with_input_size(model, input_size)
        save_serving_signature(model, path)
    except Exception as exc:
        raise StepError("export-saved-model", model_path, exc) from exc
    return SavedModelExport(path=str(path), signature_key=SIGNATURE_KEY, tensorflow_version=tf.__version__)


def calibration_image_size(calibration_path: str) -> int:
    """The side of the calibration set's images: the input_tensor_size it was made for."""
    return int(np.load(calibration_path, mmap_mode="r").shape[1])
