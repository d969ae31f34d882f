"""Ranking layers by the model's own score (core.analysis.score_sensitivity): a tiny classifier built here, whose
middle layer adds a large offset that its 8-bit output grid cannot resolve, quantized with MCT PTQ as the workflow
does; keeping that layer's output in float must win the score back, and no other layer's may."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from core.analysis.score_sensitivity import MCT_NODE_SUFFIXES, holders_for

OFFSET = 100.0  # added by `offset`, taken off again by `logits`: 8 bits over [0, 128] keep steps of about 1
FEATURES, CLASSES = 8, 4


def offset_classifier(path: Path) -> str:
    """Weights set by hand: the class is the largest of the first four inputs (in [0, 1]). `features` and `relu` pass
    the inputs on, `offset` adds OFFSET to them, `logits` takes it off and keeps the first four: the float model is
    exact, and only `offset`'s output needs a grid finer than its range allows."""
    import tensorflow as tf

    layers = tf.keras.layers
    inputs = tf.keras.Input((FEATURES,))
    x = layers.ReLU(name="relu")(layers.Dense(FEATURES, name="features")(inputs))
    x = layers.Dense(FEATURES, name="offset")(x)
    model = tf.keras.Model(inputs, layers.Dense(CLASSES, name="logits")(x))
    identity = np.eye(FEATURES, dtype=np.float32)
    model.get_layer("features").set_weights([identity, np.zeros(FEATURES, np.float32)])
    model.get_layer("offset").set_weights([identity, np.full(FEATURES, OFFSET, np.float32)])
    model.get_layer("logits").set_weights([identity[:, :CLASSES], np.full(CLASSES, -OFFSET, np.float32)])
    model.save(path)
    return str(path)


@pytest.fixture(scope="module")
def quantized(tmp_path_factory) -> dict:
    from core.build.quantize_with_mct import quantize_with_mct

    folder = tmp_path_factory.mktemp("score-sensitivity")
    images = np.random.default_rng(0).random((256, FEATURES)).astype(np.float32)
    labels = np.argmax(images[:, :CLASSES], axis=-1)
    for name, values in (("calibration", images[:64]), ("images", images), ("labels", labels)):
        np.save(folder / f"{name}.npy", values)
    model = quantize_with_mct(
        model_path=offset_classifier(folder / "model.keras"),
        calibration_path=str(folder / "calibration.npy"),
        batch_size=16,
        target_platform="imx500",
        out_dir=folder,
        progress=False,
    )
    return {
        "path": model.path,
        "images": images,
        "images_path": str(folder / "images.npy"),
        "labels_path": str(folder / "labels.npy"),
    }


@pytest.mark.slow
def test_the_layer_whose_8_bit_output_costs_the_score_ranks_first(quantized):
    from core.analysis.score_sensitivity import kind_score, score_sensitivity
    from core.evaluate.evaluate_model import evaluate_model

    paths = dict(images_path=quantized["images_path"], labels_path=quantized["labels_path"], batch_size=32)
    score = kind_score("classification", **paths)
    found = score_sensitivity(
        quantized_model_path=quantized["path"], candidates=["relu", "offset", "logits", "missing"], score=score
    )

    ordinary = evaluate_model(model_name="keras_quantized", model_path=quantized["path"], progress=False, **paths)
    assert found.quantized_score == ordinary.score < 0.75  # nothing bypassed: the ordinary evaluation's score
    assert [layer.layer for layer in found.layers][0] == "offset"
    offset = found.layers[0]
    assert offset.gain > 0.2 and offset.score > 0.95 and offset.gain == offset.score - found.quantized_score
    assert all(abs(layer.gain) < 0.02 for layer in found.layers[1:])  # relu's and logits' 8 bits cost nothing
    assert [layer.layer for layer in found.layers[1:]] == ["relu", "logits"]  # no gain: the candidates' order
    assert found.not_found == ["missing"] and found.left_out == []
    assert all(layer.holders and layer.seconds > 0 for layer in found.layers)

    bounded = score_sensitivity(
        quantized_model_path=quantized["path"], candidates=["logits", "offset"], score=score, max_candidates=1
    )
    assert [layer.layer for layer in bounded.layers] == ["logits"] and bounded.left_out == ["offset"]


@pytest.mark.slow
def test_a_bypassed_holder_passes_its_input_through_and_gets_its_quantizer_back(quantized):
    from core.analysis.score_sensitivity import fresh_predictor, holders_by_layer, kept_float
    from core.evaluate.models import keras_predictor, load_quantized_keras_model

    model = load_quantized_keras_model(quantized["path"])
    images = quantized["images"][:32]
    quantized_outputs = keras_predictor(model)(images)
    np.testing.assert_allclose(fresh_predictor(model)(images), quantized_outputs, atol=1e-6)
    (holder,) = holders_by_layer(model)["offset"]
    original = holder.activation_holder_quantizer
    with kept_float([holder]):
        kept = fresh_predictor(model)(images)
    assert holder.activation_holder_quantizer is original
    # Kept in float, the offset cancels: the logits are the inputs (as the input's and logits' own 8 bits leave them).
    np.testing.assert_allclose(kept, images[:, :CLASSES], atol=0.02)
    assert np.abs(quantized_outputs - images[:, :CLASSES]).max() > 0.2
    np.testing.assert_allclose(fresh_predictor(model)(images), quantized_outputs, atol=1e-6)


def test_candidates_find_their_holder_by_mct_node_name_or_by_the_layer_name_mct_derives_it_from():
    by_layer = {"conv_a_post_activation": ["a"], "conv_b_bn": ["b"], "relu": ["r"], "relu_bn": ["x"]}
    assert MCT_NODE_SUFFIXES == ("_post_activation", "_bn")
    assert holders_for("conv_a_post_activation", by_layer) == ["a"]
    assert holders_for("conv_a", by_layer) == ["a"]  # as the layer analysis names it
    assert holders_for("conv_b", by_layer) == ["b"]
    assert holders_for("relu", by_layer) == ["r"]  # its own name first
    assert holders_for("dense", by_layer) == []
