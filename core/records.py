"""The typed records the workflow's steps hand each other.

Each is an immutable pydantic model: an editor knows what a step returns, a misspelt field fails at
once, and every record pickles for Prefect's result persistence and hashes for the content cache.
Records hold paths and small values, never TensorFlow objects. Their `model_dump()` is what lands in
results.json, so field names are the names users read there.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from core.config import Preprocessing, QuantizeConfig
from core.variants import FULL_INTEGER_VARIANTS, IMX500_VARIANT, model_id


class Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ValidatedConfig(Record):
    """A configuration whose paths are absolute and checked, with what we learnt about its files."""

    config: QuantizeConfig
    source: str
    model_format: str
    model_input_shape: list[int | None]
    class_names: list[str]  # index is the class id
    calibration_image_count: int
    evaluation_image_count: int
    labels_without_folder: list[str]


class SkippedImage(Record):
    """An image left out because it could not be decoded, and why."""

    file: str
    reason: str


class CalibrationSet(Record):
    """The calibration images, preprocessed, in one .npy array of iteration_count * batch_size images."""

    path: str
    batch_size: int
    iteration_count: int
    images_found: int
    images_used: int
    seed: int
    skipped: list[SkippedImage]


class EvaluationSet(Record):
    """The evaluation images, decoded once for every model: images.npy, labels.npy (class ids), files.json."""

    images_path: str
    labels_path: str
    files_path: str
    image_count: int
    class_names: list[str]
    skipped: list[SkippedImage]


class SavedModelExport(Record):
    """The float Keras model exported once as a SavedModel folder: the form TensorFlow's converter converts."""

    path: str
    signature_key: str  # the one signature it holds, the model's call
    tensorflow_version: str


class TFLiteFacts(Record):
    """What a .tflite model is, read back from the file (core.variants.inspect_tflite)."""

    input_dtype: str
    output_dtype: str
    input_quantization: tuple[float, int]  # (scale, zero point); (0.0, 0) for a float tensor
    output_quantization: tuple[float, int]
    tensor_types: tuple[str, ...]
    ops: tuple[str, ...]


class QuantizedModel(Record):
    """An MCT-quantized Keras model (MCT's Keras format) and how it was made."""

    variant: str
    path: str
    method: str
    error_method: str
    target_platform: str
    tpc_version: str
    tpc_reason: str | None = None  # why this TPC version: the one paired with the installed IMX500 converter
    imx500_converter_version: str | None = None
    mct_version: str
    gptq_epochs: int | None = None
    weights_memory_ratio: float | None = None
    weights_memory_budget_bytes: float | None = None
    weights_memory_8bit_bytes: float | None = None
    z_threshold: float | None = None
    shift_negative_params_search: bool | None = None

    def details(self) -> dict:
        """As results.json's `mct_variants` shows it."""
        return self.model_dump(exclude={"variant"}, exclude_none=True)


class BuiltModel(Record):
    """A TFLite model one step built, checked against its variant's promise."""

    variant: str
    path: str
    facts: TFLiteFacts
    builder: str  # "TensorFlow <version> converter" or "MCT exporter (int8, float32 input and output)"
    quantization: QuantizedModel | None = None  # the MCT model it was exported from


class UnsupportedVariant(Record):
    """A variant the converter cannot make for this model (16x8 of an ELU model), with its message."""

    variant: str
    reason: str


class Evaluation(Record):
    """One model's predictions on the evaluation set (or on a shard of it, images [shard[0], shard[1]))."""

    model: str
    model_path: str
    top_1_accuracy: float
    top_5_accuracy: float
    correct: int
    correct_top_5: int
    image_count: int
    seconds: float
    confusion_matrix: list[list[int]]
    predicted: list[int]
    shard: tuple[int, int]
    shards: int = 1

    @classmethod
    def counted(
        cls,
        *,
        model: str,
        model_path: str,
        correct: int,
        correct_top_5: int,
        seconds: float,
        confusion_matrix: list[list[int]],
        predicted: list[int],
        shard: tuple[int, int],
        shards: int = 1,
    ) -> Evaluation:
        """The record from its counts: the accuracies follow from them."""
        count = len(predicted)
        return cls(
            model=model,
            model_path=model_path,
            top_1_accuracy=correct / count if count else 0.0,
            top_5_accuracy=correct_top_5 / count if count else 0.0,
            correct=int(correct),
            correct_top_5=int(correct_top_5),
            image_count=count,
            seconds=round(seconds, 3),
            confusion_matrix=confusion_matrix,
            predicted=predicted,
            shard=shard,
            shards=shards,
        )

    @classmethod
    def merged(cls, parts: list[Evaluation]) -> Evaluation:
        """One model's evaluation from its shards': counts and matrices add up exactly."""
        parts = sorted(parts, key=lambda p: p.shard[0])
        if len(parts) == 1:
            return parts[0]
        rows, columns = len(parts[0].confusion_matrix), len(parts[0].confusion_matrix[0])
        matrix = [[sum(p.confusion_matrix[r][c] for p in parts) for c in range(columns)] for r in range(rows)]
        return cls.counted(
            model=parts[0].model,
            model_path=parts[0].model_path,
            correct=sum(p.correct for p in parts),
            correct_top_5=sum(p.correct_top_5 for p in parts),
            seconds=sum(p.seconds for p in parts),  # work, not wall time: shards run in parallel
            confusion_matrix=matrix,
            predicted=[c for p in parts for c in p.predicted],
            shard=(parts[0].shard[0], parts[-1].shard[1]),
            shards=len(parts),
        )


