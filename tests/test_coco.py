"""Detection data in the COCO format: the sample made here (scikit-learn's digits on larger canvases, no download),
annotations checked before any work with every bad entry named, and mAP from COCO's own evaluator."""

from __future__ import annotations

import json

import pytest

from core.data.coco import AnnotationError, read_coco_annotations
from core.data.detection_sample import CANVAS, make_detection_sample
from core.evaluate.coco_metrics import coco_scores, coco_subset_scores


@pytest.fixture(scope="module")
def detection_sample(tmp_path_factory):
    return make_detection_sample(tmp_path_factory.mktemp("detection"), train_count=20, validation_count=12)


def test_the_sample_is_several_digits_per_canvas_with_boxes_inside_it(detection_sample):
    coco = read_coco_annotations(detection_sample / "validation.json", detection_sample / "validation")
    assert len(coco.images) == 12 and [c.name for c in coco.categories] == [str(d) for d in range(10)]
    per_image = [sum(a.image_id == image.id for a in coco.annotations) for image in coco.images]
    assert min(per_image) >= 1 and max(per_image) >= 2  # several objects on a canvas
    assert all(0 <= a.bbox[0] and a.bbox[0] + a.bbox[2] <= CANVAS for a in coco.annotations)
    again = make_detection_sample(detection_sample.parent / "again", train_count=20, validation_count=12)
    assert (again / "validation.json").read_text() == (detection_sample / "validation.json").read_text()  # seeded


def test_perfect_detections_score_1_and_boxes_half_off_score_less(detection_sample):
    coco = read_coco_annotations(detection_sample / "validation.json", detection_sample / "validation")
    truth = [
        {"image_id": a.image_id, "category_id": a.category_id, "bbox": list(a.bbox), "score": 1.0}
        for a in coco.annotations
    ]
    perfect = coco_scores(coco, truth)
    assert perfect.map_50_95 == pytest.approx(1.0) and perfect.map_50 == pytest.approx(1.0)
    shifted = [dict(d, bbox=[d["bbox"][0] + d["bbox"][2] / 4, *d["bbox"][1:]]) for d in truth]  # IoU 0.6
    off = coco_scores(coco, shifted)
    assert off.map_50 == pytest.approx(1.0) and off.map_50_95 < 0.5
    present = {coco.categories[a.category_id - 1].name for a in coco.annotations}
    assert {name for name, ap in perfect.per_category_ap.items() if ap is not None} == present
    assert coco_scores(coco, []).map_50 == 0.0


def test_the_score_on_a_subset_of_images_is_the_score_of_those_images_alone(detection_sample):
    """What the repair's noise estimate reads (core/repair/noise.py): COCO's matching done once, the mAP of each
    subset as COCO gives it for those images alone."""
    coco = read_coco_annotations(detection_sample / "validation.json", detection_sample / "validation")
    detections = [
        {"image_id": a.image_id, "category_id": a.category_id, "score": 0.9 - 0.01 * i, "bbox": list(a.bbox)}
        for i, a in enumerate(coco.annotations)
    ]
    detections = [
        dict(d, bbox=[d["bbox"][0] + d["bbox"][2] * (i % 3) / 5, *d["bbox"][1:]]) for i, d in enumerate(detections)
    ]
    ids = [image.id for image in coco.images]
    subsets = [ids, ids[1::2], ids[:5]]
    for subset, score in zip(subsets, coco_subset_scores(coco, detections, subsets), strict=True):
        alone = coco.model_copy(
            update={
                "images": [image for image in coco.images if image.id in subset],
                "annotations": [a for a in coco.annotations if a.image_id in subset],
            }
        )
        expected = coco_scores(alone, [d for d in detections if d["image_id"] in subset]).map_50_95
        assert score == pytest.approx(expected)
    assert len({round(s, 6) for s in coco_subset_scores(coco, detections, subsets)}) > 1  # the subsets differ


