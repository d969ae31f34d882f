"""A detection set in the COCO format people already have: a folder of JPEGs and an annotations JSON (images,
annotations with [x, y, width, height] boxes in pixels, categories), read and checked before any work starts. Every
problem names the entry (its place in the file and its id) and what was expected; all are reported together."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from pydantic_core import ErrorDetails

from core.errors import InputError

BOX_TOLERANCE = 0.5  # pixels a box may reach past the image's edge (rounding in the tools that wrote it)
MAX_PROBLEMS = 20  # listed; the rest counted
EXIF_ORIENTATION = 0x0112


class CocoImage(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    file_name: str
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class CocoAnnotation(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    image_id: int
    category_id: int
    bbox: tuple[float, float, float, float]
    iscrowd: int = 0
    area: float | None = None  # COCOeval's area ranges read it; the box's area when not given


class CocoCategory(BaseModel):
    model_config = ConfigDict(extra="allow")

    id: int
    name: str


class CocoAnnotations(BaseModel):
    """What a COCO annotations file holds, as far as evaluation needs it (other keys are kept and ignored)."""

    model_config = ConfigDict(extra="allow")

    images: list[CocoImage] = Field(min_length=1)
    annotations: list[CocoAnnotation]
    categories: list[CocoCategory] = Field(min_length=1)


class AnnotationError(InputError):
    """Problems found in a COCO annotations file, all reported together."""

    def __init__(self, source: Path, problems: list[str]):
        self.source, self.problems = source, problems
        shown = problems[:MAX_PROBLEMS]
        more = len(problems) - len(shown)
        lines = [
            f"annotations file {source} is not usable ({len(problems)} problem{'s' if len(problems) > 1 else ''}):"
        ]
        lines += [f"  - {problem}" for problem in shown] + ([f"  - ... and {more} more"] if more else [])
        super().__init__("\n".join(lines))


def read_coco_annotations(annotation_file: str | Path, image_dir: str | Path) -> CocoAnnotations:
    """The file's content, checked: JSON of COCO's shape, unique ids, every image present in `image_dir`, every
    annotation on a listed image with a listed category and a box of positive size inside the image. Raises
    AnnotationError naming each bad entry."""
    path, folder = Path(annotation_file), Path(image_dir)
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise AnnotationError(path, ["the file does not exist: give the COCO annotations JSON"]) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise AnnotationError(path, [f"not JSON: {exc}"]) from None
    except OSError as exc:
        raise AnnotationError(path, [f"cannot be read: {exc.strerror or exc}"]) from None
    try:
        coco = CocoAnnotations.model_validate(raw)
    except ValidationError as exc:
        raise AnnotationError(path, list(dict.fromkeys(_located(raw, error) for error in exc.errors()))) from None
    problems = _duplicates("images", coco.images) + _duplicates("categories", coco.categories)
    problems += _duplicates("annotations", coco.annotations)
    inside = folder.resolve()
    for i, listed in enumerate(coco.images):
        entry, file = f"images[{i}] (id {listed.id})", folder / listed.file_name
        if inside not in file.resolve().parents:
            problems.append(
                f"{entry}: file_name {listed.file_name!r} leads outside {folder}: expected a path inside it"
            )
        elif not file.is_file():
            problems.append(f"{entry}: {file} does not exist")
        elif (size := _displayed_size(file)) is not None and size != (listed.width, listed.height):
            problems.append(
                f"{entry}: {file} is {size[0]} x {size[1]} pixels as shown (after its EXIF rotation), but the file "
                f"says {listed.width} x {listed.height}: boxes are measured in the image as shown; correct its width "
                "and height"
            )
    images = {listed.id: listed for listed in coco.images}
    categories = {category.id for category in coco.categories}
    for i, annotation in enumerate(coco.annotations):
        entry = f"annotations[{i}] (id {annotation.id})"
        image = images.get(annotation.image_id)
        if image is None:
            problems.append(f"{entry}: image_id {annotation.image_id} is not among the images' ids")
        if annotation.category_id not in categories:
            known = ", ".join(str(c) for c in sorted(categories))
            problems.append(f"{entry}: category_id {annotation.category_id} is not a category (ids: {known})")
        x, y, width, height = annotation.bbox
        if not all(math.isfinite(v) for v in annotation.bbox):
            problems.append(f"{entry}: box {_box(annotation.bbox)} is not four finite numbers [x, y, width, height]")
        elif width <= 0 or height <= 0:
            problems.append(
                f"{entry}: box {_box(annotation.bbox)} has no area: expected [x, y, width, height], both > 0"
            )
        elif image is not None and (
            x < -BOX_TOLERANCE
            or y < -BOX_TOLERANCE
            or x + width > image.width + BOX_TOLERANCE
            or y + height > image.height + BOX_TOLERANCE
        ):
            problems.append(
                f"{entry}: box {_box(annotation.bbox)} ([x, y, width, height]) reaches outside image {image.id} "
                f"({image.file_name}, {image.width} x {image.height})"
            )
    if problems:
        raise AnnotationError(path, problems)
    return coco


def _displayed_size(file: Path) -> tuple[int, int] | None:
    """(width, height) of the image as it is shown, its EXIF rotation applied (as decoding applies it), read from its
    header; None when it cannot be read (the image is then skipped at decoding, with the reason)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(file) as image:
            width, height = image.size
            turned = image.getexif().get(EXIF_ORIENTATION) in (5, 6, 7, 8)  # a quarter turn swaps the sides
    except (OSError, UnidentifiedImageError, ValueError):
        return None
    return (height, width) if turned else (width, height)


