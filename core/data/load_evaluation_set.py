"""Step 5: load the evaluation set once for every model: the `*.<evaluate_image_extension>`
files of each class folder of `evaluate_image_dir`, labelled through the label file, decoded
(in parallel, streamed to disk in chunks) and preprocessed exactly as the calibration images were.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from tqdm import tqdm

from core.config import Preprocessing
from core.data.image_store import NpyBatchWriter
from core.data.images import class_key, decode_rgb, has_extension, is_junk
from core.data.preprocessing import preprocess
from core.data.records import EvaluationSet, SkippedImage
from core.errors import InputError
from core.files import atomic_save_numpy, atomic_write_json

DECODE_CHUNK = 256  # images decoded (in parallel) and appended per step


def list_evaluation_images(evaluate_image_dir: str, extension: str, class_names: list[str]) -> list[tuple[Path, int]]:
    """(file, class id) pairs, sorted by class folder then file name."""
    ids = {class_key(name): i for i, name in enumerate(class_names)}
    root = Path(evaluate_image_dir)
    pairs = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not is_junk(Path(p.name))):
        for file in sorted(folder.iterdir()):
            if file.is_file() and has_extension(file, extension) and not is_junk(Path(file.name)):
                pairs.append((file, ids[class_key(folder.name)]))
    return pairs


def decode_one(file: Path, input_tensor_size: int, preprocessing: Preprocessing) -> np.ndarray | str:
    """The preprocessed image, or the reason it was skipped."""
    try:
        return preprocess(decode_rgb(file), input_tensor_size, preprocessing)
    except InputError as exc:  # skipped and counted, not fatal: see README, "Bad images"
        return str(exc)


def decode_to_store(
    source: str,
    files: list[Path],
    input_tensor_size: int,
    preprocessing: Preprocessing,
    images_path: Path,
    progress: bool,
    chunk_size: int = DECODE_CHUNK,
) -> tuple[list[int], list[SkippedImage]]:
    """Decode `files` (from the folder `source`) in parallel, chunk by chunk, appending to the .npy at
    `images_path`: memory stays bounded by one chunk whatever the number of images. The indices of the files kept,
    and the skipped ones with the reason."""
    kept: list[int] = []
    skipped: list[SkippedImage] = []
    with (
        NpyBatchWriter(images_path, (input_tensor_size, input_tensor_size, 3)) as writer,
        ThreadPoolExecutor(os.cpu_count()) as pool,
        tqdm(total=len(files), desc="evaluation images", unit="img", disable=not progress) as bar,
    ):
        for first in range(0, len(files), chunk_size):
            chunk = files[first : first + chunk_size]
            decoded = list(pool.map(lambda file: decode_one(file, input_tensor_size, preprocessing), chunk))
            images = []
            for index, (file, image) in enumerate(zip(chunk, decoded, strict=True), start=first):
                if isinstance(image, str):
                    skipped.append(SkippedImage(file=str(file), reason=image))
                else:
                    kept.append(index)
                    images.append(image)
            if images:
                writer.append(np.stack(images))
            bar.update(len(chunk))
        if not kept:
            raise InputError(
                f"none of the {len(files)} evaluation images in {source} can be decoded; first problem: "
                f"{skipped[0].reason if skipped else 'there are none'}"
            )
    return kept, skipped


def load_evaluation_set(
    *,
    evaluate_image_dir: str,
    extension: str,
    class_names: list[str],
    input_tensor_size: int,
    preprocessing: Preprocessing,
    out_dir: Path,
    progress: bool = True,
    chunk_size: int = DECODE_CHUNK,
) -> EvaluationSet:
    """Decode every image once (see decode_to_store); labels.npy holds their class ids."""
    listed = list_evaluation_images(evaluate_image_dir, extension, class_names)
    out_dir = Path(out_dir)
    kept, skipped = decode_to_store(
        evaluate_image_dir,
        [file for file, _ in listed],
        input_tensor_size,
        preprocessing,
        out_dir / "images.npy",
        progress,
        chunk_size,
    )
    atomic_save_numpy(out_dir / "labels.npy", np.array([listed[i][1] for i in kept], np.int64))
    atomic_write_json(out_dir / "files.json", [str(listed[i][0]) for i in kept])
    return EvaluationSet(
        images_path=str(out_dir / "images.npy"),
        labels_path=str(out_dir / "labels.npy"),
        files_path=str(out_dir / "files.json"),
        image_count=len(kept),
        class_names=class_names,
        skipped=skipped,
    )
