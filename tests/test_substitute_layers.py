"""The layers the IMX500 converter refuses, moved out of the model without changing its function
(core/build/substitute_layers.py): Rescaling and Normalization become 1x1 depthwise convolutions."""

import numpy as np
import pytest
import tensorflow as tf

from core.build.platforms import find_imx500_converter
from core.build.quantize_with_mct import quantize_with_mct
from core.build.substitute_layers import device_equivalent
from core.results.results_text import device_text
from core.targets.compile_for_imx500 import compile_for_imx500, converter_and_java

layers = tf.keras.layers


def images(count: int = 4, size: int = 16) -> np.ndarray:
    return np.random.default_rng(0).random((count, size, size, 3), np.float32) * 255


def tiny_model(preprocessing: tf.keras.layers.Layer) -> tf.keras.Model:
    inputs = tf.keras.Input((16, 16, 3))
    features = layers.Conv2D(4, 3, padding="same")(preprocessing(inputs))
    return tf.keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(features)))


def assert_substituted(model: tf.keras.Model, name: str) -> list[str]:
    substituted, descriptions = device_equivalent(model)
    assert substituted is not model
    assert not any(isinstance(layer, layers.Rescaling | layers.Normalization) for layer in substituted.layers)
    depthwise = substituted.get_layer(name)
    assert type(depthwise) is layers.DepthwiseConv2D and depthwise.kernel_size == (1, 1)
    np.testing.assert_allclose(substituted(images()), model(images()), rtol=1e-6, atol=1e-6)
    return descriptions


def test_an_input_rescaling_becomes_a_depthwise_convolution_of_the_same_name_and_function():
    descriptions = assert_substituted(tiny_model(layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")), "rescaling")
    assert descriptions == [
        "rescaling (Rescaling, x * 0.007843 + -1) replaced by a 1x1 depthwise convolution: the same function"
    ]


def test_a_per_channel_normalization_becomes_a_depthwise_convolution_of_the_same_function():
    normalization = layers.Normalization(mean=[120.0, 110.0, 100.0], variance=[3600.0, 3000.0, 2500.0], name="norm")
    descriptions = assert_substituted(tiny_model(normalization), "norm")
    assert descriptions == [
        "norm (Normalization, (x - mean) / sqrt(variance)) replaced by a 1x1 depthwise convolution: the same function"
    ]


def test_an_adapted_normalization_keeps_the_statistics_it_learned():
    normalization = layers.Normalization(name="norm")
    normalization.adapt(images(8))
    assert_substituted(tiny_model(normalization), "norm")


def test_a_sequential_models_first_layer_is_substituted_and_keeps_its_input_shape():
    model = tf.keras.Sequential(
        [
            layers.Rescaling(1 / 255.0, input_shape=(16, 16, 3), name="scale"),
            layers.Conv2D(2, 1),
            layers.GlobalAveragePooling2D(),
        ]
    )
    assert_substituted(model, "scale")


def test_a_model_with_nothing_to_substitute_comes_back_as_it_is():
    model = tiny_model(layers.Activation("linear"))
    assert device_equivalent(model) == (model, [])


def test_a_rescaling_that_is_not_of_an_image_is_left_alone():
    inputs = tf.keras.Input((16, 16, 3))
    pooled = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inputs))
    model = tf.keras.Model(inputs, layers.Dense(3)(layers.Rescaling(2.0)(pooled)))
    assert device_equivalent(model) == (model, [])


def test_the_terminal_text_says_once_what_the_imx500s_model_has_in_place_of_a_refused_layer():
    replaced = "rescaling (Rescaling, x * 0.007843 + -1) replaced by a 1x1 depthwise convolution: the same function"
    variants = {
        "tflite_quantized": {"substituted_layers": [replaced]},
        "tflite_mct_gptq": {"substituted_layers": [replaced]},
    }
    assert device_text({"models": [], "mct_variants": variants}) == (
        f"For the IMX500, whose converter has no Rescaling or Normalization: {replaced}\n"
    )
    assert device_text({"models": [], "mct_variants": {"tflite_quantized": {}}}) == ""


@pytest.mark.slow
@pytest.mark.hardware
@pytest.mark.skipif(find_imx500_converter() is None, reason="Sony's IMX500 converter is not installed: make imx500")
def test_the_imx500_compiles_a_model_with_an_input_rescaling_and_the_record_says_what_was_replaced(
    rescaling_models, tmp_path
):
    quantized = quantize_with_mct(
        model_path=str(rescaling_models / "image_rescaling.h5"),
        calibration_path=str(rescaling_models / "calibration.npy"),
        batch_size=4,
        target_platform="imx500",
        out_dir=tmp_path,
        progress=False,
    )
    assert quantized.substituted_layers == [
        "rescaling (Rescaling, x * 0.007843 + -1) replaced by a 1x1 depthwise convolution: the same function"
    ]
    assert quantized.details()["substituted_layers"] == quantized.substituted_layers
    converter, java = converter_and_java()
    report = compile_for_imx500(quantized_keras_path=quantized.path, out_dir=tmp_path, converter=converter, java=java)
    assert report.compiled is True, report.reason
