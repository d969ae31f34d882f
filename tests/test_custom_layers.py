"""Every architecture a user brings loads: the layers keras.applications defines itself (ConvNeXt's LayerScale) and
Sony's edge-mdt-cl layers with no configuration; a user's own from the Python file named in `custom_layers_module`,
only with `allow_unsafe_model_code` (running the file runs the user's code). A layer nobody defines is refused at
validation, naming the layer, the key and the fix.

The models are built here with real TensorFlow, untrained (loading checks the architecture, not what it learnt).
"""

import json
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

from core.custom_layers import (
    CUSTOM_LAYERS_MODULE_ENV,
    activate_custom_layers_module,
    active_custom_layers_module,
    custom_objects,
    known_custom_objects,
)
from core.errors import ConfigError, InputError
from core.evaluate.models import load_keras_model
from core.storage import REPO_ROOT
from core.validate_config import validate_config
from tests.test_input_guards import config_for as guards_config_for
from tests.test_input_guards import make_inputs

LAYERS_PY = """
import tensorflow as tf


class Doubler(tf.keras.layers.Layer):
    \"\"\"A layer Keras does not know: it multiplies its input by `factor`.\"\"\"

    def __init__(self, factor=2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
"""


@pytest.fixture(autouse=True)
def no_active_custom_layers(monkeypatch):
    """Each test starts without a user's layers, and leaves none active for the next (validation sets them)."""
    monkeypatch.setenv(CUSTOM_LAYERS_MODULE_ENV, "")
    monkeypatch.delenv(CUSTOM_LAYERS_MODULE_ENV)


