"""Step 2: load the calibration set: a seeded sample of the JPEGs below `dataset_image_dir`,
decoded to RGB and preprocessed once, saved as one array of `iteration_count * batch_size` images.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from prefect import task
from tqdm import tqdm

from core.caching import ContentCachePolicy
from core.config import Preprocessing
from core.errors import InputError
from core.files import atomic_save_numpy
from core.images import decode_rgb, find_jpegs
from core.preprocessing import preprocess
from core.records import CalibrationSet, SkippedImage
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir


def sample_indices(image_count: int, needed: int, seed: int) -> np.ndarray:
    """Which images feed calibration: without replacement while there are enough; otherwise
    whole shuffled passes over the set, so every image is used as evenly as possible."""
    rng = np.random.default_rng(seed)
    passes = [rng.permutation(image_count) for _ in range(-(-needed // image_count))]
    return np.concatenate(passes)[:needed]


def load_calibration_set(
    *,
    dataset_image_dir: str,
    input_tensor_size: int,
    batch_size: int,
    iteration_count: int,
    preprocessing: Preprocessing,
    seed: int,
    out_dir: Path,
    progress: bool = True,
) -> CalibrationSet:
    files = find_jpegs(Path(dataset_image_dir))
    needed = batch_size * iteration_count
    # Files that cannot be decoded are skipped and counted; the draw goes on past them (one
    # extra pass over the set at most), so without bad files the sample is sample_indices(needed).
    decoded: dict[int, np.ndarray] = {}
    skipped: dict[int, str] = {}
    chosen: list[int] = []
    with tqdm(total=needed, desc="calibration images", unit="img", disable=not progress) as bar:
        for i in sample_indices(len(files), needed + len(files), seed).tolist():
            if len(chosen) == needed:
                break
            if i in skipped:
                continue
            if i not in decoded:
                try:
                    decoded[i] = preprocess(decode_rgb(files[i]), input_tensor_size, preprocessing)
                except InputError as exc:
                    skipped[i] = str(exc)
                    continue
            chosen.append(i)
            bar.update(1)
    if not decoded:
        raise InputError(
            f"none of the {len(files)} JPEG files below {dataset_image_dir} can be decoded; first problem: "
            f"{next(iter(skipped.values()))}"
        )
    chosen = (chosen * -(-needed // len(chosen)))[:needed]  # only when nearly every file was bad
    images = np.stack([decoded[i] for i in chosen])
    path = atomic_save_numpy(Path(out_dir) / "calibration.npy", images)
    return CalibrationSet(
        path=str(path),
        batch_size=batch_size,
        iteration_count=iteration_count,
        images_found=len(files),
        images_used=len(set(chosen)),
        seed=seed,
        skipped=[SkippedImage(file=str(files[i]), reason=reason) for i, reason in sorted(skipped.items())],
    )


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
