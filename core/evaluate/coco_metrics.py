"""Detection figures from COCO's own evaluator (pycocotools' COCOeval, not a re-implementation of AP): mAP@[.5:.95],
mAP@.5 and each category's AP, for detections in COCO's results format ({"image_id", "category_id", "bbox": [x, y,
width, height] in pixels, "score"})."""

from __future__ import annotations

import contextlib
import io
from typing import Any

from core.data.coco import CocoAnnotations
from core.records import Record


class DetectionScores(Record):
    map_50_95: float  # COCO's AP: averaged over IoU 0.50 to 0.95 and the categories
    map_50: float  # at IoU 0.50 (PASCAL VOC's)
    per_category_ap: dict[str, float | None]  # by category name, AP@[.5:.95]; None: the category has no box
    detection_count: int


def coco_scores(annotations: CocoAnnotations, detections: list[dict[str, Any]]) -> DetectionScores:
    """`annotations` as read_coco_annotations checked them; `detections` on those images."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    names = {category.id: category.name for category in annotations.categories}
    image_ids = {image.id for image in annotations.images}
    if unknown := sorted({d["image_id"] for d in detections} - image_ids):
        raise ValueError(f"detections on image ids {unknown[:5]} that the annotations do not list")
    if not detections:
        boxed = {annotation.category_id for annotation in annotations.annotations}
        return DetectionScores(
            map_50_95=0.0,
            map_50=0.0,
            per_category_ap={name: 0.0 if category in boxed else None for category, name in names.items()},
            detection_count=0,
        )
    dataset = annotations.model_dump(mode="json")  # boxes as lists, as pycocotools wants them
    for annotation in dataset["annotations"]:
        annotation.setdefault("area", annotation["bbox"][2] * annotation["bbox"][3])
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and its table
        truth = COCO()
        truth.dataset = dataset
        truth.createIndex()
        found = truth.loadRes([dict(d, bbox=[float(v) for v in d["bbox"]]) for d in detections])
        evaluation = COCOeval(truth, found, "bbox")
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    precision = evaluation.eval["precision"]  # [IoU threshold, recall, category, area range, max detections]
    per_category: dict[str, float | None] = {}
    for k, category_id in enumerate(evaluation.params.catIds):
        values = precision[:, :, k, 0, -1]  # every area, 100 detections per image
        values = values[values > -1]  # -1: no box of the category
        per_category[names[category_id]] = float(values.mean()) if values.size else None
    return DetectionScores(
        map_50_95=max(0.0, float(evaluation.stats[0])),
        map_50=max(0.0, float(evaluation.stats[1])),
        per_category_ap=per_category,
        detection_count=len(detections),
    )
