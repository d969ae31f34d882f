"""A small Keras detector for the detection sample (core/data/detection_sample.py), trained here in about a minute on
2 cores, and the decoder that turns its raw output into COCO detections.

The model's output is its head, untouched: a GRID x GRID map (one cell per STRIDE pixels) whose cells each hold an
objectness logit, one logit per category, and a box: the centre's offset in the cell (a logit: sigmoid gives 0..1)
and the log of its width and height over ANCHOR pixels. `decode` runs on the host, as an Ethos-U application does
(and the IMX500's host, for a model without NMS in its graph): score = sigmoid(objectness) x softmax(categories),
boxes in pixels, then TensorFlow's own `combined_non_max_suppression` per category.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from core.config import Preprocessing
from core.data.coco import CocoAnnotations, read_coco_annotations
from core.data.detection_sample import CANVAS
from core.data.images import decode_rgb
from core.data.preprocessing import preprocess

STRIDE = 8
GRID = CANVAS // STRIDE
ANCHOR = 28.0  # pixels: the typical digit's side
CATEGORIES = 10
CHANNELS = 1 + CATEGORIES + 4  # objectness, categories, box (x, y offsets in the cell; log width, log height)
SCORE_THRESHOLD = 0.05  # low, as COCO's AP wants the whole precision-recall curve
IOU_THRESHOLD = 0.5
MAX_DETECTIONS = 20  # per image


def images_of(coco: CocoAnnotations, image_dir: Path) -> np.ndarray:
    """The annotated images, in the file's order, read through the workflow's own preprocessing ([0, 1] floats)."""
    return np.stack(
        [preprocess(decode_rgb(Path(image_dir) / image.file_name), CANVAS, Preprocessing()) for image in coco.images]
    )


def targets(coco: CocoAnnotations) -> np.ndarray:
    """The head's training target per image: (images, GRID, GRID, CHANNELS), the box of each object in the cell of
    its centre (category ids 1..10 are channels 1..10)."""
    row_of = {image.id: i for i, image in enumerate(coco.images)}
    target = np.zeros((len(coco.images), GRID, GRID, CHANNELS), np.float32)
    for annotation in coco.annotations:
        x, y, width, height = annotation.bbox
        cx, cy = (x + width / 2) / STRIDE, (y + height / 2) / STRIDE
        column, row = min(int(cx), GRID - 1), min(int(cy), GRID - 1)
        cell = target[row_of[annotation.image_id], row, column]
        cell[0] = 1.0
        cell[annotation.category_id] = 1.0
        cell[1 + CATEGORIES :] = [cx - column, cy - row, np.log(width / ANCHOR), np.log(height / ANCHOR)]
    return target


def _loss(target, output):
    import tensorflow as tf

    present = target[..., 0]
    objectness = tf.nn.sigmoid_cross_entropy_with_logits(labels=present, logits=output[..., 0])
    categories = tf.nn.softmax_cross_entropy_with_logits(
        labels=target[..., 1 : 1 + CATEGORIES], logits=output[..., 1 : 1 + CATEGORIES]
    )
    offsets = tf.nn.sigmoid_cross_entropy_with_logits(labels=target[..., -4:-2], logits=output[..., -4:-2])
    sizes = tf.square(target[..., -2:] - output[..., -2:])
    boxes = tf.reduce_sum(offsets, -1) + tf.reduce_sum(sizes, -1)
    objects = tf.maximum(tf.reduce_sum(present), 1.0)
    return (tf.reduce_sum(objectness) + tf.reduce_sum(present * (categories + 2 * boxes))) / objects


def train_detector(sample: Path, destination: Path, epochs: int = 40, seed: int = 0) -> Path:
    """The detector trained on the sample's training split, saved at `destination` (.h5)."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    coco = read_coco_annotations(sample / "training.json", sample / "training")
    x, y = images_of(coco, sample / "training"), targets(coco)
    layers = tf.keras.layers
    inputs = tf.keras.Input((CANVAS, CANVAS, 3))
    h = inputs
    for filters in (16, 32, 64):  # 96 -> 48 -> 24 -> 12
        h = layers.Conv2D(filters, 3, padding="same", activation="relu")(h)
        h = layers.MaxPooling2D()(h)
    h = layers.Conv2D(64, 3, padding="same", activation="relu")(h)
    outputs = layers.Conv2D(CHANNELS, 1, name="head")(h)
    model = tf.keras.Model(inputs, outputs, name="digits_detector")
    model.compile(optimizer=tf.keras.optimizers.Adam(2e-3), loss=_loss)
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(f".{destination.stem}.tmp.h5")
    model.save(partial)
    os.replace(partial, destination)
    return destination


def decode(output: np.ndarray, image_ids: list[int]) -> list[dict]:
    """COCO detections ({"image_id", "category_id", "bbox": [x, y, width, height], "score"}) from the head's output
    (images, GRID, GRID, CHANNELS) for the images `image_ids`, in order."""
    import tensorflow as tf

    output = np.asarray(output, np.float32).reshape(len(image_ids), GRID * GRID, CHANNELS)
    objectness = tf.sigmoid(output[..., 0:1])
    scores = objectness * tf.nn.softmax(output[..., 1 : 1 + CATEGORIES], axis=-1)
    rows, columns = np.divmod(np.arange(GRID * GRID), GRID)
    cx = (columns + tf.sigmoid(output[..., -4])) * STRIDE
    cy = (rows + tf.sigmoid(output[..., -3])) * STRIDE
    width, height = ANCHOR * np.exp(output[..., -2]), ANCHOR * np.exp(output[..., -1])
    corners = tf.stack([cy - height / 2, cx - width / 2, cy + height / 2, cx + width / 2], axis=-1) / CANVAS
    boxes, kept_scores, classes, valid = tf.image.combined_non_max_suppression(
        corners[:, :, None, :],
        scores,
        max_output_size_per_class=MAX_DETECTIONS,
        max_total_size=MAX_DETECTIONS,
        iou_threshold=IOU_THRESHOLD,
        score_threshold=SCORE_THRESHOLD,
        clip_boxes=True,
    )
    detections = []
    for i, image_id in enumerate(image_ids):
        count = int(valid[i])
        kept = zip(
            boxes[i, :count].numpy() * CANVAS, kept_scores[i, :count].numpy(), classes[i, :count].numpy(), strict=True
        )
        for box, score, category in kept:
            top, left, bottom, right = (float(v) for v in box)
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": int(category) + 1,
                    "bbox": [left, top, right - left, bottom - top],
                    "score": float(score),
                }
            )
    return detections
