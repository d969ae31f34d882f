"""Layers a device's converter refuses, moved out of the model without changing its function.

Sony's IMX500 converter has no Rescaling and no Normalization ("[USOP] The network contains unsupported ops:
Rescaling": MobileNetV3's input preprocessing, EfficientNet's, ConvNeXt's). On an image, both compute x * scale +
offset per channel, which is a 1x1 depthwise convolution: kernel the scale, bias the offset. That layer takes the
refused one's place under the same name, so the graph keeps its shape and its other layers their names and weights.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from core.custom_layers import custom_objects

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Affine:
    """What a layer computes on each channel of its input: x * scale + offset."""

    scale: np.ndarray  # (channels,), float32
    offset: np.ndarray
    formula: str  # for the description


def _is_graph_model(model: Any) -> bool:
    import tensorflow as tf

    return isinstance(model, tf.keras.Model) and bool(getattr(model, "_is_graph_network", False))


def _image_channels(layer: Any) -> int | None:
    """The channel count of the 4-D floating-point tensor every call of `layer` reads; None if it reads another."""
    channels = set()
    for node in layer.inbound_nodes:
        tensor = node.input_tensors
        if isinstance(tensor, list | tuple) or tensor.shape.rank != 4 or not tensor.dtype.is_floating:
            return None  # an integer input: a convolution would not cast it as Rescaling does
        channels.add(tensor.shape[-1])
    return channels.pop() if len(channels) == 1 and None not in channels else None


def _per_channel(value: Any, channels: int) -> np.ndarray | None:
    """`value` as the layer broadcasts it over an (N, H, W, channels) input, one number per channel; None when it
    varies along another axis."""
    array = np.asarray(value, np.float32)
    try:
        return np.broadcast_to(array, (1, 1, 1, channels)).reshape(channels).copy()
    except ValueError:
        return None


def _number(values: np.ndarray) -> str:
    return f"{values[0]:.4g}" if np.all(values == values[0]) else "per channel"


def _rescaling(layer: Any, channels: int) -> _Affine | None:
    scale, offset = _per_channel(layer.scale, channels), _per_channel(layer.offset, channels)
    if scale is None or offset is None:
        return None
    return _Affine(scale, offset, f"x * {_number(scale)} + {_number(offset)}")


def _normalization(layer: Any, channels: int) -> _Affine | None:
    """Keras computes (x - mean) / max(sqrt(variance), epsilon), or with `invert` mean + x * that divisor."""
    import tensorflow as tf

    mean, variance = _per_channel(layer.mean, channels), _per_channel(layer.variance, channels)
    if mean is None or variance is None:
        return None
    divisor = np.maximum(np.sqrt(variance), np.float32(tf.keras.backend.epsilon()))
    if layer.invert:
        return _Affine(divisor, mean, "mean + x * sqrt(variance)")
    scale = (1 / divisor.astype(np.float64)).astype(np.float32)
    return _Affine(scale, (-mean / divisor.astype(np.float64)).astype(np.float32), "(x - mean) / sqrt(variance)")


def _affine(layer: Any) -> _Affine | None:
    """The per-channel affine map `layer` computes, if it is a Rescaling or Normalization of an image."""
    import tensorflow as tf

    channels = _image_channels(layer)
    if channels is None:
        return None
    if type(layer) is tf.keras.layers.Rescaling:  # exact: a subclass may compute something else
        return _rescaling(layer, channels)
    if type(layer) is tf.keras.layers.Normalization:
        return _normalization(layer, channels)
    return None


def _depthwise_entry(entry: dict) -> dict:
    """`entry` (a layer of the model's configuration) made a 1x1 depthwise convolution of the same name, dtype,
    calls (inbound_nodes) and, in a Sequential model's first layer, input shape."""
    import tensorflow as tf

    kept = {key: entry["config"][key] for key in ("name", "dtype", "batch_input_shape") if key in entry["config"]}
    serialized = tf.keras.layers.serialize(tf.keras.layers.DepthwiseConv2D(1, padding="valid", **kept))
    return {**entry, **serialized, "config": {**serialized["config"], **kept}}


def _rebuilt(model: Any, config: dict, allow_unsafe_code: bool) -> Any:
    """A model of `model`'s class from `config`. Its Lambda layers' code is the code `model` already runs, loaded
    under `allow_unsafe_code` (Keras's safe mode refuses it otherwise)."""
    import tensorflow as tf
    from keras.src.saving.serialization_lib import SafeModeScope

    classes = {type(layer).__name__: type(layer) for layer in model.layers}
    classes.update({tf.keras.utils.get_registered_name(cls): cls for cls in classes.values()})
    with SafeModeScope(not allow_unsafe_code):
        return type(model).from_config(config, custom_objects={**custom_objects(), **classes})


def device_equivalent(model: Any, *, allow_unsafe_code: bool = False) -> tuple[Any, list[str]]:
    """`model` with each Rescaling and Normalization of a 4-D image tensor (a top-level layer; one number per
    channel, or one for all) replaced by the 1x1 depthwise convolution that computes the same, and a description
    of each replacement. `model` itself, with no descriptions, when there is nothing to replace, when it is not a
    built functional or Sequential model (a subclassed model has no layer graph to edit) or when Keras cannot
    rebuild it from its configuration (logged): the device's converter then says what it refuses."""
    if not _is_graph_model(model):
        return model, []
    maps = {layer.name: found for layer in model.layers if (found := _affine(layer)) is not None}
    if not maps:
        return model, []
    config = model.get_config()
    entries = [_depthwise_entry(e) if e["config"]["name"] in maps else e for e in config["layers"]]
    try:
        substituted = _rebuilt(model, {**config, "layers": entries}, allow_unsafe_code)
    except Exception as exc:  # Keras raises many types for a configuration it cannot rebuild
        log.warning("%s kept as it is: rebuilding %r failed: %s: %s", list(maps), model.name, type(exc).__name__, exc)
        return model, []
    for layer in substituted.layers:
        if layer.name in maps:
            found = maps[layer.name]
            layer.set_weights([found.scale.reshape(1, 1, -1, 1), found.offset])
        else:
            layer.set_weights(model.get_layer(layer.name).get_weights())
    return substituted, [_description(model.get_layer(name), found) for name, found in maps.items()]


def _description(layer: Any, found: _Affine) -> str:
    return (
        f"{layer.name} ({type(layer).__name__}, {found.formula}) replaced by a 1x1 depthwise convolution: "
        "the same function"
    )
