"""Cross-layer equalization (CLE) of a float Keras model, which MCT does not do (Nagel et al. 2019,
"Data-Free Quantization Through Weight Equalization and Bias Correction", section 4.1).

Two weight layers (Conv2D, DepthwiseConv2D, Dense) joined only through positively homogeneous layers
(f(x / s) = f(x) / s for s > 0: ReLU, LeakyReLU, PReLU, linear, pooling, Flatten, Reshape, Dropout,
ZeroPadding2D) compute the same function when output channel i of the first is divided by s_i and
input channel i of the second multiplied by s_i. With r1_i and r2_i the two channels' weight ranges,
s_i = sqrt(r1_i / r2_i) (the paper's (1 / r2_i) * sqrt(r1_i * r2_i)) makes both ranges sqrt(r1_i * r2_i):
a channel hundreds of times wider than the rest no longer owns the per-tensor quantization grid.
A channel's range is max |w| over its weights, the range a symmetric quantizer covers.

    equalized, report = equalize(model)
    agreement = prediction_agreement(model, equalized, images)  # 1.0 and ~1e-6: same float predictions

BatchNormalization directly after a Conv2D, DepthwiseConv2D or Dense is folded into it first
(`fold_batch_norm`). Only single-use edges are followed: a layer read by several layers, reading
several, called more than once, or a model output ends a chain there, and such a pair is reported as
skipped with its reason, as is one through ReLU6, sigmoid, swish or any layer not listed above.
The input model is never modified: the result is a new model built from its configuration. A model that cannot
be (a subclassed model, a configuration Keras cannot rebuild) is refused with `CannotEqualize`, naming why.

Optionally (`bias_absorption_images`), high biases are then absorbed into the next layer (section 4.2),
measured on a few batches of images.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from core.errors import InputError
from core.records import Record


class CannotEqualize(InputError):
    """The model is not one equalization can rewrite (a repair trial records why and goes on)."""


class FoldedBatchNorm(Record):
    """A BatchNormalization layer folded into the layer it follows."""

    batch_norm: str
    into: str


class EqualizedPair(Record):
    """Two weight layers rescaled per channel; the ratios are max/min of the first layer's output-channel ranges."""

    first: str
    second: str
    through: tuple[str, ...]  # the layers between them
    channels: int
    scale_min: float  # of the scales applied over all iterations (first layer's channel i divided by scale i)
    scale_max: float
    range_ratio_before: float
    range_ratio_after: float
    unread_channels: int = 0  # channels the second layer gives no weight: nothing to trade their range with
    bias_absorbed: float | None = None  # the largest constant moved into the second layer's bias, when asked
    bias_not_absorbed: str | None = None  # why not, when asked and it would not be exact


class SkippedPair(Record):
    """A weight layer not equalized with the next one (`second` is None where no single path leads to one)."""

    first: str
    second: str | None
    reason: str


class EqualizationReport(Record):
    """What `equalize` did: batch norms folded, pairs equalized (in model order), pairs skipped and why."""

    folded_batch_norms: tuple[FoldedBatchNorm, ...]
    pairs: tuple[EqualizedPair, ...]
    skipped: tuple[SkippedPair, ...]
    iterations: int
    converged: bool  # every scale of the last iteration was within `tolerance` of 1

    def describe(self) -> str:
        """In words, for a repair trial's record."""
        pairs = ", ".join(
            f"{p.first} -> {p.second}"
            + (
                f" ({p.unread_channels} channel(s) left: no weight of {p.second} reads them)"
                if p.unread_channels
                else ""
            )
            for p in self.pairs
        )
        skipped = "; ".join(f"{s.first}: {s.reason}" for s in self.skipped)
        found = f"equalized {len(self.pairs)} pair(s) ({pairs})" if self.pairs else "no pair of layers to equalize"
        return found + (f"; not equalized: {skipped}" if skipped else "")


class PredictionAgreement(Record):
    """Two models on the same images: the share with the same argmax, and the largest output difference."""

    agreement: float
    max_abs_difference: float
    image_count: int


