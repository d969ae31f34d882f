"""Against a real Prefect server on 127.0.0.1, started by the project's own command: deployments from
prefect.yaml, runs triggered through the API and executed by a process worker, and the retry of a
failed run that re-executes only the failed evaluation."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from core.evaluate.evaluate_model import FAULT_ENV
from core.storage import REPO_ROOT
from deployments import local_stack
from tests.helpers import EVALUATIONS, HEAVY_STEPS, sdk_config, write_config

pytestmark = pytest.mark.server  # each test talks to the `prefect server` the module starts

DEPLOYMENT = "quantize-evaluate/quantize-evaluate"
FINAL = ("Completed", "Failed", "Crashed", "Cancelled")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    state_dir = tmp_path_factory.mktemp("prefect-stack")
    info = local_stack.start(port=free_port(), state_dir=state_dir, env={"PREFECT_HOME": str(state_dir / "home")})
    try:
        with temporary_settings({PREFECT_API_URL: info["api_url"]}):
            yield info
    finally:
        local_stack.stop(state_dir)


def trigger(parameters: dict, **kwargs):
    from prefect.deployments import run_deployment

    return run_deployment(DEPLOYMENT, parameters=parameters, timeout=400, **kwargs)


def read_flow_run(flow_run_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_flow_run(flow_run_id)


def task_states_since(flow_run_id, since) -> dict[str, str]:
    """The latest state of each task run started after `since`, by name without Prefect's suffix."""
    import re

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    runs = sorted((r for r in runs if r.created >= since), key=lambda r: r.created)
    return {re.sub(r"-[0-9a-f]{3}$", "", r.name): r.state.name for r in runs}


def test_the_server_listens_on_loopback_only(stack):
    port = int(stack["api_url"].rsplit(":", 1)[1].split("/")[0])
    other_addresses = [
        a for a in subprocess.run(["hostname", "-I"], capture_output=True, text=True).stdout.split() if ":" not in a
    ]
    for address in other_addresses:
        with socket.socket() as s, pytest.raises(OSError):
            s.settimeout(2)
            s.connect((address, port))


def test_the_nightly_batch_deployment_has_its_runs_scheduled(stack):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    deadline = time.monotonic() + 90
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["batch-quantize-nightly"]))
            )
        scheduled = [r for r in runs if r.state.name == "Scheduled"]
        if scheduled or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert scheduled, "the scheduler created no run for the cron schedule"
    assert {(r.expected_start_time.hour, r.expected_start_time.minute) for r in scheduled} == {(2, 0)}
    assert scheduled[0].parameters == {"config_dir": "configs", "progress": False}


@pytest.mark.slow
def test_a_run_from_a_configuration_file_completes_with_its_artifacts(stack, sample_dir, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    config_path = write_config(tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path))
    flow_run = trigger({"config_path": str(config_path), "progress": False})
    assert flow_run.state.name == "Completed", flow_run.state.message
    results = json.loads((tmp_path / "results" / "results.json").read_text())
    assert results["top_1_accuracy_tflite_quantized"] > 0.8
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]))
        )
    keyed = {(a.key, a.type) for a in artifacts if a.key}
    expected = {
        ("quantize-evaluate-sample-model", "markdown"),
        ("quantize-evaluate-sample-model-table", "table"),
        ("quantize-evaluate-sample-model-report", "markdown"),
    }  # a link artifact is stored as markdown
    assert keyed == expected, [(a.key, a.type) for a in artifacts]


@pytest.mark.slow
def test_a_run_from_an_inline_configuration_completes(stack, sample_dir, tmp_path):
    # The deployment's default config_path is cleared, as a user does in the UI's form.
    flow_run = trigger({"config": sdk_config(sample_dir, tmp_path), "config_path": None, "progress": False})
    assert flow_run.state.name == "Completed", flow_run.state.message
    assert (tmp_path / "models" / "model_quantized.tflite").exists()


@pytest.mark.slow
def test_retrying_a_failed_run_re_executes_only_the_failed_evaluation(stack, sample_dir, tmp_path):
    # Its own evaluation batch size keeps this run's evaluations out of the other tests' cache.
    config_path = write_config(
        tmp_path / "configuration.json", sdk_config(sample_dir, tmp_path, evaluation_batch_size=11)
    )
    fault = tmp_path / "fault"
    fault.write_text("tflite_quantized")
    failed = trigger(
        {"config_path": str(config_path), "progress": False}, job_variables={"env": {FAULT_ENV: f"@{fault}"}}
    )
    assert failed.state.name == "Failed"
    assert not (tmp_path / "results" / "results.json").exists()

    fault.unlink()  # the cause is fixed; now press Retry
    retried_at = read_flow_run(failed.id).state.timestamp
    env = {**os.environ, "PREFECT_API_URL": stack["api_url"]}
    retry = subprocess.run(
        [sys.executable, "-m", "prefect", "flow-run", "retry", str(failed.id)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert retry.returncode == 0, retry.stdout + retry.stderr
    deadline = time.monotonic() + 400
    while (run := read_flow_run(failed.id)).state.name not in FINAL or run.state.timestamp <= retried_at:
        assert time.monotonic() < deadline, run.state
        time.sleep(2)
    assert run.state.name == "Completed", run.state.message

    states = task_states_since(failed.id, retried_at)
    assert states["evaluate-tflite_quantized"] == "Completed", states
    for step in HEAVY_STEPS + [e for e in EVALUATIONS if e != "evaluate-tflite_quantized"]:
        assert states[step] == "Cached", (step, states)
    assert json.loads((tmp_path / "results" / "results.json").read_text())["image_count"] == 120
