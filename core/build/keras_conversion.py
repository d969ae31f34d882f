"""TensorFlow's converter on a Keras model without `from_keras_model`'s cost.

`TFLiteConverter.from_keras_model` saves the model to a SavedModel inside every call (TF 2.15,
tensorflow/lite/python/lite.py: `tf.saved_model.save(model, tmp, SaveOptions(save_debug_info=True))`, then
`from_saved_model`'s import of its `serving_default` signature). That full Keras SavedModel also serializes every
layer's call functions, which makes it slow to write and slow to load again (on a MobileNetV2, tens of seconds per
conversion). The converter only reads the signature, so `save_serving_signature` writes just that: Keras's own
default signature (the function `tf.saved_model.save` would export for the model) and the variables it reads, with
the same options; `keras_model_converter` converts it as `from_keras_model` would have. The bytes are the same
(tests/test_export_saved_model.py); MCT's export gives the same model (tests/test_export_quantized_tflite.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SIGNATURE_KEY = "serving_default"  # what from_keras_model converts, and from_saved_model's default


def save_serving_signature(model: Any, path: Path) -> None:
    """The Keras model's serving signature and the variables it reads, as a SavedModel folder at `path`."""
    import tensorflow as tf
    from keras.src.saving.legacy.saved_model.save_impl import default_save_signature

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


def with_input_size(model: Any, size: int) -> Any:
    """The model itself when its input height and width are fixed; else the same model, its layers and weights,
    built for `size` x `size` inputs. TensorFlow Lite sizes every tensor from the input it is given (a free one is
    1 x 1 and a convolution then fails to prepare), and Sony's converter needs fixed sizes: the flow runs such a
    model at input_tensor_size."""
    import tensorflow as tf

    given = model.inputs[0]
    if None not in given.shape[1:3]:
        return model
    inputs = tf.keras.Input(
        batch_shape=(given.shape[0], size, size, *given.shape[3:]), dtype=given.dtype, name=model.input_names[0]
    )
    fixed = tf.keras.models.clone_model(model, input_tensors=inputs)  # each layer made again from its config
    fixed.set_weights(model.get_weights())
    return fixed


def keras_model_converter(saved_model_path: str, signature_key: str = SIGNATURE_KEY) -> Any:
    """TensorFlow's converter on a SavedModel `save_serving_signature` wrote, as `from_keras_model` would have made
    it: the one difference left is the model type the converter records in the conversion metadata, and the model
    converted is a Keras model, so that is what it records here too."""
    import tensorflow as tf
    from tensorflow.lite.python.conversion_metadata_schema_py_generated import ModelType

    converter = tf.lite.TFLiteConverter.from_saved_model(saved_model_path, signature_keys=[signature_key])
    converter._metadata.environment.modelType = ModelType.KERAS_MODEL
    return converter
