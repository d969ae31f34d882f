"""The configuration is checked up front; each problem names the key, the value and what was expected."""

import json
import os
from pathlib import Path

import pytest

from core.errors import ConfigError
from core.validate_config import validate_config
from tests.helpers import SAMPLE_TRAIN, sdk_config, write_config


def error_for(config: dict, tmp_path: Path) -> str:
    path = write_config(tmp_path / "cfg" / "configuration.json", config)
    with pytest.raises(ConfigError) as info:
        validate_config(config_path=path)
    return str(info.value)


@pytest.mark.slow
def test_a_valid_sdk_configuration_passes_with_its_paths_made_absolute(sample_dir, tmp_path):
    path = write_config(tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path))
    validated = validate_config(config_path=path)
    assert validated.class_names == [str(d) for d in range(10)]
    assert validated.model_format == "h5"
    assert validated.model_input_shape == [None, 32, 32, 3]
    assert validated.calibration_image_count == SAMPLE_TRAIN
    assert validated.evaluation_image_count == 120
    assert validated.config.preprocessing.resize == "stretch"  # the documented default
    assert validated.config.target_platform == "imx500"


@pytest.mark.slow
def test_relative_paths_resolve_against_the_configuration_files_folder(sample_dir, tmp_path):
    config_dir = sample_dir.parent / "configs" / "nested"
    config = sdk_config(sample_dir, tmp_path)
    config["source_keras_model"] = os.path.relpath(sample_dir / "model.h5", config_dir)
    path = write_config(config_dir / "configuration.json", config)
    validated = validate_config(config_path=path)
    assert validated.config.source_keras_model == str(sample_dir / "model.h5")


@pytest.mark.slow
def test_an_inline_configuration_resolves_relative_paths_against_base_dir(sample_dir, tmp_path):
    config = sdk_config(sample_dir, tmp_path, source_keras_model="model.h5")
    validated = validate_config(config=config, base_dir=sample_dir)
    assert validated.config.source_keras_model == str(sample_dir / "model.h5")


@pytest.mark.slow
def test_a_configuration_is_required_and_only_one_of_file_and_inline(sample_dir, tmp_path):
    with pytest.raises(ConfigError, match="give config_path"):
        validate_config()
    path = write_config(tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path))
    with pytest.raises(
        ConfigError,
        match=r"both config_path \(.*configuration.json\) and an inline config.*empty the config_path field",
    ):
        validate_config(config=sdk_config(sample_dir, tmp_path), config_path=path)


@pytest.mark.slow
@pytest.mark.parametrize("key", ["batch_size", "evaluate_label_file", "output_dir"])
def test_a_missing_key_is_named_with_what_it_should_hold(sample_dir, tmp_path, key):
    config = sdk_config(sample_dir, tmp_path)
    del config[key]
    message = error_for(config, tmp_path)
    assert f"key '{key}' is missing" in message
    assert "expected" in message


@pytest.mark.slow
def test_an_unknown_key_is_refused_with_the_closest_known_key(sample_dir, tmp_path):
    config = sdk_config(sample_dir, tmp_path)
    config["bach_size"] = config.pop("batch_size")
    message = error_for(config, tmp_path)
    assert "unknown key 'bach_size' (did you mean 'batch_size'?)" in message


@pytest.mark.slow
def test_keys_are_case_sensitive(sample_dir, tmp_path):
    config = sdk_config(sample_dir, tmp_path)
    config["Batch_Size"] = config.pop("batch_size")
    message = error_for(config, tmp_path)
    assert "unknown key 'Batch_Size'" in message and "key 'batch_size' is missing" in message


@pytest.mark.slow
@pytest.mark.parametrize(
    "value, shown",
    [
        ("10", "'10' (a string)"),
        (10.0, "10.0 (a number with a fraction)"),
        (True, "True (a boolean)"),
        (0, "0 (an integer)"),
        (-3, "-3 (an integer)"),
    ],
)
def test_integer_keys_take_only_integers_of_at_least_one(sample_dir, tmp_path, value, shown):
    message = error_for(sdk_config(sample_dir, tmp_path, iteration_count=value), tmp_path)
    assert f"key 'iteration_count' has value {shown}" in message
    assert "expected calibration batches" in message


@pytest.mark.slow
def test_an_empty_path_string_is_refused(sample_dir, tmp_path):
    message = error_for(sdk_config(sample_dir, tmp_path, output_dir=""), tmp_path)
    assert "key 'output_dir' has value '' (a string)" in message


@pytest.mark.slow
def test_an_extension_with_a_leading_dot_is_refused(sample_dir, tmp_path):
    message = error_for(sdk_config(sample_dir, tmp_path, evaluate_image_extension=".jpg"), tmp_path)
    assert "key 'evaluate_image_extension' has value '.jpg'" in message
    assert "without the dot" in message


