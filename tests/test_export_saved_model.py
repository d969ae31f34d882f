"""The float Keras model is exported once as a SavedModel, and every converter variant converted from it is,
byte for byte, what TensorFlow's converter makes from the Keras model itself (`from_keras_model`). Conversions
run in worker processes; what the converter raises there fails the step as it would in the caller."""

import os
from pathlib import Path

import numpy as np
import pytest

from core.build.convert_to_tflite import CONVERSION_WORKERS, configure, convert_to_tflite
from core.build.export_saved_model import export_saved_model
from core.build.records import BuiltModel, SavedModelExport
from core.build.variants import CONVERTER_VARIANTS
from core.errors import StepError

pytestmark = pytest.mark.slow  # every converter variant, converted three times


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """A small classifier with the layers image models are made of, and a calibration set for it."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("small-model")
    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((16, 16, 3))
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(inputs)))
    x = layers.DepthwiseConv2D(3, padding="same")(x)
    x = layers.Conv2D(32, 3, padding="same", activation="relu")(x)  # large enough for dynamic range's int8 weights
    outputs = layers.Dense(4, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    tf.keras.Model(inputs, outputs).save(folder / "model.h5")
    np.save(folder / "calibration.npy", np.random.default_rng(0).random((8, 16, 16, 3), np.float32))
    return folder


def from_keras_model(model_path, variant: str, calibration: np.ndarray) -> bytes:
    """What the converter made before this step existed: one SavedModel saved inside every conversion."""
    import tensorflow as tf

    from core.evaluate.models import load_keras_model

    converter = tf.lite.TFLiteConverter.from_keras_model(load_keras_model(model_path))
    configure(converter, variant, calibration)
    return converter.convert()


def test_every_converter_variant_of_the_exported_model_is_byte_for_byte_the_keras_models(small_model, tmp_path):
    model_path = str(small_model / "model.h5")
    calibration_path = str(small_model / "calibration.npy")
    saved_model = export_saved_model(model_path=model_path, out_dir=tmp_path / "export")
    assert (tmp_path / "export" / "saved_model" / "saved_model.pb").is_file()
    for variant in CONVERTER_VARIANTS:
        expected = from_keras_model(model_path, variant, np.load(calibration_path))
        assert from_keras_model(model_path, variant, np.load(calibration_path)) == expected, (
            f"{variant}: the converter is not deterministic on this model"
        )
        built = convert_to_tflite(
            model_path=model_path,
            saved_model=saved_model,
            variant=variant,
            out_dir=tmp_path / variant,
            calibration_path=calibration_path,
        )
        assert isinstance(built, BuiltModel)
        assert Path(built.path).read_bytes() == expected, variant


def test_conversions_run_in_worker_processes_at_most_one_per_core():
    workers = {CONVERSION_WORKERS.run(os.getpid) for _ in range(2 * (os.cpu_count() or 1))}
    assert os.getpid() not in workers and len(workers) <= (os.cpu_count() or 1)


def test_a_converter_failure_in_a_worker_names_the_step_the_model_and_the_cause(small_model, tmp_path):
    missing = SavedModelExport(
        path=str(tmp_path / "no-such-saved-model"), signature_key="serving_default", tensorflow_version="2.15"
    )
    with pytest.raises(StepError) as info:
        convert_to_tflite(
            model_path=str(small_model / "model.h5"), saved_model=missing, variant="float32", out_dir=tmp_path
        )
    message = str(info.value)
    assert message.startswith(
        f"step 'convert-to-tflite (float32)' failed for model {small_model / 'model.h5'}: OSError"
    )
    assert "no-such-saved-model" in message
    assert not (tmp_path / "model_float32.tflite").exists()
