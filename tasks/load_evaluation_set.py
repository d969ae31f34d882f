"""Step 5: load the evaluation set once for every model: the `*.<evaluate_image_extension>`
files of each class folder of `evaluate_image_dir`, labelled through the label file, decoded
and preprocessed exactly as the calibration images were.
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
from core.files import atomic_save_numpy, atomic_write_json
from core.images import decode_rgb, is_junk
from core.preprocessing import preprocess
from core.retry import RETRY_OPTIONS
from core.storage import new_work_dir


def list_evaluation_images(evaluate_image_dir: str, extension: str, class_names: list[str]) -> list[tuple[Path, int]]:
    """(file, class id) pairs, sorted by class folder then file name."""
    ids = {name: i for i, name in enumerate(class_names)}
    root = Path(evaluate_image_dir)
    pairs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not is_junk(Path(p.name))):
        for file in sorted(folder.iterdir()):
            if file.is_file() and file.suffix == "." + extension and not is_junk(Path(file.name)):
                pairs.append((file, ids[folder.name]))
    return pairs


def load_evaluation_set(
    evaluate_image_dir: str,
    extension: str,
    class_names: list[str],
    input_tensor_size: int,
    preprocessing: Preprocessing,
    out_dir: Path,
    progress: bool = True,
) -> dict:
    listed = list_evaluation_images(evaluate_image_dir, extension, class_names)
    images = np.empty((len(listed), input_tensor_size, input_tensor_size, 3), np.float32)
    pairs, skipped = [], []
    for file, label in tqdm(listed, desc="evaluation images", unit="img", disable=not progress):
        try:
            images[len(pairs)] = preprocess(decode_rgb(file), input_tensor_size, preprocessing)
        except InputError as exc:  # skipped and counted, not fatal: see README, "Bad images"
            skipped.append({"file": str(file), "reason": str(exc)})
            continue
        pairs.append((file, label))
    if not pairs:
        raise InputError(f"none of the {len(listed)} evaluation images in {evaluate_image_dir} can be decoded; first problem: {skipped[0]['reason']}")
    images = images[: len(pairs)]
    labels = np.array([label for _, label in pairs], np.int64)
    out_dir = Path(out_dir)
    atomic_save_numpy(out_dir / "images.npy", images)
    atomic_save_numpy(out_dir / "labels.npy", labels)
    atomic_write_json(out_dir / "files.json", [str(file) for file, _ in pairs])
    return {
        "images_path": str(out_dir / "images.npy"),
        "labels_path": str(out_dir / "labels.npy"),
        "files_path": str(out_dir / "files.json"),
        "image_count": len(pairs),
        "class_names": class_names,
        "skipped": skipped,
    }


@task(
    name="load-evaluation-set",
    cache_policy=ContentCachePolicy(file_inputs=("evaluate_image_dir",), ignore=("progress",)),
    persist_result=True,
    **RETRY_OPTIONS,
)
def load_evaluation_set_task(
    evaluate_image_dir: str,
    extension: str,
    class_names: list[str],
    input_tensor_size: int,
    preprocessing: Preprocessing,
    progress: bool = True,
) -> dict:
    from prefect.logging import get_run_logger

    started = time.perf_counter()
    result = load_evaluation_set(evaluate_image_dir, extension, class_names, input_tensor_size, preprocessing, new_work_dir("evaluation-set"), progress)
    logger = get_run_logger()
    logger.info(
        "Evaluation set: %d images in %d classes from %s, decoded in %.1f s", result["image_count"], len(class_names), evaluate_image_dir, time.perf_counter() - started
    )
    for skip in result["skipped"]:
        logger.warning("Skipped: %s", skip["reason"])
    return result