# --- The model's graph, read from its configuration -------------------------------------------------------


@dataclass(frozen=True)
class _Graph:
    inputs: dict[str, list[str]]  # the layers each layer reads, one name per use
    consumers: dict[str, list[str]]  # the layers reading each layer's output, one name per use
    calls: dict[str, int]  # how many times each layer is called in the model
    outputs: set[str]


def _is_reference(value: Any, names: set[str]) -> bool:
    """A tensor in a functional config: [layer name, node index, tensor index] (and, for a tensor of a call's first
    argument, the call's other arguments as a fourth item)."""
    return (
        isinstance(value, list | tuple)
        and len(value) in (3, 4)
        and isinstance(value[0], str)
        and value[0] in names
        and isinstance(value[1], int)
        and isinstance(value[2], int)
    )


def _references(value: Any, names: set[str]) -> list[str]:
    """The layers whose tensors `value` (any nesting of lists and dicts: a call's arguments, `output_layers`) holds,
    one name per tensor, in order."""
    if _is_reference(value, names):
        return [value[0]]
    if isinstance(value, dict):
        return [n for v in value.values() for n in _references(v, names)]
    if isinstance(value, list | tuple):
        return [n for v in value for n in _references(v, names)]
    return []


def _first_argument(node: Any) -> list[list]:
    """A call's entries, one per item of its first argument (a tensor, or a constant: ["_CONSTANT_VALUE", -1, value,
    arguments]), found in whatever nesting of lists and dicts that argument has."""
    if isinstance(node, list | tuple) and len(node) == 4 and isinstance(node[0], str) and isinstance(node[3], dict):
        return [list(node)]
    if isinstance(node, dict):
        return [e for v in node.values() for e in _first_argument(v)]
    if isinstance(node, list | tuple):
        return [e for v in node for e in _first_argument(v)]
    return []


def _call_inputs(node: Any, names: set[str]) -> list[str]:
    """The layers one call (an item of a layer's `inbound_nodes`) reads, one name per tensor: its first argument's
    tensors, then any among its other arguments. Keras copies the other arguments into every entry of the first
    argument (a Concatenate's three inputs carry them three times): they are read once, from the first."""
    entries = _first_argument(node)
    tensors = [entry[0] for entry in entries if _is_reference(entry, names)]
    return tensors + _references(entries[0][3] if entries else {}, names)


def _graph_of(config: dict) -> _Graph:
    names = [entry["config"]["name"] for entry in config["layers"]]
    if "output_layers" not in config:  # Sequential: a chain in list order
        inputs = {name: names[i - 1 : i] for i, name in enumerate(names)}
        calls = dict.fromkeys(names, 1)
        outputs = {names[-1]}
    else:
        known = set(names)
        inputs = {
            e["config"]["name"]: [n for node in e["inbound_nodes"] for n in _call_inputs(node, known)]
            for e in config["layers"]
        }
        calls = {e["config"]["name"]: len(e["inbound_nodes"]) for e in config["layers"]}
        outputs = set(_references(config["output_layers"], known))
    consumers: dict[str, list[str]] = {name: [] for name in names}
    for name, producers in inputs.items():
        for producer in producers:
            consumers[producer].append(name)
    return _Graph(inputs=inputs, consumers=consumers, calls=calls, outputs=outputs)


def _config_of(model: Any) -> dict:
    import tensorflow as tf

    if not isinstance(model, tf.keras.Model) or not getattr(model, "_is_graph_network", False):
        raise CannotEqualize(
            f"model {getattr(model, 'name', model)!r} is not a built functional or Sequential Keras model: "
            "equalization reads the layer graph from its configuration"
        )
    return model.get_config()


# --- Layers ------------------------------------------------------------------------------------------------


def _weight_layer_types() -> tuple[type, ...]:
    import tensorflow as tf

    return tf.keras.layers.Conv2D, tf.keras.layers.DepthwiseConv2D, tf.keras.layers.Dense


def _is_weight_layer(layer: Any) -> bool:
    return type(layer) in _weight_layer_types()  # exact: Conv2DTranspose is a Conv2D subclass


