"""The end-to-end benchmark's input: a MobileNetV2 (alpha 0.35, 64 x 64, 10 classes) trained here for a couple of
epochs on scikit-learn's handwritten digits, upscaled to 64 x 64 RGB JPEGs (no download), and its configuration.

    python -m benchmarks.e2e_sample DEST     # writes DEST/training, DEST/validation, DEST/labels.json, DEST/model.h5
"""

from __future__ import annotations

import argparse
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from core.config import Preprocessing
from core.data.images import decode_rgb, find_jpegs
from core.data.preprocessing import preprocess
from core.files import atomic_write_json

SIZE = 64
TRAINING = 1_400  # calibration images; the other 397 of the 1,797 digits are the evaluation set
EPOCHS = 2


def write_images(dest: Path, seed: int = 0) -> None:
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.images))
    for split, indices in {"training": order[:TRAINING], "validation": order[TRAINING:]}.items():
        for i in indices:
            pixels = (digits.images[i] * (255 / 16)).astype(np.uint8)
            image = Image.fromarray(pixels).resize((SIZE, SIZE), Image.Resampling.BILINEAR).convert("RGB")
            folder = dest / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"digit_{i:04d}.jpg", quality=95)
    atomic_write_json(dest / "labels.json", {str(d): d for d in range(10)})


def train_model(dest: Path, epochs: int = EPOCHS, seed: int = 0, size: int = SIZE, alpha: float = 0.35) -> Path:
    """A MobileNetV2 of `alpha` at `size` px trained from scratch on dest/training, saved as dest/model.h5; its Top-1
    on a tenth of dest/validation is printed."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    files = find_jpegs(dest / "training")
    x = np.stack([preprocess(decode_rgb(f), size, Preprocessing()) for f in files])
    y = np.array([int(f.parent.name) for f in files])
    model = tf.keras.applications.MobileNetV2(alpha=alpha, input_shape=(size, size, 3), weights=None, classes=10)
    for layer in model.layers:  # moving statistics that settle within two epochs (the default momentum is 0.999)
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    files = find_jpegs(dest / "validation")[::10]
    held_out = np.stack([preprocess(decode_rgb(f), size, Preprocessing()) for f in files])
    accuracy = float(np.mean(model.predict(held_out, verbose=0).argmax(-1) == [int(f.parent.name) for f in files]))
    print(f"trained {epochs} epochs: Top-1 {accuracy:.3f} on {len(files)} held-out images")
    tmp = dest / ".model.h5.tmp.h5"
    model.save(tmp)
    os.replace(tmp, dest / "model.h5")
    return dest / "model.h5"


def made_once(dest: Path, write_images: Callable[[Path], None], train: Callable[[Path], Path]) -> Path:
    """The images and the trained model in `dest`; nothing is rewritten when the model exists."""
    dest = Path(dest)
    if not (dest / "model.h5").exists():
        write_images(dest)
        train(dest)
    return dest


def make_e2e_sample(dest: Path) -> Path:
    return made_once(dest, write_images, train_model)


def write_config(
    sample: Path, out: Path, path: Path, size: int = SIZE, calibration_images: int = TRAINING, **overrides
) -> Path:
    """An SDK configuration on the sample, every calibration image used once, outputs below `out`."""
    config = {
        "source_keras_model": str(sample / "model.h5"),
        "dataset_image_dir": str(sample / "training"),
        "batch_size": 50,
        "input_tensor_size": size,
        "iteration_count": calibration_images // 50,
        "output_dir": str(out / "models"),
        "evaluate_image_dir": str(sample / "validation"),
        "evaluate_image_extension": "jpg",
        "evaluate_label_file": str(sample / "labels.json"),
        "evaluate_result_dir": str(out / "results"),
        **overrides,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.e2e_sample", description=__doc__)
    parser.add_argument("dest", type=Path)
    print(f"sample ready in {make_e2e_sample(parser.parse_args().dest)}")


if __name__ == "__main__":
    main()
