"""Cross-layer equalization (core/build/equalization.py) on small real Keras models: a CNN trained for seconds on
scikit-learn's 8x8 digits, given a function-preserving channel-range imbalance, and hand-set models for
what breaks a chain (ReLU6, sigmoid, branches), batch-norm folding and depthwise convolutions."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from core.build.convert_to_tflite import convert_to_tflite
from core.build.equalization import equalize, fold_batch_norm, prediction_agreement
from core.build.export_saved_model import export_saved_model
from core.build.quantize_with_mct import quantize_with_mct
from core.build.records import BuiltModel
from core.errors import InputError
from core.evaluate.models import TFLitePredictor, keras_predictor, load_quantized_keras_model

layers = tf.keras.layers
WIDE_CHANNELS, WIDE_FACTOR = [1, 4], 500.0  # of conv1's 8 channels


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as 8x8x3 images in [0, 1]: 1200 to train on, the other 597 to test."""
    from sklearn.datasets import load_digits

    data = load_digits()
    x = np.repeat(data.images.reshape(-1, 8, 8, 1) / 16.0, 3, axis=-1).astype(np.float32)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], data.target[order]
    return x[:1200], y[:1200], x[1200:], y[1200:]


@pytest.fixture(scope="module")
def trained(digits) -> tf.keras.Model:
    x_train, y_train, _, _ = digits
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential(
        [
            tf.keras.Input((8, 8, 3)),
            layers.Conv2D(8, 3, padding="same", activation="relu", name="conv1"),
            layers.Conv2D(16, 3, padding="same", activation="relu", name="conv2"),
            layers.MaxPooling2D(name="pool"),
            layers.Flatten(name="flatten"),
            layers.Dense(32, activation="relu", name="dense1"),
            layers.Dense(10, activation="softmax", name="dense2"),
        ]
    )
    model.compile(optimizer=tf.keras.optimizers.Adam(3e-3), loss="sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=12, batch_size=32, verbose=0)
    return model


def rescaled(model: tf.keras.Model, channels: list[int], factor: float, compensate: bool = True) -> tf.keras.Model:
    """conv1's `channels` (weights and bias) multiplied by `factor`, conv2's matching inputs divided by it:
    through a ReLU the same function, with those activation channels `factor` times wider."""
    copy = tf.keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    kernel, bias = copy.get_layer("conv1").get_weights()
    kernel[..., channels] *= factor
    bias[channels] *= factor
    copy.get_layer("conv1").set_weights([kernel, bias])
    if compensate:
        kernel, bias = copy.get_layer("conv2").get_weights()
        kernel[:, :, channels, :] /= factor
        copy.get_layer("conv2").set_weights([kernel, bias])
    return copy


def channel_ratio(model: tf.keras.Model, name: str) -> float:
    ranges = np.abs(model.get_layer(name).get_weights()[0]).reshape(-1, 8).max(axis=0)
    return float(ranges.max() / ranges.min())


def top_1(predict, x: np.ndarray, y: np.ndarray) -> float:
    return float((np.asarray(predict(x)).argmax(axis=-1) == y).mean())


def random_weights(model: tf.keras.Model, seed: int = 0) -> tf.keras.Model:
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


def test_equalize_keeps_predictions_and_evens_out_channel_ranges(digits, trained):
    _, _, x_test, _ = digits
    imbalanced = rescaled(trained, WIDE_CHANNELS, WIDE_FACTOR)
    assert prediction_agreement(trained, imbalanced, x_test).max_abs_difference < 1e-4
    # The check sees a change that is not compensated.
    broken = prediction_agreement(trained, rescaled(trained, WIDE_CHANNELS, WIDE_FACTOR, compensate=False), x_test)
    assert broken.agreement < 0.9 and broken.max_abs_difference > 0.1

    equalized, report = equalize(imbalanced)

    check = prediction_agreement(imbalanced, equalized, x_test, batch_size=100)
    assert check.agreement == 1.0 and check.max_abs_difference < 1e-4 and check.image_count == len(x_test)
    assert [(p.first, p.second, p.through) for p in report.pairs] == [
        ("conv1", "conv2", ()),
        ("conv2", "dense1", ("pool", "flatten")),
        ("dense1", "dense2", ()),
    ]
    conv1 = report.pairs[0]
    assert conv1.range_ratio_before == pytest.approx(channel_ratio(imbalanced, "conv1"))
    assert conv1.range_ratio_before > 100
    assert conv1.range_ratio_after == pytest.approx(channel_ratio(equalized, "conv1"))
    assert conv1.range_ratio_after < conv1.range_ratio_before / 100
    assert conv1.scale_max > 10 * conv1.scale_min
    assert report.skipped == () and report.folded_batch_norms == ()
    assert report.converged and 1 < report.iterations < 100
    # Equalization does not depend on the rescale: the imbalanced and the original model end up alike.
    original_equalized, _ = equalize(trained)
    np.testing.assert_allclose(
        equalized.get_layer("conv1").get_weights()[0],
        original_equalized.get_layer("conv1").get_weights()[0],
        rtol=1e-3,
        atol=1e-6,
    )


def test_the_input_model_is_not_modified(trained):
    before = [w.copy() for w in trained.get_weights()]
    equalized, report = equalize(rescaled(trained, WIDE_CHANNELS, WIDE_FACTOR))
    assert report.pairs
    for w, b in zip(trained.get_weights(), before, strict=True):
        np.testing.assert_array_equal(w, b)
    assert equalized is not trained
    assert not {id(layer) for layer in equalized.layers} & {id(layer) for layer in trained.layers}
    with pytest.raises(Exception, match="frozen"):
        report.iterations = 0  # type: ignore[misc]


def test_activations_that_are_not_positively_homogeneous_break_the_chain():
    inputs = tf.keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, activation=tf.nn.relu6, name="c1")(inputs)
    x = layers.Conv2D(4, 3, name="c2")(x)
    x = layers.Activation("sigmoid", name="sigmoid")(x)
    x = layers.Conv2D(4, 1, activation="relu", name="c3")(x)
    x = layers.ReLU(max_value=6.0, name="relu6")(x)
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(6, name="d1")(x)
    x = layers.LeakyReLU(0.1, name="leaky")(x)
    outputs = layers.Dense(3, activation="swish", name="d2")(x)
    model = random_weights(tf.keras.Model(inputs, outputs))
    kernel, bias = model.get_layer("d1").get_weights()
    model.get_layer("d1").set_weights([kernel * np.array([200.0, 1, 1, 1, 1, 1]), bias])
    images = np.random.default_rng(1).uniform(0, 1, (32, 8, 8, 3)).astype(np.float32)

    equalized, report = equalize(model)

    skipped = {(s.first, s.second): s.reason for s in report.skipped}
    assert skipped == {
        ("c1", "c2"): "c1's activation relu6 is not positively homogeneous",
        ("c2", "c3"): "sigmoid's activation sigmoid is not positively homogeneous",
        ("c3", "d1"): "relu6 (ReLU, max_value 6.0, threshold 0.0) is not positively homogeneous",
    }
    assert [(p.first, p.second, p.through) for p in report.pairs] == [("d1", "d2", ("leaky",))]
    assert report.pairs[0].range_ratio_after < report.pairs[0].range_ratio_before / 10
    for name in ("c1", "c2", "c3"):
        for new, old in zip(equalized.get_layer(name).get_weights(), model.get_layer(name).get_weights(), strict=True):
            np.testing.assert_array_equal(new, old)
    check = prediction_agreement(model, equalized, images)
    assert check.max_abs_difference < 1e-4