@pytest.mark.slow
def test_the_extension_matches_in_any_case(sample_dir, tmp_path):
    path = write_config(
        tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path, evaluate_image_extension="JPG")
    )
    assert validate_config(config_path=path).evaluation_image_count == 120


@pytest.mark.slow
def test_every_problem_is_reported_at_once(sample_dir, tmp_path):
    config = sdk_config(sample_dir, tmp_path, batch_size=0, input_tensor_size="32")
    del config["output_dir"]
    message = error_for(config, tmp_path)
    assert "3 problems" in message
    assert "'batch_size'" in message and "'input_tensor_size'" in message and "'output_dir'" in message


def test_a_file_that_is_not_json_is_refused_with_the_position(tmp_path):
    path = tmp_path / "configuration.json"
    path.write_text('{"batch_size": 5,,}')
    with pytest.raises(ConfigError, match=r"is not valid JSON: .* line 1, column 18"):
        validate_config(config_path=path)


def test_a_json_document_that_is_not_an_object_is_refused(tmp_path):
    path = tmp_path / "configuration.json"
    path.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="must be a JSON object of keys and values, got list"):
        validate_config(config_path=path)


def test_a_missing_configuration_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="configuration file .*nope.json' does not exist"):
        validate_config(config_path=tmp_path / "nope.json")


@pytest.mark.slow
def test_paths_that_do_not_exist_or_have_the_wrong_kind_are_named(sample_dir, tmp_path):
    config = sdk_config(
        sample_dir,
        tmp_path,
        source_keras_model=str(tmp_path / "missing.h5"),
        dataset_image_dir=str(sample_dir / "labels.json"),
        evaluate_label_file=str(sample_dir / "training"),
        output_dir=str(sample_dir / "model.h5"),
    )
    message = error_for(config, tmp_path)
    assert "key 'source_keras_model'" in message and "missing.h5 does not exist" in message
    assert "key 'dataset_image_dir'" in message and "labels.json is a file; expected a folder" in message
    assert "key 'evaluate_label_file'" in message and "training is a folder; expected a JSON file" in message
    assert "key 'output_dir'" in message and "model.h5 is a file; expected a folder" in message


@pytest.mark.slow
def test_a_model_path_of_an_unknown_format_is_refused(sample_dir, tmp_path):
    weird = tmp_path / "model.onnx"
    weird.write_bytes(b"not a keras model")
    message = error_for(sdk_config(sample_dir, tmp_path, source_keras_model=str(weird)), tmp_path)
    assert "is a file with suffix '.onnx'; expected an .h5 or .keras file, or a Keras SavedModel folder" in message


@pytest.mark.slow
def test_a_symbolic_link_is_refused(own_sample, tmp_path):
    link = tmp_path / "linked_model.h5"
    link.symlink_to(own_sample / "model.h5")
    message = error_for(sdk_config(own_sample, tmp_path, source_keras_model=str(link)), tmp_path)
    assert "key 'source_keras_model'" in message and "is a symbolic link" in message


@pytest.mark.slow
def test_a_symbolic_link_in_a_parent_folder_is_refused(own_sample, tmp_path):
    linked_dir = tmp_path / "linked_sample"
    linked_dir.symlink_to(own_sample, target_is_directory=True)
    message = error_for(sdk_config(own_sample, tmp_path, dataset_image_dir=str(linked_dir / "training")), tmp_path)
    assert "key 'dataset_image_dir'" in message and f"{linked_dir} is a symbolic link" in message


@pytest.mark.slow
def test_batch_size_may_not_exceed_the_calibration_images(sample_dir, tmp_path):
    message = error_for(sdk_config(sample_dir, tmp_path, batch_size=SAMPLE_TRAIN + 1), tmp_path)
    assert f"key 'batch_size' = {SAMPLE_TRAIN + 1}: larger than the {SAMPLE_TRAIN} calibration images" in message


@pytest.mark.slow
def test_a_calibration_folder_without_jpegs_is_refused(sample_dir, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "note.png").write_bytes(b"png")
    message = error_for(sdk_config(sample_dir, tmp_path, dataset_image_dir=str(empty)), tmp_path)
    assert "no JPEG files (.jpg, .jpeg) anywhere below" in message


@pytest.mark.slow
def test_input_tensor_size_must_match_the_model(sample_dir, tmp_path):
    message = error_for(sdk_config(sample_dir, tmp_path, input_tensor_size=224), tmp_path)
    assert "key 'input_tensor_size' = 224: the model's input is 32 x 32" in message


@pytest.mark.slow
@pytest.mark.parametrize(
    "labels, expected",
    [
        ({"a": 0, "b": 0}, "ids [0] are used more than once"),
        ({"a": 1, "b": 2}, "ids are [1, 2]; expected each of 0..1 exactly once"),
        ({"a": "0"}, "ids must be integers"),
        ([0, 1], "holds list"),
    ],
)
def test_the_label_file_must_map_unique_names_to_ids_0_to_n_minus_1(sample_dir, tmp_path, labels, expected):
    label_file = tmp_path / "labels.json"
    label_file.write_text(json.dumps(labels))
    message = error_for(sdk_config(sample_dir, tmp_path, evaluate_label_file=str(label_file)), tmp_path)
    assert "key 'evaluate_label_file'" in message and expected in message


