"""The real-size benchmark's input: the IMX500's reference classifier, MobileNetV2 alpha 1.0 at 224 x 224
(3.5 M parameters), trained here briefly on scikit-learn's handwritten digits upscaled and jittered (no download),
with 1,000 calibration and 2,000 evaluation JPEGs.

    python -m benchmarks.real_size_sample DEST   # DEST/training, DEST/validation, DEST/labels.json, DEST/model.h5

The calibration images are jittered copies of 1,000 digits; the evaluation images of the other 797, each seen
about 2.5 times under a different shift, rotation and brightness, so the evaluation set holds no training digit.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from benchmarks.e2e_sample import made_once, train_model
from core.files import atomic_write_json

SIZE = 224
CALIBRATION = 1_000
EVALUATION = 2_000
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


def make_real_size_sample(dest: Path) -> Path:
    """The images and the trained model in `dest`; nothing is rewritten when the model exists."""
    return made_once(dest, write_images, lambda d: train_model(d, EPOCHS, size=SIZE, alpha=1.0))


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.real_size_sample", description=__doc__)
    parser.add_argument("dest", type=Path)
    print(f"sample ready in {make_real_size_sample(parser.parse_args().dest)}")


if __name__ == "__main__":
    main()