def test_batch_norm_after_a_conv_is_folded_and_one_after_an_activation_is_kept():
    inputs = tf.keras.Input((8, 8, 3))
    x = layers.Conv2D(6, 3, use_bias=False, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.ReLU(name="relu")(x)
    x = layers.Conv2D(5, 3, activation="relu", name="conv_b")(x)
    x = layers.BatchNormalization(name="bn_after_relu")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    outputs = layers.Dense(3, name="dense")(x)
    model = tf.keras.Model(inputs, outputs)
    rng = np.random.default_rng(2)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):  # gamma, beta, moving mean, moving variance
            n = layer.gamma.shape[0]
            layer.set_weights(
                [rng.uniform(0.5, 2, n), rng.normal(0, 1, n), rng.normal(0, 1, n), rng.uniform(0.1, 3, n)]
            )
        elif layer.weights:
            layer.set_weights([rng.normal(0, 0.5, w.shape) for w in layer.get_weights()])
    images = rng.uniform(0, 1, (32, 8, 8, 3)).astype(np.float32)

    folded, done, kept = fold_batch_norm(model)

    assert [(f.batch_norm, f.into) for f in done] == [("bn", "conv")]
    assert [(k.first, k.second) for k in kept] == [("conv_b", "bn_after_relu")]
    assert "activation before the batch normalization" in kept[0].reason
    assert "bn" not in [layer.name for layer in folded.layers]
    assert folded.get_layer("conv").use_bias and len(folded.get_layer("conv").get_weights()) == 2
    assert prediction_agreement(model, folded, images).max_abs_difference < 1e-4
    assert "bn" in [layer.name for layer in model.layers]  # the input model keeps its batch norm

    equalized, report = equalize(model)

    assert [(f.batch_norm, f.into) for f in report.folded_batch_norms] == [("bn", "conv")]
    assert [(p.first, p.second, p.through) for p in report.pairs] == [("conv", "conv_b", ("relu",))]
    skipped = {(s.first, s.second): s.reason for s in report.skipped}
    assert skipped[("conv_b", "bn_after_relu")].startswith("not folded")
    assert "bn_after_relu (BatchNormalization)" in skipped[("conv_b", "dense")]
    assert prediction_agreement(model, equalized, images).max_abs_difference < 1e-4


