"""The one preprocessing of the workflow, applied to calibration and evaluation images alike."""

from __future__ import annotations

import numpy as np
from PIL import Image

from core.config import Preprocessing

_FILTERS = {
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "nearest": Image.Resampling.NEAREST,
}


def resize(image: Image.Image, size: int, spec: Preprocessing) -> Image.Image:
    """Resize an RGB image to size x size as the preprocessing declares."""
    resample = _FILTERS[spec.interpolation]
    if spec.resize == "stretch":
        return image.resize((size, size), resample)
    # Resize so the centre crop of `crop_fraction` of the shorter side is exactly `size` pixels.
    width, height = image.size
    shorter_target = size / spec.crop_fraction
    factor = shorter_target / min(width, height)
    new_w, new_h = max(size, round(width * factor)), max(size, round(height * factor))
    image = image.resize((new_w, new_h), resample)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return image.crop((left, top, left + size, top + size))


def normalize(pixels: np.ndarray, spec: Preprocessing) -> np.ndarray:
    """uint8 H x W x 3 pixels to the model's float32 input values."""
    x = pixels.astype(np.float32) * np.float32(spec.scale) + np.float32(spec.offset)
    if spec.mean is not None and spec.std is not None:
        x = (x - np.asarray(spec.mean, np.float32)) / np.asarray(spec.std, np.float32)
    return x


def preprocess(image: Image.Image, size: int, spec: Preprocessing) -> np.ndarray:
    return normalize(np.asarray(resize(image, size, spec), dtype=np.uint8), spec)
