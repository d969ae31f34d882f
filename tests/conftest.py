"""Shared fixtures: an isolated Prefect home and cache, a small real sample, configurations."""

import json
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

SAMPLE_TRAIN, SAMPLE_VALIDATION = 600, 120


@pytest.fixture(scope="session")
def prefect_harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=60):
        yield


@pytest.fixture(scope="session")
def sample_dir() -> Path:
    """The digits sample, small: a real CNN trained here on real images."""
    from core.sample_data import make_sample

    return make_sample(_SESSION_DIR / "sample", train_count=SAMPLE_TRAIN, validation_count=SAMPLE_VALIDATION, epochs=30)


def sdk_config(sample: Path, out: Path, **overrides) -> dict:
    config = {
        "source_keras_model": str(sample / "model.h5"),
        "dataset_image_dir": str(sample / "training"),
        "batch_size": 20,
        "input_tensor_size": 32,
        "iteration_count": 3,
        "output_dir": str(out / "models"),
        "evaluate_image_dir": str(sample / "validation"),
        "evaluate_image_extension": "jpg",
        "evaluate_label_file": str(sample / "labels.json"),
        "evaluate_result_dir": str(out / "results"),
        # Only the SDK's two TFLite models and few latency repeats, to keep the suite fast;
        # tests/test_variants.py builds and checks the whole default set.
        "variants": ["mct_ptq"],
        "latency_repeats": 3,
    }
    config.update(overrides)
    return config


def write_config(path: Path, config: dict) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    return path


@pytest.fixture
def own_sample(sample_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the sample a test may change without disturbing the others."""
    copy = tmp_path / "sample"
    shutil.copytree(sample_dir, copy)
    return copy
