"""A model whose input height and width are not fixed ([None, None, None, 3]) is taken, and every model made from it
runs at input_tensor_size: TensorFlow Lite sizes its tensors from the model's input (a free one is 1 x 1, where a
convolution fails to prepare), so the export for the converter and MCT's quantization build it at that size first.

The models are small, built here with real TensorFlow and MCT; what they compute is compared with the Keras model.
"""

import json
from pathlib import Path

import numpy as np
import pytest

from core.build.export_saved_model import export_saved_model
from core.build.keras_conversion import keras_model_converter, with_input_size
from core.evaluate.models import TFLitePredictor, load_keras_model
from tests.helpers import run, sdk_config, write_config

SIZE = 24


@pytest.fixture(scope="module")
def free_model(tmp_path_factory) -> Path:
    """A folder holding model.h5, a 4-class classifier of free input size whose second convolution has no padding
    (on a 1 x 1 input it cannot prepare), and calibration.npy, images of SIZE x SIZE."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("free-size")
    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inputs = tf.keras.Input((None, None, 3))
    x = layers.Conv2D(8, 3, padding="same", activation="relu")(inputs)
    x = layers.Conv2D(8, 3, activation="relu")(x)
    outputs = layers.Dense(4, activation="softmax")(layers.GlobalAveragePooling2D()(x))
    tf.keras.Model(inputs, outputs).save(folder / "model.h5")
    np.save(folder / "calibration.npy", np.random.default_rng(0).random((8, SIZE, SIZE, 3), np.float32))
    return folder


def images(count: int = 3) -> np.ndarray:
    return np.random.default_rng(1).random((count, SIZE, SIZE, 3), np.float32)


def assert_runs_at_input_size(tflite_path: Path, keras_outputs: np.ndarray, atol: float) -> None:
    """The TFLite model's input is [1, SIZE, SIZE, 3] (batch resizable) and it computes what the Keras model does."""
    predictor = TFLitePredictor(tflite_path)
    assert list(predictor.input["shape"]) == [1, SIZE, SIZE, 3]
    assert list(predictor.input["shape_signature"]) == [-1, SIZE, SIZE, 3]
    np.testing.assert_allclose(predictor(images()), keras_outputs, atol=atol)


def test_a_fixed_size_model_is_left_as_it_is(tmp_path):
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((SIZE, SIZE, 3)), tf.keras.layers.Dense(2)])
    assert with_input_size(model, 32) is model


def test_the_free_size_model_is_built_at_the_size_with_its_layers_and_weights(free_model):
    model = load_keras_model(free_model / "model.h5")
    fixed = with_input_size(model, SIZE)
    assert fixed.inputs[0].shape.as_list() == [None, SIZE, SIZE, 3]
    assert [layer.name for layer in fixed.layers] == [layer.name for layer in model.layers]
    np.testing.assert_array_equal(fixed.predict_on_batch(images()), model.predict_on_batch(images()))


def test_the_export_for_the_converter_gives_a_tflite_model_of_the_input_size(free_model, tmp_path):
    model_path = str(free_model / "model.h5")
    export = export_saved_model(model_path=model_path, out_dir=tmp_path, input_size=SIZE)
    tflite = tmp_path / "model.tflite"
    tflite.write_bytes(keras_model_converter(export.path, export.signature_key).convert())
    expected = load_keras_model(model_path).predict_on_batch(images())
    assert_runs_at_input_size(tflite, expected, atol=1e-5)


@pytest.mark.slow  # the calibrated conversion runs in a worker process, which imports TensorFlow
def test_a_calibrated_conversion_of_the_export_runs_at_the_input_size(free_model, tmp_path):
    from core.build.convert_to_tflite import convert_to_tflite
    from core.build.records import BuiltModel

    model_path = str(free_model / "model.h5")
    export = export_saved_model(model_path=model_path, out_dir=tmp_path / "export", input_size=SIZE)
    built = convert_to_tflite(
        model_path=model_path,
        saved_model=export,
        variant="int8_float_io",
        out_dir=tmp_path / "int8",
        calibration_path=str(free_model / "calibration.npy"),
    )
    assert isinstance(built, BuiltModel), built
    expected = load_keras_model(model_path).predict_on_batch(images())
    assert_runs_at_input_size(Path(built.path), expected, atol=0.05)  # int8 inside


@pytest.mark.slow  # MCT's quantization and export
def test_mct_quantizes_and_exports_the_model_at_the_calibration_images_size(free_model, tmp_path):
    from core.build.export_quantized_tflite import export_quantized_tflite
    from core.build.quantize_with_mct import quantize_with_mct
    from core.evaluate.models import load_quantized_keras_model

    model_path = str(free_model / "model.h5")
    quantized = quantize_with_mct(
        model_path=model_path,
        calibration_path=str(free_model / "calibration.npy"),
        batch_size=4,
        target_platform="imx500",
        out_dir=tmp_path,
        progress=False,
    )
    assert load_quantized_keras_model(quantized.path).inputs[0].shape.as_list() == [None, SIZE, SIZE, 3]
    built = export_quantized_tflite(quantized_model=quantized, out_dir=tmp_path / "tflite")
    expected = load_keras_model(model_path).predict_on_batch(images())
    assert_runs_at_input_size(Path(built.path), expected, atol=0.05)


@pytest.mark.slow  # the whole flow on the digits sample
def test_the_flow_runs_a_free_size_model_at_input_tensor_size(prefect_harness, sample_dir, tmp_path):
    """The sample's trained classifier, rebuilt with a free input size and the same weights: every model the flow
    makes takes 32 x 32 images and scores as the fixed-size one does. MCT quantizes for TFLite, so that no IMX500
    compile, which this test asserts nothing of, holds up the run (MCT's imx500 platform at a free size: above)."""
    import tensorflow as tf

    fixed = tf.keras.models.load_model(sample_dir / "model.h5", compile=False)
    free = tf.keras.models.clone_model(fixed, input_tensors=tf.keras.Input((None, None, 3)))
    free.set_weights(fixed.get_weights())
    free.save(tmp_path / "free_model.h5")
    out = tmp_path / "out"
    config = sdk_config(
        sample_dir, out, source_keras_model=str(tmp_path / "free_model.h5"), repair="off", target_platform="tflite"
    )
    state = run(write_config(out / "configuration.json", config))
    assert state.is_completed(), state.message

    for name in ("model.tflite", "model_quantized.tflite"):
        interpreter = TFLitePredictor(out / "models" / name)
        assert list(interpreter.input["shape"]) == [1, 32, 32, 3], name
    results = json.loads((out / "results" / "results.json").read_text())
    assert results["top_1_accuracy_keras"] > 0.8  # ten classes: chance is 0.1
    assert results["top_1_accuracy_tflite"] == results["top_1_accuracy_keras"]
    assert abs(results["top_1_accuracy_tflite_quantized"] - results["top_1_accuracy_keras"]) <= 0.05
