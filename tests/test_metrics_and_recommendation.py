"""The figures every model is judged by, and the recommendation drawn from them (no TensorFlow needed)."""

import numpy as np
import pytest

from core.evaluate.metrics import agreement, confusion_matrix, per_class_accuracy, top_k_correct
from core.results.recommend import recommend

LABELS = np.array([0, 1, 2, 2, 1, 0, 2])
TOP_3 = np.array([[0, 1, 2], [2, 1, 0], [2, 0, 1], [1, 0, 2], [1, 2, 0], [0, 2, 1], [0, 1, 2]])


def test_top_5_counts_at_least_as_many_images_as_top_1():
    assert top_k_correct(TOP_3[:, :1], LABELS) == 4
    assert top_k_correct(TOP_3, LABELS) == 7 >= top_k_correct(TOP_3[:, :1], LABELS)


def test_the_confusion_matrix_sums_to_the_image_count_with_true_classes_as_rows():
    matrix = confusion_matrix(TOP_3[:, 0], LABELS, class_count=3)
    assert matrix.sum() == len(LABELS)
    assert matrix[2].tolist() == [1, 1, 1]  # the three images of class 2 went to 0, 1 and 2
    assert per_class_accuracy(matrix, ["a", "b", "c"]) == {"a": 1.0, "b": 0.5, "c": pytest.approx(1 / 3)}


def test_a_class_without_images_has_no_accuracy_rather_than_zero():
    assert per_class_accuracy(confusion_matrix(np.array([0]), np.array([0]), 2), ["a", "b"])["b"] is None


def test_a_model_agrees_with_itself_completely_and_partly_with_another():
    assert agreement(TOP_3[:, 0], TOP_3[:, 0]) == 1.0
    assert agreement(TOP_3[:, 0], LABELS) == pytest.approx(4 / 7)


def model(name, top_1, kib, ms=None, file=None):
    return {
        "model": name,
        "top_1_accuracy": top_1,
        "file_size_bytes": kib * 1024,
        "latency_ms": {"1_thread": None, "all_threads": ms},
        "file": file or f"out/{name}.tflite",
    }


MODELS = [
    model("keras", 0.90, 300, file="model.h5"),
    model("tflite", 0.90, 100, ms=2.0),
    model("tflite_float16", 0.895, 50, ms=1.5),
    model("tflite_full_int8", 0.87, 25, ms=0.5),
    model("tflite_quantized", 0.893, 27, ms=0.9),
]


def test_the_smallest_model_within_the_budget_is_recommended_and_the_others_say_why_not():
    choice = recommend(MODELS, max_accuracy_drop=0.01, objective="size")
    assert choice.chosen == "tflite_quantized"
    assert "smallest" in choice.reason and "27.0 KiB" in choice.reason
    reasons = {r.model: r.reason for r in choice.rejected}
    assert reasons["tflite_full_int8"].startswith("Top-1 drop 0.0300 exceeds the budget 0.0100")
    assert reasons["tflite_float16"].startswith("larger: 50.0 KiB")
    assert "keras" not in reasons  # the float Keras model is the reference, not a candidate


def test_the_latency_objective_picks_the_fastest_within_the_budget():
    assert recommend(MODELS, max_accuracy_drop=0.05, objective="latency").chosen == "tflite_full_int8"
    assert recommend(MODELS, max_accuracy_drop=0.008, objective="latency").chosen == "tflite_quantized"
    assert recommend(MODELS, max_accuracy_drop=0.006, objective="latency").chosen == "tflite_float16"


def test_an_impossible_budget_recommends_nothing_and_names_the_closest():
    worse = [m if m["model"] == "keras" else {**m, "top_1_accuracy": m["top_1_accuracy"] - 0.05} for m in MODELS]
    choice = recommend(worse, max_accuracy_drop=0.0)
    assert choice.chosen is None
    assert choice.closest == "tflite"
    assert "no TFLite model stays within" in choice.reason and "the closest is tflite" in choice.reason
    assert len(choice.rejected) == 4


def test_a_device_that_can_take_no_model_is_named_as_the_reason():
    choice = recommend(MODELS, max_accuracy_drop=0.05, target_device="ethos-u55-128")
    assert choice.chosen is None and choice.reason.startswith("no TFLite model can go to ethos-u55-128")
