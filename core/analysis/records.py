"""The records of analysis/ (see core/records.py for what a record is)."""

from __future__ import annotations

from typing import Literal

from core.analysis.layer_causes import CauseKind
from core.records import Record


class LayerReport(Record):
    """One Keras layer: what the tool measured, its float output on the calibration images, and the causes."""

    layer: str
    type: str  # the Keras class
    rank: int  # 1: lost the most
    loss_db: float  # the noise it adds beyond what 8 bits cost, dB (what the ranking sorts by)
    loss_seen_at: list[str]  # the layers (or "model output") where that loss was measured
    metrics: dict[str, float | None]  # the tool's, at this layer (None: not finite)
    output_range: tuple[float, float] | None
    channel_spread: float | None
    negative_share: float | None
    outlier_ratio: float | None
    causes: list[str]  # most severe first
    cause_kinds: list[CauseKind] = []  # the same causes, as the repair search reads them


class LayerAnalysis(Record):
    """Which layers lost the accuracy of one model, worst first, and why (core/analysis/layer_analysis.py)."""

    model: str
    method: Literal["xquant", "quantization_debugger"]
    layers: list[LayerReport]  # worst first
    model_metrics: dict[str, float | None]
    summary: str