def _is_depthwise(layer: Any) -> bool:
    import tensorflow as tf

    return type(layer) is tf.keras.layers.DepthwiseConv2D


def _out_channels(kernel: np.ndarray, layer: Any) -> int:
    """Depthwise output channel c * multiplier + m comes from kernel[:, :, c, m]."""
    return kernel.shape[-2] * kernel.shape[-1] if _is_depthwise(layer) else kernel.shape[-1]


def _input_axis(layer: Any) -> int:
    """Kernels: Dense (inputs, outputs), Conv2D (h, w, inputs, outputs), DepthwiseConv2D (h, w, inputs, multiplier)."""
    import tensorflow as tf

    return 0 if type(layer) is tf.keras.layers.Dense else 2


HOMOGENEOUS_ACTIVATIONS = {"linear", "relu"}  # Keras's relu with its defaults: no max_value, threshold 0


def _activation_problem(name: str, activation: Any) -> str | None:
    function = getattr(activation, "__name__", str(activation))
    if function in HOMOGENEOUS_ACTIVATIONS:
        return None
    return f"{name}'s activation {function} is not positively homogeneous"


def _passthrough_problem(layer: Any, channels: int) -> str | None:
    """None when f(x / s) = f(x) / s per channel and channel j of the output is channel j % `channels`."""
    import tensorflow as tf

    layers = tf.keras.layers
    kind = type(layer).__name__
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"{layer.name} ({kind}) is channels_first"
    if isinstance(layer, layers.ReLU):
        if layer.max_value is not None or float(layer.threshold) != 0.0:
            bounds = f"max_value {layer.max_value}, threshold {layer.threshold}"
            return f"{layer.name} (ReLU, {bounds}) is not positively homogeneous"
        return None
    if isinstance(layer, layers.Activation):
        return _activation_problem(layer.name, layer.activation)
    if isinstance(layer, layers.Flatten | layers.Reshape):
        width = layer.output_shape[-1]
        if width is None or width % channels:
            return f"{layer.name} ({kind}) output width {width} is not a multiple of the {channels} channels"
        return None
    passthrough = (
        layers.LeakyReLU,
        layers.PReLU,
        layers.MaxPooling2D,
        layers.AveragePooling2D,
        layers.GlobalAveragePooling2D,
        layers.GlobalMaxPooling2D,
        layers.ZeroPadding2D,
        layers.Dropout,  # and SpatialDropout: the identity at inference
    )
    if isinstance(layer, passthrough):
        return None
    return f"{layer.name} ({kind}) is not one of the positively homogeneous layers equalization passes through"


def _weight_layer_problem(layer: Any) -> str | None:
    if getattr(layer, "data_format", "channels_last") != "channels_last":
        return f"{layer.name} is channels_first"
    if getattr(layer, "groups", 1) != 1:
        return f"{layer.name} is a grouped convolution"
    return None


# --- Batch normalization folding ---------------------------------------------------------------------------


def _custom_objects(model: Any) -> dict[str, type]:
    import tensorflow as tf

    found: dict[str, type] = {}
    for layer in model.layers:
        found[type(layer).__name__] = type(layer)
        found[tf.keras.utils.get_registered_name(type(layer))] = type(layer)
    return found


def _fold_problem(model: Any, graph: _Graph, bn: Any) -> tuple[str | None, str | None]:
    """(the layer `bn` folds into, None) or (its producer if any, why it cannot be folded)."""
    producers = graph.inputs[bn.name]
    if graph.calls[bn.name] != 1 or len(producers) != 1:
        return None, "it is called more than once or reads several layers"
    producer = model.get_layer(producers[0])
    if not _is_weight_layer(producer):
        return (
            producer.name,
            f"it follows {producer.name} ({type(producer).__name__}), not a Conv2D, DepthwiseConv2D or Dense",
        )
    if graph.calls[producer.name] != 1 or len(graph.consumers[producer.name]) != 1 or producer.name in graph.outputs:
        return producer.name, f"{producer.name}'s output is used elsewhere too"
    if getattr(producer.activation, "__name__", None) != "linear":
        return producer.name, f"{producer.name} has an activation before the batch normalization"
    if _weight_layer_problem(producer) or list(bn.axis) != [len(bn.input_shape) - 1]:
        return producer.name, "it does not normalize the channels-last axis"
    if getattr(bn, "renorm", False):
        return producer.name, "it uses batch renormalization"
    return producer.name, None


