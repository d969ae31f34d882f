"""Which layers' 8-bit outputs cost the model's own score: each candidate layer's activation quantizer bypassed in turn
in MCT's quantized Keras model, and the model scored as its kind scores it (a classifier's Top-1, a detector's COCO
mAP), as OpenVINO NNCF's accuracy control ranks layers by the metric itself.

The per-layer analysis (core/analysis/layer_analysis.py) ranks layers by the signal-to-noise each loses: on a detector
that misleads, since the error that costs mAP at IoU 0.75 and above (a box edge a few pixels off) is small as noise
power. Here the score itself decides.

A layer's output kept in float stands in for its 16-bit activations (65536 levels on the grid MCT would choose for
16 bits: within rounding of the float values). The model is MCT's export (mct_quantizers' layers): each quantized
output passes a `KerasActivationQuantizationHolder`, whose `activation_holder_quantizer` is swapped for the identity
while the candidate is scored, and put back after. Each configuration runs through a tf.function made for it, so no
function traced before the swap (Keras's own predict function included) runs the old quantizer.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np

from core.analysis.layer_tools import _holders
from core.analysis.records import LayerSensitivity, ScoreSensitivity
from core.build.precision import MCT_ACTIVATION_SUFFIX, MCT_FOLDED_SUFFIX

Predict = Callable[[np.ndarray], Any]  # a batch of images -> the model's outputs (as core.kinds.kind.Predict)
Score = Callable[[Predict], float]  # scores a predictor on the caller's images: the headline score, higher is better

MAX_CANDIDATES = 24
# MCT's graph names a layer's own activation split off it (Conv2D(activation="relu")) `<layer>_post_activation`, and a
# convolution with a BatchNormalization folded into it `<conv>_bn`: a candidate named without the suffix (as the layer
# analysis names them) finds the holder too, when no holder has the name itself.
MCT_NODE_SUFFIXES = (MCT_ACTIVATION_SUFFIX, MCT_FOLDED_SUFFIX)


def holders_by_layer(quantized_model) -> dict[str, list]:
    """The name of the layer whose output each activation holder quantizes (the wrapped float layer's name for
    MCT's quantization wrappers) -> its holders, as MCT's graph names the nodes (core/build/precision.py)."""
    found: dict[str, list] = {}
    for holder, source in _holders(quantized_model):
        inner = getattr(source, "layer", None)
        found.setdefault(inner.name if inner is not None else source.name, []).append(holder)
    return found


def holders_for(candidate: str, by_layer: dict[str, list]) -> list:
    """The holders of the candidate's output: by its name, or else by a node name MCT derives from it."""
    if candidate in by_layer:
        return by_layer[candidate]
    for suffix in MCT_NODE_SUFFIXES:
        if candidate + suffix in by_layer:
            return by_layer[candidate + suffix]
    return []


class _Identity:
    """An activation quantizer that leaves the output in float."""

    def __call__(self, inputs):
        return inputs


@contextmanager
def kept_float(holders: list) -> Iterator[None]:
    """The holders pass their input through unquantized until the block ends."""
    saved = [holder.activation_holder_quantizer for holder in holders]
    try:
        for holder in holders:
            holder.activation_holder_quantizer = _Identity()
        yield
    finally:
        for holder, quantizer in zip(holders, saved, strict=True):
            holder.activation_holder_quantizer = quantizer


def fresh_predictor(model) -> Predict:
    """The model as a function of a batch, traced anew: it runs the holders' quantizers as they are now. Traced once
    for any batch size (a model of one input), so that a trace per candidate is all the tracing there is."""
    import tensorflow as tf

    (tensor,) = model.inputs  # a batch of images: one input
    spec = tf.TensorSpec((None, *tensor.shape[1:]), tensor.dtype)
    forward = tf.function(lambda batch: model(batch, training=False), input_signature=[spec])

    def predict(batch: np.ndarray):
        outputs = forward(tf.convert_to_tensor(batch, dtype=spec.dtype))
        if isinstance(outputs, list | tuple):  # as core.evaluate.models.keras_predictor gives several outputs
            return np.asarray([np.asarray(output) for output in outputs])
        return np.asarray(outputs)

    return predict


def score_sensitivity(
    *,
    quantized_model_path: str,
    candidates: list[str],
    score: Score,
    max_candidates: int = MAX_CANDIDATES,
) -> ScoreSensitivity:
    """Scores MCT's quantized Keras model (its Keras export) once as it is, then once per candidate with that layer's
    output in float. `candidates`: layer names as MCT's graph names them (core.build.precision.sixteen_bit_layers),
    in the caller's order of preference: the first `max_candidates` found in the model are scored. `score` takes a
    batch predictor and returns the headline score on the caller's images (`kind_score` builds one for a kind of
    model). Costs 1 + min(len(candidates), max_candidates) scorings, each with a trace of the model."""
    from core.evaluate.models import load_quantized_keras_model

    started = time.perf_counter()
    model = load_quantized_keras_model(quantized_model_path)
    by_layer = holders_by_layer(model)
    found = [c for c in dict.fromkeys(candidates) if holders_for(c, by_layer)]
    not_found = [c for c in dict.fromkeys(candidates) if not holders_for(c, by_layer)]
    scored, left_out = found[:max_candidates], found[max_candidates:]

    def timed() -> tuple[float, float]:
        begun = time.perf_counter()
        value = float(score(fresh_predictor(model)))
        return value, time.perf_counter() - begun

    baseline, baseline_seconds = timed()
    layers = []
    for candidate in scored:
        holders = holders_for(candidate, by_layer)
        with kept_float(holders):
            value, seconds = timed()
        layers.append(
            LayerSensitivity(
                layer=candidate,
                holders=[holder.name for holder in holders],
                score=value,
                gain=value - baseline,
                seconds=round(seconds, 3),
            )
        )
    layers.sort(key=lambda layer: -layer.gain)  # stable: ties keep the candidates' order
    return ScoreSensitivity(
        quantized_score=baseline,
        quantized_seconds=round(baseline_seconds, 3),
        layers=layers,
        not_found=not_found,
        left_out=left_out,
        seconds=round(time.perf_counter() - started, 3),
    )


def kind_score(
    task: str,
    *,
    images_path: str,
    labels_path: str,
    batch_size: int,
    class_count: int | None = None,
    start: int = 0,
    stop: int | None = None,
    model_name: str = "keras_quantized",
    model_path: str = "",
) -> Score:
    """The headline score of a kind of model (`task`: the configuration's) on images [start, stop) of `images_path`
    against the truth in `labels_path`, as the kind's evaluation computes it (core/kinds/): the repair's tuning images
    and labels, say. `model_name` and `model_path` only label the evaluation record."""
    from core.kinds.registry import kind_named

    kind = kind_named(task)

    def scored(predict: Predict) -> float:
        evaluation = kind.evaluate(
            model_name=model_name,
            model_path=model_path,
            load_predictor=lambda: predict,
            images_path=images_path,
            labels_path=labels_path,
            batch_size=batch_size,
            progress=False,
            class_count=class_count,
            start=start,
            stop=stop,
        )
        return float(evaluation.score)

    return scored
