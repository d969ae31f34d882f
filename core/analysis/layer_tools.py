"""Running the two per-layer measurements and reading their results per Keras layer name.

XQuant (MCT 2.6.1) returns a dict of four entries: `output_similarity_metrics_repr` and `..._val` (the model
output's similarity on the representative and the validation data: {"mse", "cs", "sqnr"}), and
`intermediate_similarity_metrics_repr` and `..._val` ({quantized layer name: {"mse", "cs", "sqnr"}}), each
the mean over batches. Its quantized layer names are those of MCT's quantization wrappers (each wraps the
float layer of the same inner name, but for a convolution with a BatchNormalization folded in: '<conv>_bn', whose
output is the normalization's); its "cs" is Keras's CosineSimilarity *loss*, the negative cosine; its "sqnr" a power
ratio. We call the two steps of `xquant_report_keras_experimental` ourselves: the facade also attaches a log file to
MCT's logger, never detached, and calls `logging.shutdown()`, which flushes and closes every logging handler in the
process (Prefect's included).

TensorFlow's QuantizationDebugger dumps one CSV row per quantized tensor (num_elements, stddev, mean_error,
max_abs_error, mean_squared_error, our metrics, scale, zero_point, tensor_name). Its tensor names join the
fused TF ops ("model/conv2d_1/Relu;model/conv2d_1/BiasAdd;..."), the op producing the tensor first.
"""

from __future__ import annotations

import csv
import io
import math
import tempfile
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path

import numpy as np

from core.build.precision import MCT_ACTIVATION_SUFFIX, MCT_FOLDED_SUFFIX
from core.build.shared_calibration import calibrations_shared
from core.build.variants import VARIANTS

INPUT = "model input"
# int8 inside in all three (full_uint8 differs only at its input and output, which the debugger feeds int8).
CONVERTER_ANALYSED_VARIANTS = ("int8_float_io", "full_int8", "full_uint8")
_UNSIGNED_INT8_ZERO_POINT = -128  # an int8 tensor whose zero point is its minimum holds no negative value


def batches(images: np.ndarray, batch_size: int) -> Callable:
    """A dataset factory as MCT and XQuant take it: each call yields [batch] anew."""
    return lambda: ([images[i : i + batch_size]] for i in range(0, len(images), batch_size))


def run_xquant(float_model, quantized_model, calibration, evaluation, batch_size: int, report_dir=None) -> dict:
    """XQuant's result dict; its report (TensorBoard files, quant_report.json) goes to `report_dir` if given."""
    from model_compression_toolkit.xquant import XQuantConfig
    from model_compression_toolkit.xquant.keras.core_report_generator import core_report_generator
    from model_compression_toolkit.xquant.keras.keras_report_utils import KerasReportUtils

    with tempfile.TemporaryDirectory(prefix="xquant-") as scratch:
        folder = Path(report_dir or scratch)
        folder.mkdir(parents=True, exist_ok=True)
        config = XQuantConfig(report_dir=str(folder))
        return core_report_generator(
            float_model=float_model,
            quantized_model=quantized_model,
            repr_dataset=batches(calibration, batch_size),
            validation_dataset=batches(evaluation, batch_size),  # XQuant takes element [0] of each as the inputs
            fw_report_utils=KerasReportUtils(config.report_dir),
            xquant_config=config,
        )


def _similarity(values: dict[str, float], suffix: str) -> dict[str, float | None]:
    return {
        f"cosine_similarity{suffix}": -values["cs"] if "cs" in values else None,
        f"sqnr_db{suffix}": sqnr_db(values.get("sqnr")),
        f"mse{suffix}": values.get("mse"),
    }


def sqnr_db(sqnr: float | None) -> float | None:
    """In dB: -inf for noise without signal, None where XQuant could not tell (no signal, no noise: NaN)."""
    if sqnr is None or math.isnan(sqnr):
        return None
    return 10 * math.log10(sqnr) if sqnr > 0 else -math.inf


def mct_folded_outputs(folded: dict[str, str]) -> dict[str, str]:
    """MCT's name of each convolution a BatchNormalization is folded into (`folded`: normalization -> convolution,
    core.analysis.layer_causes.folded_normalizations) -> the float layer whose output it computes: the normalization.
    MCT's folding names the folded node '<convolution>_bn', and its wrapper keeps that name."""
    return {f"{convolution}{MCT_FOLDED_SUFFIX}": normalization for normalization, convolution in folded.items()}


