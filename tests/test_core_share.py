"""The evaluations share the cores: one each, and a spare core lent to a running evaluation until one waits for it."""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import pytest

from core.data.image_store import iter_batches
from core.evaluate import core_share
from core.evaluate.core_share import CoreShare, SharedPredictor
from core.files import atomic_save_numpy


@pytest.fixture
def images(tmp_path):
    return str(atomic_save_numpy(tmp_path / "images.npy", np.arange(103 * 2, dtype=np.float32).reshape(103, 2)))


def model(batch: np.ndarray) -> np.ndarray:
    return batch.sum(axis=1)


def predictor(share: CoreShare, helper_predict=model, on_helper_batch=None, wait_for_helper=True):
    """A SharedPredictor whose own predictions, after the first, wait until the helper has taken a batch (so the
    helper's part does not depend on the machine's speed)."""
    helped = threading.Event()
    calls = []

    def own(batch):
        calls.append(1)
        if wait_for_helper and len(calls) > 1:
            helped.wait(30)
        return model(batch)

    @contextmanager
    def helper():
        def predict(batch):
            try:
                if on_helper_batch:
                    on_helper_batch()
                return helper_predict(batch)
            finally:
                helped.set()

        yield predict

    return SharedPredictor(own, helper, share), helped


def collected(outputs) -> np.ndarray:
    parts = sorted(outputs, key=lambda part: part[0])
    firsts = [first for first, _ in parts]
    assert firsts == sorted(set(firsts)), "every batch once"
    return np.concatenate([out for _, out in parts])


def test_a_spare_core_helps_a_long_evaluation_and_every_batch_is_scored_once(images, monkeypatch):
    monkeypatch.setattr(core_share, "LEND_AFTER_S", 0.0)
    share = CoreShare(2)
    shared, helped = predictor(share)
    with share.own():
        outputs = collected(shared.outputs(images, 10, 0, 103))
    expected = np.concatenate([model(b) for b in iter_batches(images, 10)])
    assert np.array_equal(outputs, expected)
    assert shared.helpers_used == 1 and helped.is_set()
    assert share.lend() and share.lend() and not share.lend(), "every core given back"


def test_no_core_is_lent_to_a_short_evaluation_nor_when_none_is_spare(images):
    share = CoreShare(2)
    shared, _ = predictor(share, wait_for_helper=False)
    with share.own():
        collected(shared.outputs(images, 10, 0, 103))  # far less than LEND_AFTER_S of work
    assert shared.helpers_used == 0
    single = CoreShare(1)
    shared, _ = predictor(single, wait_for_helper=False)
    with single.own():
        collected(shared.outputs(images, 10, 0, 103))
    assert shared.helpers_used == 0


def test_a_lent_core_goes_back_to_an_evaluation_that_waits_for_one(images, monkeypatch):
    monkeypatch.setattr(core_share, "LEND_AFTER_S", 0.0)
    share = CoreShare(2)
    other_started, other_waits = threading.Event(), threading.Event()

    def other_evaluation():
        other_waits.set()
        with share.own():  # waits until the helper gives the lent core back
            other_started.set()

    def on_helper_batch():
        if not other_waits.is_set():
            threading.Thread(target=other_evaluation, daemon=True).start()
            assert other_waits.wait(30)
            for _ in range(3000):  # until the other evaluation is waiting for a core (at most 30 s)
                if share.wanted():
                    break
                threading.Event().wait(0.01)
            else:
                raise AssertionError("the other evaluation never waited for a core")

    shared, _ = predictor(share, on_helper_batch=on_helper_batch)
    with share.own():
        outputs = collected(shared.outputs(images, 10, 0, 103))
    assert other_started.wait(30), "the waiting evaluation got the lent core"
    assert len(outputs) == 103


def test_a_helpers_failure_is_the_evaluations(images, monkeypatch):
    monkeypatch.setattr(core_share, "LEND_AFTER_S", 0.0)
    share = CoreShare(2)

    def crash(batch):
        raise RuntimeError("the interpreter refused the tensor")

    shared, _ = predictor(share, helper_predict=crash)
    with share.own(), pytest.raises(RuntimeError, match="refused the tensor"):
        collected(shared.outputs(images, 10, 0, 103))
    assert share.lend(), "the helper's core is back"
