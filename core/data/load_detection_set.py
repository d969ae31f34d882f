"""Step 5 for a detector: load the evaluation set once for every model: the images the COCO annotations file lists,
decoded and preprocessed exactly as the calibration images were, and the truth beside them (truth.json: the kept
images, in the stored order, with their boxes, the categories and which category each of the model's classes is).
"""

from __future__ import annotations

from pathlib import Path

from core.config import DetectionDecoding, Preprocessing
from core.data.coco import CocoAnnotation, CocoAnnotations, CocoCategory, CocoImage, read_coco_annotations
from core.data.load_evaluation_set import DECODE_CHUNK, decode_to_store
from core.data.records import DetectionTruth, EvaluationSet
from core.files import atomic_write_json


def load_detection_set(
    *,
    evaluate_image_dir: str,
    annotation_file: str,
    class_names: list[str],
    input_tensor_size: int,
    preprocessing: Preprocessing,
    decoding: DetectionDecoding,
    out_dir: Path,
    progress: bool = True,
    chunk_size: int = DECODE_CHUNK,
) -> EvaluationSet:
    """images.npy (the listed images, in the file's order, less those that cannot be decoded), truth.json (their
    annotations: see DetectionTruth) and files.json. Skipped images leave the truth too: their boxes are not
    counted as missed."""
    coco = read_coco_annotations(annotation_file, evaluate_image_dir)
    out_dir = Path(out_dir)
    files = [Path(evaluate_image_dir) / image.file_name for image in coco.images]
    kept, skipped = decode_to_store(
        evaluate_image_dir, files, input_tensor_size, preprocessing, out_dir / "images.npy", progress, chunk_size
    )
    category_of = {category.name: category.id for category in coco.categories}
    truth = DetectionTruth(
        coco=scored_part(coco, files),
        category_of_class=[category_of[name] for name in class_names],
        input_size=input_tensor_size,
        decoding=decoding,
    ).subset(kept)
    truth.write(out_dir / "truth.json")
    atomic_write_json(out_dir / "files.json", [str(files[i]) for i in kept])
    return EvaluationSet(
        images_path=str(out_dir / "images.npy"),
        labels_path=str(out_dir / "truth.json"),
        files_path=str(out_dir / "files.json"),
        image_count=len(kept),
        class_names=class_names,
        skipped=skipped,
    )


def scored_part(coco: CocoAnnotations, files: list[Path]) -> CocoAnnotations:
    """What scoring reads of the file, the image paths made absolute: a COCO file's other keys (segmentation
    polygons, licences, captions) can be most of its size, and the truth is read again by every evaluation."""
    return CocoAnnotations(
        images=[
            CocoImage(id=image.id, file_name=str(file), width=image.width, height=image.height)
            for image, file in zip(coco.images, files, strict=True)
        ],
        annotations=[
            CocoAnnotation(
                id=a.id,
                image_id=a.image_id,
                category_id=a.category_id,
                bbox=a.bbox,
                iscrowd=a.iscrowd,
                area=a.area,
            )
            for a in coco.annotations
        ],
        categories=[CocoCategory(id=c.id, name=c.name) for c in coco.categories],
    )
