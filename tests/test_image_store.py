"""The decoded evaluation set is streamed to disk and read back in bounded batches."""

import numpy as np
import pytest

from core.config import Preprocessing
from core.data.image_store import NpyBatchWriter, image_count, iter_batches
from core.data.load_evaluation_set import load_evaluation_set

RNG = np.random.default_rng(0)


def test_batches_appended_are_a_standard_npy_file_read_back_in_any_batch_size(tmp_path):
    images = RNG.random((103, 4, 4, 3), np.float32)
    with NpyBatchWriter(tmp_path / "images.npy", (4, 4, 3)) as writer:
        for start in range(0, 103, 10):
            writer.append(images[start : start + 10])
    assert np.array_equal(np.load(tmp_path / "images.npy"), images) and image_count(tmp_path / "images.npy") == 103
    assert np.array_equal(np.concatenate(list(iter_batches(tmp_path / "images.npy", 7))), images)
    assert np.array_equal(
        np.concatenate(list(iter_batches(tmp_path / "images.npy", 7, start=5, stop=50))), images[5:50]
    )


def test_a_failure_while_writing_leaves_no_file_behind(tmp_path):
    with pytest.raises(RuntimeError):
        with NpyBatchWriter(tmp_path / "images.npy", (2, 2, 3)) as writer:
            writer.append(np.zeros((3, 2, 2, 3)))
            raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_a_batch_of_the_wrong_shape_is_refused(tmp_path):
    with (
        NpyBatchWriter(tmp_path / "images.npy", (2, 2, 3)) as writer,
        pytest.raises(ValueError, match=r"batch of shape \(3, 3, 3\)"),
    ):
        writer.append(np.zeros((1, 3, 3, 3)))


@pytest.mark.slow
def test_decoding_in_small_chunks_gives_the_same_set_as_in_one(sample_dir, tmp_path):
    classes = [str(d) for d in range(10)]
    one = load_evaluation_set(
        evaluate_image_dir=str(sample_dir / "validation"),
        extension="jpg",
        class_names=classes,
        input_tensor_size=32,
        preprocessing=Preprocessing(),
        out_dir=tmp_path / "one",
        progress=False,
        chunk_size=10_000,
    )
    small = load_evaluation_set(
        evaluate_image_dir=str(sample_dir / "validation"),
        extension="jpg",
        class_names=classes,
        input_tensor_size=32,
        preprocessing=Preprocessing(),
        out_dir=tmp_path / "small",
        progress=False,
        chunk_size=7,
    )
    assert np.array_equal(np.load(one.images_path), np.load(small.images_path))
    assert (
        np.array_equal(np.load(one.labels_path), np.load(small.labels_path))
        and one.image_count == small.image_count == 120
    )
