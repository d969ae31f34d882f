"""Step 2: load the calibration set: a seeded sample of the JPEGs below `dataset_image_dir`,
decoded to RGB and preprocessed once, saved as one array of `iteration_count * batch_size` images.

The step's logic: core/data/load_calibration_set.py.
"""

from __future__ import annotations

import time

from prefect import task

from core.caching import ContentCachePolicy
from core.config import Preprocessing
from core.data.load_calibration_set import load_calibration_set
from core.data.records import CalibrationSet
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir


@task(
    name="load-calibration-set",
    cache_policy=ContentCachePolicy(file_inputs=("dataset_image_dir",), ignore=("progress",)),
    persist_result=True,
    **RETRY_OPTIONS,
)
def load_calibration_set_task(
    *,
    dataset_image_dir: str,
    input_tensor_size: int,
    batch_size: int,
    iteration_count: int,
    preprocessing: Preprocessing,
    seed: int,
    progress: bool = True,
) -> CalibrationSet:
    """Sample `batch_size * iteration_count` calibration images (seeded), decode and preprocess them once."""
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = load_calibration_set(
        dataset_image_dir=dataset_image_dir,
        input_tensor_size=input_tensor_size,
        batch_size=batch_size,
        iteration_count=iteration_count,
        preprocessing=preprocessing,
        seed=seed,
        out_dir=new_work_dir("calibration"),
        progress=progress,
    )
    logger = get_run_logger()
    for skip in result.skipped:
        logger.warning("Skipped: %s", skip.reason)
    logger.info(
        "Calibration set: %d batches of %d from %d distinct images (of %d found below %s, seed %d) -> %s in %.1f s",
        iteration_count,
        batch_size,
        result.images_used,
        result.images_found,
        dataset_image_dir,
        seed,
        result.path,
        time.perf_counter() - started,
    )
    return result