@pytest.mark.slow
def test_the_label_count_must_equal_the_models_outputs(own_sample, tmp_path):
    labels = {str(d): d for d in range(11)}
    (own_sample / "labels.json").write_text(json.dumps(labels))
    message = error_for(sdk_config(own_sample, tmp_path), tmp_path)
    assert "it names 11 classes but the model outputs 10 scores" in message


@pytest.mark.slow
def test_a_class_folder_missing_from_the_labels_is_named(own_sample, tmp_path):
    (own_sample / "validation" / "7").rename(own_sample / "validation" / "seven")
    message = error_for(sdk_config(own_sample, tmp_path), tmp_path)
    assert "class folders ['seven'] have no entry in the label file" in message


@pytest.mark.slow
def test_a_label_without_a_folder_is_allowed_and_reported(own_sample, tmp_path):
    import shutil

    shutil.rmtree(own_sample / "validation" / "3")
    path = write_config(tmp_path / "configuration.json", sdk_config(own_sample, tmp_path))
    assert validate_config(config_path=path).labels_without_folder == ["3"]


@pytest.mark.slow
def test_mixed_precision_is_refused_for_a_platform_without_it(sample_dir, tmp_path):
    message = error_for(
        sdk_config(sample_dir, tmp_path, variants=["mct_mixed_precision"], target_platform="tflite"), tmp_path
    )
    assert "variant 'mct_mixed_precision' needs target_platform 'imx500', got 'tflite'" in message
    assert "set target_platform to imx500" in message and "source_keras_model" not in message


@pytest.mark.slow
def test_an_ethos_u_target_needs_a_full_integer_variant(sample_dir, tmp_path):
    message = error_for(sdk_config(sample_dir, tmp_path, target_device="ethos-u55-128", variants=["mct_ptq"]), tmp_path)
    assert (
        "target_device 'ethos-u55-128' needs a full-integer model: "
        "add 'full_int8', 'full_uint8' or 'full_int16x8' to variants" in message
    )


def test_a_models_signature_is_read_once_per_content_and_read_again_when_the_file_changes(tmp_path, monkeypatch):
    import tensorflow as tf

    import core.evaluate.models
    from core.evaluate.models import model_signature

    def classifier(classes: int) -> tf.keras.Model:
        inputs = tf.keras.Input((8, 8, 3))
        return tf.keras.Model(inputs, tf.keras.layers.Dense(classes)(tf.keras.layers.Flatten()(inputs)))

    path = tmp_path / "model.keras"
    classifier(10).save(path)
    assert model_signature(path).output_shapes == [[None, 10]]

    loads = []
    real_load = core.evaluate.models.load_keras_model
    monkeypatch.setattr(core.evaluate.models, "load_keras_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    assert model_signature(path) == model_signature(path)
    assert loads == []  # the same content: served from the remembered signature

    classifier(4).save(path)  # new content at the same path
    assert model_signature(path).output_shapes == [[None, 4]]
    assert len(loads) == 1


def test_a_custom_layers_module_needs_allow_unsafe_model_code(tmp_path):
    from core.config import parse_config

    config = sdk_config(tmp_path, tmp_path, custom_layers_module="layers.py")
    with pytest.raises(ConfigError) as info:
        parse_config(config)
    assert "key 'custom_layers_module' = 'layers.py' needs key 'allow_unsafe_model_code' true" in str(info.value)
    assert parse_config({**config, "allow_unsafe_model_code": True}).custom_layers_module == "layers.py"


def test_a_models_signature_is_read_again_when_the_custom_layers_module_changes(tmp_path, monkeypatch):
    import tensorflow as tf

    import core.evaluate.models
    from core.custom_layers import CUSTOM_LAYERS_MODULE_ENV
    from core.evaluate.models import model_signature

    inputs = tf.keras.Input((8, 8, 3))
    path = tmp_path / "model.keras"
    tf.keras.Model(inputs, tf.keras.layers.Dense(3)(tf.keras.layers.Flatten()(inputs))).save(path)
    module = tmp_path / "layers.py"
    module.write_text("import tensorflow as tf\n")
    monkeypatch.setenv(CUSTOM_LAYERS_MODULE_ENV, str(module))
    model_signature(path)

    loads = []
    real_load = core.evaluate.models.load_keras_model
    monkeypatch.setattr(core.evaluate.models, "load_keras_model", lambda *a, **k: loads.append(a) or real_load(*a, **k))
    model_signature(path)
    assert loads == []
    module.write_text("import tensorflow as tf  # the layers changed\n")
    model_signature(path)
    assert len(loads) == 1
