"""When quantization costs accuracy: which layers lost it, and why.

Two measurements, one per way of quantizing, both told per Keras layer:

* MCT models: MCT's XQuant compares the float and the quantized Keras model on the calibration and the
  evaluation images, at every weighted layer's output (before that layer's own activation quantizer), as
  cosine similarity, SQNR and MSE (core.analysis.layer_tools.run_xquant).
* Models of TensorFlow's converter: its QuantizationDebugger runs each quantized op next to its float twin
  fed the same dequantized inputs, so each tensor's error is the op's own (weights and output quantizer).

A layer's loss is in dB: how much more noise, relative to its signal, it adds than an 8-bit tensor costs
anyway (HEALTHY_SQNR_DB). The debugger's noise-to-signal is taken per channel (the median channel), so a
grid too coarse for most channels shows even where the biggest channel's error looks like plain rounding;
its RMSE/scale (the debugger guide's metric) is reported beside it. XQuant's is the drop in SQNR from the
layer's inputs to its output; at the model output, the SQNR is ours, taken about each output's mean (an offset
common to a classifier's outputs is no signal). XQuant sees the quantization of a layer's output only where that
output is consumed (at the next weighted layer, or at the model output), so a drop is charged to the layer feeding
it when that layer's output has a range cause (core.analysis.layer_causes), and to the layer where it shows otherwise.
The causes come from the float model's activations on the calibration images.

A BatchNormalization that both quantizers fold into the convolution before it is reported under that convolution's
name ("b2_conv3 (Conv2D, b2_bn3 folded in)"): the converter names the fused op's output tensor after the
normalization, and MCT names the folded convolution '<conv>_bn', but the convolution is the layer a user can act on.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import Future
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from core.analysis.layer_causes import (
    Cause,
    Join,
    activation_stats,
    folded_normalizations,
    inbound_layers,
    joins,
    measured_layers,
    range_causes,
    sensitive_cause,
)
from core.analysis.layer_tools import (
    CONVERTER_ANALYSED_VARIANTS,
    INPUT,
    debugger_layer_metrics,
    input_noise_to_signal,
    mct_folded_outputs,
    mct_unsigned_outputs,
    output_noise_to_signal,
    run_xquant,
    xquant_layer_metrics,
    xquant_output_metrics,
)
from core.analysis.records import LayerAnalysis, LayerReport
from core.evaluate.models import load_keras_model, load_quantized_keras_model

# What 8 bits leave of a real tensor's typical channel when its grid fits (a trained digits CNN's layers keep
# 30 to 55 dB; 6 dB a bit, less the crest factor): noise below it is the price of 8 bits, not a loss.
HEALTHY_SQNR_DB = 30.0
# A layer adding ten times that noise (10 dB) stands out: the summary names it, and a first or last layer
# losing that much from clean inputs, with no range cause, is called sensitive.
SIGNIFICANT_LOSS_DB = 10.0
_HEALTHY_NOISE = 10 ** (-HEALTHY_SQNR_DB / 10)
# Inputs noisier than this (SQNR under 20 dB) already carry an upstream loss, which the layers after it
# amplify: a drop measured there does not make a first or last layer "sensitive".
_CLEAN_INPUT_NOISE = _HEALTHY_NOISE * 10 ** (SIGNIFICANT_LOSS_DB / 10)
_NO_SIGNAL = 1 / _HEALTHY_NOISE  # the noise-to-signal counted for a tensor that lost its signal: -30 dB SQNR


class Charge(NamedTuple):
    """A loss measured at `seen_at` and charged to a layer."""

    loss_db: float
    seen_at: str
    clean_inputs: bool


def finite_or_none(value: float | None) -> float | None:
    return float(value) if value is not None and math.isfinite(value) else None


def loss_db(noise_here: float, noise_before: float = 0.0) -> float:
    """The noise-to-signal a layer adds (powers), in dB over what 8 bits cost anyway; never negative. Noise
    without signal (infinite, or not a number) counts as `_NO_SIGNAL`."""

    def bounded(noise: float) -> float:
        return min(noise, _NO_SIGNAL) if noise >= 0 else _NO_SIGNAL  # NaN compares False

    return max(0.0, 10 * math.log10((bounded(noise_here) + _HEALTHY_NOISE) / (bounded(noise_before) + _HEALTHY_NOISE)))


STATS_MEMO_SIZE = 4
_stats_memo: dict[tuple, Future] = {}
_stats_memo_lock = threading.Lock()


def float_activation_stats(model, model_path: str, calibration_path: str, batch_size: int) -> dict:
    """`activation_stats` of the float model on the calibration images, computed once per process for the files as
    they are: the analyses of a run's models (run side by side) all read the same, and at 224 px each pass over the
    calibration images is minutes."""
    files = tuple((str(Path(p).resolve()), Path(p).stat().st_mtime_ns) for p in (model_path, calibration_path))
    key = (*files, batch_size)
    with _stats_memo_lock:
        future = _stats_memo.get(key)
        mine = future is None
        if mine:
            future = _stats_memo[key] = Future()
            while len(_stats_memo) > STATS_MEMO_SIZE:  # the oldest first (a dict keeps its insertion order)
                del _stats_memo[next(iter(_stats_memo))]
    assert future is not None
    if mine:
        try:
            future.set_result(activation_stats(model, np.load(calibration_path, mmap_mode="r"), batch_size))
        except BaseException as exc:
            with _stats_memo_lock:
                _stats_memo.pop(key, None)
            future.set_exception(exc)
    return dict(future.result())


def analyse_mct_model(
    *,
    float_model_path: str,
    quantized_model_path: str,
    calibration_path: str,
    evaluation_images_path: str,
    model_name: str = "keras_quantized",
    batch_size: int = 32,
    report_dir: str | Path | None = None,
    allow_unsafe_code: bool = False,
) -> LayerAnalysis:
    """XQuant on an MCT-quantized Keras model (MCT's Keras format); its report folder goes to `report_dir`."""
    float_model = load_keras_model(float_model_path, allow_unsafe_code)
    quantized = load_quantized_keras_model(quantized_model_path)
    calibration = np.load(calibration_path, mmap_mode="r")
    evaluation = np.load(evaluation_images_path, mmap_mode="r")
    result = run_xquant(float_model, quantized, calibration, evaluation, batch_size, report_dir)
    folded = folded_normalizations(float_model)
    renamed = mct_folded_outputs(folded)  # MCT's '<conv>_bn' computes the normalization's output
    metrics = xquant_layer_metrics(result, quantized, renamed)
    stats = float_activation_stats(float_model, float_model_path, calibration_path, batch_size)
    causes = _causes(stats, mct_unsigned_outputs(quantized, renamed), joins(float_model))
    noise = {name: _noise(values.get("sqnr_db")) for name, values in metrics.items()}
    noise[INPUT] = input_noise_to_signal(quantized, evaluation, batch_size)
    inbound = inbound_layers(float_model)
    charges: dict[str, list[Charge]] = {}
    for name in metrics:
        before, path = _upstream(name, inbound, metrics.keys())
        noise_before = max(noise[p] for p in before)
        metrics[name]["lost_here_db"] = loss = loss_db(noise[name], noise_before)
        charge = Charge(loss, name, noise_before <= _CLEAN_INPUT_NOISE)
        charges.setdefault(_charged(name, path, causes), []).append(charge)
    output_metrics = xquant_output_metrics(result)
    output_noise = output_noise_to_signal(float_model, quantized, evaluation, batch_size)
    output_metrics["output_sqnr_db_about_mean"] = -10 * math.log10(output_noise) if output_noise > 0 else math.inf
    for output in float_model.output_names:  # the output quantizer's loss shows only at the model output
        before, path = ({output}, []) if output in metrics else _upstream(output, inbound, metrics.keys())
        noise_before = max(noise[p] for p in before)
        # The larger of ours and XQuant's: ours has no signal for an output of one value.
        loss = loss_db(max(output_noise, _noise(output_metrics.get("output_sqnr_db"))), noise_before)
        charge = Charge(loss, "model output", noise_before <= _CLEAN_INPUT_NOISE)
        charges.setdefault(_charged(output, [output, *path], causes), []).append(charge)
    return _assemble(model_name, "xquant", float_model, stats, causes, metrics, charges, output_metrics, folded)


def analyse_converter_model(
    *,
    float_model_path: str,
    calibration_path: str,
    variant: str,
    evaluation_images_path: str | None = None,
    model_name: str | None = None,
    debug_image_count: int = 32,
    batch_size: int = 32,
    allow_unsafe_code: bool = False,
    converter_lock: AbstractContextManager | None = None,
) -> LayerAnalysis:
    """TensorFlow's QuantizationDebugger on the `variant` the converter makes of the float model, fed
    `debug_image_count` evaluation images (calibration images when no evaluation images are given). The
    converter runs under `converter_lock` (tasks.analyse_layers.DEBUGGER_LOCK inside the workflow)."""
    if variant not in CONVERTER_ANALYSED_VARIANTS:
        raise ValueError(f"variant {variant!r}: the debugger analyses {', '.join(CONVERTER_ANALYSED_VARIANTS)}")
    model = load_keras_model(float_model_path, allow_unsafe_code)
    calibration = np.load(calibration_path, mmap_mode="r")
    debug_images = np.load(evaluation_images_path, mmap_mode="r") if evaluation_images_path else calibration
    metrics, unsigned, model_metrics = debugger_layer_metrics(
        model, calibration, debug_images[:debug_image_count], variant, converter_lock, calibration_path
    )
    stats = float_activation_stats(model, float_model_path, calibration_path, batch_size)
    causes = _causes(stats, unsigned, joins(model))
    charges = {}
    for name, values in metrics.items():  # each op's own error: its inputs are the quantized model's, dequantized
        noise = values.get("channel_noise_to_signal")
        if name in model.output_names:  # a model output's noise counts about its mean too (an offset is no signal)
            about_mean = values.get("noise_to_signal_about_mean")
            noise = max(v for v in (noise, about_mean, 0.0) if v is not None and math.isfinite(v))
        values["lost_here_db"] = loss = loss_db(noise if noise is not None and math.isfinite(noise) else 0.0)
        charges[name] = [Charge(loss, name, clean_inputs=True)]
    return _assemble(
        model_name or f"tflite_{variant}",
        "quantization_debugger",
        model,
        stats,
        causes,
        metrics,
        charges,
        model_metrics,
        folded_normalizations(model),
    )


def _noise(sqnr_db: float | None) -> float:
    """Noise over signal power: none where XQuant could not tell; -100 dB and below all count as no signal."""
    return 0.0 if sqnr_db is None else 10 ** (-max(sqnr_db, -100.0) / 10)


def _causes(stats: dict, unsigned: dict[str, bool], joined: dict[str, Join]) -> dict[str, list[Cause]]:
    return {
        name: range_causes(layer_stats, unsigned.get(name, False), joined.get(name))
        for name, layer_stats in stats.items()
    }


def _upstream(name: str, inbound: dict[str, list[str]], points) -> tuple[set[str], list[str]]:
    """The nearest measured layers above `name` (INPUT for the model input) and the layers on the way (those
    included): the layers whose output quantizers lie between them and `name`."""
    found, path, seen = set(), [], set()
    pending = list(inbound.get(name, []))
    while pending:
        source = pending.pop()
        if source in seen:
            continue
        seen.add(source)
        if not inbound.get(source):  # the input layer
            found.add(INPUT)
            continue
        path.append(source)
        if source in points:
            found.add(source)
        else:
            pending.extend(inbound[source])
    return found or {INPUT}, path


def _charged(name: str, path: list[str], causes: dict[str, list[Cause]]) -> str:
    """The layer on `path` whose output has the most severe range cause; `name` when none has one."""
    flagged = [(causes[layer][0].severity, layer) for layer in path if causes.get(layer)]
    return max(flagged)[1] if flagged else name


def _assemble(
    model_name: str,
    method: Literal["xquant", "quantization_debugger"],
    model,
    stats: dict,
    causes: dict[str, list[Cause]],
    metrics: dict[str, dict[str, float | None]],
    charges: dict[str, list[Charge]],
    model_metrics: dict[str, float | None],
    folded: dict[str, str] | None = None,
) -> LayerAnalysis:
    """`folded`: BatchNormalization -> the convolution both quantizers fold it into (`folded_normalizations`). The
    fused op's output is the normalization's (the converter names its tensor so; MCT's '<conv>_bn' computes it), but
    the layer a user can act on, and the one the repair gives 16 bits (MCT's node), is the convolution: one report,
    the convolution's, carries both layers' losses, with the normalization's output and metrics."""
    folded = folded or {}
    layers = measured_layers(model)
    order = [layer.name for layer in layers]
    measured = [name for name in order if name in metrics]
    ends: dict[str, Literal["first", "last"]] = {measured[0]: "first", measured[-1]: "last"} if measured else {}
    folded_into = {convolution: normalization for normalization, convolution in folded.items()}
    reports = []
    for layer in layers:
        name = layer.name
        if name in folded:  # reported with its convolution
            continue
        normalization = folded_into.get(name)
        parts = [name] if normalization is None else [name, normalization]  # the fused op's output last
        layer_charges = [charge for part in parts for charge in charges.get(part, [])]
        loss = sum(charge.loss_db for charge in layer_charges)
        own_loss = sum(charge.loss_db for charge in layer_charges if charge.clean_inputs)
        layer_causes = _merged_causes([causes.get(part, []) for part in reversed(parts)])
        end = next((ends[part] for part in reversed(parts) if part in ends), None)
        if end and own_loss >= SIGNIFICANT_LOSS_DB and not layer_causes:  # nothing in its ranges explains it
            layer_causes.append(sensitive_cause(end))
        layer_stats = next((stats[part] for part in reversed(parts) if part in stats), None)
        layer_metrics = {key: value for part in parts for key, value in metrics.get(part, {}).items()}
        kind = type(layer).__name__
        reports.append(
            dict(
                layer=name,
                type=kind if normalization is None else f"{kind}, {normalization} folded in",
                loss_db=round(loss, 3),
                loss_seen_at=[
                    folded.get(charge.seen_at, charge.seen_at) for charge in sorted(layer_charges, reverse=True)
                ],
                metrics={key: finite_or_none(value) for key, value in layer_metrics.items()},
                output_range=(layer_stats.low, layer_stats.high) if layer_stats else None,
                channel_spread=finite_or_none(layer_stats.channel_spread) if layer_stats else None,
                negative_share=layer_stats.negative_share if layer_stats else None,
                outlier_ratio=finite_or_none(layer_stats.outlier_ratio) if layer_stats else None,
                causes=[cause.text for cause in layer_causes],
                cause_kinds=[cause.kind for cause in layer_causes],
            )
        )
    reports.sort(key=lambda report: (-report["loss_db"], order.index(report["layer"])))
    ranked = [LayerReport(rank=i, **report) for i, report in enumerate(reports, 1)]
    return LayerAnalysis(
        model=model_name,
        method=method,
        layers=ranked,
        model_metrics={key: finite_or_none(value) for key, value in model_metrics.items()},
        summary=_summary(ranked),
    )


def _merged_causes(lists: list[list[Cause]]) -> list[Cause]:
    """One layer's causes from several tensors' (a folded normalization's output first): each kind once, as the first
    list has it, most severe first."""
    kept: dict[str, Cause] = {}
    for found in lists:
        for cause in found:
            kept.setdefault(cause.kind, cause)
    return sorted(kept.values(), key=lambda cause: -cause.severity)


def _summary(layers: list[LayerReport]) -> str:
    if not layers:
        return "The model has no layer to analyse."
    worst = layers[0]
    if worst.loss_db < SIGNIFICANT_LOSS_DB:
        return (
            f"No layer stands out: the largest loss, {worst.loss_db:.1f} dB over what 8 bits cost, "
            f"is at {worst.layer} ({worst.type})."
        )
    where = ", ".join(worst.loss_seen_at)
    cause = worst.causes[0] if worst.causes else "no cause found in its float output range"
    return (
        f"{worst.layer} ({worst.type}) loses the most: {worst.loss_db:.1f} dB of signal-to-noise over what "
        f"8 bits cost (measured at {where}). Main cause: {cause}."
    )