def import_file(path: Path, name: str) -> types.ModuleType:
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def user_model(tmp_path_factory) -> Path:
    """A folder holding layers.py (the user's Doubler layer) and model.h5, a 2-class classifier that uses it."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("user-layers")
    (folder / "layers.py").write_text(LAYERS_PY)
    doubler = import_file(folder / "layers.py", "test_user_layers").Doubler
    inputs = tf.keras.Input((8, 8, 3))
    x = tf.keras.layers.GlobalAveragePooling2D()(doubler(3.0)(inputs))
    tf.keras.Model(inputs, tf.keras.layers.Dense(2)(x)).save(folder / "model.h5")
    return folder


@pytest.fixture
def inputs(tmp_path, user_model) -> Path:
    """The model, its layers.py beside the configuration, calibration and evaluation images and the label file."""
    root = make_inputs(tmp_path, user_model / "model.h5")
    (root / "layers.py").write_text(LAYERS_PY)
    return root


def config_for(root: Path, **overrides) -> dict:
    return guards_config_for(root, input_tensor_size=8, **overrides)


def refusal(config: dict, root: Path) -> str:
    with pytest.raises(ConfigError) as info:
        validate_config(config_path=write_config(root, config))
    return str(info.value)


def write_config(root: Path, config: dict) -> Path:
    path = root / "configuration.json"
    path.write_text(json.dumps(config))
    return path


# Known without configuration


def test_the_known_layers_are_keras_applications_own_and_edge_mdt_cls():
    import edgemdt_cl.keras
    import keras.src.applications.convnext as convnext
    import keras.src.applications.inception_resnet_v2 as inception_resnet_v2

    known = known_custom_objects()
    assert known["LayerScale"] is convnext.LayerScale
    assert known["StochasticDepth"] is convnext.StochasticDepth
    assert known["CustomScaleLayer"] is inception_resnet_v2.CustomScaleLayer
    assert known["SSDPostProcess"] is edgemdt_cl.keras.SSDPostProcess
    assert known["FasterRCNNBoxDecode"] is edgemdt_cl.keras.FasterRCNNBoxDecode
    assert custom_objects() == known  # no user's layers active


@pytest.mark.slow  # ConvNeXtTiny takes seconds to build, save and load
def test_convnext_tiny_saved_by_keras_loads_with_no_configuration(tmp_path):
    import tensorflow as tf

    model = tf.keras.applications.ConvNeXtTiny(weights=None, input_shape=(32, 32, 3), classes=10)
    path = tmp_path / "convnext.h5"
    model.save(path)
    loaded = load_keras_model(path)
    batch = np.random.default_rng(0).random((2, 32, 32, 3), np.float32) * 255
    np.testing.assert_allclose(loaded.predict_on_batch(batch), model.predict_on_batch(batch), atol=1e-5)
    assert "LayerScale" in {type(layer).__name__ for layer in loaded.layers}


def test_an_edge_mdt_cl_layer_loads_with_no_configuration(tmp_path):
    import tensorflow as tf
    from edgemdt_cl.keras import FasterRCNNBoxDecode

    anchors = [[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]
    inputs = tf.keras.Input((2, 4))
    decode = FasterRCNNBoxDecode(anchors, scale_factors=(10, 10, 5, 5), clip_window=(0, 0, 1, 1))
    tf.keras.Model(inputs, decode(inputs)).save(tmp_path / "decoder.h5")
    loaded = load_keras_model(tmp_path / "decoder.h5")
    assert isinstance(loaded.layers[-1], FasterRCNNBoxDecode)


# A user's own layers


def test_an_unknown_layer_is_refused_naming_the_layer_the_key_and_the_fix(inputs):
    message = refusal(config_for(inputs), inputs)
    assert "key 'source_keras_model'" in message
    assert "uses layer class 'Doubler'" in message
    assert "name a Python file defining 'Doubler' in key 'custom_layers_module'" in message
    assert '"allow_unsafe_model_code": true' in message


def test_a_custom_layers_module_without_allow_unsafe_model_code_is_refused_naming_both_keys(inputs):
    message = refusal(config_for(inputs, custom_layers_module="layers.py"), inputs)
    assert "key 'custom_layers_module' = 'layers.py' needs key 'allow_unsafe_model_code' true" in message
    assert "loading the module runs its Python code" in message
    assert active_custom_layers_module() is None


def test_with_both_keys_the_model_loads_with_the_users_layer(inputs):
    config = config_for(inputs, custom_layers_module="layers.py", allow_unsafe_model_code=True)
    validated = validate_config(config_path=write_config(inputs, config))
    assert validated.config.custom_layers_module == str(inputs / "layers.py")  # relative to the configuration
    assert validated.model_input_shape == [None, 8, 8, 3]
    model = load_keras_model(inputs / "model.h5", allow_unsafe_code=True)
    doubler = model.layers[1]
    assert type(doubler).__name__ == "Doubler" and doubler.factor == 3.0
    assert type(doubler).__module__.startswith("custom_layers_")  # the class the user's file defines
    batch = np.ones((1, 8, 8, 3), np.float32)
    np.testing.assert_allclose(model.predict_on_batch(batch), model.layers[-1](3 * np.ones((1, 3), np.float32)))


def test_a_keras_format_model_loads_with_the_users_layer_too(inputs):
    config = config_for(inputs, custom_layers_module="layers.py", allow_unsafe_model_code=True)
    validate_config(config_path=write_config(inputs, config))
    load_keras_model(inputs / "model.h5", allow_unsafe_code=True).save(inputs / "model.keras")
    assert type(load_keras_model(inputs / "model.keras", allow_unsafe_code=True).layers[1]).__name__ == "Doubler"
    activate_custom_layers_module(None)
    with pytest.raises(InputError, match=r"uses layer class 'Doubler'.*key 'custom_layers_module'"):
        load_keras_model(inputs / "model.keras", allow_unsafe_code=True)


def test_a_later_configuration_without_the_module_does_not_see_its_layers(inputs):
    with_module = config_for(inputs, custom_layers_module="layers.py", allow_unsafe_model_code=True)
    validate_config(config_path=write_config(inputs, with_module))
    assert active_custom_layers_module() == str(inputs / "layers.py")
    message = refusal(config_for(inputs, allow_unsafe_model_code=True), inputs)
    assert "uses layer class 'Doubler'" in message
    assert active_custom_layers_module() is None


def test_a_module_without_the_layer_is_named_with_what_it_defines(inputs):
    (inputs / "other.py").write_text(LAYERS_PY.replace("Doubler", "Tripler"))
    config = config_for(inputs, custom_layers_module="other.py", allow_unsafe_model_code=True)
    message = refusal(config, inputs)
    assert "uses layer class 'Doubler'" in message
    assert f"the custom layers module {inputs / 'other.py'} (key 'custom_layers_module') defines ['Tripler']" in message


@pytest.mark.parametrize(
    "name, content, expected",
    [
        ("missing.py", None, "missing.py does not exist; expected a Python file (.py)"),
        ("layers.txt", LAYERS_PY, "layers.txt is not a .py file"),
        ("broken.py", "import no_such_module_here\n", "ModuleNotFoundError: No module named 'no_such_module_here'"),
        (
            "bad_objects.py",
            "custom_objects = 3\n",
            "'custom_objects' holds a value of type int; expected a dict of names to classes",
        ),
    ],
)
def test_an_unusable_module_is_refused_naming_the_key(inputs, name, content, expected):
    if content is not None:
        (inputs / name).write_text(content)
    message = refusal(config_for(inputs, custom_layers_module=name, allow_unsafe_model_code=True), inputs)
    assert f"key 'custom_layers_module' = '{name}'" in message
    assert expected in message
    assert active_custom_layers_module() is None


def test_a_modules_custom_objects_dict_joins_its_layers(inputs):
    (inputs / "aliased.py").write_text(LAYERS_PY + "\ncustom_objects = {'OldDoubler': Doubler}\n")
    config = config_for(inputs, custom_layers_module="aliased.py", allow_unsafe_model_code=True)
    validate_config(config_path=write_config(inputs, config))
    assert {"Doubler", "OldDoubler"} <= set(custom_objects())
    assert custom_objects()["OldDoubler"] is custom_objects()["Doubler"]


def test_editing_the_module_changes_the_cache_keys_of_the_steps(inputs):
    from core.caching import ContentCachePolicy
    from tasks.export_saved_model import export_saved_model_task

    policy = ContentCachePolicy(file_inputs=("model_path",))
    context = types.SimpleNamespace(task=types.SimpleNamespace(fn=export_saved_model_task.fn))

    def key() -> str | None:
        return policy.compute_key(context, {"model_path": str(inputs / "model.h5")}, {})  # type: ignore[arg-type]

    without_module = key()
    config = config_for(inputs, custom_layers_module="layers.py", allow_unsafe_model_code=True)
    validate_config(config_path=write_config(inputs, config))
    with_module = key()
    (inputs / "layers.py").write_text(LAYERS_PY.replace("inputs * self.factor", "inputs * self.factor + 1"))
    assert len({without_module, with_module, key()}) == 3


@pytest.mark.slow  # a second Python process imports TensorFlow
def test_a_process_the_run_starts_after_validation_loads_the_model_too(inputs):
    config = config_for(inputs, custom_layers_module="layers.py", allow_unsafe_model_code=True)
    validate_config(config_path=write_config(inputs, config))
    child = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(
                f"""
                from core.evaluate.models import load_keras_model
                model = load_keras_model({str(inputs / "model.h5")!r}, allow_unsafe_code=True)
                print(type(model.layers[1]).__name__)
                """
            ),
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr[-2000:]
    assert child.stdout.strip().splitlines()[-1] == "Doubler"


def test_a_layer_unknown_outside_validation_names_the_fix_too(user_model):
    with pytest.raises(InputError, match=r"uses layer class 'Doubler'.*key 'custom_layers_module'"):
        load_keras_model(user_model / "model.h5")
