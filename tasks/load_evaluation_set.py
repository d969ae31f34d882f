"""Step 5: load the evaluation set once for every model: the `*.<evaluate_image_extension>`
files of each class folder of `evaluate_image_dir`, labelled through the label file (a detector's: the images
the COCO annotations file lists, with their boxes), decoded (in parallel, streamed to disk in chunks) and
preprocessed exactly as the calibration images were.

The step's logic: core/data/load_evaluation_set.py (a detector's: core/data/load_detection_set.py).
"""

from __future__ import annotations

import time

from prefect import task

from core.caching import ContentCachePolicy
from core.config import DetectionDecoding, Preprocessing
from core.data.load_detection_set import load_detection_set
from core.data.load_evaluation_set import load_evaluation_set
from core.data.records import EvaluationSet
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir


@task(
    name="load-evaluation-set",
    cache_policy=ContentCachePolicy(file_inputs=("evaluate_image_dir", "annotation_file"), ignore=("progress",)),
    persist_result=True,
    **RETRY_OPTIONS,
)
def load_evaluation_set_task(
    *,
    evaluate_image_dir: str,
    extension: str,
    class_names: list[str],
    input_tensor_size: int,
    preprocessing: Preprocessing,
    annotation_file: str | None = None,
    decoding: DetectionDecoding | None = None,
    progress: bool = True,
) -> EvaluationSet:
    """Decode and preprocess every evaluation image once, for all the models' evaluations."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    out_dir = new_work_dir("evaluation-set")
    result = (
        load_evaluation_set(
            evaluate_image_dir=evaluate_image_dir,
            extension=extension,
            class_names=class_names,
            input_tensor_size=input_tensor_size,
            preprocessing=preprocessing,
            out_dir=out_dir,
            progress=progress,
        )
        if annotation_file is None
        else load_detection_set(
            evaluate_image_dir=evaluate_image_dir,
            annotation_file=annotation_file,
            class_names=class_names,
            input_tensor_size=input_tensor_size,
            preprocessing=preprocessing,
            decoding=decoding or DetectionDecoding(),
            out_dir=out_dir,
            progress=progress,
        )
    )
    logger = get_run_logger()
    logger.info(
        "Evaluation set: %d images in %d classes from %s, decoded in %.1f s",
        result.image_count,
        len(class_names),
        evaluate_image_dir,
        time.perf_counter() - started,
    )
    for skip in result.skipped:
        logger.warning("Skipped: %s", skip.reason)
    return result
