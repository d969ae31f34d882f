"""Guards on the input, checked before any work: a configuration that repeats a key, holds a number that is not
finite or too large, or would write its outputs over its inputs is refused, each problem naming the key, the
value or file and what was expected. Image folders hold no symbolic links; extensions match in any case; class
names match their folders whatever their Unicode form.

The inputs are small and real: JPEG files, a label file and an untrained Keras model whose input size is not
fixed (the validation checks the model's shape, not what it learnt).
"""

import json
import os
import shlex
import shutil
import sys
import unicodedata
from pathlib import Path

import pytest

from core.config import GIB, calibration_memory_limit, parse_config
from core.data.images import find_jpegs
from core.data.load_evaluation_set import list_evaluation_images
from core.errors import ConfigError
from core.storage import REPO_ROOT
from core.validate_config import validate_config
from tests.test_locking import in_private_mount_namespace, skip_unless_private_mounts_work

CLASSES = {"cat": 0, "dog": 1}


@pytest.fixture(scope="module")
def free_size_model(tmp_path_factory) -> Path:
    """An image classifier of 2 classes whose input height and width are not fixed ([None, None, None, 3])."""
    import tensorflow as tf

    model = tf.keras.Sequential(
        [tf.keras.Input((None, None, 3)), tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(2)]
    )
    path = tmp_path_factory.mktemp("model") / "model.h5"
    model.save(path)
    return path


def jpeg(path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (200, 30, 30)).save(path, "JPEG")
    return path


def make_inputs(root: Path, model: Path) -> Path:
    """model.h5, training/ (calibration JPEGs), validation/<class>/ (evaluation JPEGs) and labels.json."""
    shutil.copyfile(model, root / "model.h5")
    jpeg(root / "training" / "a.jpg")
    for name in CLASSES:
        jpeg(root / "validation" / name / "1.jpg")
    (root / "labels.json").write_text(json.dumps(CLASSES))
    return root


@pytest.fixture
def inputs(tmp_path, free_size_model) -> Path:
    return make_inputs(tmp_path, free_size_model)


def config_for(root: Path, **overrides) -> dict:
    return {
        "source_keras_model": str(root / "model.h5"),
        "dataset_image_dir": str(root / "training"),
        "batch_size": 1,
        "input_tensor_size": 32,
        "iteration_count": 1,
        "output_dir": str(root / "out" / "models"),
        "evaluate_image_dir": str(root / "validation"),
        "evaluate_image_extension": "jpg",
        "evaluate_label_file": str(root / "labels.json"),
        "evaluate_result_dir": str(root / "out" / "results"),
    } | overrides


def refusal(config_path: Path | None = None, config: dict | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config=config, config_path=config_path)
    return str(info.value)