def _folded_weights(layer: Any, bn: Any) -> list[np.ndarray]:
    """`layer`'s kernel and bias with `bn` (at inference: (x - mean) / sqrt(var + eps) * gamma + beta) folded in."""
    weights = layer.get_weights()
    kernel = weights[0].astype(np.float64)
    bias = weights[1].astype(np.float64) if layer.use_bias else np.zeros(_out_channels(kernel, layer))
    mean, variance = bn.moving_mean.numpy().astype(np.float64), bn.moving_variance.numpy().astype(np.float64)
    gamma = bn.gamma.numpy().astype(np.float64) if bn.gamma is not None else 1.0
    beta = bn.beta.numpy().astype(np.float64) if bn.beta is not None else 0.0
    factor = gamma / np.sqrt(variance + bn.epsilon)
    kernel = (kernel.reshape(-1, _out_channels(kernel, layer)) * factor).reshape(kernel.shape)
    dtype = weights[0].dtype
    return [kernel.astype(dtype), ((bias - mean) * factor + beta).astype(dtype)]


def _rename(value: Any, renames: dict[str, str]) -> Any:
    if isinstance(value, dict):
        return {k: _rename(v, renames) for k, v in value.items()}
    if isinstance(value, list):
        if len(value) >= 3 and isinstance(value[0], str) and value[0] in renames and isinstance(value[1], int):
            return [renames[value[0]], 0, *[_rename(v, renames) for v in value[2:]]]
        return [_rename(v, renames) for v in value]
    return value


def _rebuilt(model: Any, config: dict, allow_unsafe_code: bool) -> Any:
    """A new model of `model`'s class from `config` (its own, edited), the classes of its layers known. Its Lambda
    layers' code is the code `model` already runs, loaded under `allow_unsafe_code` (Keras's safe mode refuses it
    otherwise)."""
    import tensorflow as tf
    from keras.src.saving.serialization_lib import SafeModeScope

    try:
        with tf.keras.utils.custom_object_scope(_custom_objects(model)), SafeModeScope(not allow_unsafe_code):
            return type(model).from_config(config)
    except Exception as exc:  # Keras raises many types for a configuration it cannot rebuild
        first_line = next((line for line in str(exc).splitlines() if line.strip()), "")
        raise CannotEqualize(
            f"model {model.name!r} cannot be rebuilt from its configuration, which equalization rewrites: "
            f"{type(exc).__name__}: {first_line}"
        ) from exc


def fold_batch_norm(
    model: Any, *, allow_unsafe_code: bool = False
) -> tuple[Any, list[FoldedBatchNorm], list[SkippedPair]]:
    """A new model with every foldable BatchNormalization folded into the Conv2D, DepthwiseConv2D or Dense it
    directly follows (that layer's only reader, no activation between); the others are listed with the reason.
    The same function at inference: the model's other layers keep their names and weights. `allow_unsafe_code`:
    the model may hold Lambda layers (loaded with the configuration's allow_unsafe_model_code)."""
    import tensorflow as tf

    config = _config_of(model)
    graph = _graph_of(config)
    folds: dict[str, str] = {}  # batch norm -> the layer it folds into
    kept: list[SkippedPair] = []
    for layer in model.layers:
        if isinstance(layer, tf.keras.layers.BatchNormalization):
            producer, problem = _fold_problem(model, graph, layer)
            if problem:
                kept.append(
                    SkippedPair(first=producer or layer.name, second=layer.name, reason=f"not folded: {problem}")
                )
            else:
                assert producer is not None
                folds[layer.name] = producer
    into = set(folds.values())
    entries = []
    for entry in config["layers"]:
        if entry["config"]["name"] in folds:
            continue
        if entry["config"]["name"] in into:
            entry = {**entry, "config": {**entry["config"], "use_bias": True}}
        if "inbound_nodes" in entry:
            entry = {**entry, "inbound_nodes": _rename(entry["inbound_nodes"], folds)}
        entries.append(entry)
    config = {**config, "layers": entries}
    if "output_layers" in config:
        config["output_layers"] = _rename(config["output_layers"], folds)
    folded = _rebuilt(model, config, allow_unsafe_code)
    by_producer = {producer: bn for bn, producer in folds.items()}
    for layer in folded.layers:
        source = model.get_layer(layer.name)
        if layer.name in by_producer:
            layer.set_weights(_folded_weights(source, model.get_layer(by_producer[layer.name])))
        else:
            layer.set_weights(source.get_weights())
    return folded, [FoldedBatchNorm(batch_norm=bn, into=producer) for bn, producer in folds.items()], kept