def test_depthwise_pairs_are_equalized_and_branches_end_the_chain():
    inputs = tf.keras.Input((10, 10, 3))
    x = layers.Conv2D(4, 3, activation="relu", name="c1")(inputs)
    x = layers.DepthwiseConv2D(3, depth_multiplier=2, activation="relu", name="dw")(x)
    x = layers.Conv2D(8, 1, activation="relu", name="c2")(x)
    y = layers.Conv2D(8, 1, name="c3")(x)
    x = layers.Add(name="add")([x, y])
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(3, name="dense")(x)
    model = random_weights(tf.keras.Model(inputs, outputs), seed=3)
    kernel, bias = model.get_layer("c1").get_weights()
    kernel[..., 2] *= 300
    bias[2] *= 300
    model.get_layer("c1").set_weights([kernel, bias])
    kernel, bias = model.get_layer("dw").get_weights()
    kernel[:, :, 2, :] /= 300
    model.get_layer("dw").set_weights([kernel, bias])
    images = np.random.default_rng(4).uniform(0, 1, (32, 10, 10, 3)).astype(np.float32)

    equalized, report = equalize(model)

    assert [(p.first, p.second, p.channels) for p in report.pairs] == [("c1", "dw", 4), ("dw", "c2", 8)]
    assert report.pairs[0].range_ratio_before > 100
    assert report.pairs[0].range_ratio_after < report.pairs[0].range_ratio_before / 10
    skipped = {(s.first, s.second): s.reason for s in report.skipped}
    assert skipped == {("c2", None): "c2's output feeds 2 layers", ("c3", None): "add reads several tensors"}
    check = prediction_agreement(model, equalized, images)
    assert check.max_abs_difference < 1e-4 * max(1.0, float(np.abs(model(images)).max()))