def xquant_layer_metrics(
    result: dict, quantized_model, renamed: dict[str, str] | None = None
) -> dict[str, dict[str, float | None]]:
    """Float layer name -> XQuant's similarity at its output (evaluation images; `_calibration`: calibration).
    `renamed`: MCT's layer names that are no float layer's -> the float layer computing the same output
    (`mct_folded_outputs`)."""
    from mct_quantizers import KerasQuantizationWrapper

    renamed = renamed or {}
    inner = {
        layer.name: layer.layer.name for layer in quantized_model.layers if isinstance(layer, KerasQuantizationWrapper)
    }
    metrics: dict[str, dict[str, float | None]] = {}
    for key, suffix in (
        ("intermediate_similarity_metrics_val", ""),
        ("intermediate_similarity_metrics_repr", "_calibration"),
    ):
        for name, values in result[key].items():
            layer = inner.get(name, name)
            metrics.setdefault(renamed.get(layer, layer), {}).update(_similarity(values, suffix))
    return metrics


def xquant_output_metrics(result: dict) -> dict[str, float | None]:
    return {
        **{f"output_{k}": v for k, v in _similarity(result["output_similarity_metrics_val"], "").items()},
        **{f"output_{k}": v for k, v in _similarity(result["output_similarity_metrics_repr"], "_calibration").items()},
    }


def _holders(quantized_model):
    """(activation quantizer holder, the layer it quantizes the output of) in an MCT-exported model."""
    from mct_quantizers import KerasActivationQuantizationHolder

    for holder in quantized_model.layers:
        if isinstance(holder, KerasActivationQuantizationHolder):
            for node in holder.inbound_nodes:
                yield holder, node.inbound_layers


def _float_name(layer) -> str:
    """MCT wraps a weighted layer (the wrapper's `layer` keeps the float name) and splits its activation off
    into '<name>_post_activation'."""
    inner = getattr(layer, "layer", None)
    return inner.name if inner is not None else layer.name.removesuffix(MCT_ACTIVATION_SUFFIX)


def mct_unsigned_outputs(quantized_model, renamed: dict[str, str] | None = None) -> dict[str, bool]:
    """Float layer name -> whether MCT quantizes its output unsigned (its holder's quantizer records `signed`);
    `renamed` as for `xquant_layer_metrics`."""
    renamed = renamed or {}
    unsigned = {}
    for holder, source in _holders(quantized_model):
        signed = holder.activation_holder_quantizer.get_config().get("signed")
        if signed is not None:
            name = _float_name(source)
            unsigned[renamed.get(name, name)] = not signed
    return unsigned


def input_noise_to_signal(quantized_model, images: np.ndarray, batch_size: int) -> float:
    """Noise over signal power of the model input's quantization (0.0 when the input is not quantized)."""
    import tensorflow as tf

    holder = next(
        (h for h, source in _holders(quantized_model) if isinstance(source, tf.keras.layers.InputLayer)), None
    )
    if holder is None:
        return 0.0
    probe = tf.keras.Model(quantized_model.inputs, holder.output)
    noise = signal = 0.0
    for start in range(0, len(images), batch_size):
        batch = images[start : start + batch_size].astype(np.float64)
        noise += float(((batch - np.asarray(probe(batch, training=False))) ** 2).sum())
        signal += float((batch**2).sum())
    return noise / signal if signal > 0 else 0.0


def output_noise_to_signal(float_model, quantized_model, images: np.ndarray, batch_size: int) -> float:
    """Noise over signal power at the model outputs, both taken about each output's mean over its last axis. An
    offset common to all of a classifier's outputs carries nothing (argmax and softmax ignore it), so it must not
    count as signal: XQuant's output SQNR counts it, and logits near 3000 that 8 bits cannot tell apart still read
    55 dB there."""
    noise = signal = 0.0
    for start in range(0, len(images), batch_size):
        batch = np.asarray(images[start : start + batch_size])
        expected = float_model(batch, training=False)
        got = quantized_model(batch, training=False)
        pairs = zip(expected, got, strict=True) if isinstance(expected, (list, tuple)) else [(expected, got)]
        for reference, quantized in pairs:
            batch_noise, batch_signal = _powers_about_mean(np.asarray(reference), np.asarray(quantized, np.float64))
            noise, signal = noise + batch_noise, signal + batch_signal
    return noise / signal if signal > 0 else 0.0


def _powers_about_mean(reference: np.ndarray, got: np.ndarray) -> tuple[float, float]:
    """(noise power, signal power) summed, each taken about its mean over the last axis."""
    wanted = np.asarray(reference, np.float64)
    error = wanted - got
    noise = float(((error - error.mean(axis=-1, keepdims=True)) ** 2).sum())
    return noise, float(((wanted - wanted.mean(axis=-1, keepdims=True)) ** 2).sum())


def channel_noise_to_signal(float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int) -> float:
    """The median channel's noise power over its signal power in one op's output (the last axis: channels)."""
    reference = np.asarray(float_values, np.float64)
    channels = reference.shape[-1] if reference.ndim > 1 else 1
    reference = reference.reshape(-1, channels)
    dequantized = ((np.asarray(quantized).astype(np.int32) - zero_point) * scale).reshape(-1, channels)
    signal = (reference**2).mean(axis=0)
    noise = ((reference - dequantized) ** 2).mean(axis=0)
    live = signal > 0
    return float(np.median(noise[live] / signal[live])) if live.any() else math.nan


