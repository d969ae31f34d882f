"""Detection figures from COCO's own evaluator (pycocotools' COCOeval, not a re-implementation of AP): mAP@[.5:.95],
mAP@.5 and each category's AP, for detections in COCO's results format ({"image_id", "category_id", "bbox": [x, y,
width, height] in pixels, "score"})."""

from __future__ import annotations

from typing import Any

import numpy as np

from core.data.coco import CocoAnnotations
from core.records import Record


class DetectionScores(Record):
    map_50_95: float  # COCO's AP: averaged over IoU 0.50 to 0.95 and the categories
    map_50: float  # at IoU 0.50 (PASCAL VOC's)
    per_category_ap: dict[str, float | None]  # by category name, AP@[.5:.95]; None: the category has no box
    detection_count: int


def coco_scores(annotations: CocoAnnotations, detections: list[dict[str, Any]]) -> DetectionScores:
    """`annotations` as read_coco_annotations checked them; `detections` on those images."""
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
    evaluation = _matched(annotations, detections)
    evaluation.accumulate()
    # [IoU threshold, recall, category, area range, max detections]: every area, 100 detections per image, as
    # COCOeval.summarize() reads it for its first two lines (without printing them).
    precision = evaluation.eval["precision"][..., 0, -1]
    per_category: dict[str, float | None] = {}
    for k, category_id in enumerate(evaluation.params.catIds):
        per_category[names[category_id]] = _mean(precision[:, :, k])
    iou_50 = list(evaluation.params.iouThrs).index(0.5)
    return DetectionScores(
        map_50_95=_mean(precision) or 0.0,
        map_50=_mean(precision[iou_50]) or 0.0,
        per_category_ap=per_category,
        detection_count=len(detections),
    )


def coco_subset_scores(
    annotations: CocoAnnotations, detections: list[dict[str, Any]], subsets: list[list[int]]
) -> list[float]:
    """mAP@[.5:.95] on each subset of the images (given as image ids): COCO's matching is per image, so it is done
    once, and only the accumulation (every area, 100 detections per image) is repeated per subset."""
    import copy

    if not detections:
        return [0.0 for _ in subsets]
    evaluation = _matched(annotations, detections)
    # accumulate(params) picks images by their position in the params it is given, not by id, so every image
    # stays listed and those outside the subset lose their per-image results instead.
    everything, positions = evaluation.evalImgs, len(evaluation.params.imgIds)
    params = copy.copy(evaluation.params)
    params.areaRng, params.areaRngLbl = params.areaRng[:1], params.areaRngLbl[:1]  # every area
    params.maxDets = params.maxDets[-1:]  # 100 per image
    index_of = {image_id: i for i, image_id in enumerate(evaluation.params.imgIds)}
    scores = []
    for subset in subsets:
        kept = np.zeros(positions, bool)
        kept[[index_of[image_id] for image_id in subset]] = True
        evaluation.evalImgs = [e if kept[i % positions] else None for i, e in enumerate(everything)]
        evaluation.accumulate(params)
        scores.append(_mean(evaluation.eval["precision"][..., 0, 0]) or 0.0)
    evaluation.evalImgs = everything
    return scores


def _matched(annotations: CocoAnnotations, detections: list[dict[str, Any]]) -> Any:
    """COCO's evaluator with every image's detections matched to its boxes (COCOeval.evaluate), to accumulate."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    dataset = annotations.model_dump(mode="json")  # boxes as lists, as pycocotools wants them
    for annotation in dataset["annotations"]:
        if annotation.get("area") is None:
            annotation["area"] = annotation["bbox"][2] * annotation["bbox"][3]
    _silence_pycocotools()
    truth = COCO()
    truth.dataset = dataset
    truth.createIndex()
    found = truth.loadRes([dict(d, bbox=[float(v) for v in d["bbox"]]) for d in detections])
    evaluation = COCOeval(truth, found, "bbox")
    evaluation.evaluate()
    return evaluation


def _silence_pycocotools() -> None:
    """pycocotools prints its progress with `print`. Redirecting sys.stdout around it would not do: sys.stdout is
    one for the whole process, so evaluations in threads would restore each other's (the command's own table once
    ended in a StringIO) and swallow what other threads print. Its modules' own `print` is replaced instead."""
    import pycocotools.coco
    import pycocotools.cocoeval

    for module in (pycocotools.coco, pycocotools.cocoeval):
        module.print = _quiet  # type: ignore[attr-defined]


def _quiet(*args: Any, **kwargs: Any) -> None:
    pass


def _mean(precision: Any) -> float | None:
    """The mean precision over the entries that exist (-1: no box of the category), or None if none does."""
    values = precision[precision > -1]
    return float(values.mean()) if values.size else None
