"""Equalization that follows a residual: rescale the channels of a whole residual stream at once.

Cross-layer equalization (core/build/equalization.py) rescales a pair of consecutive layers, so it stops at a
tensor that feeds an `Add` as well as the next layer. Residual networks keep exactly there the channels that are
orders of magnitude larger than the rest (outlier channels): per-tensor 8-bit activations then spend their grid
on those few channels, and the layers reading the stream hold weights for them that are small by the same factor,
which per-channel weight quantization rounds away.

A stream is every tensor joined to an `Add` through positively homogeneous layers (f(x / s) = f(x) / s for
s > 0: ReLU, pooling, Dropout, ...) and batch normalizations (whose mean and offset are divided too). Dividing
channel c of every one of them by s_c is the same function when every weight layer producing into the stream
divides its output channel c (kernel and bias) by s_c, and every weight layer reading it multiplies its input
channel c by s_c. With a_c the channel's largest activation over the
stream (on a few images) and w_c the largest weight reading it, s_c = sqrt((a_c / median a) / (w_c / median w))
brings both to the geometric mean of their spreads: the outlier channels leave the activation grid and the
readers' weights for them grow back to the others' size.

A stream that reaches a model input or output, a shared layer, a layer that is not positively homogeneous (Multiply,
sigmoid, ...) or a Concatenate (which moves channels to other indices) cannot be rescaled;
`ResidualEqualizationReport.skipped` says which and why.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from core.build.equalization import (
    _activation_problem,
    _Graph,
    _graph_of,
    _input_axis,
    _input_ranges,
    _is_weight_layer,
    _out_channels,
    _passthrough_problem,
    _ratio,
    _scale_inputs,
    _weight_layer_problem,
    fold_batch_norm,
)
from core.records import Record


class ResidualStream(Record):
    """One stream rescaled: the Adds that join it, the weight layers writing and reading it, what it passes."""

    adds: tuple[str, ...]
    producers: tuple[str, ...]  # output channels divided by the scales
    consumers: tuple[str, ...]  # input channels multiplied by the scales
    through: tuple[str, ...]  # positively homogeneous layers inside the stream
    channels: int
    scale_min: float
    scale_max: float
    activation_ratio_before: float  # max / min of the channels' largest activations
    activation_ratio_after: float


class SkippedStream(Record):
    """A stream left as it is, and why."""

    adds: tuple[str, ...]
    reason: str


class ResidualEqualizationReport(Record):
    streams: tuple[ResidualStream, ...]
    skipped: tuple[SkippedStream, ...]

    def describe(self) -> str:
        """In words, for a repair trial's record."""
        parts = [
            f"rescaled the residual stream of {', '.join(s.adds)} ({len(s.producers)} writers, {len(s.consumers)} "
            f"readers; channel activation spread {s.activation_ratio_before:.0f}x -> {s.activation_ratio_after:.1f}x)"
            for s in self.streams
        ]
        parts += [f"left the stream of {', '.join(s.adds)}: {s.reason}" for s in self.skipped]
        return "; ".join(parts) or "the model has no Add: no residual stream to rescale"


class _Stream:
    def __init__(self) -> None:
        self.adds: list[str] = []
        self.producers: list[str] = []
        self.consumers: list[str] = []
        self.through: list[str] = []
        self.normalizations: list[str] = []  # batch norms inside the stream: their mean and offset follow the scale
        self.problem: str | None = None

    @property
    def members(self) -> list[str]:
        """The layers whose outputs are the stream's tensors."""
        return self.adds + self.through + self.normalizations + self.producers


def _is_add(layer: Any) -> bool:
    import tensorflow as tf

    return type(layer) is tf.keras.layers.Add


def _is_normalization(layer: Any) -> bool:
    """A batch normalization of the channels-last axis: y = gamma (x - mean) / sqrt(var + eps) + beta is divided by
    s when x is, once its mean and beta are (a pre-activation ResNet's stream passes through one)."""
    import tensorflow as tf

    return (
        type(layer) is tf.keras.layers.BatchNormalization
        and list(layer.axis) == [len(layer.input_shape) - 1]
        and not getattr(layer, "renorm", False)
    )


def has_add(model: Any) -> bool:
    """Whether the model has an Add layer: a residual stream to rescale (Keras's `x + y` is a TFOpLambda, not seen)."""
    return any(_is_add(layer) for layer in model.layers)


