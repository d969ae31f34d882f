"""MCT's quantized model is exported to an int8 TFLite model with MCT's own preparation of the model, converted
through a signature-only SavedModel: byte for byte what `mct.exporter.keras_export_model` makes, in less time."""

from pathlib import Path

import numpy as np
import pytest

from core.models import load_quantized_keras_model
from tasks.export_quantized_tflite import export_quantized_tflite
from tasks.quantize_with_mct import quantize_with_mct

pytestmark = pytest.mark.slow  # MCT quantizes a small model, then two exports


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A small classifier quantized by MCT PTQ: a convolution, a depthwise convolution and a Dense layer (which
    MCT's exporter replaces with a pointwise convolution)."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("quantized")
    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((16, 16, 3))
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(inputs)))
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    outputs = layers.Dense(4, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    tf.keras.Model(inputs, outputs).save(folder / "model.h5")
    np.save(folder / "calibration.npy", np.random.default_rng(0).random((16, 16, 16, 3), np.float32))
    return quantize_with_mct(
        model_path=str(folder / "model.h5"),
        calibration_path=str(folder / "calibration.npy"),
        batch_size=8,
        target_platform="imx500",
        out_dir=folder / "mct",
        progress=False,
    )


def test_the_export_is_byte_for_byte_mcts_own(quantized, tmp_path):
    import model_compression_toolkit as mct

    built = export_quantized_tflite(quantized_model=quantized, out_dir=tmp_path / "ours")
    mct.exporter.keras_export_model(
        model=load_quantized_keras_model(quantized.path),
        save_model_path=str(tmp_path / "mct.tflite"),
        serialization_format=mct.exporter.KerasExportSerializationFormat.TFLITE,
        quantization_format=mct.exporter.QuantizationFormat.INT8,
    )
    ours = Path(built.path).read_bytes()
    assert ours == (tmp_path / "mct.tflite").read_bytes()
    assert "int8" in built.facts.tensor_types  # checked against the variant's promise: int8 inside
    assert not [p for p in (tmp_path / "ours").iterdir() if p.name.startswith("mct-export-")]  # scratch removed