# --- Equalization ------------------------------------------------------------------------------------------


@dataclass
class _Pair:
    first: Any
    second: Any
    through: tuple[str, ...]
    channels: int


def _follow(model: Any, graph: _Graph, first: Any) -> _Pair | SkippedPair | None:
    """The next weight layer along single-use edges from `first`, or why there is none to pair it with."""
    kernel = first.get_weights()[0]
    channels = _out_channels(kernel, first)
    problem = (
        "it is called more than once (shared)" if graph.calls[first.name] != 1 else None
    ) or _weight_layer_problem(first)
    problem = problem or _activation_problem(first.name, first.activation)
    through: list[str] = []
    name = first.name
    while True:
        readers = graph.consumers[name]
        if not readers and name in graph.outputs:
            return None  # the end of the model: nothing to pair with
        if len(readers) != 1 or name in graph.outputs:
            where = "is a model output" if name in graph.outputs else f"feeds {len(readers)} layers"
            return SkippedPair(first=first.name, second=None, reason=problem or f"{name}'s output {where}")
        name = readers[0]
        layer = model.get_layer(name)
        if graph.calls[name] != 1 or len(graph.inputs[name]) != 1:
            shared = graph.calls[name] != 1
            reason = problem or f"{name} {'is called more than once (shared)' if shared else 'reads several tensors'}"
            return SkippedPair(first=first.name, second=None, reason=reason)
        if _is_weight_layer(layer):
            problem = problem or _weight_layer_problem(layer)
            width = layer.get_weights()[0].shape[_input_axis(layer)]
            problem = problem or (
                f"{name}'s {width} inputs are not a multiple of {channels} channels" if width % channels else None
            )
            if problem:
                return SkippedPair(first=first.name, second=name, reason=problem)
            return _Pair(first=first, second=layer, through=tuple(through), channels=channels)
        problem = problem or _passthrough_problem(layer, channels)
        through.append(name)


def _output_ranges(kernel: np.ndarray, layer: Any) -> np.ndarray:
    return np.abs(kernel).reshape(-1, _out_channels(kernel, layer)).max(axis=0)


def _input_ranges(kernel: np.ndarray, layer: Any, channels: int) -> np.ndarray:
    """Input j of the second layer carries channel j % channels (a Flatten interleaves them)."""
    return np.abs(np.moveaxis(kernel, _input_axis(layer), -1)).reshape(-1, channels).max(axis=0)


def _scale_inputs(kernel: np.ndarray, layer: Any, scales: np.ndarray) -> np.ndarray:
    moved = np.moveaxis(kernel, _input_axis(layer), -1)
    scaled = (moved.reshape(-1, len(scales)) * scales).reshape(moved.shape)
    return np.moveaxis(scaled, -1, _input_axis(layer))


def _ratio(ranges: np.ndarray) -> float:
    live = ranges[ranges > 0]
    return float(live.max() / live.min()) if live.size else 1.0


