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


@pytest.mark.slow
@pytest.mark.dask
@pytest.mark.hardware
def test_repair_trials_run_side_by_side_on_the_workers_and_the_search_ends_as_on_one_machine(
    prefect_harness, sample_dir, tmp_path
):
    """The imbalanced sample with no target device: the ladder's first two rungs (MCT's and the converter's
    equalization) run at once on the two workers; the first qualifies, so the outcome is the one-by-one search's."""
    from core.data.sample_data import make_imbalanced

    model = make_imbalanced(sample_dir / "model.h5", tmp_path / "broken" / "model.h5")

    def config(name: str) -> dict:
        return sdk_config(sample_dir, tmp_path / name, source_keras_model=str(model), max_accuracy_drop=0.05)

    state = quantize_evaluate(
        config=config("cluster"), progress=False, runner=RunnerConfig(**CLUSTER), return_state=True
    )
    assert state.is_completed(), state.message
    cluster = state.result()["repair"]
    states = task_states(state, expected=2)
    assert {"try-repair-mct_cle", "try-repair-converter_cle"} <= set(states), states  # both ran, side by side
    single = quantize_evaluate(config=config("single"), progress=False)["repair"]
    assert [t["recipe"] for t in cluster["trials"]] == [t["recipe"] for t in single["trials"]] == ["mct_cle"]
    same = ("chosen", "stopped_because", "chosen_top_1_tuning", "chosen_top_1_reporting", "chosen_drop_reporting")
    assert {k: cluster[k] for k in same} == {k: single[k] for k in same}