def write_text(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def config_text_with(config: dict, extra: str) -> str:
    """The configuration's JSON text with `extra` ('"key": value, ...', written as is) added at its end."""
    return json.dumps(config)[:-1] + ", " + extra + "}"


# 1. A key given twice


def test_a_key_given_twice_is_refused_naming_the_key_and_the_file(inputs):
    text = config_text_with(config_for(inputs), '"batch_size": 2, "preprocessing": {"scale": 0.5, "scale": 1}')
    path = write_text(inputs / "configuration.json", text)
    message = refusal(path)
    assert f"key 'batch_size' appears more than once in '{path}'" in message
    assert "key 'preprocessing.scale' appears more than once" in message
    assert "keep one" in message


def test_a_label_given_twice_is_refused(inputs):
    write_text(inputs / "labels.json", '{"cat": 0, "dog": 1, "cat": 1}')
    message = refusal(config=config_for(inputs))
    assert "key 'evaluate_label_file'" in message and "labels ['cat'] appear more than once" in message


# 2. Finite numbers only


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e400", "1" + "0" * 400])
def test_a_number_that_is_not_finite_is_refused_naming_the_key(inputs, literal):
    text = config_text_with(config_for(inputs), f'"preprocessing": {{"scale": {literal}}}')
    message = refusal(write_text(inputs / "configuration.json", text))
    assert "key 'preprocessing.scale' has value" in message and "Input should be a finite number" in message
    assert "1 problem" in message  # one message per key, not one per type the value could have had


def test_a_nan_in_an_inline_configuration_is_refused_naming_the_key(inputs):
    preprocessing = {"mean": [0.5, float("nan"), 0.5], "std": [1, 1, 1]}
    message = refusal(config=config_for(inputs, preprocessing=preprocessing))
    assert "key 'preprocessing.mean.1' has value nan" in message and "finite number" in message


# 3. Bounds


@pytest.mark.parametrize(
    "key, value, limit",
    [("iteration_count", 10_001, 10_000), ("batch_size", 4097, 4096), ("input_tensor_size", 8193, 8192)],
)
def test_the_sizes_have_documented_maxima(inputs, key, value, limit):
    message = refusal(config=config_for(inputs, **{key: value}))
    assert f"key '{key}' has value {value} (an integer): Input should be less than or equal to {limit}" in message


@pytest.mark.parametrize("key", ["batch_size", "iteration_count", "input_tensor_size", "seed", "evaluation_batch_size"])
@pytest.mark.parametrize("digits", [401, 5000])  # Python reads at most 4300 digits
def test_a_huge_integer_gets_the_same_clean_message(inputs, key, digits):
    text = config_text_with(
        {k: v for k, v in config_for(inputs).items() if k != key}, f'"{key}": 1{"0" * (digits - 1)}'
    )
    message = refusal(write_text(inputs / "configuration.json", text))
    assert f"key '{key}' has value a {digits}-digit integer: Input should be less than or equal to" in message


def test_the_calibration_set_must_fit_a_quarter_of_the_memory_and_8_gib(inputs):
    limit, memory = calibration_memory_limit()
    assert limit == min(memory // 4, 8 * GIB)
    config = config_for(inputs, batch_size=100, iteration_count=10_000, input_tensor_size=224)
    message = refusal(config=config)
    assert "keys 'batch_size' = 100, 'iteration_count' = 10000 and 'input_tensor_size' = 224" in message
    assert "the calibration set would take 560.8 GiB" in message
    assert f"over the limit of {limit / GIB:.1f} GiB (a quarter of this machine's" in message
    assert "lower iteration_count or batch_size" in message
    parse_config(config_for(inputs, batch_size=50, iteration_count=10, input_tensor_size=224))  # the SDK's defaults


def test_a_model_of_free_input_size_takes_input_tensor_size_up_to_1024(inputs):
    assert validate_config(config=config_for(inputs, input_tensor_size=1024)).model_input_shape == [None] * 3 + [3]
    message = refusal(config=config_for(inputs, input_tensor_size=1025))
    assert "key 'input_tensor_size' = 1025: the model's input is None x None (not fixed)" in message
    assert "expected at most 1024 for such a model" in message


def plain_saved_model(path: Path) -> Path:
    """A TensorFlow SavedModel that Keras did not write: tf.saved_model.save of a module with one function."""
    import tensorflow as tf

    class Scaler(tf.Module):
        def __init__(self):
            super().__init__()
            self.scale = tf.Variable(2.0)

        @tf.function(input_signature=[tf.TensorSpec([None, 32, 32, 3], tf.float32)])
        def __call__(self, images):
            return tf.reduce_mean(images * self.scale, axis=[1, 2])[:, :2]

    tf.saved_model.save(Scaler(), str(path))
    return path


def test_a_plain_tensorflow_saved_model_is_refused_naming_the_key_the_path_and_how_to_get_a_keras_model(inputs):
    path = plain_saved_model(inputs / "plain_saved_model")
    message = refusal(config=config_for(inputs, source_keras_model=str(path)))
    assert f"key 'source_keras_model' = '{path}': model {path} is a TensorFlow SavedModel that Keras did not write" in (
        message
    )
    assert "expected a Keras model: an .h5 or .keras file, or a SavedModel folder written by Keras's model.save" in (
        message
    )
    assert "save it with model.save('model.keras')" in message


# 4. Outputs never land on inputs


@pytest.mark.parametrize(
    "key, where, expected",
    [
        ("output_dir", "validation/models", "is inside key 'evaluate_image_dir'"),
        ("evaluate_result_dir", "training", "is the same folder as key 'dataset_image_dir'"),
        ("output_dir", "training/deeper/models", "is inside key 'dataset_image_dir'"),
    ],
)
def test_an_output_folder_among_the_inputs_is_refused_naming_both_keys(inputs, key, where, expected):
    message = refusal(config=config_for(inputs, **{key: str(inputs / where)}))
    assert f"key '{key}' = '{inputs / where}'" in message and expected in message
    assert "outputs must never land among the inputs" in message


def test_a_model_where_the_run_writes_its_quantized_model_is_refused(inputs):
    model = inputs / "out" / "models" / "model_quantized.keras"
    model.parent.mkdir(parents=True)
    shutil.copyfile(inputs / "model.h5", model)
    message = refusal(config=config_for(inputs, source_keras_model=str(model)))
    assert f"key 'output_dir' = '{inputs / 'out' / 'models'}': the run writes {model} there" in message
    assert "over key 'source_keras_model'" in message and "move that input or choose another output_dir" in message


def test_labels_or_configuration_where_the_run_writes_results_are_refused(inputs):
    results = inputs / "out" / "results"
    labels = write_text(results / "results.json", json.dumps(CLASSES))
    config_path = write_text(results / "report.html", json.dumps(config_for(inputs, evaluate_label_file=str(labels))))
    message = refusal(config_path)
    assert f"the run writes {labels} there, over key 'evaluate_label_file'" in message
    assert f"the run writes {config_path} there, over the configuration file" in message


def test_a_model_beside_the_outputs_under_a_name_the_run_does_not_write_is_fine(inputs):
    config = config_for(inputs, output_dir=str(inputs), evaluate_result_dir=str(inputs / "results"))
    assert validate_config(config=config).config.output_dir == str(inputs)  # model.h5 lies in output_dir


def test_an_output_folder_below_a_file_is_refused_naming_the_input(inputs):
    message = refusal(config=config_for(inputs, output_dir=str(inputs / "labels.json" / "models")))
    assert f"{inputs / 'labels.json'} is a file, so no folder can be created below it" in message
    assert "it is key 'evaluate_label_file', an input" in message


def test_an_output_folder_that_is_the_model_file_is_refused_naming_the_input(inputs):
    message = refusal(config=config_for(inputs, evaluate_result_dir=str(inputs / "model.h5")))
    assert "model.h5 is a file; expected a folder (it is created if missing); it is key 'source_keras_model'" in message


def test_an_output_folder_on_a_read_only_file_system_is_refused(inputs, tmp_path):
    """A read-only mount (private to the validating process) refuses writes even to root, who writes any folder."""
    readonly = tmp_path / "readonly"
    readonly.mkdir()
    skip_unless_private_mounts_work(readonly, "ro,size=64k")
    config = config_for(inputs, output_dir=str(readonly / "models"), evaluate_result_dir=str(readonly))
    code = (
        "import json, sys\nfrom core.validate_config import validate_config\n"
        "try:\n    validate_config(config=json.loads(sys.argv[1]))\nexcept Exception as exc:\n    print(exc)\n"
    )
    environment = os.environ | {
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))
    }
    command = shlex.join([sys.executable, "-c", code, json.dumps(config)])
    run = in_private_mount_namespace(
        f"mount -t tmpfs -o ro,size=64k tmpfs {readonly} && exec {command}", cwd=REPO_ROOT, env=environment
    )
    assert f"folder {readonly} is read-only for this user, so nothing can be written in it" in run.stdout, (
        run.stdout + run.stderr[-2000:]
    )
    assert f"so {readonly / 'models'} cannot be created in it" in run.stdout
    assert "make it writable or choose another folder" in run.stdout
    assert os.access(readonly, os.W_OK)  # outside that process the folder is as it was