def _equalize_pairs(
    pairs: list[_Pair], weights: dict[str, list[np.ndarray]], max_iterations: int, tolerance: float
) -> tuple[list[np.ndarray], int, bool]:
    """Rescale `weights` in place, pair after pair, until every scale is within `tolerance` of 1: each pair's
    scales over all iterations, the iterations run, and whether they converged."""
    total = [np.ones(p.channels) for p in pairs]
    iterations, converged = 0, not pairs
    while iterations < max_iterations and not converged:
        iterations += 1
        largest = 0.0
        for k, pair in enumerate(pairs):
            first, second = weights[pair.first.name], weights[pair.second.name]
            r1 = _output_ranges(first[0], pair.first)
            r2 = _input_ranges(second[0], pair.second, pair.channels)
            scales = np.ones(pair.channels)
            live = (r1 > 0) & (r2 > 0)  # a dead channel stays as it is
            scales[live] = np.sqrt(r1[live] / r2[live])
            first[0] = (first[0].reshape(-1, pair.channels) / scales).reshape(first[0].shape)
            if len(first) > 1:
                first[1] = first[1] / scales
            second[0] = _scale_inputs(second[0], pair.second, scales)
            total[k] *= scales
            largest = max(largest, float(np.abs(np.log(scales)).max()))
        converged = largest <= tolerance
    return total, iterations, converged


def _absorption_problem(model: Any, pair: _Pair) -> str | None:
    """Why moving a constant from the first layer's bias into the second's would not be exact, if it would not."""
    import tensorflow as tf

    for layer in (pair.first, pair.second):
        if not layer.use_bias:
            return f"{layer.name} has no bias"
    if any(isinstance(model.get_layer(name), tf.keras.layers.ZeroPadding2D) for name in pair.through):
        return "a ZeroPadding2D between them pads with zeros, which the absorbed bias would not reach"
    second = pair.second
    if type(second) is tf.keras.layers.Dense:
        return None
    if second.padding != "valid" and tuple(second.kernel_size) != (1, 1):
        return f"{second.name} pads its input with zeros, which the absorbed bias would not reach"
    return None


