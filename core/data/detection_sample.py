"""The detection sample: scikit-learn's handwritten digits (shipped inside the package, no download) placed on
larger canvases, several per image, written as JPEGs with a COCO annotations file; what detection's tests and its
demo run on.

    python -m core.data.detection_sample [--dest sample_data/digits_detection]

Writes DEST/training/*.jpg (calibration), DEST/validation/*.jpg (evaluation) and DEST/validation.json and
DEST/training.json (COCO: images, annotations with [x, y, width, height] boxes in pixels, categories "0" to "9"
with ids 1 to 10). The same seed gives the same files.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from core.files import atomic_write_json
from core.storage import REPO_ROOT

CANVAS = 96  # pixels, square
DIGIT_SIZES = (20, 36)  # a digit's side in pixels, drawn uniformly in this range
DIGITS_PER_IMAGE = (1, 3)
DEFAULT_DEST = REPO_ROOT / "sample_data" / "digits_detection"
CATEGORY_IDS = {digit: digit + 1 for digit in range(10)}  # COCO's ids start at 1


def _placements(rng: np.random.Generator, count: int) -> list[tuple[int, int, int]]:
    """(x, y, side) of `count` squares on the canvas that do not overlap (fewer when the canvas is full)."""
    placed: list[tuple[int, int, int]] = []
    for _ in range(50 * count):
        if len(placed) == count:
            break
        side = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
        x, y = (int(v) for v in rng.integers(0, CANVAS - side + 1, size=2))
        if all(x + side <= a or a + s <= x or y + side <= b or b + s <= y for a, b, s in placed):
            placed.append((x, y, side))
    return placed


def write_split(dest: Path, split: str, image_count: int, rng: np.random.Generator) -> Path:
    """`image_count` canvases in dest/split and their COCO file dest/split.json."""
    from PIL import Image
    from sklearn.datasets import load_digits

    digits = load_digits()
    folder = dest / split
    folder.mkdir(parents=True, exist_ok=True)
    images: list[dict] = []
    annotations: list[dict] = []
    for image_id in range(1, image_count + 1):
        canvas = Image.new("L", (CANVAS, CANVAS), 0)
        count = int(rng.integers(DIGITS_PER_IMAGE[0], DIGITS_PER_IMAGE[1] + 1))
        for x, y, side in _placements(rng, count):
            index = int(rng.integers(len(digits.images)))
            pixels = (digits.images[index] * (255 / 16)).astype(np.uint8)
            canvas.paste(Image.fromarray(pixels).resize((side, side), Image.Resampling.BILINEAR), (x, y))
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[int(digits.target[index])],
                    "bbox": [x, y, side, side],
                    "area": side * side,
                    "iscrowd": 0,
                }
            )
        name = f"canvas_{image_id:04d}.jpg"
        canvas.convert("RGB").save(folder / name, quality=95)
        images.append({"id": image_id, "file_name": name, "width": CANVAS, "height": CANVAS})
    categories = [{"id": category, "name": str(digit)} for digit, category in CATEGORY_IDS.items()]
    path = dest / f"{split}.json"
    atomic_write_json(path, {"images": images, "annotations": annotations, "categories": categories})
    return path


def make_detection_sample(
    dest: Path = DEFAULT_DEST, train_count: int = 600, validation_count: int = 200, seed: int = 0
) -> Path:
    """The sample in `dest` (left as it is when its validation annotations exist)."""
    dest = Path(dest)
    if (dest / "validation.json").exists():
        return dest
    rng = np.random.default_rng(seed)
    write_split(dest, "training", train_count, rng)
    write_split(dest, "validation", validation_count, rng)
    return dest


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST, help=f"where to write it (default {DEFAULT_DEST})")
    args = parser.parse_args()
    print(make_detection_sample(args.dest))


if __name__ == "__main__":
    main()
