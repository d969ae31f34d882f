"""Out onto a cluster: the evaluations sharded over the workers of a real `distributed.LocalCluster`
(2 workers on 127.0.0.1), and the batch flow giving each worker a configuration, give exactly the
single-process results."""

import json

import pytest

from core.runners import RunnerConfig, shards
from flows.batch_quantize import batch_quantize
from flows.quantize_evaluate import quantize_evaluate
from tests.helpers import sdk_config, task_states, write_config

CLUSTER = {"kind": "local_cluster", "workers": 2}
EXACT = (
    "model",
    "top_1_accuracy",
    "top_5_accuracy",
    "correct",
    "image_count",
    "confusion_matrix",
    "agreement_with_keras",
    "per_class_accuracy",
)


def test_shards_cover_every_image_once_in_order():
    assert shards(10, 3) == [(0, 3), (3, 7), (7, 10)]
    assert shards(2, 5) == [(0, 1), (1, 2)]
    assert shards(0, 3) == [(0, 0)]


def test_the_runner_needs_an_address_exactly_when_it_names_a_scheduler():
    with pytest.raises(ValueError, match="give 'address'"):
        RunnerConfig(kind="address")
    assert RunnerConfig(kind="address", address="tcp://127.0.0.1:8786").distributed


@pytest.mark.slow
@pytest.mark.dask
def test_a_sharded_evaluation_on_a_local_cluster_equals_the_single_process_one(prefect_harness, sample_dir, tmp_path):
    single = quantize_evaluate(config=sdk_config(sample_dir, tmp_path / "single"), progress=False)
    state = quantize_evaluate(
        config=sdk_config(sample_dir, tmp_path / "sharded"),
        progress=False,
        runner=RunnerConfig(**CLUSTER, evaluation_shards=3),
        return_state=True,
    )
    assert state.is_completed(), state.message
    sharded = state.result()
    for one, merged in zip(single["models"], sharded["models"], strict=True):
        assert {k: one[k] for k in EXACT} == {k: merged[k] for k in EXACT}, one["model"]
    states = task_states(state, expected=4 * 3 + 11)
    assert all(
        states[f"evaluate-{model}-shard-{i}-of-3"] == "Completed"
        for model in ("keras", "tflite_quantized")
        for i in (1, 2, 3)
    ), states


@pytest.mark.slow
@pytest.mark.dask
def test_the_batch_flow_on_a_local_cluster_gives_the_single_process_results(prefect_harness, sample_dir, tmp_path):
    paths = [
        str(write_config(tmp_path / name / "configuration.json", sdk_config(sample_dir, tmp_path / name)))
        for name in ("a", "b")
    ]
    broken = write_config(
        tmp_path / "broken" / "configuration.json", {**sdk_config(sample_dir, tmp_path / "broken"), "batch_size": 0}
    )
    local = batch_quantize(config_dir=None, config_paths=paths, return_state=True).result()
    state = batch_quantize(
        config_dir=None, config_paths=[*paths, str(broken)], runner=RunnerConfig(**CLUSTER), return_state=True
    )
    assert state.is_failed()  # the broken configuration fails alone
    cluster = state.result(raise_on_failure=False)
    rows = {row["configuration"]: row for row in cluster["rows"]}
    assert rows[str(broken)]["status"] == "failed" and "batch_size" in rows[str(broken)]["error"]
    for row in local["rows"]:
        assert rows[row["configuration"]] == row
    assert json.loads((tmp_path / "a" / "results" / "results.json").read_text())["image_count"] == 120
