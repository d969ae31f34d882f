"""The records of analysis/ (see core/records.py for what a record is)."""

from __future__ import annotations

from typing import Any, Literal

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


class LayerSensitivity(Record):
    """One candidate: the model's score with that layer's output kept in float, everything else quantized."""

    layer: str  # the candidate's name, as given
    holders: list[str]  # the quantized model's activation holders bypassed for it
    score: float  # the headline score with the layer's output in float
    gain: float  # over the fully quantized model's score: what 16 bits there may win back
    seconds: float  # scoring it (the function's trace included)


class ScoreSensitivity(Record):
    """The candidates ranked by what keeping their output in float wins back of the score, best first."""

    quantized_score: float  # the fully quantized model, nothing bypassed
    quantized_seconds: float
    layers: list[LayerSensitivity]  # by gain, best first (ties: in the candidates' order)
    not_found: list[str]  # candidates with no activation holder in the quantized model (not scored)
    left_out: list[str]  # candidates past `max_candidates` (not scored)
    seconds: float  # all of it: loading the model and every scoring
    image_count: int | None = None  # the images scored, when the caller says
    why: str | None = None  # why the caller measured it

    def summary(self) -> dict[str, Any]:
        """As results.json's repair.score_ranking gives it."""
        return {
            "why": self.why,
            "image_count": self.image_count,
            "quantized_score": round(self.quantized_score, 6),
            "layers": [{"layer": x.layer, "score": round(x.score, 6), "gain": round(x.gain, 6)} for x in self.layers],
            "not_found": self.not_found,
            "left_out": self.left_out,
            "seconds": round(self.seconds, 2),
        }
