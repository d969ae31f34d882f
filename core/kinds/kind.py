"""What a kind of model is to the workflow: how its predictions are scored, the figure the budget is measured in,
and what its rows in results.json, its columns in the tables and its pictures in the report show.

Everything after a model's predictions reads them through the run's kind (core/kinds/registry.py), so a new kind
(detection, core/kinds/detection.py, scored in COCO mAP) is one module here and one registry entry, not an edit
in every step.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
from tqdm import tqdm

from core import run_progress
from core.data.image_store import image_count, iter_batches
from core.evaluate.core_share import SharedPredictor
from core.kinds.records import ClassificationEvaluation, DetectionEvaluation

Predict = Callable[[np.ndarray], Any]  # a batch of images -> the model's outputs
E = TypeVar("E", ClassificationEvaluation, DetectionEvaluation)  # the kind's own evaluation record


def model_outputs(
    model_name: str, predict: Predict, images_path: str, batch_size: int, progress: bool, start: int, stop: int | None
) -> Iterator[tuple[int, Any]]:
    """(the batch's first image index, the model's outputs) for images [start, stop) (stop None: to the end),
    `batch_size` at a time, under the evaluation's progress bar: what every kind's `evaluate` scores."""
    stop = image_count(images_path) if stop is None else stop
    if isinstance(predict, SharedPredictor):  # batches on lent cores too, in the order they finish
        outputs = predict.outputs(images_path, batch_size, start, stop)
    else:
        outputs = _in_order(predict, images_path, batch_size, start, stop)
    with tqdm(total=stop - start, desc=f"evaluate {model_name}", unit="img", disable=not progress) as bar:
        for first, output in outputs:
            yield first, output
            bar.update(min(batch_size, stop - first))
            run_progress.advance(min(batch_size, stop - first))


def _in_order(predict: Predict, images_path: str, batch_size: int, start: int, stop: int) -> Iterator[tuple[int, Any]]:
    first = start
    for batch in iter_batches(images_path, batch_size, start, stop):
        yield first, predict(batch)
        first += len(batch)


@dataclass(frozen=True)
class Picture:
    """One picture of one model in the report and the markdown artifact."""

    png: bytes
    alt: str


class ModelKind(ABC, Generic[E]):
    name: ClassVar[str]  # the configuration's `task` value and results.json's
    score_key: ClassVar[str]  # the headline score's key in a results row: what `max_accuracy_drop` is measured in
    score_label: ClassVar[str]  # the headline score in words
    score_title: ClassVar[str]  # ... as a chart's axis and the recommendation's criteria name it
    columns: ClassVar[dict[str, str]]  # the kind's columns in the comparison tables: key -> header
    signed_columns: ClassVar[frozenset[str]] = frozenset()  # columns that are changes, shown with a sign
    pictures_heading: ClassVar[str]  # what the per-model pictures are, and how to read them
    pictures_caption: ClassVar[str]
    class_word: ClassVar[str]  # what the label file's names are: "classes"
    report_holds: ClassVar[str]  # what the full report adds to the summary, in words

    @abstractmethod
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
    ) -> E:
        """The model's predictions on images [start, stop) scored against the truth in `labels_path`; the
        evaluation's seconds include loading the model (`load_predictor`)."""

    @abstractmethod
    def merged(self, parts: list[E]) -> E:
        """One evaluation from its shards', exactly as if the images had been evaluated at once."""

    @abstractmethod
    def subset_scores(self, evaluation: E, labels_path: str, subsets: list[np.ndarray]) -> list[float]:
        """The headline score on each subset of the evaluated images (positions among them, in their order):
        what measures how much a score on these images owes to which images they are."""

    @abstractmethod
    def split(self, labels_path: str, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """(tuning, reporting) image indices, seeded, each part representative of the whole."""

    @abstractmethod
    def subset(self, labels_path: str, indices: np.ndarray, destination: Path) -> Path:
        """The truth of images `indices` (in that order) written at `destination`, as the evaluation of those
        images alone reads it."""

    @abstractmethod
    def row_figures(self, evaluation: E, reference: E, class_names: list[str]) -> dict[str, Any]:
        """The kind's figures in the model's results row; `reference` is the float model on the same images."""

    @abstractmethod
    def sdk_results(self, evaluations: dict[str, E]) -> dict[str, Any]:
        """The keys results.json opens with (the SDK's, for classification)."""

    @abstractmethod
    def column_values(self, row: dict[str, Any]) -> dict[str, float | None]:
        """The values of `columns` for one results row."""

    @abstractmethod
    def pictures(self, row: dict[str, Any], class_names: list[str]) -> list[Picture]:
        """The model's pictures, drawn from its results row."""

    @abstractmethod
    def details_html(self, row: dict[str, Any], class_names: list[str]) -> str:
        """What the report shows beside the model's pictures."""