def _input_sums(kernel: np.ndarray, layer: Any, values: np.ndarray) -> np.ndarray:
    """What the second layer adds to each of its outputs when its input channel i is the constant values[i]."""
    moved = np.moveaxis(kernel, _input_axis(layer), -1)
    products = moved * np.tile(values, moved.shape[-1] // len(values))
    if _is_depthwise(layer):  # (h, w, multiplier, channels): output c * multiplier + m
        return products.sum(axis=(0, 1)).T.reshape(-1)
    return products.sum(axis=-1).reshape(-1, products.shape[-2]).sum(axis=0)


def _absorb_high_biases(
    model: Any, pairs: list[_Pair], weights: dict[str, list[np.ndarray]], images: np.ndarray
) -> tuple[dict[str, float], dict[str, str]]:
    """High-bias absorption (section 4.2 of the paper), measured on `images`: where the first layer's output
    channel i never falls below c_i > 0 on them, c_i leaves its bias and the second layer's bias gains what
    c_i contributed, narrowing that activation's range. Exact on `images` (positively homogeneous layers are
    the identity above 0). By the first layer's name: the largest c_i absorbed, and why a pair was not."""
    import tensorflow as tf

    absorbed: dict[str, float] = {}
    problems = {pair.first.name: _absorption_problem(model, pair) for pair in pairs}
    eligible = [pair for pair in pairs if problems[pair.first.name] is None]
    if not eligible:
        return absorbed, {name: problem for name, problem in problems.items() if problem}
    probe = tf.keras.Model(model.inputs, [pair.first.output for pair in eligible])
    activations = probe(np.asarray(images, dtype=np.float32), training=False)
    for pair, activation in zip(eligible, activations if len(eligible) > 1 else [activations], strict=True):
        lowest = np.asarray(activation, dtype=np.float64).reshape(-1, pair.channels).min(axis=0)
        constant = np.maximum(lowest, 0.0)
        weights[pair.first.name][1] = weights[pair.first.name][1] - constant
        second = weights[pair.second.name]
        second[1] = second[1] + _input_sums(second[0], pair.second, constant)
        absorbed[pair.first.name] = float(constant.max())
    return absorbed, {name: problem for name, problem in problems.items() if problem}


def equalize(
    model: Any,
    *,
    max_iterations: int = 100,
    tolerance: float = 1e-4,
    bias_absorption_images: np.ndarray | None = None,
    allow_unsafe_code: bool = False,
) -> tuple[Any, EqualizationReport]:
    """A new model, the same function as `model`, with batch normalization folded and every equalizable pair
    of weight layers rescaled so that their per-channel weight ranges match. Each layer of a chain belongs to
    two pairs, so the pairs are equalized in turn until every scale is within `tolerance` of 1.

    With `bias_absorption_images` (a few batches of preprocessed inputs), high biases are then absorbed into
    the next layer where that is exact on those images (see `_absorb_high_biases`). Raises `CannotEqualize` for a
    model it cannot rewrite."""
    equalized, folded, skipped = fold_batch_norm(model, allow_unsafe_code=allow_unsafe_code)
    graph = _graph_of(equalized.get_config())
    pairs: list[_Pair] = []
    for layer in equalized.layers:
        if _is_weight_layer(layer):
            found = _follow(equalized, graph, layer)
            if isinstance(found, _Pair):
                pairs.append(found)
            elif found is not None:
                skipped.append(found)
    layers = {layer.name: layer for pair in pairs for layer in (pair.first, pair.second)}
    weights = {name: [w.astype(np.float64) for w in layer.get_weights()] for name, layer in layers.items()}
    dtypes = {name: [w.dtype for w in layer.get_weights()] for name, layer in layers.items()}

    def store() -> None:
        for name, values in weights.items():
            layers[name].set_weights([v.astype(d) for v, d in zip(values, dtypes[name], strict=True)])

    before = [_ratio(_output_ranges(weights[p.first.name][0], p.first)) for p in pairs]
    unread = [
        int(((r1 > 0) & (_input_ranges(weights[p.second.name][0], p.second, p.channels) == 0)).sum())
        for p, r1 in ((p, _output_ranges(weights[p.first.name][0], p.first)) for p in pairs)
    ]
    scales, iterations, converged = _equalize_pairs(pairs, weights, max_iterations, tolerance)
    store()
    absorbed: dict[str, float] = {}
    not_absorbed: dict[str, str] = {}
    if bias_absorption_images is not None:
        absorbed, not_absorbed = _absorb_high_biases(equalized, pairs, weights, bias_absorption_images)
        store()
    report = EqualizationReport(
        folded_batch_norms=tuple(folded),
        pairs=tuple(
            EqualizedPair(
                first=p.first.name,
                second=p.second.name,
                through=p.through,
                channels=p.channels,
                scale_min=float(scales[k].min()),
                scale_max=float(scales[k].max()),
                range_ratio_before=before[k],
                range_ratio_after=_ratio(_output_ranges(weights[p.first.name][0], p.first)),
                unread_channels=unread[k],
                bias_absorbed=absorbed.get(p.first.name),
                bias_not_absorbed=not_absorbed.get(p.first.name),
            )
            for k, p in enumerate(pairs)
        ),
        skipped=tuple(skipped),
        iterations=iterations,
        converged=converged,
    )
    return equalized, report


def prediction_agreement(
    original: Any, equalized: Any, images: np.ndarray, batch_size: int = 64
) -> PredictionAgreement:
    """Whether two Keras models predict alike on `images`: the share of images with the same argmax and the
    largest absolute difference between their outputs (checked before an equalized model is quantized)."""
    same, largest = 0, 0.0
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size], dtype=np.float32)
        a = np.asarray(original(batch, training=False))
        b = np.asarray(equalized(batch, training=False))
        same += int((a.argmax(axis=-1) == b.argmax(axis=-1)).reshape(len(a), -1).all(axis=1).sum())
        largest = max(largest, float(np.abs(a - b).max()))
    count = len(images)
    return PredictionAgreement(agreement=same / count if count else 1.0, max_abs_difference=largest, image_count=count)
