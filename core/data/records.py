"""The records of data/ (see core/records.py for what a record is)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from core.config import DetectionDecoding, Preprocessing, QuantizeConfig
from core.data.coco import CocoAnnotations
from core.files import atomic_write_text
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
    """The evaluation images, decoded once for every model: images.npy, the truth (a classifier's labels.npy of
    class ids, a detector's truth.json: see DetectionTruth), files.json."""

    images_path: str
    labels_path: str
    files_path: str
    image_count: int
    class_names: list[str]
    skipped: list[SkippedImage]


class DetectionTruth(Record):
    """A detector's evaluation truth, beside images.npy: `coco.images[i]` is the image stored at row i (its
    file_name the absolute path, its width and height the original's, which boxes are measured in), with its
    boxes; the model's class k is category `category_of_class[k]`; the model sees input_size x input_size, and
    its head is decoded as `decoding` says."""

    coco: CocoAnnotations
    category_of_class: list[int]
    input_size: int
    decoding: DetectionDecoding

    @classmethod
    def read(cls, path: str | Path) -> DetectionTruth:
        return cls.model_validate_json(Path(path).read_text())

    def write(self, path: Path) -> Path:
        return atomic_write_text(path, self.model_dump_json())

    def subset(self, rows: list[int] | Any) -> DetectionTruth:
        """The truth of images `rows` (in that order), as if only they had been stored."""
        images = [self.coco.images[int(row)] for row in rows]
        ids = {image.id for image in images}
        coco = self.coco.model_copy(
            update={"images": images, "annotations": [a for a in self.coco.annotations if a.image_id in ids]}
        )
        return self.model_copy(update={"coco": coco})