def _box(box: tuple[float, ...]) -> str:
    return "[" + ", ".join(f"{v:g}" for v in box) + "]"


def _located(raw: Any, error: ErrorDetails) -> str:
    """A pydantic error as `annotations[3] (id 7): bbox: ...`: the list, the entry (with its id) and the field."""
    loc = list(error["loc"])
    if not loc:
        return f"the file: {error['msg']}"
    where = str(loc[0])
    if len(loc) > 1 and isinstance(loc[1], int):
        entries = raw.get(loc[0]) if isinstance(raw, dict) else None
        entry = entries[loc[1]] if isinstance(entries, list) and 0 <= loc[1] < len(entries) else None
        where += f"[{loc[1]}]" + (f" (id {entry['id']})" if isinstance(entry, dict) and "id" in entry else "")
        loc = loc[2:]
    else:
        loc = loc[1:]
    field = loc[0] if loc else None
    expected = " (expected [x, y, width, height])" if field == "bbox" else ""
    return f"{where}{f': {field}' if field is not None else ''}: {error['msg']}{expected}"


def _duplicates(key: str, entries: list) -> list[str]:
    seen: set[int] = set()
    problems = []
    for i, entry in enumerate(entries):
        if entry.id in seen:
            problems.append(f"{key}[{i}]: id {entry.id} is used twice: each of the {key} needs its own id")
        seen.add(entry.id)
    return problems


def category_problems(coco: CocoAnnotations, class_names: list[str], label_file: str) -> list[str]:
    """The annotations' categories against the label file's classes (the model's outputs): each boxed category must
    be a class, each class a category, so that every box can be matched and every detection scored."""
    names = {category.name for category in coco.categories}
    boxed = {category.name for category in coco.categories if category.id in {a.category_id for a in coco.annotations}}
    problems = []
    if missing := sorted(boxed - set(class_names)):
        problems.append(
            f"categories {missing} have boxes but no entry in the label file {label_file!r}: add them to it (name -> "
            "the model's class id)"
        )
    if unknown := [name for name in class_names if name not in names]:
        problems.append(
            f"classes {unknown} of the label file {label_file!r} are not among the categories' names "
            f"({', '.join(sorted(names))}): name each class as its category"
        )
    duplicated = sorted(name for name in names if sum(c.name == name for c in coco.categories) > 1)
    if duplicated:
        problems.append(f"categories {duplicated} are named twice: each category needs its own name")
    return problems
