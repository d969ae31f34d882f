"""A large calibration set is quantized in a worker process that ends with MCT (its memory with it): the same model,
the same progress, the same errors as in the step's own process."""

from __future__ import annotations

import numpy as np
import pytest

from core import run_progress
from core.build import quantize_with_mct as step
from core.errors import StepError
from core.evaluate.models import load_quantized_keras_model


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("mct-worker")
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((16, 16, 3))
    x = tf.keras.layers.Conv2D(8, 3, activation="relu")(inputs)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    tf.keras.Model(inputs, tf.keras.layers.Dense(4)(x)).save(folder / "model.h5")
    np.save(folder / "calibration.npy", np.random.default_rng(0).random((30, 16, 16, 3), np.float32))
    return folder


def quantized(folder, out: str, **options):
    (folder / out).mkdir(exist_ok=True)
    return step.quantize_with_mct(
        model_path=str(folder / "model.h5"),
        calibration_path=str(folder / "calibration.npy"),
        batch_size=10,
        target_platform="imx500",
        out_dir=folder / out,
        progress=False,
        **options,
    )


@pytest.mark.slow
def test_in_a_worker_mct_makes_the_same_model_and_its_batches_are_the_runs_progress(tiny, monkeypatch):
    here = quantized(tiny, "here")
    monkeypatch.setattr(step, "IN_PROCESS_MAX_BYTES", 0)
    plan = run_progress.RunPlan(models=0, evaluation_images=0, mct_models=1, calibration_images=30)
    progress = run_progress.start(plan, enabled=False)
    try:
        worker = quantized(tiny, "worker")
    finally:
        run_progress.finish()
    assert progress.done == 30, "every calibration batch the worker ran counted in the run's progress"
    images = np.load(tiny / "calibration.npy")[:5]
    ours, theirs = (load_quantized_keras_model(m.path) for m in (here, worker))
    assert np.array_equal(np.asarray(ours(images)), np.asarray(theirs(images)))
    assert not (tiny / "worker" / ".mct-calibration-batches").exists()


@pytest.mark.slow
def test_what_mct_says_in_the_worker_reaches_the_step_whole(tiny, monkeypatch):
    monkeypatch.setattr(step, "IN_PROCESS_MAX_BYTES", 0)
    with pytest.raises(StepError, match="quantize-with-mct") as raised:
        quantized(tiny, "failing", method="mixed_precision", weights_memory_ratio=1e-9)
    assert raised.value.__cause__ is not None, "the library's own words, for the step's report"