class Latency(Record):
    """Median milliseconds per image; Keras models have no single-thread figure."""

    one_thread_ms: float | None
    all_threads_ms: float
    repeats: int
    machine: str

    def as_results(self) -> dict[str, float | None]:
        return {"1_thread": self.one_thread_ms, "all_threads": self.all_threads_ms}


class Imx500Report(Record):
    """What Sony's IMX500 converter said of the MCT PTQ model: skipped (and why), or its memory and fit."""

    compiled: bool
    skipped: bool
    reason: str | None = None
    memory_usage_bytes: int | None = None
    memory_available_bytes: int | None = None
    runtime_memory_bytes: int | None = None
    model_memory_bytes: int | None = None
    utilization_percent: float | None = None
    fits: bool | None = None
    folder: str | None = None
    memory_report: str | None = None
    converter: str | None = None
    packer_out: str | None = None
    dnn_params: str | None = None
    input_scale: float | None = None
    input_format: str | None = None
    input_bits: int | None = None

    def as_results(self) -> dict:
        return self.model_dump(exclude_none=True)


class EthosUReport(Record):
    """What Vela said of a full-integer model, or why it was not compiled."""

    compiled: bool
    reason: str | None = None
    accelerator: str | None = None
    vela_model: str | None = None
    vela_version: str | None = None
    npu_operators: int | None = None
    cpu_operators: int | None = None
    npu_share: float | None = None
    sram_kib: float | None = None
    off_chip_flash_kib: float | None = None
    cycles_total: int | None = None
    cycles_npu: int | None = None
    inferences_per_second: float | None = None
    system_config: str | None = None

    @classmethod
    def declined(cls, variant: str | None) -> EthosUReport:
        """Vela maps only integer operators to the NPU: a model that is not full-integer is not compiled."""
        return cls(
            compiled=False,
            reason=f"not for Ethos-U: needs a full-integer model (variant {variant or 'keras'} is not; "
            f"build {' or '.join(FULL_INTEGER_VARIANTS)})",
        )

    def as_results(self) -> dict:
        data = self.model_dump(exclude_none=True)
        if self.compiled:  # NaN from Vela when nothing runs on the NPU: shown as null
            data["inferences_per_second"] = self.inferences_per_second
        return data


class HardwareReports(Record):
    """The device compilers' verdicts: the IMX500 converter's (when it ran) and Vela's, by model name."""

    imx500: Imx500Report | None = None
    ethos_u: dict[str, EthosUReport] = {}

    def reports_of(self, model_name: str, float_tflite: str) -> dict[str, dict | None]:
        """One model's reports as its results row holds them (the IMX500 converter's is the MCT PTQ model's): what
        a target's `problem` reads."""
        imx500 = self.imx500 if model_name == model_id(IMX500_VARIANT, float_tflite) else None
        ethos_u = self.ethos_u.get(model_name)
        return {
            "imx500": imx500.as_results() if imx500 else None,
            "ethos_u": ethos_u.as_results() if ethos_u else None,
        }


class RepairRecipe(Record):
    """One rung of the ladder: what is changed before quantizing again."""

    name: str
    description: str
    builder: Literal["mct", "converter"]
    equalize: bool = False
    error_method: str | None = None
    z_threshold: float | None = None
    shift_negative_params_search: bool = False
    calibration_factor: int = 1
    gptq_epochs: int | None = None
    converter_variant: str | None = None  # for the converter: full_int8 (Ethos-U) or int8_float_io


