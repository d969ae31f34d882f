"""The analyses of a run's models, side by side, measure the float model's activations once."""

from __future__ import annotations

import threading

import numpy as np

from core.analysis import layer_analysis


def test_the_float_models_activation_statistics_are_measured_once_for_every_analysis(tmp_path, monkeypatch):
    import tensorflow as tf

    inputs = tf.keras.Input((8, 8, 3))
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(2)(tf.keras.layers.Flatten()(inputs)))
    model.save(tmp_path / "model.h5")
    np.save(tmp_path / "calibration.npy", np.random.default_rng(0).random((6, 8, 8, 3), np.float32))
    calls = []
    real = layer_analysis.activation_stats

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(layer_analysis, "activation_stats", counted)
    monkeypatch.setattr(layer_analysis, "_stats_memo", {})
    results = []

    def analyse():
        results.append(
            layer_analysis.float_activation_stats(
                model, str(tmp_path / "model.h5"), str(tmp_path / "calibration.npy"), 2
            )
        )

    threads = [threading.Thread(target=analyse) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1 and len(results) == 3
    assert all(result == results[0] for result in results)
    np.save(tmp_path / "calibration.npy", np.random.default_rng(1).random((6, 8, 8, 3), np.float32))
    analyse()  # new calibration images: measured anew
    assert len(calls) == 2