def noise_to_signal_about_mean(float_values: np.ndarray, quantized: np.ndarray, scale: float, zero_point: int) -> float:
    """One op's output noise power over its signal power, both about each row's mean over the last axis: for a model
    output, where an offset common to all of a classifier's outputs carries nothing (see output_noise_to_signal)."""
    dequantized = (np.asarray(quantized).astype(np.int32) - zero_point) * float(scale)
    noise, signal = _powers_about_mean(float_values, dequantized)
    return noise / signal if signal > 0 else math.nan


def layer_for_tensor(tensor_name: str, layer_names: Collection[str], output_names: list[str]) -> str | None:
    """The Keras layer producing a TFLite tensor: the first of its fused ops (the last to run) that names one.
    The converter names a Keras model's output tensor 'StatefulPartitionedCall:<n>'."""
    for op in tensor_name.split(";"):
        for segment in op.split("/"):
            if segment in layer_names:
                return segment
    if tensor_name.startswith("StatefulPartitionedCall") and len(output_names) == 1:
        return output_names[0]
    return None


def _argmax_agreement(float_outputs, quantized_outputs) -> float:
    return float(np.mean(np.argmax(float_outputs[0], axis=-1) == np.argmax(quantized_outputs[0], axis=-1)))


def _output_mse(float_outputs, quantized_outputs) -> float:
    return float(np.mean((np.asarray(float_outputs[0]) - np.asarray(quantized_outputs[0])) ** 2))


def debugger_layer_metrics(
    model,
    calibration: np.ndarray,
    debug_images: np.ndarray,
    variant: str,
    converter_lock: AbstractContextManager | None = None,
    calibration_path: str | None = None,
):
    """Per Keras layer, the debugger's metrics for the tensor it produces (the worst when several), whether
    that tensor is quantized unsigned, and the model output's metrics. The conversions run under
    `converter_lock` (tasks.analyse_layers.DEBUGGER_LOCK in the workflow); given the file `calibration` came from,
    the converter's calibration is the one the run's conversions made (core/build/shared_calibration.py)."""
    import tensorflow as tf

    full_integer = VARIANTS[variant].full_integer
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = lambda: ([image[None].astype(np.float32)] for image in calibration)
    if full_integer:
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    data = lambda: ([image[None].astype(np.float32)] for image in debug_images)  # noqa: E731
    debug = tf.lite.experimental.QuantizationDebugOptions
    with converter_lock or nullcontext(), calibrations_shared(calibration_path):
        calibrated = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=data, debug_options=debug(fully_quantize=full_integer)
        )
        debug_model = calibrated.get_debug_quantized_model()
        float_model = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    # Built again from the debug model: only then does the debugger keep every tensor for the direct comparison
    # (with a converter, the interpreter reuses the buffers of tensors it no longer needs).
    debugger = tf.lite.experimental.QuantizationDebugger(
        quant_debug_model_content=debug_model,
        float_model_content=float_model,
        debug_dataset=data,
        debug_options=debug(
            layer_debug_metrics={"mean_abs_error": lambda diff: float(np.mean(np.abs(diff)))},
            layer_direct_compare_metrics={
                "channel_noise_to_signal": channel_noise_to_signal,
                "noise_to_signal_about_mean": noise_to_signal_about_mean,
            },
            model_debug_metrics={"argmax_agreement": _argmax_agreement, "output_mean_squared_error": _output_mse},
            fully_quantize=full_integer,
        ),
    )
    debugger.run()
    dump = io.StringIO()
    debugger.layer_statistics_dump(dump)
    names = {layer.name for layer in model.layers}
    metrics: dict[str, dict[str, float | None]] = {}
    unsigned: dict[str, bool] = {}
    worst: dict[str, float] = {}  # per layer, the channel noise-to-signal of the tensor kept
    for row in csv.DictReader(io.StringIO(dump.getvalue())):
        layer = layer_for_tensor(row["tensor_name"], names, list(model.output_names))
        values = {key: float(row[key]) for key in row if key not in {"op_name", "tensor_idx", "tensor_name"}}
        values["rmse_over_scale"] = math.sqrt(values["mean_squared_error"]) / values["scale"]
        noise = values["channel_noise_to_signal"]
        noise = noise if math.isfinite(noise) else 0.0  # NaN: no channel carries any signal
        if layer is None or (layer in worst and noise <= worst[layer]):
            continue
        worst[layer] = noise
        metrics[layer] = dict(values)
        unsigned[layer] = int(values["zero_point"]) == _UNSIGNED_INT8_ZERO_POINT
    model_metrics = {key: float(value) for key, value in (debugger.model_statistics or {}).items()}
    return metrics, unsigned, model_metrics
