"""Which layers of a model MCT may give 16-bit activations, read from the run's TPC: the candidates of a precision
repair for the IMX500 (more bits only where a layer needs them, chosen from the layer analysis).

MCT (2.6.1) lets a layer's output take 16 bits when its operator set has a 16-bit option (the imx500 TPC 4.0 and
later: Add, Sub, Mul, Concatenate, the activations, Conv and Dense; TPC 1.0 none) and every layer consuming it
accepts 16-bit input (Conv, Dense and pooling take 8-bit input only). A layer fused with the activation after it
(Conv + ReLU) has no quantizer of its own: the activation's node is the one to name. The answer comes from MCT's
own graph preparation and filtering, not from a list written here, so it follows the TPC in use; those functions
are MCT internals, so a change of MCT version may move them (the import fails loudly).

A model quantized with some 16-bit activations exports to MCT's Keras format only: MCT's TFLite exports refuse or
mix int8 and int16 tensors that neither TensorFlow Lite nor Vela accept (measured with MCT 2.6.1, TF 2.15.1).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.build.platforms import choose_platform, target_platform_capabilities
from core.evaluate.models import load_keras_model

SIXTEEN_BITS = 16
MCT_FOLDED_SUFFIX = "_bn"  # MCT's name for a convolution with a BatchNormalization folded in: '<convolution>_bn'
MCT_ACTIVATION_SUFFIX = "_post_activation"  # ... and for a layer's own activation split off it


def sixteen_bit_layers(
    *,
    model_path: str,
    calibration_path: str,
    batch_size: int,
    target_platform: str,
    allow_unsafe_code: bool = False,
) -> list[str]:
    """The names of the graph nodes (Keras layer names; MCT's node for a decomposed activation) whose output MCT
    quantizes itself and may quantize with 16 bits under the run's TPC, in MCT's topological order."""
    import model_compression_toolkit as mct
    from model_compression_toolkit.core.common.quantization.set_node_quantization_config import (
        filter_node_qco_by_graph,
    )
    from model_compression_toolkit.core.graph_prep_runner import graph_preparation_runner
    from model_compression_toolkit.core.keras.default_framework_info import DEFAULT_KERAS_INFO
    from model_compression_toolkit.core.keras.keras_implementation import KerasImplementation
    from model_compression_toolkit.target_platform_capabilities.targetplatform2framework.attach2keras import (
        AttachTpcToKeras,
    )

    model = load_keras_model(model_path, allow_unsafe_code)
    calibration = np.load(calibration_path, mmap_mode="r")
    tpc = target_platform_capabilities(choose_platform(target_platform))
    quantization = mct.core.CoreConfig().quantization_config
    capabilities = AttachTpcToKeras().attach(tpc, custom_opset2layer=quantization.custom_tpc_opset_to_layer)

    def batches():  # the graph's preparation reads shapes from one batch; no statistics are collected
        yield [np.asarray(calibration[:batch_size])]

    graph = graph_preparation_runner(
        model,
        batches,
        quantization,
        DEFAULT_KERAS_INFO,
        KerasImplementation(),
        capabilities,
        bit_width_config=None,
    )
    found = []
    for node in graph.get_topo_sorted_nodes():
        _, options = filter_node_qco_by_graph(node, capabilities, graph, node.get_qco(capabilities))
        bits = {option.activation_n_bits for option in options if option.enable_activation_quantization}
        if SIXTEEN_BITS in bits and node.is_activation_quantization_enabled():
            found.append(node.name)
    return found


def node_names_in(model: Any, names: tuple[str, ...]) -> tuple[str, ...]:
    """`names` (MCT's nodes in the model the candidates were asked of) as MCT names them in `model`: a convolution
    MCT folds a batch normalization into is '<conv>_bn', but once equalization has folded the normalization itself,
    MCT's node is the convolution's own name."""
    import tensorflow as tf

    layers = {layer.name for layer in model.layers}
    normalized = {
        source.name
        for layer in model.layers
        if isinstance(layer, tf.keras.layers.BatchNormalization)
        for node in layer.inbound_nodes
        for source in tf.nest.flatten(node.inbound_layers)
    }
    found = []
    for name in names:
        stem = name.removesuffix(MCT_FOLDED_SUFFIX)
        folded_away = name != stem and name not in layers and stem in layers and stem not in normalized
        found.append(stem if folded_away else name)
    return tuple(found)


def bit_width_config(sixteen_bit: tuple[str, ...]) -> Any:
    """MCT's bit-width configuration that gives the named nodes 16-bit activations (None for none)."""
    import model_compression_toolkit as mct
    from model_compression_toolkit.core.common.network_editors import NodeNameFilter

    if not sixteen_bit:
        return None
    config = mct.core.BitWidthConfig()
    config.set_manual_activation_bit_width([NodeNameFilter(name) for name in sixteen_bit], SIXTEEN_BITS)
    return config
