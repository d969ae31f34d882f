"""The per-layer analysis (core.analysis.layer_analysis) on small CNNs built here so that PTQ fails for a known reason:
each must rank the layer at fault first and name the cause, with XQuant (MCT) and with TensorFlow's
QuantizationDebugger (the converter). Real TensorFlow and MCT; 8 x 8 digits, models trained for seconds.
"""

from __future__ import annotations

import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest

from core.analysis.layer_analysis import (
    SIGNIFICANT_LOSS_DB,
    LayerAnalysis,
    analyse_converter_model,
    analyse_mct_model,
    loss_db,
)
from core.analysis.layer_causes import ActivationStats, folded_normalizations, range_causes
from core.analysis.layer_tools import layer_for_tensor, mct_folded_outputs, sqnr_db

RESCALED_CHANNELS, RESCALE = [0, 1, 2], 300.0  # conv_a's channels made 300x larger, conv_b's inputs 300x smaller
OUTLIER_GAIN = 100.0  # the outlier channel's peak over every other channel's
WEIGHT_OUTLIER = 300.0  # a logits weight this many times the largest trained one


def cnn(conv_a_filters: int = 8, conv_b_filters: int = 16):
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input((8, 8, 1))
    x = layers.Conv2D(conv_a_filters, 3, padding="same", activation="relu", name="conv_a")(inputs)
    x = layers.Conv2D(conv_b_filters, 3, padding="same", activation="relu", name="conv_b")(x)
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return tf.keras.Model(inputs, layers.Dense(10, name="logits")(x), name="digits")


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> dict:
    """Digits in [0, 1]: 64 calibration images from the training images, 200 held-out evaluation images."""
    from sklearn.datasets import load_digits

    data = load_digits()
    images, labels = (data.images / 16.0).astype(np.float32)[..., None], data.target
    folder = tmp_path_factory.mktemp("layer-analysis")
    np.save(folder / "calibration.npy", images[:64])
    np.save(folder / "evaluation.npy", images[1200:1400])
    return {
        "folder": folder,
        "train": (images[:1200], labels[:1200]),
        "calibration": images[:64],
        "evaluation": (images[1200:1400], labels[1200:1400]),
        "calibration_path": str(folder / "calibration.npy"),
        "evaluation_path": str(folder / "evaluation.npy"),
    }


@pytest.fixture(scope="module")
def trained(digits):
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = cnn()
    model.compile(
        tf.keras.optimizers.Adam(1e-2), tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True), ["accuracy"]
    )
    model.fit(*digits["train"], epochs=20, batch_size=64, verbose=0)
    return model


def copy_of(trained, conv_a_filters: int = 8, conv_b_filters: int = 16):
    """The trained model with room for extra channels: their weights, in and out, are zero."""
    model = cnn(conv_a_filters, conv_b_filters)
    for layer in model.layers:
        if not layer.weights:
            continue
        weights = []
        for target, source in zip(layer.get_weights(), trained.get_layer(layer.name).get_weights(), strict=True):
            padded = np.zeros_like(target)
            padded[tuple(slice(0, n) for n in source.shape)] = source
            weights.append(padded)
        layer.set_weights(weights)
    return model


def assert_same_function(model, trained, digits) -> None:
    images = digits["evaluation"][0]
    np.testing.assert_allclose(model.predict(images, verbose=0), trained.predict(images, verbose=0), atol=1e-3)


def top_1(model, digits) -> float:
    images, labels = digits["evaluation"]
    return float(np.mean(np.argmax(model.predict(images, verbose=0), axis=-1) == labels))


def saved(model, digits, name: str) -> str:
    path = Path(digits["folder"]) / f"{name}.keras"
    model.save(path)
    return str(path)


def mct_quantized(model_path: str, digits) -> str:
    """MCT PTQ (IMX500, MSE thresholds) as the workflow's step makes it, in MCT's Keras format."""
    from core.build.quantize_with_mct import quantize_with_mct

    out = Path(model_path).with_suffix("")
    out.mkdir(exist_ok=True)
    return quantize_with_mct(
        model_path=model_path,
        calibration_path=digits["calibration_path"],
        batch_size=16,
        target_platform="imx500",
        out_dir=out,
        progress=False,
    ).path


