"""The kind of model is one seam: the configuration names it, results.json records it, and every reader of a model's
quality finds the kind's headline score through it."""

from __future__ import annotations

import typing

import pytest

from core.config import QuantizeConfig
from core.kinds.classification import stratified_split
from core.kinds.records import ClassificationEvaluation
from core.kinds.registry import CLASSIFICATION, KINDS, kind_named, kind_of_results
from core.results.recommend import recommend
from core.results.results_text import results_table


def test_the_configurations_task_values_are_the_registrys_kinds():
    allowed = typing.get_args(QuantizeConfig.model_fields["task"].annotation)
    assert set(allowed) == set(KINDS)
    assert QuantizeConfig.model_fields["task"].default == CLASSIFICATION.name


def test_an_unknown_kind_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="unknown kind of model 'segmentation': expected one of classification"):
        kind_named("segmentation")


def test_a_results_file_written_before_the_task_key_reads_as_classification():
    assert kind_of_results({"models": []}) is CLASSIFICATION
    assert kind_of_results({"task": "classification"}) is CLASSIFICATION


def test_a_classifiers_score_is_its_top_1_and_shards_merge_exactly():
    parts = [
        ClassificationEvaluation.counted(
            model="m",
            model_path="m.tflite",
            correct=correct,
            correct_top_5=4,
            seconds=1.0,
            confusion_matrix=matrix,
            predicted=predicted,
            shard=shard,
        )
        for correct, matrix, predicted, shard in (
            (3, [[2, 0], [1, 1]], [0, 0, 0, 1], (0, 4)),
            (1, [[0, 1], [0, 1]], [1, 1], (4, 6)),
        )
    ]
    whole = CLASSIFICATION.merged(parts)
    assert whole.score == whole.top_1_accuracy == 4 / 6
    assert whole.confusion_matrix == [[2, 1], [1, 2]] and whole.shard == (0, 6) and whole.shards == 2


def test_the_split_keeps_every_class_on_both_sides(tmp_path):
    import numpy as np

    labels = np.repeat(np.arange(3), 4)
    np.save(tmp_path / "labels.npy", labels)
    tuning, reporting = CLASSIFICATION.split(str(tmp_path / "labels.npy"), 0.5, seed=1)
    assert set(labels[tuning]) == set(labels[reporting]) == {0, 1, 2}
    assert tuning.tolist() == stratified_split(labels, 0.5, seed=1)[0].tolist()


def row(name: str, score: float, size: int) -> dict:
    return {
        "model": name,
        "description": name,
        "file": f"{name}.tflite" if name != "keras" else "model.h5",
        "file_size_bytes": size,
        "top_1_accuracy": score,
        "top_5_accuracy": 1.0,
        "top_1_change_vs_keras": score - 0.9,
        "agreement_with_keras": 1.0,
        "latency_ms": {"1_thread": None, "all_threads": 1.0},
        "input_dtype": "float32",
        "output_dtype": "float32",
        "image_count": 10,
    }


def test_the_recommendation_and_the_table_read_the_kinds_score_and_columns():
    models = [row("keras", 0.9, 400), row("tflite", 0.9, 100), row("tflite_quantized", 0.5, 25)]
    choice = recommend(models, max_accuracy_drop=0.01, kind=CLASSIFICATION)
    assert choice.chosen == "tflite" and "Top-1 0.9000" in choice.reason
    assert [r.reason for r in choice.rejected] == ["Top-1 drop 0.4000 exceeds the budget 0.0100"]
    table = results_table({"task": "classification", "models": models})
    assert {"top_1", "top_5", "change_vs_keras", "agreement"} <= set(table.columns)
    assert table.loc[2, "top_1"] == 0.5
