"""Why a layer's quantization loses accuracy, read from the float model's activations on the calibration images.

An 8-bit activation quantizer has 256 levels for the whole tensor (one scale per tensor). Three shapes of
float activations waste them: channels whose ranges differ (the small channels get a grid made for the big
one), rare outliers (the grid is stretched over values almost nothing reaches), and negative values sent to
an unsigned quantizer (they clip to zero). A first or last layer that loses a lot is worth keeping at higher
precision whatever its ranges: the input's and the logits' errors reach the result directly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, NamedTuple

import numpy as np

# A channel's range is taken between these percentiles of its values, so that a few outliers (reported
# separately) do not count as a channel imbalance.
CHANNEL_RANGE_PERCENTILES = (0.1, 99.9)
# Per-tensor quantization gives every channel the widest channel's grid: at 10x the median channel keeps a
# tenth of the levels (over 3 of its 8 bits lost). Cross-layer equalization rescales the channels to match.
CHANNEL_SPREAD_LIMIT = 10.0
# max |x| over the 99.9th percentile of |x|: at 4x, 2 of the 8 bits are spent on the top 0.1% of the values.
OUTLIER_PERCENTILE = 99.9
OUTLIER_RATIO_LIMIT = 4.0
# Share of a layer's values that are negative: above 0.1%, an unsigned quantizer clips a visible part to zero.
NEGATIVE_SHARE_LIMIT = 0.001
# Values per layer kept for the percentiles (rows of channels sampled from each batch): bounds the memory.
SAMPLED_VALUES_PER_LAYER = 200_000


@dataclass(frozen=True)
class ActivationStats:
    """A layer's float output on the calibration images."""

    low: float
    high: float
    channel_spread: float | None  # widest channel range / median channel range (constant channels left out)
    negative_share: float
    outlier_ratio: float | None  # max |x| / 99.9th percentile of |x|; None when that percentile is 0


# What a cause is, for the repair search to choose its first recipe from (core/repair/ladder.py).
CauseKind = Literal[
    "channel_spread",  # between consecutive layers: cross-layer equalization
    "channel_spread_at_join",  # on a tensor joined at an Add (a residual stream): pairwise equalization stops there
    "channel_spread_at_concat",  # on a tensor joined at a Concatenate: no equalization reaches it
    "outliers",
    "negative_into_unsigned",
    "sensitive_first",
    "sensitive_last",
]


@dataclass(frozen=True)
class Cause:
    severity: float  # how far past its limit: causes are listed most severe first
    text: str
    kind: CauseKind


def inbound_layers(model) -> dict[str, list[str]]:
    """Each layer's name -> the names of the layers feeding it (the input layer included), in the float model."""
    import tensorflow as tf

    return {
        layer.name: [src.name for node in layer.inbound_nodes for src in tf.nest.flatten(node.inbound_layers)]
        for layer in model.layers
    }


def measured_layers(model) -> list:
    """The layers with one output tensor to measure: not the input layer, nor a layer with several outputs or
    called several times (a shared layer has no single `output`)."""
    import tensorflow as tf

    def single_output(layer) -> bool:
        try:
            return not isinstance(layer.output, list | tuple | dict)
        except AttributeError:
            return False

    return [
        layer for layer in model.layers if not isinstance(layer, tf.keras.layers.InputLayer) and single_output(layer)
    ]


