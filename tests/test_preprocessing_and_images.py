"""One preprocessing, declared once, and decoding that copes with every JPEG mode."""

import numpy as np
import pytest
from PIL import Image

from core.config import Preprocessing
from core.data.images import decode_rgb, find_jpegs
from core.data.preprocessing import normalize, preprocess, resize
from core.errors import InputError


def test_the_default_preprocessing_stretches_and_scales_to_zero_one():
    image = Image.new("RGB", (40, 20), (255, 0, 51))
    x = preprocess(image, 8, Preprocessing())
    assert x.shape == (8, 8, 3) and x.dtype == np.float32
    np.testing.assert_allclose(x[0, 0], [1.0, 0.0, 0.2], atol=1e-6)


def test_scale_and_offset_give_minus_one_to_one():
    spec = Preprocessing(scale=1 / 127.5, offset=-1.0)
    np.testing.assert_allclose(
        normalize(np.array([[[0, 255, 127]]], np.uint8), spec), [[[-1.0, 1.0, -0.003921]]], atol=1e-5
    )


def test_mean_and_std_apply_after_scaling():
    spec = Preprocessing(mean=(0.5, 0.5, 0.5), std=(0.25, 0.5, 1.0))
    np.testing.assert_allclose(normalize(np.full((1, 1, 3), 255, np.uint8), spec), [[[2.0, 1.0, 0.5]]], atol=1e-6)


def test_mean_without_std_is_refused():
    with pytest.raises(ValueError, match="give both 'mean' and 'std'"):
        Preprocessing(mean=(0.5, 0.5, 0.5))


def test_shorter_side_center_crop_keeps_the_aspect_ratio_and_cuts_the_middle():
    # A 300 x 100 image: left third red, middle green, right third blue.
    image = Image.new("RGB", (300, 100))
    for i, colour in enumerate([(255, 0, 0), (0, 255, 0), (0, 0, 255)]):
        image.paste(colour, (i * 100, 0, (i + 1) * 100, 100))
    cropped = resize(image, 50, Preprocessing(resize="shorter_side_center_crop"))
    assert cropped.size == (50, 50)
    assert np.asarray(cropped)[25, 25].tolist() == [0, 255, 0]
    stretched = resize(image, 50, Preprocessing())
    assert np.asarray(stretched)[25, 2].tolist()[0] > 200  # stretching keeps the red third


def test_crop_fraction_zooms_in():
    image = Image.new("RGB", (100, 100), (0, 0, 0))
    image.paste((255, 255, 255), (25, 25, 75, 75))
    cropped = np.asarray(
        resize(image, 20, Preprocessing(resize="shorter_side_center_crop", crop_fraction=0.5, interpolation="nearest"))
    )
    assert cropped.min() > 200  # only the white centre square is left


@pytest.mark.parametrize("mode", ["L", "CMYK", "RGB"])
def test_jpegs_of_any_mode_decode_to_rgb(tmp_path, mode):
    path = tmp_path / f"{mode}.jpg"
    Image.new(mode, (10, 10)).save(path)
    assert decode_rgb(path).mode == "RGB"


def test_a_corrupt_jpeg_is_an_input_error_naming_the_file(tmp_path):
    path = tmp_path / "broken.jpg"
    path.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(InputError, match="broken.jpg cannot be decoded"):
        decode_rgb(path)


def test_jpegs_are_found_recursively_in_any_case_skipping_hidden_files(tmp_path):
    for name in ["a/b/one.jpg", "two.JPEG", "a/.hidden.jpg", ".thumbs/x.jpg", "three.png"]:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (4, 4)).save(tmp_path / name, format="PNG" if name.endswith("png") else "JPEG")
    assert [p.relative_to(tmp_path).as_posix() for p in find_jpegs(tmp_path)] == ["a/b/one.jpg", "two.JPEG"]