@pytest.mark.slow
def test_outputs_over_inputs_exit_with_status_2_and_leave_every_input_as_it_was(prefect_harness, inputs, capsys):
    from flows.quantize_evaluate import main

    config_path = write_text(
        inputs / "configuration.json", json.dumps(config_for(inputs, output_dir=str(inputs / "validation" / "cat")))
    )
    before = {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()}
    assert main([str(config_path), "--no-progress"]) == 2
    assert "is inside key 'evaluate_image_dir'" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in inputs.rglob("*") if p.is_file()} == before


# 5. An empty config_path


def test_an_empty_config_path_counts_as_not_given(inputs):
    assert validate_config(config=config_for(inputs), config_path="").class_names == list(CLASSES)
    with pytest.raises(ConfigError, match="no configuration: give config_path"):
        validate_config(config_path="")
    both = refusal(config_path=write_text(inputs / "c.json", "{}"), config=config_for(inputs))
    assert "empty the config_path field" in both and "an empty config_path counts as not given" in both


# 6. Image files: extension in any case, no symbolic links, class names in any Unicode form


def test_the_evaluation_extension_matches_in_any_case(inputs):
    (inputs / "validation" / "cat" / "1.jpg").rename(inputs / "validation" / "cat" / "1.JPG")
    jpeg(inputs / "validation" / "dog" / "2.Jpg")
    for extension in ("jpg", "JPG"):
        assert (
            validate_config(config=config_for(inputs, evaluate_image_extension=extension)).evaluation_image_count == 3
        )
        listed = list_evaluation_images(str(inputs / "validation"), extension, list(CLASSES))
        assert [(f.name, label) for f, label in listed] == [("1.JPG", 0), ("1.jpg", 1), ("2.Jpg", 1)]


