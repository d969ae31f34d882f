"""The documented decoder of a detector's raw head (README, "Object detectors"), run on the host as an Ethos-U
application (and the IMX500's host, for a model without NMS in its graph) runs it.

The head is [images, grid, grid, 5 + classes]; cell (row, column) covers input_size / grid pixels and holds an
objectness logit, one logit per class, then its box: the centre's offsets in the cell (logits: sigmoid gives 0..1)
and the log of its width and height over `anchor_size` input pixels. Score = sigmoid(objectness) x softmax(classes);
then TensorFlow's `combined_non_max_suppression`, per class; boxes are scaled back to each image's own size.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.config import DetectionDecoding


def decode_grid(
    output: np.ndarray,
    *,
    image_ids: list[int],
    image_sizes: list[tuple[int, int]],
    input_size: int,
    category_of_class: list[int],
    decoding: DetectionDecoding,
) -> list[dict[str, Any]]:
    """COCO detections ({"image_id", "category_id", "bbox": [x, y, width, height] in the image's pixels, "score"})
    of the images `image_ids`, whose (width, height) are `image_sizes`, in the order of `output`'s rows."""
    import tensorflow as tf

    output = np.asarray(output, np.float32)
    count, grid, classes = output.shape[0], output.shape[1], len(category_of_class)
    output = output.reshape(count, grid * grid, output.shape[-1])
    stride = input_size / grid
    scores = tf.sigmoid(output[..., 0:1]) * tf.nn.softmax(output[..., 1 : 1 + classes], axis=-1)
    rows, columns = np.divmod(np.arange(grid * grid), grid)
    cx = (columns + tf.sigmoid(output[..., -4])) * stride
    cy = (rows + tf.sigmoid(output[..., -3])) * stride
    half_width = decoding.anchor_size * np.exp(np.minimum(output[..., -2], 20.0)) / 2
    half_height = decoding.anchor_size * np.exp(np.minimum(output[..., -1], 20.0)) / 2
    corners = tf.stack([cy - half_height, cx - half_width, cy + half_height, cx + half_width], axis=-1) / input_size
    boxes, kept_scores, kept_classes, valid = tf.image.combined_non_max_suppression(
        corners[:, :, None, :],
        scores,
        max_output_size_per_class=decoding.max_detections,
        max_total_size=decoding.max_detections,
        iou_threshold=float(decoding.iou_threshold),
        score_threshold=float(decoding.score_threshold),
        clip_boxes=True,
    )
    boxes, kept_scores, kept_classes, valid = (v.numpy() for v in (boxes, kept_scores, kept_classes, valid))
    detections = []
    for i, (image_id, (width, height)) in enumerate(zip(image_ids, image_sizes, strict=True)):
        for box, score, k in zip(
            boxes[i, : valid[i]], kept_scores[i, : valid[i]], kept_classes[i, : valid[i]], strict=True
        ):
            top, left, bottom, right = (float(v) for v in box * [height, width, height, width])
            detections.append(
                {
                    "image_id": int(image_id),
                    "category_id": int(category_of_class[int(k)]),
                    "bbox": [round(left, 2), round(top, 2), round(right - left, 2), round(bottom - top, 2)],
                    "score": round(float(score), 5),
                }
            )
    return detections