def activation_stats(model, images: np.ndarray, batch_size: int = 32, seed: int = 0) -> dict[str, ActivationStats]:
    """Every layer's output statistics on `images`, a batch at a time (min, max, sign exact; percentiles sampled)."""
    import tensorflow as tf

    layers = measured_layers(model)
    probe = tf.keras.Model(model.inputs, [layer.output for layer in layers])
    batches = max(1, -(-len(images) // batch_size))
    rng = np.random.default_rng(seed)
    low = {layer.name: np.inf for layer in layers}
    high = {layer.name: -np.inf for layer in layers}
    negatives = dict.fromkeys(low, 0)
    counts = dict.fromkeys(low, 0)
    samples: dict[str, list[np.ndarray]] = {name: [] for name in low}
    for start in range(0, len(images), batch_size):
        outputs = probe(images[start : start + batch_size], training=False)
        outputs = outputs if isinstance(outputs, list) else [outputs]
        for layer, output in zip(layers, outputs, strict=True):
            values = np.asarray(output, dtype=np.float32)
            rows = values.reshape(-1, values.shape[-1] if values.ndim > 1 else 1)
            name = layer.name
            low[name] = min(low[name], float(rows.min()))
            high[name] = max(high[name], float(rows.max()))
            negatives[name] += int((rows < 0).sum())
            counts[name] += rows.size
            keep = max(1, SAMPLED_VALUES_PER_LAYER // rows.shape[1] // batches)
            pick = rng.choice(len(rows), keep, replace=False) if len(rows) > keep else slice(None)
            samples[name].append(rows[pick])
    return {
        name: _summarize(np.concatenate(samples[name]), low[name], high[name], negatives[name] / counts[name])
        for name in low
    }


def _summarize(rows: np.ndarray, low: float, high: float, negative_share: float) -> ActivationStats:
    lo, hi = np.percentile(rows, CHANNEL_RANGE_PERCENTILES, axis=0)
    ranges = (hi - lo)[hi > lo]
    spread = float(ranges.max() / np.median(ranges)) if len(ranges) > 1 else None
    typical = float(np.percentile(np.abs(rows), OUTLIER_PERCENTILE))
    peak = max(abs(low), abs(high))
    return ActivationStats(
        low=low,
        high=high,
        channel_spread=spread,
        negative_share=negative_share,
        outlier_ratio=peak / typical if typical > 0 else None,
    )


def range_causes(stats: ActivationStats, unsigned_quantizer: bool, joined_at: Join | None = None) -> list[Cause]:
    """The causes a layer's float output range points to, most severe first. `joined_at`: the Add or Concatenate
    the layer's output is, or joins (`joins`), if any."""
    causes = []
    if stats.channel_spread is not None and stats.channel_spread > CHANNEL_SPREAD_LIMIT:
        spread = f"channels' ranges differ by {stats.channel_spread:.0f}x"
        severity = stats.channel_spread / CHANNEL_SPREAD_LIMIT
        if joined_at is not None and joined_at.residual:
            text = (
                f"{spread} on a tensor joined at {joined_at.layer}, where pairwise equalization stops (equalization "
                "that follows the residual, or 16 bits there, helps)"
            )
            causes.append(Cause(severity, text, "channel_spread_at_join"))
        elif joined_at is not None:
            text = (
                f"{spread} on a tensor concatenated at {joined_at.layer}, which no equalization reaches (16 bits "
                "there helps)"
            )
            causes.append(Cause(severity, text, "channel_spread_at_concat"))
        else:
            causes.append(Cause(severity, f"{spread} (cross-layer equalization helps)", "channel_spread"))
    if stats.outlier_ratio is not None and stats.outlier_ratio > OUTLIER_RATIO_LIMIT:
        causes.append(
            Cause(
                stats.outlier_ratio / OUTLIER_RATIO_LIMIT,
                f"activation outliers: max is {stats.outlier_ratio:.0f}x the 99.9th percentile "
                "(outlier removal / z-threshold, or a finer error method helps)",
                "outliers",
            )
        )
    if unsigned_quantizer and stats.negative_share > NEGATIVE_SHARE_LIMIT:
        causes.append(
            Cause(
                stats.negative_share / NEGATIVE_SHARE_LIMIT,
                f"negative values into an unsigned quantizer: {stats.negative_share:.1%} of the outputs clip to zero",
                "negative_into_unsigned",
            )
        )
    return sorted(causes, key=lambda cause: -cause.severity)


def sensitive_cause(position: Literal["first", "last"]) -> Cause:
    """Listed after the range causes."""
    kind: CauseKind = "sensitive_first" if position == "first" else "sensitive_last"
    return Cause(1.0, f"sensitive {position} layer (keep it at higher precision)", kind)


class Join(NamedTuple):
    layer: str  # the Add or Concatenate
    residual: bool  # an Add: a residual stream


def joins(model) -> dict[str, Join]:
    """Layer name -> the Add or Concatenate its output joins, for the layers whose output does: the join itself, the
    layers that feed it up to and including the first one with weights, and those after it up to the first with
    weights (through single-input layers that carry the same channels: an activation, a pooling, a batch
    normalization, which the quantizers fold into the layer before it)."""
    import tensorflow as tf

    inbound = inbound_layers(model)
    consumers: dict[str, list[str]] = {name: [] for name in inbound}
    for name, sources in inbound.items():
        for source in sources:
            consumers.setdefault(source, []).append(name)

    def carries(name: str) -> bool:  # passes its one input's channels on, without weights that mix them
        layer = model.get_layer(name)
        per_channel = not layer.weights or isinstance(layer, tf.keras.layers.BatchNormalization)
        return per_channel and len(inbound.get(name, [])) == 1

    found: dict[str, Join] = {}
    for name in inbound:
        layer = model.get_layer(name)
        if not isinstance(layer, tf.keras.layers.Add | tf.keras.layers.Concatenate):
            continue
        join = Join(name, residual=isinstance(layer, tf.keras.layers.Add))
        found.setdefault(name, join)
        for source in inbound[name]:
            while True:
                found.setdefault(source, join)
                if not carries(source):
                    break
                source = inbound[source][0]
        pending = list(consumers.get(name, []))
        while pending:
            reader = pending.pop()
            if carries(reader) and reader not in found:
                found[reader] = join
                pending += consumers.get(reader, [])
    return found


def folded_normalizations(model) -> dict[str, str]:
    """BatchNormalization layer name -> the convolution it is folded into, where both quantizers fold it: MCT (its
    BatchNormalizationFolding: a Conv2D, DepthwiseConv2D or Conv2DTranspose without activation, read by the
    normalization alone, called once) and TensorFlow's converter (the fused op's output tensor carries the
    normalization's name). A Dense's normalization is left alone: MCT quantizes its output apart."""
    import tensorflow as tf

    layers = tf.keras.layers
    hosts = (layers.Conv2D, layers.DepthwiseConv2D, layers.Conv2DTranspose)  # exact types: a subclass may not fold
    inbound = inbound_layers(model)
    readers: dict[str, int] = {}
    for sources in inbound.values():
        for source in sources:
            readers[source] = readers.get(source, 0) + 1
    found = {}
    for layer in model.layers:
        if not isinstance(layer, layers.BatchNormalization) or len(layer.inbound_nodes) != 1:
            continue
        sources = inbound[layer.name]
        if len(sources) != 1:
            continue
        host = model.get_layer(sources[0])
        linear = tf.keras.activations.serialize(host.activation) == "linear" if type(host) in hosts else False
        if linear and readers.get(host.name) == 1 and len(host.inbound_nodes) == 1:
            found[layer.name] = host.name
    return found
