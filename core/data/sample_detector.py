"""A small Keras detector for the detection sample (core/data/detection_sample.py), trained here in about a minute on
2 cores, and the decoder that turns its raw output into COCO detections.

    python -m core.data.sample_detector [--dest sample_data/digits_detection]

writes the sample, its label file (labels.json: category name -> the model's class id) and the trained detector
(model.h5): what `make demo-detection` runs on (configs/digits_detection/configuration.json).

The model's output is its head, untouched: a GRID x GRID map (one cell per STRIDE pixels) whose cells each hold an
objectness logit, one logit per category, and a box: the centre's offset in the cell (a logit: sigmoid gives 0..1)
and the log of its width and height over ANCHOR pixels: the raw head the workflow's decoder reads
(core/evaluate/decode_grid.py, README "Object detectors").
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from core.config import DetectionDecoding, Preprocessing
from core.data.coco import CocoAnnotations, read_coco_annotations
from core.data.detection_sample import CANVAS, DEFAULT_DEST, make_detection_sample
from core.data.images import decode_rgb
from core.data.preprocessing import preprocess

STRIDE = 8
GRID = CANVAS // STRIDE
ANCHOR = 28.0  # pixels: the typical digit's side
CATEGORIES = 10
CHANNELS = 1 + CATEGORIES + 4  # objectness, categories, box (x, y offsets in the cell; log width, log height)
DECODING = DetectionDecoding(anchor_size=ANCHOR)  # the configuration's `detection` for this model


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
    """COCO detections of the sample's canvases from the head's output (images, GRID, GRID, CHANNELS), for the
    images `image_ids`, in order: the workflow's own decoder (core/evaluate/decode_grid.py) with the sample's
    anchor, as `DECODING` configures it."""
    from core.evaluate.decode_grid import decode_grid

    return decode_grid(
        output,
        image_ids=image_ids,
        image_sizes=[(CANVAS, CANVAS)] * len(image_ids),
        input_size=CANVAS,
        category_of_class=[digit + 1 for digit in range(CATEGORIES)],
        decoding=DECODING,
    )


def make_detection_demo(dest: Path = DEFAULT_DEST) -> Path:
    """The sample, labels.json and model.h5 in `dest`, each made only when missing."""
    from core.files import atomic_write_json

    make_detection_sample(dest)
    if not (dest / "labels.json").exists():
        atomic_write_json(dest / "labels.json", {str(digit): digit for digit in range(CATEGORIES)})
    if not (dest / "model.h5").exists():
        print(f"training the sample detector on {dest / 'training'} (about a minute and a half on 2 cores)")
        train_detector(dest, dest / "model.h5")
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"where to write it (default {DEFAULT_DEST})")
    print(make_detection_demo(parser.parse_args().dest))


if __name__ == "__main__":
    main()