class TrialInputs(Record):
    """What every trial of one search shares: the model, the calibration, the target, the tuning images."""

    model_path: str
    calibration_path: str
    dataset_image_dir: str
    input_tensor_size: int
    batch_size: int
    iteration_count: int
    preprocessing: Preprocessing
    seed: int
    target_platform: str
    target_device: str | None
    ethos_u_accelerator: str
    error_method: str
    tuning_images_path: str
    tuning_labels_path: str
    evaluation_batch_size: int
    class_count: int
    baseline_top_1: float
    max_accuracy_drop: float
    allow_unsafe_code: bool = False


class RepairTrial(Record):
    """What a recipe gave: the model, its Top-1 on the tuning images, and whether the target takes it."""

    recipe: RepairRecipe
    tuning_top_1: float | None
    tuning_drop: float | None
    within_budget: bool
    deployable: bool
    qualifies: bool
    reason: str
    seconds: float
    size_bytes: int | None = None
    equalization_agreement: float | None = None
    model: BuiltModel | None = None
    quantized: QuantizedModel | None = None
    imx500: Imx500Report | None = None
    ethos_u: EthosUReport | None = None
    cached: bool = False

    def summary(self) -> dict[str, Any]:
        """As results.json's repair.trials lists it."""
        return {
            "recipe": self.recipe.name,
            "changed": self.recipe.description,
            "tuning_top_1": self.tuning_top_1,
            "tuning_drop": None if self.tuning_drop is None else round(self.tuning_drop, 6),
            "size_bytes": self.size_bytes,
            "imx500_fits": self.imx500.fits if self.imx500 and not self.imx500.skipped else None,
            "npu_share": self.ethos_u.npu_share if self.ethos_u and self.ethos_u.compiled else None,
            "equalization_agreement": self.equalization_agreement,
            "qualifies": self.qualifies,
            "reason": self.reason,
            "seconds": round(self.seconds, 2),
            "cached": self.cached,
        }


class RepairOutcome(Record):
    """The search: whether it ran and why, every trial, and the chosen one with its Top-1 on unseen images."""

    mode: str
    needed: bool
    why: str
    target_device: str | None
    max_accuracy_drop: float
    tuning_image_count: int = 0
    reporting_image_count: int = 0
    baseline_tuning_top_1: float | None = None
    baseline_reporting_top_1: float | None = None
    trials: list[RepairTrial] = []
    chosen: int | None = None  # index into trials
    closest: int | None = None
    reporting: Evaluation | None = None  # the chosen model on the images the search never saw
    baseline_reporting: Evaluation | None = None  # the float model on the same images
    stopped_because: str | None = None
    seconds: float = 0.0

    @property
    def chosen_trial(self) -> RepairTrial | None:
        return None if self.chosen is None else self.trials[self.chosen]

    def summary(self) -> dict[str, Any]:
        chosen = self.chosen_trial
        closest = None if self.closest is None else self.trials[self.closest]
        summary: dict[str, Any] = {
            "mode": self.mode,
            "ran": self.needed,
            "why": self.why,
            "target_device": self.target_device,
            "max_accuracy_drop": self.max_accuracy_drop,
            "tuning_image_count": self.tuning_image_count,
            "reporting_image_count": self.reporting_image_count,
            "float_top_1_tuning": self.baseline_tuning_top_1,
            "float_top_1_reporting": self.baseline_reporting_top_1,
            "trials": [t.summary() for t in self.trials],
            "chosen": chosen.recipe.name if chosen else None,
            "closest": closest.recipe.name if closest else None,
            "stopped_because": self.stopped_because,
            "seconds": round(self.seconds, 2),
        }
        if chosen and self.reporting is not None and self.baseline_reporting_top_1 is not None:
            summary["chosen_top_1_tuning"] = chosen.tuning_top_1
            summary["chosen_top_1_reporting"] = self.reporting.top_1_accuracy
            drop = self.baseline_reporting_top_1 - self.reporting.top_1_accuracy
            summary["chosen_drop_reporting"] = round(drop, 6)
        return summary


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


class LayerAnalysis(Record):
    """Which layers lost the accuracy of one model, worst first, and why (core/layer_analysis.py)."""

    model: str
    method: Literal["xquant", "quantization_debugger"]
    layers: list[LayerReport]  # worst first
    model_metrics: dict[str, float | None]
    summary: str


class RunRecords(Record):
    """Everything a run's steps found, by model name where there is one per model: what the results are built from."""

    validated: ValidatedConfig
    calibration: CalibrationSet
    built: list[BuiltModel]
    unsupported: list[UnsupportedVariant]
    evaluation_set: EvaluationSet
    evaluations: dict[str, Evaluation]
    latencies: dict[str, Latency]
    hardware: HardwareReports
    repair: RepairOutcome | None = None
    layer_analysis: dict[str, LayerAnalysis] = {}  # by model name, for the models that lost too much
