"""The converter calibrates a model once for all its calibrated variants, and every model is the one it makes alone."""

from __future__ import annotations

import numpy as np
import pytest

from core.analysis.layer_tools import debugger_layer_metrics
from core.build.convert_to_tflite import configure, convert_to_tflite
from core.build.export_saved_model import export_saved_model
from core.build.keras_conversion import keras_model_converter
from core.build.records import BuiltModel
from core.build.shared_calibration import calibrated_dir

CALIBRATED = ("int8_float_io", "full_int8", "full_uint8", "int16x8")


@pytest.mark.slow
def test_every_calibrated_variant_is_the_converters_own_from_one_calibration(tmp_path, monkeypatch):
    import tensorflow as tf

    monkeypatch.setenv("QUANTIZE_CACHE_DIR", str(tmp_path / "cache"))
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((16, 16, 3))
    x = tf.keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = tf.keras.layers.DepthwiseConv2D(3)(x)
    outputs = tf.keras.layers.Dense(4, activation="softmax")(tf.keras.layers.GlobalAveragePooling2D()(x))
    tf.keras.Model(inputs, outputs).save(tmp_path / "model.h5")
    calibration = np.random.default_rng(0).random((12, 16, 16, 3), np.float32)
    np.save(tmp_path / "calibration.npy", calibration)
    saved_model = export_saved_model(model_path=str(tmp_path / "model.h5"), out_dir=tmp_path)

    def converted_alone(variant: str) -> bytes:  # the converter as TensorFlow ships it
        converter = keras_model_converter(saved_model.path, saved_model.signature_key)
        configure(converter, variant, calibration)
        return bytes(converter.convert())

    for variant in CALIBRATED:
        built = convert_to_tflite(
            model_path=str(tmp_path / "model.h5"),
            saved_model=saved_model,
            variant=variant,
            out_dir=tmp_path / "shared",
            calibration_path=str(tmp_path / "calibration.npy"),
        )
        assert isinstance(built, BuiltModel), built
        with open(built.path, "rb") as made:
            assert made.read() == converted_alone(variant), f"{variant} differs from the converter's own"
    kept = sorted(calibrated_dir().glob("*.tflite"))
    assert len(kept) == 1, f"one calibration for the four variants, not {[p.name for p in kept]}"

    # The layer analysis' debugger calibrates the same model again: it reads the conversions' calibration, and
    # measures what it measures on its own.
    model = tf.keras.models.load_model(tmp_path / "model.h5")
    debug_images = calibration[:4]
    shared = debugger_layer_metrics(
        model, calibration, debug_images, "full_int8", calibration_path=str(tmp_path / "calibration.npy")
    )
    assert sorted(calibrated_dir().glob("*.tflite")) == kept, "the analysis found the calibration made already"
    assert shared == debugger_layer_metrics(model, calibration, debug_images, "full_int8")
