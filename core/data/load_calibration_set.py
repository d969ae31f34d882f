"""Step 2: load the calibration set: a seeded sample of the JPEGs below `dataset_image_dir`,
decoded to RGB and preprocessed once, saved as one array of `iteration_count * batch_size` images.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.config import Preprocessing
from core.data.images import decode_rgb, find_jpegs
from core.data.preprocessing import preprocess
from core.data.records import CalibrationSet, SkippedImage
from core.errors import InputError
from core.files import atomic_save_numpy


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
