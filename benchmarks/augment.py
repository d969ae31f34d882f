"""Enlarged evaluation sets made from the sample's validation images by random augmentation
(shift, rotation, brightness), in the same one-folder-per-class layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageEnhance


def augmented_set(source: Path, dest: Path, count: int, seed: int = 0) -> Path:
    """`count` JPEGs below `dest`, cycling through the images of `source`; reused when already made."""
    dest = Path(dest)
    done = dest / ".complete"
    if done.exists():
        return dest
    rng = np.random.default_rng(seed)
    files = sorted(Path(source).glob("*/*.jpg"))
    for i in range(count):
        file = files[i % len(files)]
        with Image.open(file) as image:
            image = image.rotate(float(rng.uniform(-10, 10)), translate=tuple(int(v) for v in rng.integers(-2, 3, 2)))
            image = ImageEnhance.Brightness(image).enhance(float(rng.uniform(0.8, 1.2)))
            folder = dest / file.parent.name
            folder.mkdir(parents=True, exist_ok=True)
            image.save(folder / f"aug_{i:06d}.jpg", quality=95)
    done.touch()
    return dest
