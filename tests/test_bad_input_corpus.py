"""Every bad input, through the command: exit status 2, a message naming the key or file and the fix,
and the previous run's outputs exactly as they were (nothing created, changed or deleted).

Each case builds its bad input in a temporary folder; nothing binary is committed.
"""

import json
from pathlib import Path

import pytest

from flows.quantize_evaluate import main
from tests.helpers import sdk_config, write_config

pytestmark = pytest.mark.slow  # every case runs the command on the trained sample

PREVIOUS_OUTPUTS = {
    "models/model.tflite": b"previous float model",
    "models/model_quantized.tflite": b"previous quantized model",
    "results/results.json": b'{"top_1_accuracy_keras": 0.97}',
    "results/results.csv": b"model,top_1\nkeras,0.97\n",
}


def save_model(path: Path, inputs_shape, layers) -> str:
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input(inputs_shape), *layers])
    model.save(path)
    return str(path)


def labels(tmp: Path, content) -> str:
    path = tmp / "bad_labels.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return str(path)


def folder_with(tmp: Path, files: dict[str, bytes]) -> str:
    folder = tmp / "images"
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)
    return str(folder)


def link(tmp: Path, target: Path, name: str) -> str:
    (tmp / name).symlink_to(target, target_is_directory=target.is_dir())
    return str(tmp / name)


def without(key):
    return lambda c, s, t: {k: v for k, v in c.items() if k != key}


def with_(**changes):
    return lambda c, s, t: {**c, **{k: (v(s, t) if callable(v) else v) for k, v in changes.items()}}


def plain_saved_model(tmp: Path) -> str:
    from tests.test_input_guards import plain_saved_model as save

    return str(save(tmp / "plain_saved_model"))


def model_with_an_unknown_layer(path: Path) -> str:
    """A classifier using a layer class that only this function defines: no file the run could import holds it."""
    import tensorflow as tf

    class Halver(tf.keras.layers.Layer):
        def call(self, inputs):
            return inputs / 2

    return save_model(path, (32, 32, 3), [Halver(), *dense_layers(10)])


def dense_layers(n):
    import tensorflow as tf

    return [tf.keras.layers.GlobalAveragePooling2D(), tf.keras.layers.Dense(n)]


