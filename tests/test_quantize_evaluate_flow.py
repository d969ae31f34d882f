"""The whole flow on the digits sample, with real TensorFlow, MCT and Prefect."""

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from core.config import Preprocessing
from core.data.images import decode_rgb, find_jpegs
from core.data.load_calibration_set import sample_indices
from core.data.load_evaluation_set import list_evaluation_images
from core.data.preprocessing import preprocess
from core.evaluate.evaluate_model import FAULT_ENV
from core.storage import REPO_ROOT
from tests.helpers import EVALUATIONS, HEAVY_STEPS, SAMPLE_TRAIN, run, sdk_config, task_states, write_config

SDK_KEYS = [
    "top_1_accuracy_keras",
    "top_1_accuracy_keras_quantized",
    "top_1_accuracy_tflite",
    "top_1_accuracy_tflite_quantized",
]


@pytest.fixture(scope="module")
def first_run(prefect_harness, sample_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("first-run")
    config_path = write_config(out / "configuration.json", sdk_config(sample_dir, out))
    state = run(config_path)
    assert state.is_completed(), state.message
    return config_path, out, state


@pytest.mark.slow
def test_the_flow_writes_the_sdk_outputs(first_run):
    _, out, _ = first_run
    assert (out / "models" / "model.tflite").stat().st_size > 0
    assert (out / "models" / "model_quantized.tflite").stat().st_size > 0
    results = json.loads((out / "results" / "results.json").read_text())
    assert list(results)[:4] == SDK_KEYS
    assert results["image_count"] == 120
    assert [m["model"] for m in results["models"]] == ["keras", "keras_quantized", "tflite", "tflite_quantized"]
    header = (
        "model,description,file,size_kib,top_1,top_5,change_vs_keras,agreement,ms_1_thread,ms_all_threads,"
        "input,output,npu_ops,ethos_u_inf_s,imx500_fits,images"
    )
    assert (out / "results" / "results.csv").read_text().splitlines()[0] == header


@pytest.mark.slow
def test_accuracies_are_sane(first_run):
    results = json.loads((first_run[1] / "results" / "results.json").read_text())
    assert results["top_1_accuracy_keras"] > 0.8  # ten classes: chance is 0.1
    for key in SDK_KEYS[1:]:
        assert abs(results[key] - results["top_1_accuracy_keras"]) <= 0.05, key


@pytest.mark.slow
def test_the_quantized_tflite_model_is_int8_inside_and_smaller(first_run):
    import tensorflow as tf

    out = first_run[1] / "models"
    interpreter = tf.lite.Interpreter(str(out / "model_quantized.tflite"))
    dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in dtypes
    assert (out / "model_quantized.tflite").stat().st_size < 0.5 * (out / "model.tflite").stat().st_size


def direct_top1(model_file, sample_dir) -> float:
    """Top-1 computed image by image with a bare tf.lite.Interpreter, independent of the workflow's batching."""
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(str(model_file))
    interpreter.allocate_tensors()
    inp, outp = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    pairs = list_evaluation_images(str(sample_dir / "validation"), "jpg", [str(d) for d in range(10)])
    correct = 0
    for file, label in pairs:
        interpreter.set_tensor(inp["index"], preprocess(decode_rgb(file), 32, Preprocessing())[None])
        interpreter.invoke()
        correct += int(np.argmax(interpreter.get_tensor(outp["index"])) == label)
    return correct / len(pairs)


@pytest.mark.slow
@pytest.mark.parametrize(
    "model, key",
    [("model.tflite", "top_1_accuracy_tflite"), ("model_quantized.tflite", "top_1_accuracy_tflite_quantized")],
)
def test_accuracy_equals_a_direct_interpreter_call(first_run, sample_dir, model, key):
    _, out, _ = first_run
    results = json.loads((out / "results" / "results.json").read_text())
    assert results[key] == pytest.approx(direct_top1(out / "models" / model, sample_dir), abs=1e-9)


@pytest.mark.slow
def test_the_run_records_a_table_and_a_summary_artifact(first_run):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["quantize-evaluate-sample-model", "quantize-evaluate-sample-model-table"])
            )
        )
    by_type = {a.type: a for a in artifacts}
    assert "top_1" in json.dumps(by_type["table"].data) and "model_quantized.tflite" in json.dumps(
        by_type["table"].data
    )
    assert "# Quantize and evaluate" in by_type["markdown"].data


@pytest.mark.slow
def test_a_second_identical_run_is_served_from_the_cache(first_run):
    config_path, out, _ = first_run
    state = run(config_path)
    assert state.is_completed()
    states = task_states(state)
    for step in HEAVY_STEPS + EVALUATIONS:
        assert states[step] == "Cached", (step, states)
    assert states["validate-config"] == "Completed" and states["record-results"] == "Completed"


