"""The calibration set: a seeded, reproducible sample of iteration_count batches of batch_size."""

import numpy as np
import pytest

from core.config import Preprocessing
from core.data.load_calibration_set import load_calibration_set, sample_indices
from tests.helpers import SAMPLE_TRAIN


def test_the_sample_is_reproducible_from_its_seed_and_changes_with_it():
    assert sample_indices(100, 30, seed=7).tolist() == sample_indices(100, 30, seed=7).tolist()
    assert sample_indices(100, 30, seed=7).tolist() != sample_indices(100, 30, seed=8).tolist()


def test_images_are_not_repeated_while_there_are_enough():
    assert len(set(sample_indices(100, 100, seed=0).tolist())) == 100


def test_when_more_are_needed_every_image_is_used_as_evenly_as_possible():
    counts = np.bincount(sample_indices(10, 25, seed=0), minlength=10)
    assert counts.min() >= 2 and counts.max() <= 3


@pytest.mark.slow
def test_the_set_holds_iteration_count_batches_preprocessed(sample_dir, tmp_path):
    result = load_calibration_set(
        dataset_image_dir=str(sample_dir / "training"),
        input_tensor_size=32,
        batch_size=8,
        iteration_count=3,
        preprocessing=Preprocessing(),
        seed=1,
        out_dir=tmp_path,
        progress=False,
    )
    images = np.load(result.path)
    assert images.shape == (24, 32, 32, 3) and images.dtype == np.float32
    assert 0.0 <= images.min() and images.max() <= 1.0
    assert result.images_found == SAMPLE_TRAIN and result.images_used == 24
