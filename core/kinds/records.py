"""The records of kinds/ (see core/records.py for what a record is): one model's evaluation, per kind of model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field

from core.records import Record


class ClassificationEvaluation(Record):
    """One classifier's predictions on the evaluation set (or on a shard of it, images [shard[0], shard[1]))."""

    kind: Literal["classification"] = "classification"
    model: str
    model_path: str
    top_1_accuracy: float
    top_5_accuracy: float
    correct: int
    correct_top_5: int
    image_count: int
    seconds: float
    confusion_matrix: list[list[int]]
    predicted: list[int]
    shard: tuple[int, int]
    shards: int = 1

    @property
    def score(self) -> float:
        """The headline figure, the one `max_accuracy_drop` is measured in: Top-1."""
        return self.top_1_accuracy

    def describe(self) -> str:
        return (
            f"Top-1 {self.top_1_accuracy:.4f}, Top-5 {self.top_5_accuracy:.4f} "
            f"({self.correct} of {self.image_count} images) in {self.seconds:.1f} s"
        )

    @classmethod
    def counted(
        cls,
        *,
        model: str,
        model_path: str,
        correct: int,
        correct_top_5: int,
        seconds: float,
        confusion_matrix: list[list[int]],
        predicted: list[int],
        shard: tuple[int, int],
        shards: int = 1,
    ) -> ClassificationEvaluation:
        """The record from its counts: the accuracies follow from them."""
        count = len(predicted)
        return cls(
            model=model,
            model_path=model_path,
            top_1_accuracy=correct / count if count else 0.0,
            top_5_accuracy=correct_top_5 / count if count else 0.0,
            correct=int(correct),
            correct_top_5=int(correct_top_5),
            image_count=count,
            seconds=round(seconds, 3),
            confusion_matrix=confusion_matrix,
            predicted=predicted,
            shard=shard,
            shards=shards,
        )

    @classmethod
    def merged(cls, parts: list[ClassificationEvaluation]) -> ClassificationEvaluation:
        """One model's evaluation from its shards': counts and matrices add up exactly."""
        parts = sorted(parts, key=lambda p: p.shard[0])
        if len(parts) == 1:
            return parts[0]
        rows, columns = len(parts[0].confusion_matrix), len(parts[0].confusion_matrix[0])
        matrix = [[sum(p.confusion_matrix[r][c] for p in parts) for c in range(columns)] for r in range(rows)]
        return cls.counted(
            model=parts[0].model,
            model_path=parts[0].model_path,
            correct=sum(p.correct for p in parts),
            correct_top_5=sum(p.correct_top_5 for p in parts),
            seconds=sum(p.seconds for p in parts),  # work, not wall time: shards run in parallel
            confusion_matrix=matrix,
            predicted=[c for p in parts for c in p.predicted],
            shard=(parts[0].shard[0], parts[-1].shard[1]),
            shards=len(parts),
        )


class DetectionEvaluation(Record):
    """One detector's detections on the evaluation set (or a shard of it, images [shard[0], shard[1])), scored by
    COCO's evaluator against the truth at `truth_path` (core/data/records.py: DetectionTruth). The detections
    themselves are a file (`detections_path`, COCO's results format): a COCO-sized set gives hundreds of thousands
    of boxes per model, which the record, persisted and passed between steps and workers, should not carry."""

    kind: Literal["detection"] = "detection"
    model: str
    model_path: str
    map_50_95: float
    map_50: float
    per_category_ap: dict[str, float | None]
    detections_path: str  # a JSON list in COCO's results format, boxes in the images' own pixels
    detection_count: int
    image_count: int
    seconds: float
    shard: tuple[int, int]
    truth_path: str
    shards: int = 1

    @property
    def score(self) -> float:
        """The headline figure, the one `max_accuracy_drop` is measured in: COCO's mAP@[.5:.95]."""
        return self.map_50_95

    @property
    def detections(self) -> list[dict[str, Any]]:
        return json.loads(Path(self.detections_path).read_text())

    def describe(self) -> str:
        return (
            f"mAP@[.5:.95] {self.map_50_95:.4f}, mAP@.5 {self.map_50:.4f} ({self.detection_count} boxes on "
            f"{self.image_count} images) in {self.seconds:.1f} s"
        )


# Every step after the evaluation takes an `Evaluation` and reads its `score`, `image_count`, `seconds` and
# `describe()`; the kind's own module reads the rest.
Evaluation = Annotated[ClassificationEvaluation | DetectionEvaluation, Field(discriminator="kind")]
