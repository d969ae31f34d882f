"""The records of results/ (see core/records.py for what a record is)."""

from __future__ import annotations

from core.analysis.records import LayerAnalysis
from core.build.records import BuiltModel, UnsupportedVariant
from core.config import ValidatedConfig
from core.data.records import CalibrationSet, EvaluationSet
from core.evaluate.records import Latency
from core.failures import ModelFailure
from core.kinds.records import Evaluation
from core.records import Record
from core.repair.records import RepairOutcome
from core.targets.records import HardwareReports


class RunRecords(Record):
    """Everything a run's steps found, by model name where there is one per model: what the results are built from."""

    validated: ValidatedConfig
    calibration: CalibrationSet
    built: list[BuiltModel]
    unsupported: list[UnsupportedVariant]
    evaluation_set: EvaluationSet
    evaluations: dict[str, Evaluation]
    latencies: dict[str, Latency]  # the models whose latency was measured
    hardware: HardwareReports
    repair: RepairOutcome | None = None
    layer_analysis: dict[str, LayerAnalysis] = {}  # by model name, for the models that lost too much
    failures: list[ModelFailure] = []  # the models whose step failed (a crash): not in `evaluations` when it was
    # their conversion or evaluation, without a latency when it was their latency


class Rejection(Record):
    """A model the recommendation passed over, and why."""

    model: str
    top_1_drop: float  # the headline score's drop (a classifier's Top-1), under results.json's name
    reason: str


class Recommendation(Record):
    """The model to ship, or why none qualifies; results.json's `recommendation`."""

    objective: str
    max_accuracy_drop: float | int  # as configured: results.json writes 0 as 0, not 0.0
    baseline_top_1: float  # the float model's headline score
    target_device: str | None
    chosen: str | None
    closest: str | None
    reason: str
    rejected: list[Rejection]