def test_no_file_of_the_extension_in_any_case_is_named(inputs):
    message = refusal(config=config_for(inputs, evaluate_image_extension="png"))
    assert "key 'evaluate_image_extension' = 'png': no '*.png' files (in any case)" in message


@pytest.mark.parametrize(
    "link, target",
    [
        ("validation/cat/2.jpg", "validation/dog/1.jpg"),  # an image file
        ("validation/bird", "validation/cat"),  # a class folder
        ("training/more.jpg", "validation/cat/1.jpg"),  # a calibration image
        ("training/sub", "validation"),  # a folder below the calibration folder
    ],
)
def test_a_symbolic_link_among_the_images_is_refused_naming_it(inputs, link, target):
    (inputs / link).symlink_to(inputs / target)
    key = "dataset_image_dir" if link.startswith("training") else "evaluate_image_dir"
    message = refusal(config=config_for(inputs))
    assert (
        f"key '{key}'" in message
        and f"1 symbolic link below {inputs / link.split('/')[0]} ({inputs / link})" in message
    )
    assert "replace each with the real file or folder, or remove it" in message


def test_hidden_links_are_ignored_and_never_read(inputs):
    (inputs / "training" / ".cache.jpg").symlink_to(inputs / "validation" / "cat" / "1.jpg")
    (inputs / "validation" / "cat" / "._1.jpg").symlink_to(inputs / "validation" / "cat" / "1.jpg")
    assert validate_config(config=config_for(inputs)).calibration_image_count == 1
    assert find_jpegs(inputs / "training") == [inputs / "training" / "a.jpg"]


def test_class_names_match_their_folders_in_any_unicode_form(inputs):
    composed, decomposed = unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")
    assert composed != decomposed
    (inputs / "labels.json").write_text(json.dumps({"cat": 0, composed: 1}))
    (inputs / "validation" / "dog").rename(inputs / "validation" / decomposed)
    validated = validate_config(config=config_for(inputs))
    assert validated.class_names == ["cat", composed] and validated.labels_without_folder == []
    listed = list_evaluation_images(str(inputs / "validation"), "jpg", validated.class_names)
    assert [(f.parent.name, label) for f, label in listed] == [(decomposed, 1), ("cat", 0)]


def test_two_labels_that_differ_only_in_unicode_form_are_refused(inputs):
    names = [unicodedata.normalize("NFC", "café"), unicodedata.normalize("NFD", "café")]
    (inputs / "labels.json").write_text(json.dumps({names[0]: 0, names[1]: 1}))
    message = refusal(config=config_for(inputs))
    assert "are one name written in two Unicode forms" in message and "keep one" in message
