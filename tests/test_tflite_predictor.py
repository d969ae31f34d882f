"""Integer-input TFLite models are fed through their own input scale and zero point (defect 2 of the old notebook)."""

import numpy as np
import tensorflow as tf

from core.evaluate.models import TFLitePredictor


def full_integer_model(path, keras_model, calibration):
    converter = tf.lite.TFLiteConverter.from_keras_model(keras_model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([calibration[i : i + 1]] for i in range(len(calibration)))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    converter.inference_input_type = tf.uint8
    converter.inference_output_type = tf.uint8
    path.write_bytes(converter.convert())
    return path


def test_a_uint8_input_model_agrees_with_its_float_model(tmp_path):
    tf.keras.utils.set_random_seed(0)
    # Inputs in [-1, 1]: raw pixels would be wrong here, only the model's own scale maps them right.
    x = np.random.default_rng(0).uniform(-1, 1, (64, 6, 6, 3)).astype(np.float32)
    model = tf.keras.Sequential([tf.keras.Input((6, 6, 3)), tf.keras.layers.Flatten(), tf.keras.layers.Dense(4)])
    predictor = TFLitePredictor(full_integer_model(tmp_path / "int.tflite", model, x))
    assert predictor.input_dtype == "uint8"
    float_classes = model.predict(x, verbose=0).argmax(1)
    int_classes = predictor(x).argmax(1)
    assert (float_classes == int_classes).mean() >= 0.9
