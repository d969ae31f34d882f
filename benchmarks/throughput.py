"""The project's evaluation path and the old notebook's, timed on the same models and images.

Project: decode every image once (in parallel, streamed), then evaluate the models concurrently in
batches. Notebook: one model after another, decoding every image again for each model, one image per
inference call.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from pathlib import Path

import numpy as np

from core.config import Preprocessing
from core.data.images import decode_rgb
from core.data.load_evaluation_set import list_evaluation_images, load_evaluation_set
from core.data.preprocessing import preprocess
from core.evaluate.evaluate_model import evaluate_model, scored
from core.evaluate.models import TFLitePredictor, load_keras_by_name

CLASSES = [str(d) for d in range(10)]
SIZE = 32
BATCH = 32


def project_evaluation(eval_dir: Path, models: dict[str, str], work_dir: Path) -> tuple[float, int]:
    """Seconds to decode the set once and evaluate every model on it; the image count."""
    started = time.perf_counter()
    evaluation_set = load_evaluation_set(
        evaluate_image_dir=str(eval_dir),
        extension="jpg",
        class_names=CLASSES,
        input_tensor_size=SIZE,
        preprocessing=Preprocessing(),
        out_dir=work_dir,
        progress=False,
    )
    with ThreadPoolExecutor(4) as pool:  # the flow's task runner
        results = list(
            pool.map(
                lambda item: scored(
                    evaluate_model(
                        model_name=item[0],
                        model_path=item[1],
                        images_path=evaluation_set.images_path,
                        labels_path=evaluation_set.labels_path,
                        batch_size=BATCH,
                        progress=False,
                    )
                ),
                models.items(),
            )
        )
    assert all(r.image_count == evaluation_set.image_count for r in results)
    return time.perf_counter() - started, evaluation_set.image_count


def notebook_evaluation(eval_dir: Path, models: dict[str, str], size: int = SIZE) -> tuple[float, int]:
    """Seconds for the old notebook's way (images of `size` x `size`); the image count."""
    pairs = list_evaluation_images(str(eval_dir), "jpg", CLASSES)
    started = time.perf_counter()
    for name, path in models.items():
        predict: Callable[[np.ndarray], np.ndarray]
        if name.startswith("tflite"):
            predict = TFLitePredictor(path)
        else:
            predict = partial(load_keras_by_name(name, path).predict, verbose=0)
        correct = 0
        for file, label in pairs:
            image = preprocess(decode_rgb(file), size, Preprocessing())[None]
            correct += int(np.argmax(predict(image)) == label)
    return time.perf_counter() - started, len(pairs)