@pytest.mark.slow
def test_changing_one_calibration_image_redoes_the_quantization_and_what_follows_only(first_run, own_sample, tmp_path):
    config_path = write_config(tmp_path / "configuration.json", sdk_config(own_sample, tmp_path))
    assert run(config_path).is_completed()
    used = find_jpegs(own_sample / "training")[sample_indices(SAMPLE_TRAIN, 60, seed=0)[0]]
    Image.fromarray(255 - np.asarray(Image.open(used))).save(used)

    states = task_states(run(config_path))
    for step in [
        "load-calibration-set",
        "quantize-with-mct-ptq",
        "export-quantized-tflite-mct_ptq",
        "evaluate-keras_quantized",
        "evaluate-tflite_quantized",
    ]:
        assert states[step] == "Completed", (step, states)
    for step in ["convert-to-tflite-float32", "load-evaluation-set", "evaluate-keras", "evaluate-tflite"]:
        assert states[step] == "Cached", (step, states)


@pytest.mark.slow
def test_after_a_failed_evaluation_a_rerun_executes_only_the_evaluation(first_run, sample_dir, tmp_path, monkeypatch):
    # A batch size of its own keeps this test's evaluations out of the other runs' cache.
    config_path = write_config(
        tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path, evaluation_batch_size=7)
    )
    monkeypatch.setenv(FAULT_ENV, "tflite_quantized")
    failed = run(config_path)
    assert failed.is_failed()
    assert task_states(failed, expected=10)["evaluate-tflite_quantized"] == "Failed"  # no record-results
    assert not (tmp_path / "results" / "results.json").exists()  # nothing published by a failed run
    assert not (tmp_path / "models").exists()

    monkeypatch.delenv(FAULT_ENV)
    rerun = run(config_path)
    assert rerun.is_completed()
    states = task_states(rerun)
    assert states["evaluate-tflite_quantized"] == "Completed"
    for step in HEAVY_STEPS + ["evaluate-keras", "evaluate-keras_quantized", "evaluate-tflite"]:
        assert states[step] == "Cached", (step, states)
    assert (tmp_path / "results" / "results.json").exists()


def cli(*args, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "flows.quantize_evaluate", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        **kwargs,
    )


def test_the_command_explains_itself():
    result = cli("--help")
    assert result.returncode == 0
    assert "CONFIGURATION_JSON" in result.stdout and "model_quantized.tflite" in result.stdout


def test_the_command_fails_with_the_problem_as_its_last_line(tmp_path):
    bad = write_config(tmp_path / "configuration.json", {"batch_size": "50"})
    result = cli(str(bad), "--no-progress")
    assert result.returncode == 2
    last_lines = result.stderr.strip().splitlines()
    assert last_lines[0].startswith("error: configuration invalid")
    assert any("key 'batch_size' has value '50' (a string)" in line for line in last_lines)


@pytest.mark.slow
def test_the_command_runs_the_sample_and_prints_the_table(first_run):
    config_path, out, _ = first_run
    result = cli(str(config_path), "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert any(line.split()[:2] == ["tflite_quantized", "model_quantized.tflite"] for line in lines if line.strip())
    assert lines[-1].startswith("Recommended: ")
    assert json.loads((out / "results" / "results.json").read_text())["image_count"] == 120


@pytest.mark.slow
def test_an_injected_fault_fires_even_when_the_evaluation_is_cached(first_run, monkeypatch):
    config_path, _, _ = first_run  # every step of this configuration is cached
    monkeypatch.setenv(FAULT_ENV, "tflite_quantized")
    failed = run(config_path)
    assert failed.is_failed()
    states = task_states(failed, expected=10)
    assert states["evaluate-tflite_quantized"] == "Failed"
    assert states["evaluate-tflite"] == "Cached"  # the others keep their cached results
    monkeypatch.delenv(FAULT_ENV)
    assert run(config_path).is_completed()


@pytest.mark.slow
def test_an_input_error_is_logged_as_one_line_without_a_traceback(prefect_harness, tmp_path, caplog):
    import logging

    config_path = write_config(tmp_path / "configuration.json", {"source_keras_model": "nope.h5"})
    with caplog.at_level(logging.ERROR):
        state = run(config_path)
    assert state.is_failed()
    failures = [
        r for r in caplog.records if "ConfigError" in r.getMessage() or "configuration invalid" in r.getMessage()
    ]
    assert failures, [r.getMessage() for r in caplog.records]
    assert all(r.exc_info is None and r.exc_text is None for r in failures)


@pytest.mark.slow
def test_a_model_that_quantizes_well_runs_no_repair_trial(first_run):
    _, out, state = first_run
    repair = json.loads((out / "results" / "results.json").read_text())["repair"]
    assert repair["mode"] == "auto" and repair["ran"] is False and repair["why"].startswith("not needed: ")
    assert not any(name.startswith("try-repair") for name in task_states(state))