def mct_top_1(quantized_path: str, digits) -> float:
    from core.evaluate.models import load_quantized_keras_model

    return top_1(load_quantized_keras_model(quantized_path), digits)


@pytest.fixture(scope="module")
def imbalanced(trained, digits) -> str:
    """conv_a's channels 0-2 scaled up 300x and conv_b's matching input weights down 300x: the same function
    (ReLU commutes with a positive scale), but one per-tensor grid for channels 300x apart."""
    model = copy_of(trained)
    kernel, bias = model.get_layer("conv_a").get_weights()
    next_kernel, next_bias = model.get_layer("conv_b").get_weights()
    kernel[..., RESCALED_CHANNELS] *= RESCALE
    bias[RESCALED_CHANNELS] *= RESCALE
    next_kernel[:, :, RESCALED_CHANNELS, :] /= RESCALE
    model.get_layer("conv_a").set_weights([kernel, bias])
    model.get_layer("conv_b").set_weights([next_kernel, next_bias])
    assert_same_function(model, trained, digits)
    return saved(model, digits, "imbalanced")


@pytest.fixture(scope="module")
def with_outliers(trained, digits) -> str:
    """conv_a gets a ninth channel: a detector of a pattern that reaches the top 0.2% of its response on the
    calibration images, with a gain that makes its peak 100x every other channel's. conv_b ignores it (zero
    weights), so the model computes the same function, but a min/max grid must cover the detector's peaks."""
    import tensorflow as tf

    calibration = digits["calibration"]
    model = copy_of(trained, conv_a_filters=9)
    kernel, bias = model.get_layer("conv_a").get_weights()
    detector = kernel[..., :1]  # channel 0's pattern
    response = tf.nn.conv2d(calibration, detector, 1, "SAME").numpy()
    threshold = np.quantile(response, 0.998)
    peak = np.max(tf.keras.Model(trained.input, trained.get_layer("conv_a").output)(calibration))
    gain = OUTLIER_GAIN * peak / (response.max() - threshold)
    kernel[..., 8:], bias[8] = detector * gain, -threshold * gain
    model.get_layer("conv_a").set_weights([kernel, bias])
    assert_same_function(model, trained, digits)
    return saved(model, digits, "outliers")


@pytest.fixture(scope="module")
def last_layer_weight_outlier(trained, digits) -> str:
    """conv_b gets a 17th channel that is always zero, and the logits a weight on it 300x the largest trained
    one: the same function, but each class's 8-bit weight grid is stretched over that weight, and the trained
    weights round to zero. No activation range is at fault: the last layer is."""
    model = copy_of(trained, conv_b_filters=17)
    kernel, bias = model.get_layer("logits").get_weights()
    kernel[16, :] = WEIGHT_OUTLIER * np.abs(kernel).max()
    model.get_layer("logits").set_weights([kernel, bias])
    assert_same_function(model, trained, digits)
    return saved(model, digits, "last_layer_weight_outlier")


def with_batch_norm():
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input((8, 8, 1))
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="conv_a")(inputs)
    x = layers.BatchNormalization(name="bn_b")(layers.Conv2D(16, 3, padding="same", name="conv_b")(x))
    x = layers.GlobalAveragePooling2D(name="pool")(x)
    return tf.keras.Model(inputs, layers.Dense(10, name="logits")(x), name="digits_bn")