def test_high_biases_are_absorbed_where_that_is_exact_on_the_images_given():
    inputs = tf.keras.Input((8, 8, 3))
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="c1")(inputs)
    x = layers.Conv2D(4, 3, padding="same", activation="relu", name="c2")(x)
    x = layers.MaxPooling2D(name="pool")(x)
    x = layers.Flatten(name="flatten")(x)
    outputs = layers.Dense(3, name="dense")(x)
    model = random_weights(tf.keras.Model(inputs, outputs), seed=5)
    kernel, bias = model.get_layer("c2").get_weights()
    model.get_layer("c2").set_weights([kernel, bias + np.array([20.0, 0, 0, 0], np.float32)])  # always active
    images = np.random.default_rng(6).uniform(0, 1, (64, 8, 8, 3)).astype(np.float32)

    plain, plain_report = equalize(model)
    absorbed, report = equalize(model, bias_absorption_images=images)

    assert all(p.bias_absorbed is None and p.bias_not_absorbed is None for p in plain_report.pairs)
    c1, c2 = report.pairs
    assert c1.bias_absorbed is None and c1.bias_not_absorbed == (
        "c2 pads its input with zeros, which the absorbed bias would not reach"
    )
    assert c2.bias_not_absorbed is None and c2.bias_absorbed > 5
    check = prediction_agreement(model, absorbed, images)
    assert check.agreement == 1.0 and check.max_abs_difference < 1e-4 * float(np.abs(model(images)).max())

    def c2_channel_0(m: tf.keras.Model) -> np.ndarray:
        return np.asarray(tf.keras.Model(m.inputs, m.get_layer("c2").output)(images))[..., 0]

    assert c2_channel_0(plain).min() > 5
    assert c2_channel_0(absorbed).min() == pytest.approx(0, abs=1e-4)  # the range starts at 0 now
    np.testing.assert_allclose(c2_channel_0(absorbed).max(), c2_channel_0(plain).max() - c2.bias_absorbed, rtol=1e-4)


