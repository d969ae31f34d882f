"""MCT's quantized model is exported to an int8 TFLite model with MCT's own preparation of the model, converted
through a signature-only SavedModel: what `mct.exporter.keras_export_model` makes, in less time. MCT's own export
is not byte-for-byte repeatable (two exports in one process differ in the layer names cloning gives), so the two
are compared by what they are and what they compute: the same operators, tensor types and quantization, and the
same outputs, bit for bit, on the same images."""

from pathlib import Path

import numpy as np
import pytest

from core.build.export_quantized_tflite import export_quantized_tflite
from core.build.quantize_with_mct import quantize_with_mct
from core.build.variants import inspect_tflite
from core.evaluate.models import load_quantized_keras_model

pytestmark = pytest.mark.slow  # MCT quantizes a small model, then two exports


@pytest.fixture(scope="module")
def quantized(tmp_path_factory):
    """A small classifier quantized by MCT PTQ: a convolution, a depthwise convolution and a Dense layer (which
    MCT's exporter replaces with a pointwise convolution)."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("quantized")
    (folder / "mct").mkdir()
    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((16, 16, 3))
    x = layers.ReLU(6.0)(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(inputs)))
    x = layers.DepthwiseConv2D(3, padding="same", activation="relu")(x)
    outputs = layers.Dense(4)(layers.GlobalAveragePooling2D()(x))  # logits: outputs that differ per image
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


def outputs_of(model: bytes, images: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_content=model)
    interpreter.allocate_tensors()
    results = []
    for image in images:
        interpreter.set_tensor(interpreter.get_input_details()[0]["index"], image[None])
        interpreter.invoke()
        results.append(interpreter.get_tensor(interpreter.get_output_details()[0]["index"])[0])
    return np.array(results)


def test_the_export_is_mcts_own_operator_for_operator_and_output_for_output(quantized, tmp_path):
    import model_compression_toolkit as mct

    built = export_quantized_tflite(quantized_model=quantized, out_dir=tmp_path / "ours")
    mct.exporter.keras_export_model(
        model=load_quantized_keras_model(quantized.path),
        save_model_path=str(tmp_path / "mct.tflite"),
        serialization_format=mct.exporter.KerasExportSerializationFormat.TFLITE,
        quantization_format=mct.exporter.QuantizationFormat.INT8,
    )
    assert built.facts == inspect_tflite(tmp_path / "mct.tflite")
    assert "int8" in built.facts.tensor_types and "CONV_2D" in built.facts.ops  # the Dense became a convolution
    images = np.random.default_rng(1).random((16, 16, 16, 3), np.float32)
    ours, theirs = (
        outputs_of(Path(built.path).read_bytes(), images),
        outputs_of((tmp_path / "mct.tflite").read_bytes(), images),
    )
    assert np.array_equal(ours, theirs)
    assert len({tuple(row) for row in ours}) > 1  # outputs that tell images apart
    assert [p.name for p in (tmp_path / "ours").iterdir()] == [Path(built.path).name]  # the scratch folder is gone