def write(tmp_path, sample, change) -> tuple:
    content = json.loads((sample / "validation.json").read_text())
    change(content)
    path = tmp_path / "annotations.json"
    path.write_text(json.dumps(content))
    return path, sample / "validation"


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda c: c["images"][1].update(file_name="gone.jpg"), r"images\[1\] \(id 2\): .*gone.jpg does not exist"),
        (
            lambda c: c["annotations"][0].update(bbox=[90, 0, 20, 20]),
            r"annotations\[0\] \(id 1\): box \[90, 0, 20, 20\] .*reaches outside image 1 \(canvas_0001.jpg, 96 x 96\)",
        ),
        (
            lambda c: c["annotations"][2].update(category_id=42),
            r"annotations\[2\] \(id 3\): category_id 42 is not a category \(ids: 1, 2, ",
        ),
        (lambda c: c["annotations"][3].update(image_id=999), r"annotations\[3\] \(id 4\): image_id 999 is not among"),
        (lambda c: c["annotations"][1].update(bbox=[1, 2]), r"annotations\[1\] \(id 2\): bbox: "),
        (lambda c: c.pop("categories"), r"categories: Field required"),
    ],
)
def test_a_bad_annotations_file_is_refused_naming_the_entry(detection_sample, tmp_path, change, expected):
    path, images = write(tmp_path, detection_sample, change)
    with pytest.raises(AnnotationError, match=expected) as error:
        read_coco_annotations(path, images)
    assert str(path) in str(error.value)


def test_every_problem_is_reported_at_once_and_a_missing_file_says_what_to_give(detection_sample, tmp_path):
    def two(c):
        c["annotations"][0]["category_id"] = 0
        c["annotations"][1]["bbox"] = [0, 0, 0, 5]

    path, images = write(tmp_path, detection_sample, two)
    with pytest.raises(AnnotationError, match=r"\(2 problems\)"):
        read_coco_annotations(path, images)
    with pytest.raises(AnnotationError, match="does not exist: give the COCO annotations JSON"):
        read_coco_annotations(tmp_path / "none.json", images)


def test_a_box_that_is_not_a_number_and_detections_on_unlisted_images_are_refused(detection_sample, tmp_path):
    content = json.loads((detection_sample / "validation.json").read_text())
    content["annotations"][0]["bbox"] = [float("nan"), 0, 10, 10]
    path = tmp_path / "nan.json"
    path.write_text(json.dumps(content))  # JSON's NaN, which Python's json reads and writes
    with pytest.raises(AnnotationError, match=r"annotations\[0\] \(id 1\): box \[nan, 0, 10, 10\] is not four finite"):
        read_coco_annotations(path, detection_sample / "validation")
    coco = read_coco_annotations(detection_sample / "validation.json", detection_sample / "validation")
    with pytest.raises(ValueError, match=r"image ids \[999\] that the annotations do not list"):
        coco_scores(coco, [{"image_id": 999, "category_id": 1, "bbox": [0, 0, 5, 5], "score": 0.5}])


def test_an_image_turned_by_its_exif_tag_is_measured_as_shown(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 120 wide and 80 high, shown turned a quarter: 80 x 120
    Image.new("RGB", (120, 80)).save(folder / "turned.jpg", exif=exif.tobytes())
    coco = {
        "images": [{"id": 1, "file_name": "turned.jpg", "width": 80, "height": 120}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 100, 60, 15]}],
        "categories": [{"id": 1, "name": "thing"}],
    }
    (tmp_path / "as_shown.json").write_text(json.dumps(coco))
    assert read_coco_annotations(tmp_path / "as_shown.json", folder).images[0].height == 120
    coco["images"][0].update(width=120, height=80)  # the stored size: its boxes would land turned
    (tmp_path / "as_stored.json").write_text(json.dumps(coco))
    with pytest.raises(AnnotationError, match=r"is 80 x 120 pixels as shown \(after its EXIF rotation\)"):
        read_coco_annotations(tmp_path / "as_stored.json", folder)
