"""MCT's statistics collection made faster must give MCT exactly the statistics it gathers itself."""

from __future__ import annotations

import numpy as np
import pytest

from core.build import mct_statistics


@pytest.fixture(scope="module")
def collectors():
    from model_compression_toolkit.core.common.collectors.statistics_collector import StatsCollector

    assert mct_statistics.install(), "MCT 2.6's collector is the one the faster update reproduces"
    return StatsCollector, mct_statistics.mct_own


def batches(shape, count=3, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(count):  # a skewed distribution whose range changes from batch to batch
        yield (rng.standard_normal(shape).astype(np.float32) * (1 + i)) ** 3 + i


def collected(collector_class, update, shape, **batch_options):
    collector = collector_class(out_channel_axis=-1)
    for batch in batches(shape, **batch_options):
        update(collector, batch)
    return collector


def test_histograms_of_large_tensors_counted_in_chunks_on_every_core_equal_numpys():
    from concurrent.futures import ThreadPoolExecutor

    values = next(batches((3, 1 << 21)))
    with ThreadPoolExecutor(2) as pool:
        counts, edges = mct_statistics.histogram(values.astype(np.float64), 2048, pool)
    expected_counts, expected_edges = np.histogram(values.astype(np.float64), bins=2048)
    assert counts.dtype == expected_counts.dtype and np.array_equal(counts, expected_counts)
    assert np.array_equal(edges, expected_edges)


@pytest.mark.parametrize("shape", [(4, 8, 8, 3), (8, 128, 128, 40)], ids=["small tensor", "chunked tensor"])
def test_every_statistic_mct_reads_is_bit_for_bit_its_own(collectors, shape):
    collector_class, mct_own = collectors
    own = collected(collector_class, mct_own, shape)
    fast = collected(collector_class, mct_statistics.update_statistics, shape)
    for name in ("hc", "weighted_hc"):
        for (own_counts, own_bins), (counts, bins) in zip(
            getattr(own, name)._histogram_per_iteration, getattr(fast, name)._histogram_per_iteration, strict=True
        ):
            assert own_counts.dtype == counts.dtype and np.array_equal(own_counts, counts), name
            assert np.array_equal(own_bins, bins), name
        assert all(
            np.array_equal(a, b)
            for a, b in zip(getattr(own, name).get_histogram(), getattr(fast, name).get_histogram(), strict=True)
        )
    assert np.array_equal(own.get_mean(), fast.get_mean())
    assert own.get_min_max_values() == fast.get_min_max_values()
    assert np.array_equal(own.mpcc.state, fast.mpcc.state)


def test_a_constant_tensor_gets_numpys_widened_range(collectors):
    collector_class, mct_own = collectors
    own, fast = collector_class(out_channel_axis=-1), collector_class(out_channel_axis=-1)
    constant = np.full((8, 128, 128, 40), 2.5, np.float32)
    mct_own(own, constant)
    mct_statistics.update_statistics(fast, constant)
    assert np.array_equal(own.hc._histogram_per_iteration[0][1], fast.hc._histogram_per_iteration[0][1])
    assert np.array_equal(own.hc._histogram_per_iteration[0][0], fast.hc._histogram_per_iteration[0][0])


@pytest.mark.slow
def test_mct_quantizes_a_model_to_the_same_bits_with_the_faster_statistics(collectors, monkeypatch):
    import model_compression_toolkit as mct
    import tensorflow as tf

    collector_class, mct_own = collectors
    tf.keras.utils.set_random_seed(0)
    inputs = tf.keras.Input((64, 64, 3))
    x = tf.keras.layers.Conv2D(32, 3, padding="same", activation="relu")(inputs)  # 6.5 M values a batch: chunked
    x = tf.keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)
    x = tf.keras.layers.GlobalAveragePooling2D()(x)
    model = tf.keras.Model(inputs, tf.keras.layers.Dense(10)(x))
    images = np.random.default_rng(1).uniform(-1, 1, (100, 64, 64, 3)).astype(np.float32)

    def data():
        for i in range(2):
            yield [images[i * 50 : (i + 1) * 50]]

    def quantized(update):
        monkeypatch.setattr(collector_class, "update_statistics", update)
        tpc = mct.get_target_platform_capabilities(tpc_version="1.0", device_type="imx500")
        model_q, _ = mct.ptq.keras_post_training_quantization(model, data, target_platform_capabilities=tpc)
        return np.asarray(model_q(images[:20])), [w.numpy() for w in model_q.weights]

    own_outputs, own_weights = quantized(mct_own)
    outputs, weights = quantized(mct_statistics.update_statistics)
    assert np.array_equal(own_outputs, outputs)
    assert all(np.array_equal(a, b) for a, b in zip(own_weights, weights, strict=True))
