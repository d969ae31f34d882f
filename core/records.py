"""The typed records the workflow's steps hand each other.

Each is an immutable pydantic model: an editor knows what a step returns, a misspelt field fails at
once, and every record pickles for Prefect's result persistence and hashes for the content cache.
Records hold paths and small values, never TensorFlow objects. Their `model_dump()` is what lands in
results.json, so field names are the names users read there.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from core.config import QuantizeConfig


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
    mct_version: str
    gptq_epochs: int | None = None
    weights_memory_ratio: float | None = None
    weights_memory_budget_bytes: float | None = None
    weights_memory_8bit_bytes: float | None = None

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
        from core.variants import FULL_INTEGER_VARIANTS

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
