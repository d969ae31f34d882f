"""The HTML report: one self-contained file, charts embedded, every user string escaped."""

import copy
import subprocess
import sys
from pathlib import Path

import pytest

from core.kinds.classification import confusion_matrix_png
from core.results.report import accuracy_size_chart_png, write_html_report

PNG_SIGNATURE = b"\x89PNG"
DATA_URI = "data:image/png;base64,"
REPO = Path(__file__).resolve().parent.parent


def _model(model_id, description, size, top_1, latency, matrix):
    return {
        "model": model_id,
        "description": description,
        "file": f"/out/models/{model_id}.tflite",
        "file_size_bytes": size,
        "top_1_accuracy": top_1,
        "top_5_accuracy": 1.0,
        "top_1_change_vs_keras": top_1 - 0.9,
        "agreement_with_keras": 0.95,
        "per_class_accuracy": {"cat": 0.9, "dog": None, "bird": 0.8},
        "confusion_matrix": matrix,
        "latency_ms": latency,
        "input_dtype": "float32",
        "output_dtype": "float32",
    }


@pytest.fixture
def results():
    matrix = [[9, 1, 0], [0, 0, 0], [1, 1, 8]]
    return {
        "class_names": ["cat", "dog", "bird"],
        "image_count": 20,
        "models": [
            _model("keras", "Keras original", 400_000, 0.9, {"1_thread": 3.5, "all_threads": 1.2}, matrix),
            _model("tflite_float", "TFLite float32", 380_000, 0.9, {"1_thread": 2.0, "all_threads": 0.8}, matrix),
            _model(
                "tflite_full_int8", "TFLite full int8", 100_000, 0.85, {"1_thread": None, "all_threads": None}, matrix
            ),
        ],
        "recommendation": {
            "chosen": "tflite_full_int8",
            "objective": "size",
            "max_accuracy_drop": 0.05,
            "reason": "smallest file within 5 pp of Keras",
            "rejected": [{"model": "tflite_float", "reason": "larger"}],
            "closest": None,
        },
    }


def test_the_report_is_written_where_asked_and_its_path_returned(results, tmp_path):
    path = write_html_report(results, tmp_path / "sub" / "report.html")

    assert path == tmp_path / "sub" / "report.html"
    assert path.is_file()
    assert path.read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


def test_the_report_names_every_model_and_the_chosen_one(results, tmp_path):
    text = write_html_report(results, tmp_path / "report.html").read_text(encoding="utf-8")

    for model in results["models"]:
        assert model["description"] in text
    assert "Recommended model: tflite_full_int8" in text
    assert "smallest file within 5 pp of Keras" in text


def test_the_report_embeds_one_image_per_model_plus_the_chart(results, tmp_path):
    text = write_html_report(results, tmp_path / "report.html").read_text(encoding="utf-8")

    assert text.count(DATA_URI) == len(results["models"]) + 1


def test_a_missing_latency_is_shown_as_a_dash(results, tmp_path):
    text = write_html_report(results, tmp_path / "report.html").read_text(encoding="utf-8")

    assert "<td>–</td>" in text


def test_strings_from_the_results_are_escaped(results, tmp_path):
    results["class_names"][1] = "<script>alert(1)</script>"
    for model in results["models"]:
        model["per_class_accuracy"] = {name: 0.5 for name in results["class_names"]}
    results["models"][0]["description"] = 'Keras <b>"original"</b>'

    text = write_html_report(results, tmp_path / "report.html").read_text(encoding="utf-8")

    assert "<script>" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "<b>" not in text


def test_without_a_qualifying_model_the_report_says_so_and_names_the_closest(results, tmp_path):
    results["recommendation"].update(chosen=None, closest="tflite_float", reason="every model lost too much")

    text = write_html_report(results, tmp_path / "report.html").read_text(encoding="utf-8")

    assert "none qualifies" in text.lower()
    assert "The closest is <strong>tflite_float</strong>" in text
    assert "Recommended model" not in text


def test_the_charts_are_png_images(results):
    assert accuracy_size_chart_png(results).startswith(PNG_SIGNATURE)
    assert confusion_matrix_png(results["models"][0], results["class_names"]).startswith(PNG_SIGNATURE)


def test_a_confusion_matrix_with_many_classes_is_drawn_without_counts(results):
    names = [f"class_{i}" for i in range(30)]
    model = copy.deepcopy(results["models"][0])
    model["confusion_matrix"] = [[int(i == j) * 5 for j in range(30)] for i in range(30)]

    assert confusion_matrix_png(model, names).startswith(PNG_SIGNATURE)


def test_importing_the_module_does_not_import_matplotlib():
    code = "import sys, core.results.report; assert 'matplotlib' not in sys.modules, 'matplotlib imported eagerly'"

    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)
