"""The batch flow runs one quantize-evaluate subflow per configuration, isolates failures and summarizes."""

import json

import pytest

from core.batch.list_configurations import list_configurations
from core.errors import InputError
from flows.batch_quantize import batch_quantize, main
from tests.helpers import sdk_config, write_config


def test_configurations_are_found_one_folder_per_model_sorted_without_duplicates(tmp_path):
    b = write_config(tmp_path / "b" / "configuration.json", {})
    a = write_config(tmp_path / "a" / "configuration.json", {})
    (tmp_path / "a" / "notes.json").write_text("{}")
    assert list_configurations(config_dir=str(tmp_path), config_paths=[str(b)]) == [str(a), str(b)]


def test_a_folder_without_configurations_is_named_with_the_fix(tmp_path):
    with pytest.raises(
        InputError, match=r"config_dir .*: no configuration.json anywhere below .*; add one folder per model"
    ):
        list_configurations(config_dir=str(tmp_path))
    with pytest.raises(InputError, match="no configurations given"):
        list_configurations(config_dir=None, config_paths=[])


@pytest.fixture(scope="module")
def batch(prefect_harness, sample_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("batch")
    write_config(root / "configs" / "digits" / "configuration.json", sdk_config(sample_dir, root / "digits"))
    write_config(
        root / "configs" / "broken" / "configuration.json", sdk_config(sample_dir, root / "broken", batch_size="10")
    )
    state = batch_quantize(config_dir=str(root / "configs"), return_state=True)
    return root, state


@pytest.mark.slow
def test_one_bad_configuration_fails_alone_and_the_others_finish(batch):
    root, state = batch
    assert state.is_failed()
    assert "1 of 2 configurations failed" in state.message and "broken" in state.message
    assert json.loads((root / "digits" / "results" / "results.json").read_text())["top_1_accuracy_keras"] > 0.8
    assert not (root / "broken" / "results").exists()


@pytest.mark.slow
def test_each_configuration_ran_as_its_own_subflow(batch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterParentFlowRunId

    _, state = batch
    with get_client(sync_client=True) as client:
        children = client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                parent_flow_run_id=FlowRunFilterParentFlowRunId(any_=[state.state_details.flow_run_id])
            )
        )
    assert sorted(run.state.name for run in children) == ["Completed", "Failed"]


@pytest.mark.slow
def test_the_summary_artifact_lists_every_model_with_its_status_accuracies_and_sizes(batch):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.client.schemas.sorting import ArtifactSort

    with get_client(sync_client=True) as client:
        [table] = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["batch-quantize-summary-table"])),
            sort=ArtifactSort.CREATED_DESC,  # this module's batch, not another test's
            limit=1,
        )
    rows = {
        row["configuration"].split("/")[-2]: row
        for row in (json.loads(table.data) if isinstance(table.data, str) else table.data)
    }
    assert rows["digits"]["status"] == "completed" and rows["digits"]["top_1_tflite_quantized"] > 0.8
    assert rows["digits"]["size_kib_tflite_quantized"] < rows["digits"]["size_kib_tflite"]
    assert rows["broken"]["status"] == "failed" and "key 'batch_size' has value '10'" in rows["broken"]["error"]


@pytest.mark.slow
def test_the_batch_command_prints_the_summary_and_exits_1_when_one_failed(batch, capsys):
    root, _ = batch
    assert main([str(root / "configs")]) == 1
    captured = capsys.readouterr()
    assert "completed" in captured.out and "failed" in captured.out
    assert "broken/configuration.json: ConfigError" in captured.err
