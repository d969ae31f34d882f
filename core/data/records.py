"""The records of data/ (see core/records.py for what a record is)."""

from __future__ import annotations

from core.records import Record


class SkippedImage(Record):
    """An image left out because it could not be decoded, and why."""

    file: str
    reason: str


class CalibrationSet(Record):
    """The calibration images, preprocessed, in one .npy array of iteration_count * batch_size images."""

    path: str
    batch_size: int
    iteration_count: int
    images_found: int
    images_used: int
    seed: int
    skipped: list[SkippedImage]


class EvaluationSet(Record):
    """The evaluation images, decoded once for every model: images.npy, labels.npy (class ids), files.json."""

    images_path: str
    labels_path: str
    files_path: str
    image_count: int
    class_names: list[str]
    skipped: list[SkippedImage]
