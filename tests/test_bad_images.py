"""Bad image files are skipped and counted, never a stack trace; junk files are ignored."""

import numpy as np
import pytest
from PIL import Image

from core.config import Preprocessing
from core.data.images import decode_rgb
from core.data.load_calibration_set import load_calibration_set
from core.data.load_evaluation_set import load_evaluation_set
from core.errors import InputError

CLASSES = [str(d) for d in range(10)]


def add_bad_files(folder):
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff\xe0" + b"\x00" * 50)
    Image.new("RGB", (8, 8)).save(folder / "really_a_png.jpg", format="PNG")
    (folder / "empty.jpg").write_bytes(b"")
    good = next(folder.glob("digit_*.jpg")).read_bytes()
    (folder / "truncated.jpg").write_bytes(good[: len(good) // 3])
    (folder / "Thumbs.db").write_bytes(b"junk")
    (folder / "._digit.jpg").write_bytes(b"AppleDouble junk")
    Image.new("L", (32, 32), 128).save(folder / "grey.jpg")
    Image.new("CMYK", (32, 32)).save(folder / "cmyk.jpg")
    return {"corrupt.jpg", "really_a_png.jpg", "empty.jpg"}


@pytest.mark.slow
def test_the_evaluation_skips_undecodable_files_and_names_each(own_sample, tmp_path):
    folder = own_sample / "validation" / "3"
    before = len(list(folder.glob("digit_*.jpg")))
    add_bad_files(folder)
    result = load_evaluation_set(
        evaluate_image_dir=str(own_sample / "validation"),
        extension="jpg",
        class_names=CLASSES,
        input_tensor_size=32,
        preprocessing=Preprocessing(),
        out_dir=tmp_path,
        progress=False,
    )
    skipped = {s.file.rsplit("/", 1)[-1]: s.reason for s in result.skipped}
    assert {"corrupt.jpg", "really_a_png.jpg", "empty.jpg"} <= set(skipped)
    assert "is a PNG file named .jpg" in skipped["really_a_png.jpg"]
    assert "Thumbs.db" not in skipped and "._digit.jpg" not in skipped  # junk is ignored, not counted
    labels = np.load(result.labels_path)
    assert (labels == 3).sum() == before + 2 + ("truncated.jpg" not in skipped)  # grey and CMYK are decoded
    assert len(np.load(result.images_path)) == result.image_count == len(labels)


@pytest.mark.slow
def test_the_calibration_skips_undecodable_files_and_still_fills_every_batch(own_sample, tmp_path):
    folder = own_sample / "training" / "5"
    bad = add_bad_files(folder)
    result = load_calibration_set(
        dataset_image_dir=str(own_sample / "training"),
        input_tensor_size=32,
        batch_size=50,
        iteration_count=20,
        preprocessing=Preprocessing(),
        seed=0,
        out_dir=tmp_path,
        progress=False,
    )
    assert np.load(result.path).shape == (1000, 32, 32, 3)
    assert {s.file.rsplit("/", 1)[-1] for s in result.skipped} >= bad


def test_a_folder_of_only_bad_files_is_an_input_error(tmp_path):
    (tmp_path / "a").mkdir()
    add_bad_files_only = tmp_path / "a" / "broken.jpg"
    add_bad_files_only.write_bytes(b"nope")
    with pytest.raises(InputError, match="none of the 1 JPEG files .* can be decoded"):
        load_calibration_set(
            dataset_image_dir=str(tmp_path),
            input_tensor_size=8,
            batch_size=1,
            iteration_count=1,
            preprocessing=Preprocessing(),
            seed=0,
            out_dir=tmp_path,
            progress=False,
        )


def test_an_oversized_image_is_refused_before_decoding(tmp_path, monkeypatch):
    import core.data.images

    monkeypatch.setattr(core.data.images, "MAX_PIXELS", 100)
    Image.new("RGB", (20, 20)).save(tmp_path / "big.jpg")
    with pytest.raises(InputError, match=r"20 x 20 pixels, over the limit of 100"):
        decode_rgb(tmp_path / "big.jpg")


def test_a_16_bit_greyscale_image_decodes_to_rgb(tmp_path):
    Image.fromarray(np.full((4, 4), 65535, np.uint16)).save(tmp_path / "deep.png")
    assert np.asarray(decode_rgb(tmp_path / "deep.png")).min() == 255
