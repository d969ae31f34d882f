"""The records of data/ (see core/records.py for what a record is)."""

from __future__ import annotations

from typing import Any

from core.config import Preprocessing, QuantizeConfig
from core.records import Record


class SkippedImage(Record):
    """An image left out because it could not be decoded, and why."""

    file: str
    reason: str


class CalibrationSource(Record):
    """Where a calibration set is drawn from, and how many images of which size: what load_calibration_set takes."""

    dataset_image_dir: str
    input_tensor_size: int
    batch_size: int
    iteration_count: int
    preprocessing: Preprocessing
    seed: int

    @classmethod
    def of(cls, config: QuantizeConfig) -> CalibrationSource:
        return cls(
            dataset_image_dir=config.dataset_image_dir,
            input_tensor_size=config.input_tensor_size,
            batch_size=config.batch_size,
            iteration_count=config.iteration_count,
            preprocessing=config.preprocessing,
            seed=config.seed,
        )

    def arguments(self, iteration_factor: int = 1) -> dict[str, Any]:
        """load_calibration_set's arguments, with `iteration_factor` times the batches."""
        return {**dict(self), "iteration_count": self.iteration_count * iteration_factor}


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