def test_a_subclassed_model_is_refused():
    class Subclassed(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.dense = layers.Dense(2)

        def call(self, inputs):
            return self.dense(inputs)

    model = Subclassed()
    model(np.zeros((1, 3), np.float32))
    with pytest.raises(InputError, match="not a built functional or Sequential"):
        equalize(model)


def widened(model: tf.keras.Model, first: str, second: str, channel: int, factor: float) -> tf.keras.Model:
    """`first`'s output channel (kernel and bias) times `factor`, `second`'s matching inputs divided by it: through
    a ReLU the same function, with one channel `factor` times wider for equalization to even out."""
    kernel, bias = model.get_layer(first).get_weights()
    kernel[..., channel] *= factor
    bias[channel] *= factor
    model.get_layer(first).set_weights([kernel, bias])
    kernel, bias = model.get_layer(second).get_weights()
    kernel[..., channel, :] /= factor
    model.get_layer(second).set_weights([kernel, bias])
    return model


def test_a_concatenate_and_an_add_of_three_branches_end_the_chains_and_the_function_is_kept():
    """A layer reading three tensors (an Inception block's Concatenate) is one call with three inputs in the model's
    configuration: its inbound node is a list of three [name, node, tensor, kwargs] entries."""
    from core.build.residual_equalization import equalize_residual_streams

    inputs = tf.keras.Input((8, 8, 3), name="image")
    a = layers.Conv2D(4, 1, activation="relu", name="a")(inputs)
    b = layers.Conv2D(4, 3, padding="same", activation="relu", name="b")(inputs)
    c = layers.Conv2D(4, 1, activation="relu", name="c")(layers.MaxPooling2D(3, 1, "same", name="pool")(inputs))
    x = layers.Concatenate(name="concat")([a, b, c])
    x = layers.Conv2D(6, 1, activation="relu", name="h1")(x)
    x = layers.Conv2D(6, 1, name="h2")(x)
    q = layers.Conv2D(6, 1, name="q")(inputs)
    r = layers.Conv2D(6, 1, name="r")(inputs)
    x = layers.Add(name="add")([x, q, r])
    outputs = layers.Dense(5, name="dense")(layers.GlobalAveragePooling2D(name="gap")(x))
    model = widened(random_weights(tf.keras.Model(inputs, outputs), seed=5), "h1", "h2", channel=1, factor=200)
    images = np.random.default_rng(5).uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
    concat = next(e for e in model.get_config()["layers"] if e["config"]["name"] == "concat")
    assert [entry[0] for entry in concat["inbound_nodes"][0]] == ["a", "b", "c"]

    equalized, report = equalize(model)

    assert [(p.first, p.second) for p in report.pairs] == [("h1", "h2")]
    assert report.pairs[0].range_ratio_before > 100 > report.pairs[0].range_ratio_after
    skipped = {s.first: s.reason for s in report.skipped}
    assert skipped == {
        "a": "concat reads several tensors",
        "b": "concat reads several tensors",
        "c": "concat reads several tensors",
        "h2": "add reads several tensors",
        "q": "add reads several tensors",
        "r": "add reads several tensors",
    }
    check = prediction_agreement(model, equalized, images)
    assert check.agreement == 1.0 and check.max_abs_difference < 1e-5 * float(np.abs(model(images)).max())

    streamed, streams = equalize_residual_streams(model, images)

    assert [set(s.producers) for s in streams.streams] == [{"h2", "q", "r"}] and not streams.skipped
    check = prediction_agreement(model, streamed, images)
    assert check.agreement == 1.0 and check.max_abs_difference < 1e-5 * float(np.abs(model(images)).max())


class SumWith(layers.Layer):
    """Its input plus every tensor of `others`: tensors nested in a call's keyword arguments."""

    def call(self, inputs, others=()):
        return inputs + tf.add_n(list(others))


def test_tensors_nested_in_a_calls_keyword_arguments_are_read_as_its_inputs():
    """relu's output is read by c2 and, in a list of three tensors given as a keyword argument, by `sum`: equalizing
    c1 with c2 would rescale what `sum` reads, so c1 is left, and the function is kept."""
    inputs = tf.keras.Input((8, 8, 3), name="image")
    x = layers.Conv2D(4, 3, padding="same", name="c1")(inputs)
    relu = layers.ReLU(name="relu")(x)
    x = layers.Conv2D(4, 1, name="c2")(relu)
    d = layers.Conv2D(4, 1, name="d")(inputs)
    e = layers.Conv2D(4, 1, name="e")(inputs)
    x = SumWith(name="sum")(x, others=[relu, d, e])
    outputs = layers.Dense(3, name="dense")(layers.Flatten(name="flatten")(x))
    model = widened(random_weights(tf.keras.Model(inputs, outputs), seed=6), "c1", "c2", channel=0, factor=300)
    images = np.random.default_rng(6).uniform(0, 1, (16, 8, 8, 3)).astype(np.float32)
    node = next(e for e in model.get_config()["layers"] if e["config"]["name"] == "sum")["inbound_nodes"][0]
    assert node[0][:3] == ["c2", 0, 0] and node[0][3]["others"] == [["relu", 0, 0], ["d", 0, 0], ["e", 0, 0]]

    equalized, report = equalize(model, bias_absorption_images=images)

    assert report.pairs == ()
    skipped = {s.first: s.reason for s in report.skipped}
    assert skipped == {
        "c1": "relu's output feeds 2 layers",
        "c2": "sum reads several tensors",
        "d": "sum reads several tensors",
        "e": "sum reads several tensors",
    }
    check = prediction_agreement(model, equalized, images)
    assert check.agreement == 1.0 and check.max_abs_difference < 1e-5 * float(np.abs(model(images)).max())


@pytest.mark.slow
def test_inception_v3_from_its_h5_file_is_equalized_and_keeps_its_function(tmp_path):
    """InceptionV3's blocks end in Concatenates of four branches; its repair once crashed reading them."""
    from core.build.residual_equalization import equalize_residual_streams
    from core.evaluate.models import load_keras_model

    tf.keras.utils.set_random_seed(0)
    application = tf.keras.applications.InceptionV3(
        weights=None, input_shape=(75, 75, 3), classes=10, classifier_activation=None
    )
    rng = np.random.default_rng(0)
    for layer in application.layers:  # batch norm statistics drawn at random, so that folding them matters
        if isinstance(layer, layers.BatchNormalization):
            beta, mean, variance = layer.get_weights()  # InceptionV3's batch norms have no gamma
            layer.set_weights(
                [rng.normal(0, 0.1, beta.shape), rng.normal(0, 0.1, mean.shape), rng.uniform(0.5, 1.5, variance.shape)]
            )
    application.save(tmp_path / "model.h5")
    model = load_keras_model(tmp_path / "model.h5")
    images = rng.uniform(-1, 1, (8, 75, 75, 3)).astype(np.float32)
    scale = float(np.abs(model(images)).max())

    equalized, report = equalize(model)

    assert len(report.folded_batch_norms) == 94 and len(report.pairs) > 40
    assert any(s.reason == "mixed0 reads several tensors" for s in report.skipped)
    check = prediction_agreement(model, equalized, images)
    assert check.agreement == 1.0 and check.max_abs_difference < 1e-5 * scale

    streamed, streams = equalize_residual_streams(model, images)

    assert streams.streams == () and streams.skipped == ()  # no Add: nothing to rescale, and no crash
    assert prediction_agreement(model, streamed, images).max_abs_difference < 1e-5 * scale


def quantized_top_1(model: tf.keras.Model, calibration: Path, x: np.ndarray, y: np.ndarray, out: Path) -> dict:
    """Top-1 of `model` quantized by the workflow's own steps: MCT PTQ for the IMX500 and the converter's full int8."""
    out.mkdir()
    model.save(out / "model.keras")
    model_path, calibration_path = str(out / "model.keras"), str(calibration)
    mct_model = quantize_with_mct(
        model_path=model_path,
        calibration_path=calibration_path,
        batch_size=32,
        target_platform="imx500",
        out_dir=out,
        progress=False,
    )
    tflite = convert_to_tflite(
        model_path=model_path,
        saved_model=export_saved_model(model_path=model_path, out_dir=out),
        calibration_path=calibration_path,
        variant="full_int8",
        out_dir=out,
    )
    assert isinstance(tflite, BuiltModel) and tflite.facts.input_dtype == "int8"
    return {
        "mct_ptq": top_1(keras_predictor(load_quantized_keras_model(mct_model.path)), x, y),
        "full_int8": top_1(TFLitePredictor(tflite.path), x, y),
    }


@pytest.mark.slow
def test_equalization_restores_the_accuracy_an_imbalance_costs_8_bit_quantization(digits, trained, tmp_path):
    """A few activation channels 500 times wider than the rest own the per-tensor 8-bit grid: the others round
    to zero and the quantized model fails, although its float predictions are the trained model's."""
    x_train, _, x_test, y_test = digits
    calibration = tmp_path / "calibration.npy"
    np.save(calibration, x_train[:256])  # 8 batches of 32 for MCT; the converter calibrates on each image
    imbalanced = rescaled(trained, WIDE_CHANNELS, WIDE_FACTOR)
    equalized, report = equalize(imbalanced)
    assert prediction_agreement(imbalanced, equalized, x_test).agreement == 1.0
    float_top_1 = top_1(imbalanced, x_test, y_test)
    assert float_top_1 == pytest.approx(top_1(trained, x_test, y_test), abs=0.002) and float_top_1 > 0.9

    before = quantized_top_1(imbalanced, calibration, x_test, y_test, tmp_path / "imbalanced")
    after = quantized_top_1(equalized, calibration, x_test, y_test, tmp_path / "equalized")

    print(f"Top-1 float {float_top_1:.3f}; quantized imbalanced {before}, equalized {after}")
    assert before["mct_ptq"] < float_top_1 - 0.5
    assert before["full_int8"] < float_top_1 - 0.2
    assert after["mct_ptq"] > float_top_1 - 0.03
    assert after["full_int8"] > float_top_1 - 0.03
