"""Helpers shared by the test modules: the sample's size, the configurations built on it, and running
the flow and reading its task states. Fixtures live in conftest.py; what a test module imports lives here.

Nothing here imports Prefect or the project at import time: conftest.py imports this module before
Prefect has read its settings."""

import json
import os
import re
import time
from pathlib import Path

SAMPLE_TRAIN, SAMPLE_VALIDATION = 600, 120


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


HEAVY_STEPS = [
    "load-calibration-set",
    "quantize-with-mct-ptq",
    "export-saved-model",
    "convert-to-tflite-float32",
    "export-quantized-tflite-mct_ptq",
    "load-evaluation-set",
]
EVALUATIONS = ["evaluate-keras", "evaluate-keras_quantized", "evaluate-tflite", "evaluate-tflite_quantized"]


def task_states(flow_state, expected: int = 15, timeout: float = 120.0) -> dict[str, str]:
    """Task-run name (without Prefect's random suffix) -> final state name, read from the API once at least
    `expected` task runs have settled and, for a completed run, its last step (record-results) is among them: the
    API hears of task runs through events, which can lag behind the flow's own end on a busy machine."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = flow_state.state_details.flow_run_id
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        states = {re.sub(r"-[0-9a-f]{3}$", "", run.name): run.state.name for run in runs if run.state}
        settled = all(
            name not in ("Running", "Pending", "Scheduled", "AwaitingRetry", "Retrying") for name in states.values()
        )
        last_step_seen = "record-results" in states or not flow_state.is_completed()
        if (len(states) >= expected and settled and last_step_seen) or time.monotonic() > deadline:
            return states
        time.sleep(0.5)


def run(config_path, **kwargs):
    """The flow on a configuration file, without progress bars; its final state."""
    from flows.quantize_evaluate import quantize_evaluate

    return quantize_evaluate(config_path=str(config_path), progress=False, return_state=True, **kwargs)


def completed_results(sample: Path, out: Path, **overrides) -> dict:
    """The flow on the sample's configuration with `overrides` (written to out/configuration.json), which must
    complete: its results.json."""
    state = run(write_config(out / "configuration.json", sdk_config(sample, out, **overrides)))
    assert state.is_completed(), state.message
    return json.loads((out / "results" / "results.json").read_text())


def command_environment(**overrides: str) -> dict[str, str]:
    """This environment for a command of the project's, without a PREFECT_API_URL (its own ephemeral API, then)."""
    environment = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    environment.update(overrides)
    return environment


def wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.1)


def gone(pid: int) -> bool:
    """Whether the process has ended (a zombie has: only its parent's wait is missing)."""
    import psutil

    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True