# name -> (turn a good configuration into a bad one (or raw file text), a fragment the message must hold)
CASES = {
    "config not JSON": (lambda c, s, t: '{"batch_size": 5,,}', "is not valid JSON: Expecting property name"),
    "config not an object": (lambda c, s, t: "[1, 2]", "must be a JSON object of keys and values, got list"),
    "key missing": (without("batch_size"), "key 'batch_size' is missing"),
    "key misspelt": (
        lambda c, s, t: {**without("batch_size")(c, s, t), "bach_size": 20},
        "unknown key 'bach_size' (did you mean 'batch_size'?)",
    ),
    "integer as a string": (with_(batch_size="10"), "key 'batch_size' has value '10' (a string)"),
    "integer as a float": (
        with_(iteration_count=3.0),
        "key 'iteration_count' has value 3.0 (a number with a fraction)",
    ),
    "negative integer": (with_(input_tensor_size=-32), "key 'input_tensor_size' has value -32"),
    "zero": (with_(batch_size=0), "key 'batch_size' has value 0"),
    "boolean for an integer": (with_(iteration_count=True), "key 'iteration_count' has value True (a boolean)"),
    "empty string": (with_(evaluate_image_dir=""), "key 'evaluate_image_dir' has value '' (a string)"),
    "path does not exist": (
        with_(dataset_image_dir=lambda s, t: str(t / "nowhere")),
        "nowhere does not exist; expected a folder of calibration JPEG images",
    ),
    "file where a folder is needed": (
        with_(dataset_image_dir=lambda s, t: str(s / "labels.json")),
        "labels.json is a file; expected a folder",
    ),
    "folder where a file is needed": (
        with_(evaluate_label_file=lambda s, t: str(s / "training")),
        "training is a folder; expected a JSON file",
    ),
    "symbolic link": (
        with_(source_keras_model=lambda s, t: link(t, s / "model.h5", "model.h5")),
        "is a symbolic link; symbolic links are not allowed",
    ),
    "symbolic link in a parent folder": (
        with_(evaluate_image_dir=lambda s, t: link(t, s, "linked") + "/validation"),
        "linked is a symbolic link",
    ),
    "extension with a leading dot": (with_(evaluate_image_extension=".jpg"), "without the dot"),
    "folder with no JPEG": (
        with_(dataset_image_dir=lambda s, t: folder_with(t, {"a/one.png": b"png"})),
        "no JPEG files (.jpg, .jpeg) anywhere below",
    ),
    "only undecodable JPEGs": (
        with_(
            batch_size=1,
            iteration_count=1,
            dataset_image_dir=lambda s, t: folder_with(t, {"a/x.jpg": b"", "a/y.jpg": b"nope"}),
        ),
        "none of the 2 JPEG files below",
    ),
    "labels not JSON": (
        with_(evaluate_label_file=lambda s, t: labels(t, "{0: 'a'}")),
        "bad_labels.json is not valid JSON",
    ),
    "label ids not unique": (
        with_(evaluate_label_file=lambda s, t: labels(t, {str(d): d // 2 for d in range(10)})),
        "are used more than once",
    ),
    "label ids not integers": (
        with_(evaluate_label_file=lambda s, t: labels(t, {str(d): str(d) for d in range(10)})),
        "ids must be integers",
    ),
    "label ids not 0..N-1": (
        with_(evaluate_label_file=lambda s, t: labels(t, {str(d): d + 1 for d in range(10)})),
        "expected each of 0..9 exactly once",
    ),
    "labels count not the model's outputs": (
        with_(evaluate_label_file=lambda s, t: labels(t, {str(d): d for d in range(11)})),
        "it names 11 classes but the model outputs 10 scores",
    ),
    "class folder without a label": (
        with_(evaluate_label_file=lambda s, t: labels(t, {str(d): d for d in range(9)} | {"nine": 9})),
        "class folders ['9'] have no entry in the label file",
    ),
    "model of an unknown format": (
        with_(source_keras_model=lambda s, t: folder_with(t, {"model.onnx": b"onnx"}) + "/model.onnx"),
        "expected an .h5 or .keras file, or a Keras SavedModel folder",
    ),
    "model file that is not a model": (
        with_(source_keras_model=lambda s, t: folder_with(t, {"model.h5": b"{}"}) + "/model.h5"),
        "cannot be loaded as a Keras model",
    ),
    "plain TensorFlow SavedModel": (
        with_(source_keras_model=lambda s, t: plain_saved_model(t)),
        "is a TensorFlow SavedModel that Keras did not write",
    ),
    "model with a layer nobody defines": (
        with_(source_keras_model=lambda s, t: model_with_an_unknown_layer(t / "halver.h5")),
        "uses layer class 'Halver', which neither Keras nor this workflow knows",
    ),
    "custom layers module without allow_unsafe_model_code": (
        with_(custom_layers_module="layers.py"),
        "key 'custom_layers_module' = 'layers.py' needs key 'allow_unsafe_model_code' true",
    ),
    "model input not H x W x 3": (
        with_(source_keras_model=lambda s, t: save_model(t / "grey.h5", (32, 32, 1), dense_layers(10))),
        "input shape is [None, 32, 32, 1]; expected [batch, height, width, 3]",
    ),
    "model output not a vector of scores": (
        with_(source_keras_model=lambda s, t: save_model(t / "segmenter.h5", (32, 32, 3), [])),
        "output shape is [None, 32, 32, 3]; expected [batch, number of classes]",
    ),
}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES))
def test_a_bad_input_is_named_and_the_previous_outputs_stay_as_they_were(
    case, prefect_harness, sample_dir, tmp_path, capsys
):
    make_bad, expected = CASES[case]
    out = tmp_path / "out"
    for name, content in PREVIOUS_OUTPUTS.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(content)
    bad = make_bad(sdk_config(sample_dir, out), sample_dir, tmp_path)
    config_path = tmp_path / "configuration.json"
    if isinstance(bad, str):
        config_path.write_text(bad)
    else:
        write_config(config_path, bad)

    assert main([str(config_path), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "error: " in error, error[-2000:]
    assert expected in error, error[-2000:]
    assert snapshot(out) == {name: content for name, content in PREVIOUS_OUTPUTS.items()}
