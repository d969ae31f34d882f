"""The real-size benchmark's input: the IMX500's reference classifier, MobileNetV2 alpha 1.0 at 224 x 224
(3.5 M parameters), trained here briefly on scikit-learn's handwritten digits upscaled and jittered (no download),
with 1,000 calibration and 2,000 evaluation JPEGs.

    python -m benchmarks.real_size_sample DEST   # DEST/training, DEST/validation, DEST/labels.json, DEST/model.h5

The calibration images are jittered copies of 1,000 digits; the evaluation images of the other 797, each seen
about 2.5 times under a different shift, rotation and brightness, so the evaluation set holds no training digit.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np

from core.config import Preprocessing
from core.data.images import decode_rgb, find_jpegs
from core.data.preprocessing import preprocess
from core.files import atomic_write_json

SIZE = 224
CALIBRATION = 1_000
EVALUATION = 2_000
BATCH_SIZE = 50  # the SDK's calibration batches: 20 of 50
EPOCHS = 6  # from scratch at 224 px: two epochs leave it near chance


def jittered(pixels: np.ndarray, rng: np.random.Generator):
    """A digit (8 x 8, 0-16) as a 224 px RGB picture, shifted, rotated and brightened at random."""
    from PIL import Image, ImageEnhance

    image = Image.fromarray((pixels * (255 / 16)).astype(np.uint8)).resize((SIZE, SIZE), Image.Resampling.BILINEAR)
    dx, dy = (int(v) for v in rng.integers(-16, 17, 2))
    image = image.rotate(float(rng.uniform(-12, 12)), translate=(dx, dy))
    image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.75, 1.25)))
    return image.convert("RGB")


def write_images(dest: Path, seed: int = 0) -> None:
    from sklearn.datasets import load_digits

    digits = load_digits()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(digits.images))
    seen, unseen = order[:CALIBRATION], order[CALIBRATION:]
    picks: dict[str, list[int]] = {
        "training": list(seen),
        "validation": [int(unseen[i % len(unseen)]) for i in range(EVALUATION)],
    }
    for split, indices in picks.items():
        for n, i in enumerate(indices):
            folder = dest / split / str(digits.target[i])
            folder.mkdir(parents=True, exist_ok=True)
            jittered(digits.images[i], rng).save(folder / f"digit_{i:04d}_{n:04d}.jpg", quality=90)
    atomic_write_json(dest / "labels.json", {str(d): d for d in range(10)})


def train_model(dest: Path, epochs: int = EPOCHS, seed: int = 0) -> Path:
    import tensorflow as tf

    tf.keras.utils.set_random_seed(seed)
    files = find_jpegs(dest / "training")
    x = np.stack([preprocess(decode_rgb(f), SIZE, Preprocessing()) for f in files])
    y = np.array([int(f.parent.name) for f in files])
    model = tf.keras.applications.MobileNetV2(alpha=1.0, input_shape=(SIZE, SIZE, 3), weights=None, classes=10)
    for layer in model.layers:  # moving statistics that settle within a couple of epochs (the default is 0.999)
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            layer.momentum = 0.9
    model.compile(optimizer=tf.keras.optimizers.Adam(1e-3), loss="sparse_categorical_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=32, verbose=0, shuffle=True)
    files = find_jpegs(dest / "validation")[::10]
    held_out = np.stack([preprocess(decode_rgb(f), SIZE, Preprocessing()) for f in files])
    accuracy = float(np.mean(model.predict(held_out, verbose=0).argmax(-1) == [int(f.parent.name) for f in files]))
    print(f"trained {epochs} epochs: Top-1 {accuracy:.3f} on {len(files)} held-out images")
    tmp = dest / ".model.h5.tmp.h5"
    model.save(tmp)
    os.replace(tmp, dest / "model.h5")
    return dest / "model.h5"


def make_real_size_sample(dest: Path) -> Path:
    """The images and the trained model in `dest`; nothing is rewritten when the model exists."""
    dest = Path(dest)
    if not (dest / "model.h5").exists():
        write_images(dest)
        train_model(dest)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_size_sample", description=__doc__)
    parser.add_argument("dest", type=Path)
    print(f"sample ready in {make_real_size_sample(parser.parse_args().dest)}")


if __name__ == "__main__":
    main()
