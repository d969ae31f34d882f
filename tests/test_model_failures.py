"""A model whose interpreter crashes costs that model, not the run: the others are evaluated, compared and
recommended, the table and results.json say what happened to it, and the command's exit status says "finished,
with failed models" (3), apart from success (0), an input error (2) and a failed run (1).

The crash is a real native abort (SIGABRT) in the worker process that runs the model, as TensorFlow Lite's own on
EfficientNetB0's 16x8 model, set off on purpose by QUANTIZE_CRASH_MODEL."""

import json
import subprocess
import sys

import pytest

from core.evaluate.isolated import CRASH_ENV
from tests.helpers import command_environment, run, sdk_config, task_states, write_config

pytestmark = pytest.mark.slow  # the flow on the sample

REPO_ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def test_a_model_that_aborts_its_interpreter_is_recorded_as_failed_and_the_run_finishes(
    sample_dir, tmp_path, prefect_harness, monkeypatch
):
    config = sdk_config(sample_dir, tmp_path)
    config_path = write_config(tmp_path / "configuration.json", config)
    done = subprocess.run(
        [sys.executable, "-m", "flows.quantize_evaluate", str(config_path), "--no-progress"],
        cwd=REPO_ROOT,
        env=command_environment(**{CRASH_ENV: "tflite"}),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    failure = results["failed_variants"]["tflite"]
    assert failure["step"] == "evaluate"
    assert failure["reason"].startswith("aborted (SIGABRT)")
    rows = [m["model"] for m in results["models"]]
    assert rows == ["keras", "keras_quantized", "tflite_quantized"]
    assert results["recommendation"]["reason"]  # the others were still judged
    assert "Failed: tflite: evaluate failed: aborted (SIGABRT)" in done.stdout
    assert "Traceback" not in done.stderr
    # Published as usual, with the failed model's file left out.
    assert (tmp_path / "models" / "model_quantized.tflite").is_file()
    assert not (tmp_path / "models" / "model.tflite").exists()
    # The failure is remembered by content, as a result is: a rerun does not crash on that model again.
    monkeypatch.setenv(CRASH_ENV, "tflite")
    rerun = run(config_path)
    assert rerun.is_completed(), rerun.message
    assert task_states(rerun)["evaluate-tflite"] == "Cached"
