"""The summary artifact carries the report's pictures: the Prefect UI shows the markdown artifact, and cannot open
report.html (a file: link from a web page is refused). tests/test_ui_report.py checks them in a real browser."""

import base64
import io
import re

import pytest
from PIL import Image

from core.results.report import MARKDOWN_MODELS, compact_png, markdown_figures
from core.results.results_text import report_link, summary_markdown

CLASSES = [str(digit) for digit in range(10)]
IMAGE = re.compile(r"!\[([^\]]*)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)")


def _model(name: str, index: int) -> dict:
    matrix = [[10 - (index + i + j) % 3 if i == j else (index + i * j) % 2 for j in range(10)] for i in range(10)]
    return {
        "model": name,
        "description": f"{name} description",
        "file": f"/out/models/{name}.tflite",
        "file_size_bytes": 400_000 // (index + 1),
        "top_1_accuracy": 0.9 - index / 100,
        "top_5_accuracy": 1.0,
        "top_1_change_vs_keras": -index / 100,
        "agreement_with_keras": 0.95,
        "per_class_accuracy": dict.fromkeys(CLASSES, 0.9),
        "confusion_matrix": matrix,
        "latency_ms": {"1_thread": 1.0, "all_threads": 0.5},
        "input_dtype": "float32",
        "output_dtype": "float32",
        "image_count": 100,
    }


def _results(model_count: int, chosen: str | None = "model_1") -> dict:
    return {
        "class_names": CLASSES,
        "class_count": 10,
        "image_count": 100,
        "models": [_model(f"model_{i}", i) for i in range(model_count)],
        "recommendation": {"chosen": chosen, "reason": "smallest file within 1 pp", "rejected": [], "closest": None},
        "quantization": {"mct_version": "2.6", "target_platform": "default"},
        "latency_machine": "a test machine",
        "unsupported_variants": {},
        "report": "/out/results/report.html",
        "configuration": "/out/configuration.json",
    }


def _analysis(model: str) -> dict:
    names = ["conv_1", "conv_2", "dense"]
    layers = [
        {"layer": name, "type": "Conv2D", "rank": rank, "loss_db": 10.0 - 3 * rank, "causes": ["wide range"]}
        for rank, name in enumerate(names, start=1)
    ]
    return {"model": model, "method": "xquant", "summary": "conv_1 lost the most", "layers": layers}


def images(markdown: str) -> dict[str, bytes]:
    """Alt text -> the PNG an embedded image decodes to."""
    return {alt: base64.b64decode(data) for alt, data in IMAGE.findall(markdown)}


def test_the_chart_and_every_models_confusion_matrix_are_embedded_as_png_images():
    results = _results(4)

    shown = images(markdown_figures(results))

    assert list(shown) == ["Top-1 accuracy against file size"] + [f"Confusion matrix of model_{i}" for i in range(4)]
    for png in shown.values():
        assert Image.open(io.BytesIO(png)).format == "PNG"


def test_the_loss_per_layer_of_each_analysed_model_is_embedded():
    results = _results(4)
    results["layer_analysis"] = {"model_2": _analysis("model_2"), "model_3": _analysis("model_3")}

    shown = images(markdown_figures(results))

    assert "Loss per layer of model_2" in shown and "Loss per layer of model_3" in shown


@pytest.mark.parametrize("chosen", ["model_1", "model_14", None])
def test_at_most_twelve_confusion_matrices_the_recommended_one_among_them_the_rest_named_with_the_reports_path(chosen):
    results = _results(15, chosen=chosen)

    markdown = markdown_figures(results)

    matrices = [alt.removeprefix("Confusion matrix of ") for alt in images(markdown) if alt.startswith("Confusion")]
    assert len(matrices) == MARKDOWN_MODELS == 12
    if chosen:
        assert chosen in matrices
    left_out = [m["model"] for m in results["models"] if m["model"] not in matrices]
    names = ", ".join(f"`{name}`" for name in left_out)
    assert f"the other 3 models ({names}) are in the full report, `/out/results/report.html`" in markdown


def test_the_summary_stays_small_enough_for_the_ui_with_fifteen_models():
    results = _results(15)

    markdown = summary_markdown(results, figures=markdown_figures(results))

    assert len(markdown.encode()) < 150_000


def test_a_large_picture_is_scaled_down_to_800_pixels_a_side_and_keeps_its_shape():
    buffer = io.BytesIO()
    Image.new("RGB", (1600, 1200), "white").save(buffer, format="PNG")

    compact = Image.open(io.BytesIO(compact_png(buffer.getvalue())))

    assert compact.size == (800, 600)


def test_the_summary_shows_the_figures_before_the_path_of_the_full_report():
    results = _results(4)

    markdown = summary_markdown(results, figures=markdown_figures(results))

    assert (
        markdown.index("## Accuracy vs size")
        < markdown.index("## Confusion matrices")
        < markdown.index(
            "Full report, with every confusion matrix and the accuracy per class: `/out/results/report.html`"
        )
    )
    assert markdown.startswith("# Quantize and evaluate: model_0.tflite")


def test_the_report_link_leads_to_the_summary_page_and_names_the_report_file():
    link = report_link(_results(4), "quantize-evaluate-x-model", "http://127.0.0.1:4200/artifacts/artifact/1", "box")

    assert link["link"] == "http://127.0.0.1:4200/artifacts/artifact/1"
    assert "quantize-evaluate-x-model" in link["link_text"]
    assert "/out/results/report.html on box" in link["description"]


def test_without_a_ui_the_report_link_is_the_file():
    link = report_link(_results(4), "quantize-evaluate-x-model", None, "box")

    assert link == {
        "link": "file:///out/results/report.html",
        "link_text": "report.html",
        "description": "/out/results/report.html on box",
    }
