"""When quantization breaks a model, the repair search finds a deployable model within the budget, judged on
tuning images and reported on images it never saw; when it cannot, it says so; when nothing broke, it does not
run. The broken model is the trained digits sample given a function-preserving channel-range imbalance."""

import json
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from core.data.sample_data import make_imbalanced
from core.kinds.classification import stratified_split
from core.repair.ladder import ladder
from core.storage import REPO_ROOT
from tests.helpers import command_environment, gone, run, sdk_config, task_states, write_config

BUDGET = 0.05  # 60 reporting images: one image is 1.7 points


def test_the_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat(np.arange(10), 12)
    tuning, reporting = stratified_split(labels, 0.5, seed=3)
    assert set(tuning).isdisjoint(reporting) and len(tuning) + len(reporting) == len(labels)
    assert np.bincount(labels[tuning]).tolist() == [6] * 10
    assert tuning.tolist() == stratified_split(labels, 0.5, seed=3)[0].tolist()
    assert tuning.tolist() != stratified_split(labels, 0.5, seed=4)[0].tolist()


def test_the_ladder_fits_the_target_cheapest_first():
    imx500 = ladder(target_device="imx500", error_method="mse")
    assert {r.builder for r in imx500} == {"mct"} and imx500[0].name == "mct_cle" and imx500[-1].gptq_epochs
    ethos_u = ladder(target_device="ethos-u55-128", error_method="mse")
    assert {r.builder for r in ethos_u} == {"converter"}
    assert {r.converter_variant for r in ethos_u} == {"full_int8", "full_int16x8"}  # what Vela runs whole
    anywhere = ladder(target_device=None, error_method="mse")
    assert [r.builder for r in anywhere[:4]] == ["mct", "converter", "mct", "converter"]


@pytest.fixture(scope="module")
def broken_model(sample_dir, tmp_path_factory):
    return make_imbalanced(sample_dir / "model.h5", tmp_path_factory.mktemp("broken") / "model.h5")


def broken_config(sample_dir, broken_model, out, **overrides):
    config = sdk_config(sample_dir, out, source_keras_model=str(broken_model), max_accuracy_drop=BUDGET)
    config.update(overrides)
    return write_config(out / "configuration.json", config)


