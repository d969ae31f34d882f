"""A model file is data: loading it must not run code stored in it unless the user says so."""

import json

import pytest
import tensorflow as tf

from core.errors import InputError
from core.evaluate.models import load_keras_model
from core.validate_config import validate_config
from tests.helpers import sdk_config


@pytest.fixture
def lambda_model(tmp_path):
    model = tf.keras.Sequential(
        [
            tf.keras.Input((32, 32, 3)),
            tf.keras.layers.Lambda(lambda x: x * 2.0, name="doubler"),
            tf.keras.layers.GlobalAveragePooling2D(),
            tf.keras.layers.Dense(10),
        ]
    )
    path = tmp_path / "lambda.h5"
    model.save(path)
    return path


def test_a_model_with_a_lambda_layer_is_refused_with_the_way_out(lambda_model):
    with pytest.raises(InputError, match=r"has Lambda layers \['doubler'\].*\"allow_unsafe_model_code\": true"):
        load_keras_model(lambda_model)


@pytest.mark.slow
def test_the_configuration_can_allow_it_explicitly(lambda_model, sample_dir, tmp_path):
    assert load_keras_model(lambda_model, allow_unsafe_code=True) is not None
    with pytest.raises(Exception, match="has Lambda layers"):
        validate_config(config=sdk_config(sample_dir, tmp_path, source_keras_model=str(lambda_model)))
    validated = validate_config(
        config=sdk_config(sample_dir, tmp_path, source_keras_model=str(lambda_model), allow_unsafe_model_code=True)
    )
    assert validated.config.allow_unsafe_model_code is True


def test_a_file_that_is_not_a_model_is_an_input_error(tmp_path):
    fake = tmp_path / "model.h5"
    fake.write_text(json.dumps({"not": "a model"}))
    with pytest.raises(InputError, match="cannot be loaded as a Keras model"):
        load_keras_model(fake)