@pytest.fixture(scope="module")
def imbalanced_batch_norm(digits) -> str:
    """conv_b without activation, its BatchNormalization after it (both quantizers fold it into conv_b), trained;
    then the normalization's channels 0-2 scaled up 300x and the logits' weights on them down 300x: the same function
    (the pooling is linear), but the fused op's output has channels 300x apart."""
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    model = with_batch_norm()
    model.compile(tf.keras.optimizers.Adam(1e-2), tf.keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.fit(*digits["train"], epochs=10, batch_size=64, verbose=0)
    # The moving averages lag behind a model trained for seconds: the normalization's statistics, measured.
    convolved = tf.keras.Model(model.input, model.get_layer("conv_b").output).predict(digits["train"][0], verbose=0)
    gamma, beta, _, _ = model.get_layer("bn_b").get_weights()
    model.get_layer("bn_b").set_weights([gamma, beta, convolved.mean(axis=(0, 1, 2)), convolved.var(axis=(0, 1, 2))])
    assert top_1(model, digits) > 0.85
    reference = model.predict(digits["evaluation"][0], verbose=0)
    gamma, beta, mean, variance = model.get_layer("bn_b").get_weights()
    gamma[RESCALED_CHANNELS] *= RESCALE
    beta[RESCALED_CHANNELS] *= RESCALE
    model.get_layer("bn_b").set_weights([gamma, beta, mean, variance])
    kernel, bias = model.get_layer("logits").get_weights()
    kernel[RESCALED_CHANNELS, :] /= RESCALE
    model.get_layer("logits").set_weights([kernel, bias])
    np.testing.assert_allclose(model.predict(digits["evaluation"][0], verbose=0), reference, atol=1e-3)
    return saved(model, digits, "imbalanced_batch_norm")


def assert_json_record(analysis: LayerAnalysis) -> None:
    text = json.dumps(analysis.model_dump(), allow_nan=False)
    assert LayerAnalysis.model_validate(json.loads(text)) == analysis
    assert [layer.rank for layer in analysis.layers] == list(range(1, len(analysis.layers) + 1))
    assert [layer.loss_db for layer in analysis.layers] == sorted(
        (layer.loss_db for layer in analysis.layers), reverse=True
    )


@pytest.mark.slow
def test_xquant_charges_the_imbalanced_channels_to_the_layer_producing_them(trained, imbalanced, digits, tmp_path):
    quantized = mct_quantized(imbalanced, digits)
    assert mct_top_1(quantized, digits) < top_1(trained, digits) - 0.3  # PTQ fails on the rescaled model

    analysis = analyse_mct_model(
        float_model_path=imbalanced,
        quantized_model_path=quantized,
        calibration_path=digits["calibration_path"],
        evaluation_images_path=digits["evaluation_path"],
        report_dir=tmp_path / "xquant",
    )

    worst = analysis.layers[0]
    assert (analysis.method, worst.layer, worst.type) == ("xquant", "conv_a", "Conv2D")
    assert worst.causes[0].startswith("channels' ranges differ by") and "cross-layer equalization" in worst.causes[0]
    assert worst.channel_spread > 100 and worst.loss_db > 2 * SIGNIFICANT_LOSS_DB
    # XQuant compares conv_a before its own activation quantizer: its output's loss shows at conv_b.
    assert worst.metrics["sqnr_db"] > 40 and "conv_b" in worst.loss_seen_at
    conv_b = next(layer for layer in analysis.layers if layer.layer == "conv_b")
    assert conv_b.metrics["lost_here_db"] > 2 * SIGNIFICANT_LOSS_DB and conv_b.loss_db == 0
    assert analysis.model_metrics["output_cosine_similarity"] < 0.9
    assert (
        analysis.summary.startswith("conv_a (Conv2D) loses the most") and "channels' ranges differ" in analysis.summary
    )
    assert (tmp_path / "xquant" / "quant_report.json").is_file()
    assert_json_record(analysis)


@pytest.mark.slow
def test_debugger_ranks_the_imbalanced_layer_first(imbalanced, digits):
    lock = threading.Lock()
    analysis = analyse_converter_model(
        float_model_path=imbalanced,
        calibration_path=digits["calibration_path"],
        variant="full_int8",
        evaluation_images_path=digits["evaluation_path"],
        converter_lock=lock,
    )
    assert not lock.locked()

    worst = analysis.layers[0]
    assert (analysis.model, analysis.method, worst.layer) == ("tflite_full_int8", "quantization_debugger", "conv_a")
    assert worst.causes[0].startswith("channels' ranges differ by") and worst.loss_db > 2 * SIGNIFICANT_LOSS_DB
    by_name = {layer.layer: layer for layer in analysis.layers}
    # RMSE/scale alone points at conv_b (its 300x smaller input weights round to zero); conv_a's coarse grid
    # is plain rounding in units of its scale, and only its channels' noise-to-signal shows it.
    assert max(by_name, key=lambda name: by_name[name].metrics["rmse_over_scale"]) == "conv_b"
    assert worst.metrics["rmse_over_scale"] < 0.35
    assert analysis.model_metrics["argmax_agreement"] < 0.8
    assert_json_record(analysis)


@pytest.mark.slow
def test_both_methods_blame_the_layer_with_outliers(trained, with_outliers, digits):
    quantized = mct_quantized(with_outliers, digits)
    assert mct_top_1(quantized, digits) < top_1(trained, digits) - 0.3

    by_xquant = analyse_mct_model(
        float_model_path=with_outliers,
        quantized_model_path=quantized,
        calibration_path=digits["calibration_path"],
        evaluation_images_path=digits["evaluation_path"],
    )
    by_debugger = analyse_converter_model(
        float_model_path=with_outliers,
        calibration_path=digits["calibration_path"],
        variant="int8_float_io",
        evaluation_images_path=digits["evaluation_path"],
    )

    for analysis in (by_xquant, by_debugger):
        worst = analysis.layers[0]
        assert worst.layer == "conv_a" and worst.loss_db > SIGNIFICANT_LOSS_DB
        assert worst.causes == [
            f"activation outliers: max is {worst.outlier_ratio:.0f}x the 99.9th percentile "
            "(outlier removal / z-threshold, or a finer error method helps)"
        ]
        assert worst.outlier_ratio > 50  # and the channels' ranges (without the outliers) stay close
        assert "activation outliers" in analysis.summary
        assert_json_record(analysis)


@pytest.mark.slow
def test_a_last_layer_that_loses_alone_is_called_sensitive(trained, last_layer_weight_outlier, digits):
    path = last_layer_weight_outlier
    quantized = mct_quantized(path, digits)
    assert mct_top_1(quantized, digits) < top_1(trained, digits) - 0.3

    for analysis in (
        analyse_mct_model(
            float_model_path=path,
            quantized_model_path=quantized,
            calibration_path=digits["calibration_path"],
            evaluation_images_path=digits["evaluation_path"],
        ),
        analyse_converter_model(
            float_model_path=path, calibration_path=digits["calibration_path"], variant="full_int8"
        ),
    ):
        worst = analysis.layers[0]
        assert (worst.layer, worst.causes) == ("logits", ["sensitive last layer (keep it at higher precision)"])
        assert worst.loss_db > 2 * SIGNIFICANT_LOSS_DB
        assert all(layer.loss_db < SIGNIFICANT_LOSS_DB for layer in analysis.layers[1:])


@pytest.mark.slow
def test_a_healthy_model_has_no_culprit(trained, digits):
    path = saved(trained, digits, "healthy")
    for analysis in (
        analyse_mct_model(
            float_model_path=path,
            quantized_model_path=mct_quantized(path, digits),
            calibration_path=digits["calibration_path"],
            evaluation_images_path=digits["evaluation_path"],
        ),
        analyse_converter_model(
            float_model_path=path, calibration_path=digits["calibration_path"], variant="full_int8"
        ),
    ):
        assert analysis.summary.startswith("No layer stands out")
        assert all(not layer.causes for layer in analysis.layers), analysis.layers


def test_negative_values_count_only_for_an_unsigned_quantizer():
    stats = ActivationStats(low=-2.0, high=6.0, channel_spread=2.0, negative_share=0.25, outlier_ratio=1.5)
    assert [cause.text for cause in range_causes(stats, unsigned_quantizer=True)] == [
        "negative values into an unsigned quantizer: 25.0% of the outputs clip to zero"
    ]
    assert range_causes(stats, unsigned_quantizer=False) == []


def test_causes_are_listed_most_severe_first():
    stats = ActivationStats(low=0.0, high=900.0, channel_spread=20.0, negative_share=0.0, outlier_ratio=40.0)
    texts = [cause.text for cause in range_causes(stats, unsigned_quantizer=True)]
    assert texts[0].startswith("activation outliers: max is 40x") and texts[1].startswith(
        "channels' ranges differ by 20x"
    )


def test_tensor_names_map_to_the_layer_of_the_last_fused_op():
    names = {"conv2d", "conv2d_1", "re_lu", "logits"}
    assert (
        layer_for_tensor("model/conv2d_1/Relu;model/conv2d_1/BiasAdd;model/conv2d_1/Conv2D", names, ["logits"])
        == "conv2d_1"
    )
    assert layer_for_tensor("model/re_lu/Relu;model/conv2d/BiasAdd;model/conv2d/Conv2D", names, ["logits"]) == "re_lu"
    assert layer_for_tensor("StatefulPartitionedCall:0", names, ["logits"]) == "logits"
    assert layer_for_tensor("StatefulPartitionedCall:0", names, ["logits", "conv2d"]) is None


def test_xquant_sqnr_in_db_keeps_noise_without_signal_apart_from_no_measurement():
    assert sqnr_db(1000.0) == pytest.approx(30.0) and sqnr_db(math.inf) == math.inf
    assert sqnr_db(0.0) == -math.inf  # all noise
    assert sqnr_db(math.nan) is None  # 0 / 0: no signal and no noise


def test_loss_counts_only_noise_beyond_what_8_bits_cost():
    assert loss_db(1e-5) < 0.1  # a 50 dB layer loses nothing
    assert loss_db(0.1) == pytest.approx(20.0, abs=0.1)  # 10 dB where 8 bits give 30 dB
    assert loss_db(0.1, noise_before=0.1) == 0.0  # the noise came from upstream
    assert loss_db(float("inf")) == loss_db(float("nan")) == pytest.approx(60.0)  # no signal left
    assert loss_db(0.1, noise_before=float("inf")) == 0.0


def test_only_normalizations_both_quantizers_fold_into_a_convolution_are_folded():
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input((8, 8, 3))
    a = layers.BatchNormalization(name="bn_a")(layers.Conv2D(4, 3, padding="same", name="conv_a")(inputs))
    b = layers.BatchNormalization(name="bn_b")(layers.DepthwiseConv2D(3, padding="same", name="dw_b")(inputs))
    # An activation in between, a second reader of the convolution: neither folds.
    c = layers.BatchNormalization(name="bn_c")(layers.Conv2D(4, 1, activation="relu", name="conv_c")(inputs))
    shared = layers.Conv2D(4, 1, name="conv_d")(inputs)
    d = layers.Add(name="add_d")([layers.BatchNormalization(name="bn_d")(shared), shared])
    x = layers.Concatenate(name="concat")([a, b, c, d])
    dense = layers.Dense(4, name="dense")(layers.GlobalAveragePooling2D(name="pool")(x))
    model = tf.keras.Model(inputs, layers.BatchNormalization(name="bn_e")(dense))  # MCT quantizes it apart: kept

    folded = folded_normalizations(model)
    assert folded == {"bn_a": "conv_a", "bn_b": "dw_b"}
    # MCT names the convolution it folded a normalization into '<conv>_bn': the normalization's output.
    assert mct_folded_outputs(folded) == {"conv_a_bn": "bn_a", "dw_b_bn": "bn_b"}


@pytest.mark.slow
def test_a_folded_normalization_is_reported_under_its_convolution(imbalanced_batch_norm, digits):
    by_debugger = analyse_converter_model(
        float_model_path=imbalanced_batch_norm,
        calibration_path=digits["calibration_path"],
        variant="full_int8",
        evaluation_images_path=digits["evaluation_path"],
    )
    by_xquant = analyse_mct_model(
        float_model_path=imbalanced_batch_norm,
        quantized_model_path=mct_quantized(imbalanced_batch_norm, digits),
        calibration_path=digits["calibration_path"],
        evaluation_images_path=digits["evaluation_path"],
    )

    for analysis in (by_debugger, by_xquant):
        by_name = {layer.layer: layer for layer in analysis.layers}
        assert "bn_b" not in by_name
        conv_b = by_name["conv_b"]
        assert conv_b.type == "Conv2D, bn_b folded in"
        assert conv_b.causes[0].startswith("channels' ranges differ by") and conv_b.loss_db > 2 * SIGNIFICANT_LOSS_DB
        assert conv_b.channel_spread > 100  # bn_b's output: the fused op's
        assert_json_record(analysis)
    # The converter's fused op names its output tensor after bn_b: its error is measured at, and charged to, conv_b
    # (ranked behind the logits, whose weights on channels 0-2, 300x smaller, round to zero).
    conv_b = next(layer for layer in by_debugger.layers if layer.layer == "conv_b")
    assert conv_b.loss_seen_at == ["conv_b"] and conv_b.metrics["channel_noise_to_signal"] > 0.1
    # XQuant measures MCT's conv_b_bn (conv_b with bn_b folded in): its metrics are conv_b's.
    worst = by_xquant.layers[0]
    assert worst.layer == "conv_b" and worst.metrics["sqnr_db"] is not None
    assert by_xquant.summary.startswith("conv_b (Conv2D, bn_b folded in) loses the most")