@pytest.fixture(scope="module")
def imx500_run(prefect_harness, sample_dir, broken_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("repair-imx500")
    config_path = broken_config(sample_dir, broken_model, out, target_device="imx500")
    state = run(config_path)
    assert state.is_completed(), state.message
    return config_path, out, json.loads((out / "results" / "results.json").read_text())


@pytest.mark.slow
@pytest.mark.hardware
def test_ptq_breaks_the_imbalanced_model_and_the_search_repairs_it_for_the_imx500(imx500_run):
    _, out, results = imx500_run
    float_top_1 = results["top_1_accuracy_keras"]
    assert float_top_1 - results["top_1_accuracy_tflite_quantized"] > 0.3  # what the imbalance did to MCT PTQ
    repair = results["repair"]
    assert repair["ran"] and "drops" in repair["why"]
    first = repair["trials"][0]
    assert first["recipe"] == "mct_cle" and first["equalization_agreement"] >= 0.99 and first["imx500_fits"]
    assert repair["chosen"] == "mct_cle" and repair["stopped_because"] == "mct_cle qualifies"
    # Judged on one half of the images, reported on the other.
    assert repair["tuning_image_count"] + repair["reporting_image_count"] == results["image_count"]
    assert repair["chosen_drop_reporting"] <= BUDGET
    row = next(m for m in results["models"] if m["model"] == "tflite_repaired")
    assert row["top_1_accuracy"] == repair["chosen_top_1_reporting"]
    assert row["image_count"] == repair["reporting_image_count"]
    assert (out / "models" / "model_repaired.tflite").stat().st_size > 0
    assert (out / "models" / "model_repaired.keras").stat().st_size > 0
    assert results["recommendation"]["chosen"] == "tflite_repaired"
    report = (out / "results" / "report.html").read_text()
    assert "<h2>Repair</h2>" in report and "mct_cle" in report


@pytest.mark.slow
@pytest.mark.hardware
def test_the_analysis_names_the_imbalanced_layer_first_and_why(imx500_run):
    _, out, results = imx500_run
    analysis = results["layer_analysis"]["tflite_quantized"]
    assert analysis["method"] == "xquant"
    worst = analysis["layers"][0]
    assert worst["layer"] == "conv2d" and worst["rank"] == 1  # the first Conv2D, whose two channels were widened
    assert any("channels' ranges differ" in cause for cause in worst["causes"]), worst["causes"]
    assert "conv2d" in analysis["summary"]
    report = (out / "results" / "report.html").read_text()
    assert "Where the accuracy went" in report and "Why tflite_quantized lost accuracy" in report


@pytest.mark.slow
@pytest.mark.hardware
def test_a_rerun_reuses_every_finished_trial(imx500_run):
    config_path, _, _ = imx500_run
    rerun = run(config_path)
    assert rerun.is_completed(), rerun.message
    assert task_states(rerun, expected=14)["try-repair-mct_cle"] == "Cached"
    results = json.loads((config_path.parent / "results" / "results.json").read_text())
    assert all(trial["cached"] for trial in results["repair"]["trials"])


@pytest.mark.slow
@pytest.mark.hardware
def test_the_search_repairs_a_full_integer_model_for_an_ethos_u(prefect_harness, sample_dir, broken_model, tmp_path):
    config_path = broken_config(
        sample_dir, broken_model, tmp_path, target_device="ethos-u55-128", variants=["full_int8"]
    )
    state = run(config_path)
    assert state.is_completed(), state.message
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    broken = next(m for m in results["models"] if m["model"] == "tflite_full_int8")
    assert results["top_1_accuracy_keras"] - broken["top_1_accuracy"] > 0.3
    repair = results["repair"]
    assert repair["chosen"] == "converter_cle" and repair["trials"][0]["npu_share"] == 1.0
    assert repair["chosen_drop_reporting"] <= BUDGET
    assert (tmp_path / "models" / "model_repaired_vela.tflite").stat().st_size > 0
    assert results["recommendation"]["chosen"] == "tflite_repaired"


@pytest.mark.slow
@pytest.mark.hardware
def test_the_command_ends_as_soon_as_it_has_printed_the_outcome_of_an_ethos_u_repair(
    sample_dir, broken_model, tmp_path
):
    # The repair's trials convert in worker processes, and Python's multiprocessing waited for them at exit for
    # ever: the command printed its outcome and never ended.
    config_path = broken_config(
        sample_dir, broken_model, tmp_path, target_device="ethos-u55-128", variants=["full_int8"]
    )
    # Nothing cached: every trial runs in the command.
    environment = command_environment(QUANTIZE_CACHE_DIR=str(tmp_path / "cache"))
    with open(tmp_path / "stderr.txt", "w") as stderr:
        process = subprocess.Popen(
            [sys.executable, "-m", "flows.quantize_evaluate", str(config_path), "--no-progress"],
            cwd=REPO_ROOT,
            env=environment,
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    started: dict[int, psutil.Process] = {}  # every process the command started, as seen while it ran

    def watch() -> None:
        command = psutil.Process(process.pid)
        while process.poll() is None:
            try:
                started.update({child.pid: child for child in command.children(recursive=True)})
            except psutil.Error:
                return
            time.sleep(0.1)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    deadline = threading.Timer(600, process.kill)  # a command that hangs before its outcome ends the reading
    deadline.start()
    try:
        assert process.stdout is not None
        outcome = next((line for line in process.stdout if line.startswith("Recommended:")), None)
        printed = time.monotonic()
        assert outcome is not None, (tmp_path / "stderr.txt").read_text()[-3000:]
        status = process.wait(timeout=60)
        ended = time.monotonic()
        # Left at once: anything but the watchdog and Python's resource tracker, which end by themselves once the
        # command has ended (the watchdog after stopping whatever the command left, which must be nothing).
        left = [
            p
            for p in started.values()
            if not gone(p.pid)
            and not any(helper in " ".join(_cmdline(p)) for helper in ("watchdog", "resource_tracker"))
        ]
    finally:
        deadline.cancel()
        process.kill()
    assert status == 0, (tmp_path / "stderr.txt").read_text()[-3000:]
    assert ended - printed < 30, f"the command ended {ended - printed:.0f} s after printing its outcome"
    assert not left, [(p.pid, _cmdline(p)) for p in left]
    watcher.join()
    psutil.wait_procs(list(started.values()), timeout=30)  # the watchdog ends once it sees the command gone
    assert all(gone(p.pid) for p in started.values())
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["repair"]["chosen"] == "converter_cle" and "tflite_repaired" in outcome


def _cmdline(process: psutil.Process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


@pytest.mark.slow
def test_when_no_trial_qualifies_the_search_says_so_and_names_the_closest(
    prefect_harness, sample_dir, broken_model, tmp_path, monkeypatch
):
    # Without the IMX500 converter no model can be shown to fit the sensor: nothing qualifies.
    monkeypatch.setenv("IMX500_CONVERTER", str(tmp_path / "no-converter" / "imxconv-tf"))
    config_path = broken_config(
        sample_dir, broken_model, tmp_path, target_device="imx500", repair_max_trials=2, imx500_require_fit=False
    )
    state = run(config_path)
    assert state.is_completed(), state.message
    repair = json.loads((tmp_path / "results" / "results.json").read_text())["repair"]
    assert repair["chosen"] is None and repair["closest"] == "mct_cle"
    assert len(repair["trials"]) == 2 and repair["stopped_because"] == "repair_max_trials (2) reached"
    assert "fit cannot be checked" in repair["trials"][0]["reason"]
    assert not (tmp_path / "models" / "model_repaired.tflite").exists()
