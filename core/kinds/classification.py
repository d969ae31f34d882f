"""Image classification: a model's Top-1 and Top-5 accuracy, its confusion matrix, its accuracy per class and its
agreement with the float model. Top-1 is the headline: `max_accuracy_drop` is measured in Top-1 points."""

from __future__ import annotations

import html
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.build.variants import SDK_MODELS
from core.data.image_store import image_count
from core.evaluate.metrics import agreement, confusion_matrix, per_class_accuracy, top_k_correct
from core.files import atomic_save_numpy
from core.kinds.kind import ModelKind, Picture, Predict, model_outputs
from core.kinds.records import ClassificationEvaluation
from core.pictures import DPI, figure_png, remembered_png

TOP_K = 5
MAX_ANNOTATED_CLASSES = 20


class Classification(ModelKind[ClassificationEvaluation]):
    name = "classification"
    score_key = "top_1_accuracy"
    score_label = "Top-1"
    score_title = "Top-1 accuracy"
    columns = {"top_1": "Top-1", "top_5": "Top-5", "change_vs_keras": "Change vs Keras", "agreement": "Agreement"}
    signed_columns = frozenset({"change_vs_keras"})
    pictures_heading = "Confusion matrices"
    pictures_caption = "Rows: the true class; columns: the predicted class."
    class_word = "classes"
    report_holds = "every confusion matrix and the accuracy per class"

    def evaluate(
        self,
        *,
        model_name: str,
        model_path: str,
        load_predictor: Callable[[], Predict],
        images_path: str,
        labels_path: str,
        batch_size: int,
        progress: bool,
        class_count: int | None,
        start: int,
        stop: int | None,
    ) -> ClassificationEvaluation:
        """`class_count` sizes the confusion matrix (default: the model's output size)."""
        started = time.perf_counter()
        predict = load_predictor()
        top_k, model_classes = _predict_top_k(model_name, predict, images_path, batch_size, progress, start, stop)
        seconds = time.perf_counter() - started
        labels = np.load(labels_path)[start:stop]
        predicted = top_k[:, 0]
        return ClassificationEvaluation.counted(
            model=model_name,
            model_path=model_path,
            correct=top_k_correct(top_k[:, :1], labels),
            correct_top_5=top_k_correct(top_k, labels),
            seconds=seconds,
            confusion_matrix=confusion_matrix(predicted, labels, class_count or model_classes).tolist(),
            predicted=predicted.tolist(),
            shard=(start, start + len(labels)),
        )

    def merged(self, parts: list[ClassificationEvaluation]) -> ClassificationEvaluation:
        return ClassificationEvaluation.merged(parts)

    def subset_scores(
        self, evaluation: ClassificationEvaluation, labels_path: str, subsets: list[np.ndarray]
    ) -> list[float]:
        labels = np.load(labels_path)[evaluation.shard[0] : evaluation.shard[1]]
        correct = np.asarray(evaluation.predicted) == labels
        return [float(correct[subset].mean()) if len(subset) else 0.0 for subset in subsets]

    def split(self, labels_path: str, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        return stratified_split(np.load(labels_path), share, seed)

    def subset(self, labels_path: str, indices: np.ndarray, destination: Path) -> Path:
        return atomic_save_numpy(destination, np.load(labels_path)[indices])

    def row_figures(
        self, evaluation: ClassificationEvaluation, reference: ClassificationEvaluation, class_names: list[str]
    ) -> dict[str, Any]:
        return {
            "top_1_accuracy": evaluation.top_1_accuracy,
            "top_5_accuracy": evaluation.top_5_accuracy,
            "top_1_change_vs_keras": None,  # filled in once the baseline is known
            "agreement_with_keras": agreement(evaluation.predicted, reference.predicted),
            "correct": evaluation.correct,
            "image_count": evaluation.image_count,
            "per_class_accuracy": per_class_accuracy(np.asarray(evaluation.confusion_matrix), class_names),
            "confusion_matrix": evaluation.confusion_matrix,
        }

    def sdk_results(self, evaluations: dict[str, ClassificationEvaluation]) -> dict[str, Any]:
        return {
            f"top_1_accuracy_{name}": (evaluations[name].top_1_accuracy if name in evaluations else None)
            for name in SDK_MODELS
        }

    def column_values(self, row: dict[str, Any]) -> dict[str, float | None]:
        return {
            "top_1": row["top_1_accuracy"],
            "top_5": row["top_5_accuracy"],
            "change_vs_keras": row["top_1_change_vs_keras"],
            "agreement": row["agreement_with_keras"],
        }

    def pictures(self, row: dict[str, Any], class_names: list[str]) -> list[Picture]:
        return [
            Picture(
                confusion_matrix_image(row["model"], row["confusion_matrix"], class_names),
                f"Confusion matrix of {row['model']}",
            )
        ]

    def details_html(self, row: dict[str, Any], class_names: list[str]) -> str:
        per_class = row["per_class_accuracy"]
        rows = "".join(
            f'<tr><td class="text">{html.escape(name)}</td><td>{_percent(per_class.get(name))}</td></tr>'
            for name in class_names
        )
        head = '<tr><th class="text">Class</th><th>Accuracy</th></tr>'
        return f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>"


def _percent(value: float | None) -> str:
    return "–" if value is None else f"{value:.2%}"


def _predict_top_k(
    model_name: str, predict: Predict, images_path: str, batch_size: int, progress: bool, start: int, stop: int | None
) -> tuple[np.ndarray, int]:
    """(images, min(5, classes)) class ids, best first, of images [start, stop), and the model's class count."""
    total = (image_count(images_path) if stop is None else stop) - start
    predicted, class_count = None, 0
    for first, scores in model_outputs(model_name, predict, images_path, batch_size, progress, start, stop):
        if predicted is None:
            class_count = scores.shape[-1]
            predicted = np.empty((total, min(TOP_K, class_count)), np.int64)
        done = first - start
        predicted[done : done + len(scores)] = np.argsort(-scores, axis=-1, kind="stable")[:, : predicted.shape[1]]
    return (predicted if predicted is not None else np.empty((0, 1), np.int64)), class_count


def stratified_split(labels: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(tuning, reporting) image indices, sorted: `share` of each class's images (at least one, when the class has
    two or more) for tuning, the rest for reporting."""
    rng = np.random.default_rng(seed)
    tuning: list[int] = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        count = int(round(len(members) * share))
        count = min(max(count, 1 if len(members) > 1 else 0), len(members) - (1 if len(members) > 1 else 0))
        tuning += members[:count].tolist()
    chosen = np.zeros(len(labels), bool)
    chosen[tuning] = True
    return np.flatnonzero(chosen), np.flatnonzero(~chosen)


def confusion_matrix_png(model: dict, class_names: list[str]) -> bytes:
    """A heatmap of the model's confusion matrix (rows: true class, columns: predicted)."""
    from matplotlib.figure import Figure

    matrix = np.asarray(model["confusion_matrix"], dtype=float)
    n = len(class_names)
    # Grow with the class count so labels stay legible, within bounds.
    side = min(max(3.0 + 0.35 * n, 4.0), 12.0)
    fig = Figure(figsize=(side, side), dpi=DPI)
    ax = fig.add_subplot()
    if matrix.size == 0:
        ax.text(0.5, 0.5, "no predictions", ha="center", va="center")
        ax.set_axis_off()
    else:
        image = ax.imshow(matrix, cmap="Blues")
        fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
        ticks = range(len(class_names))
        ax.set_xticks(ticks, labels=class_names, rotation=90 if n > 5 else 0, fontsize=8)
        ax.set_yticks(ticks, labels=class_names, fontsize=8)
        ax.set_xlabel("Predicted class")
        ax.set_ylabel("True class")
        if n <= MAX_ANNOTATED_CLASSES:
            threshold = matrix.max() / 2
            for (row, col), count in np.ndenumerate(matrix):
                ax.text(
                    col,
                    row,
                    f"{int(count)}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="white" if count > threshold else "black",
                )
    ax.set_title(model["model"], fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def confusion_matrix_image(name: str, matrix: list, class_names: list[str]) -> bytes:
    model = {"model": name, "confusion_matrix": matrix}
    return remembered_png(
        "confusion-matrix", [name, matrix, class_names], lambda: confusion_matrix_png(model, class_names)
    )
