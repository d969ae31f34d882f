"""Object detection: a detector's raw head decoded into boxes (core/evaluate/decode_grid.py), scored by COCO's own
evaluator: mAP@[.5:.95] (the headline: `max_accuracy_drop` is measured in its points), mAP@.5, each category's AP,
and the agreement with the float model (mAP@.5 against the float model's confident boxes taken as the truth)."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from core.build.variants import SDK_MODELS
from core.data.coco import CocoAnnotation
from core.data.image_store import image_count
from core.data.records import DetectionTruth
from core.evaluate.coco_metrics import coco_scores, coco_subset_scores
from core.evaluate.decode_grid import decode_grid
from core.files import atomic_write_text
from core.kinds.kind import ModelKind, Picture, Predict, model_outputs
from core.kinds.records import DetectionEvaluation
from core.pictures import DPI, figure_png, remembered_png
from core.storage import new_work_dir

CONFIDENT = 0.5  # a box the float model is this sure of counts as the truth for the agreement, and is drawn
EXAMPLE_IMAGES = 3  # images drawn per model in the report


class Detection(ModelKind[DetectionEvaluation]):
    name = "detection"
    score_key = "map_50_95"
    score_label = "mAP@[.5:.95]"
    score_title = "COCO mAP@[.5:.95]"
    columns = {
        "map_50_95": "mAP@[.5:.95]",
        "map_50": "mAP@.5",
        "change_vs_keras": "Change vs Keras",
        "agreement": "Agreement",
    }
    signed_columns = frozenset({"change_vs_keras"})
    pictures_heading = "Boxes on the first evaluation images"
    pictures_caption = (
        f"Green: the annotated boxes; red: the model's boxes scoring at least {CONFIDENT}, with their category and "
        "score; dashed blue: the float Keras model's. The first images the model was scored on: the same for every "
        "model but the repaired one, scored on the images its search never saw."
    )
    class_word = "categories"
    report_holds = "every model's boxes on the first images and the AP per category"

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
    ) -> DetectionEvaluation:
        """`labels_path` is the truth.json of DetectionTruth: the images' ids and sizes, their boxes, which category
        each class is, and how the head is decoded."""
        started = time.perf_counter()
        predict = load_predictor()
        truth = DetectionTruth.read(labels_path)
        stop = image_count(images_path) if stop is None else stop
        detections: list[dict[str, Any]] = []
        for first, output in model_outputs(model_name, predict, images_path, batch_size, progress, start, stop):
            images = truth.coco.images[first : first + len(output)]
            detections += decode_grid(
                output,
                image_ids=[image.id for image in images],
                image_sizes=[(image.width, image.height) for image in images],
                input_size=truth.input_size,
                category_of_class=truth.category_of_class,
                decoding=truth.decoding,
            )
        return scored(
            model=model_name,
            model_path=model_path,
            detections=detections,
            truth=truth,
            truth_path=labels_path,
            shard=(start, stop),
            seconds=time.perf_counter() - started,
        )

    def merged(self, parts: list[DetectionEvaluation]) -> DetectionEvaluation:
        """COCO's AP is not a sum over images: the shards' boxes are scored again, together."""
        parts = sorted(parts, key=lambda p: p.shard[0])
        if len(parts) == 1:
            return parts[0]
        return scored(
            model=parts[0].model,
            model_path=parts[0].model_path,
            detections=[d for p in parts for d in p.detections],
            truth=DetectionTruth.read(parts[0].truth_path),
            truth_path=parts[0].truth_path,
            shard=(parts[0].shard[0], parts[-1].shard[1]),
            seconds=sum(p.seconds for p in parts),  # work, not wall time: shards run in parallel
            shards=len(parts),
        )

    def subset_scores(
        self, evaluation: DetectionEvaluation, labels_path: str, subsets: list[np.ndarray]
    ) -> list[float]:
        truth = DetectionTruth.read(labels_path).subset(range(*evaluation.shard))
        ids = [image.id for image in truth.coco.images]
        return coco_subset_scores(truth.coco, evaluation.detections, [[ids[i] for i in s] for s in subsets])

    def split(self, labels_path: str, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
        """A seeded random `share` of the images for tuning, the rest for reporting (an image holds several
        categories, so there is no class to stratify by)."""
        count = len(DetectionTruth.read(labels_path).coco.images)
        if count < 2:  # nothing to split: both parts are the one image
            return np.arange(count), np.arange(count)
        chosen = np.zeros(count, bool)
        tuning = int(round(count * share))
        chosen[np.random.default_rng(seed).permutation(count)[: min(max(tuning, 1), count - 1)]] = True
        return np.flatnonzero(chosen), np.flatnonzero(~chosen)

    def subset(self, labels_path: str, indices: np.ndarray, destination: Path) -> Path:
        return DetectionTruth.read(labels_path).subset(indices.tolist()).write(destination)

    def row_figures(
        self, evaluation: DetectionEvaluation, reference: DetectionEvaluation, class_names: list[str]
    ) -> dict[str, Any]:
        truth = DetectionTruth.read(evaluation.truth_path).subset(range(*evaluation.shard))
        found, float_found = evaluation.detections, reference.detections
        return {
            "map_50_95": evaluation.map_50_95,
            "map_50": evaluation.map_50,
            "top_1_change_vs_keras": None,  # the headline's change, filled in once the baseline is known
            "agreement_with_keras": agreement(found, float_found, truth),
            "detection_count": evaluation.detection_count,
            "image_count": evaluation.image_count,
            "per_category_ap": evaluation.per_category_ap,
            "examples": examples(truth, found, float_found),
        }

    def sdk_results(self, evaluations: dict[str, DetectionEvaluation]) -> dict[str, Any]:
        return {
            f"map_50_95_{name}": (evaluations[name].map_50_95 if name in evaluations else None) for name in SDK_MODELS
        }

    def column_values(self, row: dict[str, Any]) -> dict[str, float | None]:
        return {
            "map_50_95": row["map_50_95"],
            "map_50": row["map_50"],
            "change_vs_keras": row["top_1_change_vs_keras"],
            "agreement": row["agreement_with_keras"],
        }

    def pictures(self, row: dict[str, Any], class_names: list[str]) -> list[Picture]:
        return [
            Picture(
                remembered_png("detection-boxes", [row["model"], row["examples"]], lambda: boxes_png(row)),
                f"Boxes of {row['model']} on {len(row['examples'])} evaluation images",
            )
        ]

    def details_html(self, row: dict[str, Any], class_names: list[str]) -> str:
        per_category = row["per_category_ap"]
        rows = "".join(
            f'<tr><td class="text">{html.escape(name)}</td><td>{_ap(ap)}</td></tr>' for name, ap in per_category.items()
        )
        head = '<tr><th class="text">Category</th><th>AP@[.5:.95]</th></tr>'
        return f"<table><thead>{head}</thead><tbody>{rows}</tbody></table>"


def scored(
    *,
    model: str,
    model_path: str,
    detections: list[dict[str, Any]],
    truth: DetectionTruth,
    truth_path: str,
    shard: tuple[int, int],
    seconds: float,
    shards: int = 1,
) -> DetectionEvaluation:
    """The evaluation of `detections` on the truth's images [shard[0], shard[1]), the detections kept in a file."""
    scores = coco_scores(truth.subset(range(*shard)).coco, detections)
    kept = atomic_write_text(new_work_dir("detections") / "detections.json", json.dumps(detections))
    return DetectionEvaluation(
        model=model,
        model_path=model_path,
        map_50_95=scores.map_50_95,
        map_50=scores.map_50,
        per_category_ap=scores.per_category_ap,
        detections_path=str(kept),
        detection_count=len(detections),
        image_count=shard[1] - shard[0],
        seconds=round(seconds, 3),
        shard=shard,
        truth_path=truth_path,
        shards=shards,
    )