def _trace(model: Any, graph: _Graph, start: str, channels: int) -> _Stream:
    """The stream through `start` (an Add): walking up from every member to what writes it and down to what reads
    it. Role "out": the layer's output is in the stream; "in": the layer reads a tensor of the stream."""
    import tensorflow as tf

    stream = _Stream()
    seen: set[tuple[str, str]] = set()
    queue: list[tuple[str, Literal["out", "in"]]] = [(start, "out")]
    while queue and stream.problem is None:
        name, role = queue.pop()
        if (name, role) in seen:
            continue
        seen.add((name, role))
        layer = model.get_layer(name)
        if isinstance(layer, tf.keras.layers.InputLayer):
            stream.problem = f"the stream starts at the model input {name}, whose scale is fixed"
        elif graph.calls[name] != 1:
            stream.problem = f"{name} is called more than once (shared)"
        elif _is_weight_layer(layer):
            problem = _weight_layer_problem(layer)
            if role == "in":
                width = layer.get_weights()[0].shape[_input_axis(layer)]
                problem = problem or (
                    f"{name}'s {width} inputs are not a multiple of {channels}" if width % channels else None
                )
                stream.problem = problem
                if name not in stream.consumers:
                    stream.consumers.append(name)
                continue
            problem = problem or _activation_problem(name, layer.activation)
            problem = problem or (
                f"{name} writes {_out_channels(layer.get_weights()[0], layer)} channels into a stream of {channels}"
                if _out_channels(layer.get_weights()[0], layer) != channels
                else None
            )
            stream.problem = problem
            stream.producers.append(name)
            queue += [(reader, "in") for reader in graph.consumers[name]]
        elif _is_add(layer) or _is_normalization(layer) or _passthrough_problem(layer, channels) is None:
            if name in stream.adds or name in stream.through or name in stream.normalizations:
                continue  # reached again from the other side
            if len(graph.inputs[name]) != 1 and not _is_add(layer):
                stream.problem = f"{name} reads several tensors"
                continue
            group = (
                stream.adds if _is_add(layer) else stream.normalizations if _is_normalization(layer) else stream.through
            )
            group.append(name)
            queue += [(writer, "out") for writer in graph.inputs[name]]
            queue += [(reader, "in") for reader in graph.consumers[name]]
        else:
            stream.problem = _passthrough_problem(layer, channels)
        if stream.problem is None and name in graph.outputs:  # a member of the stream (a reader went on above)
            stream.problem = f"{name}'s output is a model output, whose scale is fixed"
    return stream


def _channel_maxima(model: Any, stream: _Stream, images: np.ndarray, channels: int, batch_size: int = 64) -> np.ndarray:
    """Each channel's largest |activation| over every tensor of the stream, on `images`."""
    import tensorflow as tf

    probe = tf.keras.Model(model.inputs, [model.get_layer(name).output for name in stream.members])
    maxima = np.zeros(channels)
    for begin in range(0, len(images), batch_size):
        outputs = probe(np.asarray(images[begin : begin + batch_size], dtype=np.float32), training=False)
        for output in outputs if isinstance(outputs, list | tuple) else [outputs]:
            maxima = np.maximum(maxima, np.abs(np.asarray(output, dtype=np.float64)).reshape(-1, channels).max(axis=0))
    return maxima


def equalize_residual_streams(
    model: Any, images: np.ndarray, *, allow_unsafe_code: bool = False
) -> tuple[Any, ResidualEqualizationReport]:
    """A new model, the same function as `model` (batch normalization folded), with every residual stream that
    can be rescaled rescaled as the module says; `images` (a few batches of preprocessed inputs) measure the
    channels' activations. The input model is never modified. Raises `CannotEqualize` (core/build/equalization.py)
    for a model it cannot rewrite; `allow_unsafe_code`: the model may hold Lambda layers."""
    equalized, _, _ = fold_batch_norm(model, allow_unsafe_code=allow_unsafe_code)
    graph = _graph_of(equalized.get_config())
    traced: set[str] = set()
    streams: list[ResidualStream] = []
    skipped: list[SkippedStream] = []
    for layer in equalized.layers:
        if not _is_add(layer) or layer.name in traced:
            continue
        channels = int(layer.output_shape[-1])
        stream = _trace(equalized, graph, layer.name, channels)
        traced.update(stream.adds)
        if stream.problem:
            skipped.append(SkippedStream(adds=tuple(stream.adds), reason=stream.problem))
            continue
        activations = _channel_maxima(equalized, stream, images, channels)
        readers = [equalized.get_layer(name) for name in stream.consumers]
        weights = (
            np.max([_input_ranges(reader.get_weights()[0], reader, channels) for reader in readers], axis=0)
            if readers
            else np.ones(channels)
        )
        scales = np.ones(channels)
        live = (activations > 0) & (weights > 0)  # a dead channel stays as it is
        if live.any():
            spread = (activations[live] / np.median(activations[live])) / (weights[live] / np.median(weights[live]))
            scales[live] = np.sqrt(spread)
        _rescale(equalized, stream, scales)
        streams.append(
            ResidualStream(
                adds=tuple(stream.adds),
                producers=tuple(stream.producers),
                consumers=tuple(stream.consumers),
                through=tuple(stream.through),
                channels=channels,
                scale_min=float(scales.min()),
                scale_max=float(scales.max()),
                activation_ratio_before=_ratio(activations),
                activation_ratio_after=_ratio(activations / scales),
            )
        )
    return equalized, ResidualEqualizationReport(streams=tuple(streams), skipped=tuple(skipped))


def _rescale(model: Any, stream: _Stream, scales: np.ndarray) -> None:
    """Readers' input channels times the scales, then writers' output channels (and biases) divided by them; a layer
    that both reads and writes the stream gets both."""
    weights = {
        name: [w.astype(np.float64) for w in model.get_layer(name).get_weights()]
        for name in {*stream.producers, *stream.consumers}
    }
    for name in stream.consumers:
        weights[name][0] = _scale_inputs(weights[name][0], model.get_layer(name), scales)
    for name in stream.producers:
        kernel = weights[name][0]
        weights[name][0] = (kernel.reshape(-1, len(scales)) / scales).reshape(kernel.shape)
        if len(weights[name]) > 1:
            weights[name][1] = weights[name][1] / scales
    for name, values in weights.items():
        layer = model.get_layer(name)
        layer.set_weights([v.astype(w.dtype) for v, w in zip(values, layer.get_weights(), strict=True)])
    for name in stream.normalizations:
        layer = model.get_layer(name)
        if layer.center:
            layer.beta.assign(layer.beta.numpy() / scales)
        layer.moving_mean.assign(layer.moving_mean.numpy() / scales)
