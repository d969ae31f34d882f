"""Shared fixtures: an isolated Prefect home and cache, a small real sample (the helpers that test modules
import, configurations among them, are in tests/helpers.py)."""

import os
import shutil
import tempfile
from pathlib import Path

# Before anything imports Prefect or the project: keep every test run's state out of the
# developer's folders (Prefect reads its settings when it is first imported).
_SESSION_DIR = Path(tempfile.mkdtemp(prefix="quantize-tests-"))
os.environ["PREFECT_HOME"] = str(_SESSION_DIR / "prefect-home")
os.environ["QUANTIZE_CACHE_DIR"] = str(_SESSION_DIR / "cache")
os.environ.pop("PREFECT_API_URL", None)
os.environ.pop("QUANTIZE_FAIL_EVALUATION", None)
os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")

import pytest  # noqa: E402

# Prefect's logging setup replaces every existing handler, and absl's (TensorFlow's logging) closes its stream on
# the way unless that stream is sys.stderr at that moment. Done inside a test with `capsys` active, it closed pytest's
# own capture of the whole session. Done now, once, while sys.stderr is that capture, it closes nothing.
from prefect.logging.configuration import setup_logging  # noqa: E402

setup_logging()

from tests.helpers import SAMPLE_TRAIN, SAMPLE_VALIDATION  # noqa: E402


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The digits sample, small: a real CNN trained here on real images."""
    from core.data.sample_data import make_sample

    return make_sample(_SESSION_DIR / "sample", train_count=SAMPLE_TRAIN, validation_count=SAMPLE_VALIDATION, epochs=30)


@pytest.fixture(scope="session")
def detection_sample() -> Path:
    """The detection sample (digits on 96 x 96 canvases, COCO annotations), its label file and the sample detector
    trained on it here (about 90 s on 2 cores): what `make demo-detection` runs on."""
    from core.data.sample_detector import make_detection_demo

    return make_detection_demo(_SESSION_DIR / "digits_detection")


@pytest.fixture
def own_sample(sample_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the sample a test may change without disturbing the others."""
    copy = tmp_path / "sample"
    shutil.copytree(sample_dir, copy)
    return copy


@pytest.fixture(scope="session")
def rescaling_models(tmp_path_factory) -> Path:
    """A folder of two tiny 3-class classifiers of 16 x 16 images, each with a Rescaling layer named "rescaling"
    (x / 127.5 - 1), which Sony's IMX500 converter has no operator for, and calibration.npy (4 images, 0 to 255):
    image_rescaling.h5 scales the input image, which a 1x1 depthwise convolution can stand in for
    (tests/test_substitute_layers.py); pooled_rescaling.h5 scales the pooled 2-D features, which nothing can
    (tests/test_hardware.py)."""
    import numpy as np
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("rescaling")
    layers = tf.keras.layers
    inputs = tf.keras.Input((16, 16, 3))
    scaled = layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")(inputs)
    features = layers.Conv2D(4, 3, padding="same")(scaled)
    image = tf.keras.Model(inputs, layers.Dense(3)(layers.GlobalAveragePooling2D()(features)))
    image.save(folder / "image_rescaling.h5")
    inputs = tf.keras.Input((16, 16, 3))
    pooled = layers.GlobalAveragePooling2D()(layers.Conv2D(4, 3)(inputs))
    scaled = layers.Rescaling(1 / 127.5, offset=-1, name="rescaling")(pooled)
    tf.keras.Model(inputs, layers.Dense(3)(scaled)).save(folder / "pooled_rescaling.h5")
    np.save(folder / "calibration.npy", np.random.default_rng(0).random((4, 16, 16, 3), np.float32) * 255)
    return folder