def agreement(detections: list[dict], reference: list[dict], truth: DetectionTruth) -> float | None:
    """mAP@.5 of `detections` with the float model's confident boxes as the truth: 1.0 when the model finds what
    the float model finds; None when the float model is confident of nothing."""
    confident = [d for d in reference if d["score"] >= CONFIDENT]
    if not confident:
        return None
    as_truth = [
        CocoAnnotation(id=i + 1, image_id=d["image_id"], category_id=d["category_id"], bbox=tuple(d["bbox"]))
        for i, d in enumerate(confident)
    ]
    return coco_scores(truth.coco.model_copy(update={"annotations": as_truth}), detections).map_50


def examples(truth: DetectionTruth, detections: list[dict], reference: list[dict]) -> list[dict[str, Any]]:
    """The first images' file, annotated boxes, and the model's and the float model's confident detections
    ([x, y, width, height, category, score]), for the report's pictures."""
    names = {category.id: category.name for category in truth.coco.categories}

    def confident(found: list[dict], image_id: int) -> list[list]:
        return [
            [*d["bbox"], names.get(d["category_id"], str(d["category_id"])), d["score"]]
            for d in found
            if d["image_id"] == image_id and d["score"] >= CONFIDENT
        ]

    return [
        {
            "file": image.file_name,
            "truth": [[*a.bbox, names[a.category_id]] for a in truth.coco.annotations if a.image_id == image.id],
            "detections": confident(detections, image.id),
            "float_detections": confident(reference, image.id),
        }
        for image in truth.coco.images[:EXAMPLE_IMAGES]
    ]


def boxes_png(row: dict[str, Any]) -> bytes:
    """The example images side by side, with the annotated boxes and the model's."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    from core.data.images import decode_rgb

    shown = row["examples"]
    fig = Figure(figsize=(3.2 * max(len(shown), 1), 3.4), dpi=DPI)
    for i, example in enumerate(shown):
        ax = fig.add_subplot(1, len(shown), i + 1)
        try:
            ax.imshow(decode_rgb(Path(example["file"])))
        except Exception:  # the image moved since the run: the boxes alone, on a blank
            ax.set_facecolor("white")
            ax.invert_yaxis()
        for x, y, width, height, _ in example["truth"]:
            ax.add_patch(Rectangle((x, y), width, height, fill=False, edgecolor="limegreen", linewidth=1.5))
        if row["model"] != "keras":  # the float model's own picture: its boxes are the red ones
            for x, y, width, height, _, _ in example["float_detections"]:
                ax.add_patch(
                    Rectangle((x, y), width, height, fill=False, edgecolor="deepskyblue", linewidth=1.2, linestyle="--")
                )
        for x, y, width, height, name, score in example["detections"]:
            ax.add_patch(Rectangle((x, y), width, height, fill=False, edgecolor="red", linewidth=1.2))
            ax.text(x, y, f"{name} {score:.2f}", color="white", fontsize=7, va="bottom", backgroundcolor="red")
        ax.set_title(Path(example["file"]).name, fontsize=8)
        ax.set_axis_off()
    fig.suptitle(row["model"], fontsize=10)
    fig.tight_layout()
    return figure_png(fig)


def _ap(value: float | None) -> str:
    return "–" if value is None else f"{value:.3f}"
