"""The configuration: the SDK's ten keys, unchanged, plus documented optional keys.

`QuantizeConfig` checks the structure (types, ranges, unknown keys); it never touches the
filesystem, so the Prefect UI can render and validate it as a form. `tasks.validate_config`
then checks it against the files it names.
"""

from __future__ import annotations

import difflib
import json
import os
import sys
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
    ValidationError,
    model_validator,
)

from core.build.variants import EthosU, TargetDevice, Variant
from core.errors import ConfigError
from core.records import Record
from core.targets.devices import ethos_u_accelerator_of, target_for

SDK_KEYS = (
    "source_keras_model",
    "dataset_image_dir",
    "batch_size",
    "input_tensor_size",
    "iteration_count",
    "output_dir",
    "evaluate_image_dir",
    "evaluate_image_extension",
    "evaluate_label_file",
    "evaluate_result_dir",
)
PATH_KEYS = (
    "source_keras_model",
    "dataset_image_dir",
    "output_dir",
    "evaluate_image_dir",
    "evaluate_label_file",
    "evaluate_result_dir",
)
OPTIONAL_PATH_KEYS = ("evaluate_annotation_file", "custom_layers_module")  # paths too, when given


def _finite(value: float | int) -> float | int:
    if abs(value) > sys.float_info.max:  # an integer too large for a float: as good as infinite
        raise ValueError(f"Input should be a finite number, at most {sys.float_info.max:.3g} in size")
    return value


Number = Annotated[StrictFloat | StrictInt, AfterValidator(_finite)]

# Bounds checked before any work (see README, "Configuration reference").
MAX_BATCH_SIZE = 4096
MAX_ITERATION_COUNT = 10_000
MAX_INPUT_TENSOR_SIZE = 8192
MAX_FREE_INPUT_SIZE = 1024  # input_tensor_size for a model whose input height and width are not fixed
MAX_SEED = 2**63 - 1
GIB = 2**30
CALIBRATION_MEMORY_CAP = 8 * GIB  # and at most a quarter of the machine's memory


class Preprocessing(BaseModel):
    """How an image becomes the model's input; the same for calibration and every evaluation.

    pixel (0..255) -> resize -> x = pixel * scale + offset -> (x - mean) / std (when mean and std are given).
    """

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    resize: Literal["stretch", "shorter_side_center_crop"] = Field(
        "stretch",
        description="'stretch': resize the whole image to input_tensor_size x input_tensor_size. "
        "'shorter_side_center_crop': resize the shorter side, keeping the aspect ratio, then cut the centre square.",
    )
    crop_fraction: Number = Field(
        1.0,
        gt=0,
        le=1,
        description="With 'shorter_side_center_crop': the share of the resized shorter side kept by the crop (0.875 "
        "is the usual ImageNet crop).",
    )
    interpolation: Literal["bilinear", "bicubic", "nearest"] = Field(
        "bilinear", description="Resampling filter used by the resize."
    )
    scale: Number = Field(
        1 / 255,
        description="Multiplies the pixel values (0..255). 1/255 gives [0, 1]; 1/127.5 with offset -1 gives [-1, 1].",
    )
    offset: Number = Field(0.0, description="Added after scaling.")
    mean: tuple[Number, Number, Number] | None = Field(
        None, description="Per-channel (R, G, B) mean subtracted after scale and offset; give std too."
    )
    std: tuple[Number, Number, Number] | None = Field(
        None, description="Per-channel (R, G, B) standard deviation divided by after the mean; give mean too."
    )

    @model_validator(mode="after")
    def _mean_and_std_together(self) -> Preprocessing:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both 'mean' and 'std', or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError(f"every 'std' value must be > 0, got {list(self.std)}")
        if self.scale == 0:
            raise ValueError("'scale' must not be 0: every image would become the same")
        return self


class DetectionDecoding(BaseModel):
    """How a detector's raw head becomes boxes (task 'detection'; see README, "Object detectors"): the head is a
    [grid, grid, 5 + classes] map, each cell holding an objectness logit, one logit per class, the box centre's
    offsets in the cell (logits) and its log width and height over `anchor_size`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    anchor_size: Number = Field(
        28.0, gt=0, description="The box side, in input pixels, that a log size of 0 stands for (the sample's: 28)."
    )
    score_threshold: Number = Field(
        0.05,
        ge=0,
        lt=1,
        description="Boxes scoring below it are dropped before non-maximum suppression; keep it low, as COCO's AP "
        "wants the whole precision-recall curve.",
    )
    iou_threshold: Number = Field(
        0.5, gt=0, le=1, description="Non-maximum suppression drops a box overlapping a better one by more."
    )
    max_detections: StrictInt = Field(100, ge=1, le=1000, description="Boxes kept per image (COCO counts 100).")


class QuantizeConfig(BaseModel):
    """One model's quantize-and-evaluate run. The first ten fields are the AITRIOS SDK's `configuration.json`."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False, title="Quantize and evaluate configuration")

    source_keras_model: StrictStr = Field(
        ...,
        min_length=1,
        description="The Keras model to quantize: an .h5 or .keras file, or a Keras SavedModel folder. Relative to "
        "the configuration file's folder.",
    )
    dataset_image_dir: StrictStr = Field(
        ...,
        min_length=1,
        description="Folder of calibration images (JPEG, any folder structure below it; about 300 images of the "
        "training set advised).",
    )
    batch_size: StrictInt = Field(
        ...,
        ge=1,
        le=MAX_BATCH_SIZE,
        description=f"Images per calibration batch: at least 1, at most the number of calibration images and at "
        f"most {MAX_BATCH_SIZE}. The calibration set, batch_size x iteration_count x input_tensor_size^2 x 3 x 4 "
        "bytes (float32), must stay under a quarter of this machine's memory and under 8 GiB. SDK default 50.",
    )
    input_tensor_size: StrictInt = Field(
        ...,
        ge=1,
        le=MAX_INPUT_TENSOR_SIZE,
        description=f"Side of the model's square input in pixels, at most {MAX_INPUT_TENSOR_SIZE}; must equal the "
        f"model's input height and width (at most {MAX_FREE_INPUT_SIZE} for a model whose input size is not fixed). "
        "SDK default 224.",
    )
    iteration_count: StrictInt = Field(
        ...,
        ge=1,
        le=MAX_ITERATION_COUNT,
        description=f"Calibration batches fed to MCT, at most {MAX_ITERATION_COUNT:_}; see batch_size for the memory "
        "limit. SDK default 10.",
    )
    output_dir: StrictStr = Field(
        ...,
        min_length=1,
        description="Folder that receives model.tflite and model_quantized.tflite (created if missing).",
    )
    evaluate_image_dir: StrictStr = Field(
        ...,
        min_length=1,
        description="Evaluation images, ImageNet layout: one folder per class, named as in the label file (with task "
        "'detection': the folder of the images evaluate_annotation_file lists).",
    )
    evaluate_image_extension: StrictStr = Field(
        ...,
        min_length=1,
        pattern=r"^[A-Za-z0-9]+$",
        description="Extension of the evaluation images, without the dot, matched in any case (e.g. 'jpg' also finds "
        ".JPG).",
    )
    evaluate_label_file: StrictStr = Field(
        ...,
        min_length=1,
        description='JSON file mapping class names to ids 0..N-1, e.g. {"daisy": 0, "dandelion": 1} (with task '
        "'detection': the annotation file's category names to the model's class ids).",
    )
    evaluate_result_dir: StrictStr = Field(
        ..., min_length=1, description="Folder that receives results.json and results.csv (created if missing)."
    )

    preprocessing: Preprocessing = Field(
        default_factory=Preprocessing, description="Preprocessing shared by calibration and every evaluation."
    )
    seed: StrictInt = Field(
        0, ge=0, le=MAX_SEED, description="Seed of the calibration sample, so a run can be reproduced (0 .. 2^63-1)."
    )
    task: Literal["classification", "detection"] = Field(
        "classification",
        description="What the model does, which says how it is scored: 'classification', an image classifier with "
        "one score per class, judged by its Top-1 accuracy; 'detection', an object detector (its raw head, see "
        "'detection'), judged by COCO's mAP@[.5:.95] on the boxes of evaluate_annotation_file.",
    )
    evaluate_annotation_file: StrictStr | None = Field(
        None,
        min_length=1,
        description="With task 'detection': the COCO annotations JSON of the evaluation images (images, annotations "
        "with [x, y, width, height] boxes in pixels, categories); its file names are relative to evaluate_image_dir, "
        "its category names are the label file's class names.",
    )
    detection: DetectionDecoding = Field(
        default_factory=DetectionDecoding,
        description="With task 'detection': how the detector's head is decoded into boxes.",
    )
    target_platform: Literal["imx500", "tflite", "qnnpack"] = Field(
        "imx500",
        description="MCT target platform capabilities: 'imx500' (Sony's AITRIOS sensor), 'tflite' or 'qnnpack'.",
    )
    float_tflite: Literal["float32", "dynamic_range"] = Field(
        "float32",
        description="What model.tflite is: 'float32', TensorFlow's plain conversion, or 'dynamic_range', the old "
        "SDK's Optimize.DEFAULT conversion (int8 weights, float activations).",
    )
    evaluation_batch_size: StrictInt = Field(
        32, ge=1, le=4096, description="Images per inference call during evaluation."
    )
    variants: list[Variant] | None = Field(
        None,
        description="Which quantization variants to build and compare. Default: every TensorFlow-converter variant "
        "(float32, dynamic_range, float16, int8_float_io, full_int8, full_uint8, int16x8) and mct_ptq; "
        "full_int16x8 (int16 input/output, for an Ethos-U), mct_gptq and mct_mixed_precision (slow) are built only "
        "when listed. The SDK's model.tflite and "
        "model_quantized.tflite are always built.",
    )
    mct_error_method: Literal["noclipping", "mse", "mae", "kl", "lp", "hmse"] = Field(
        "mse",
        description="MCT's threshold error method for weights and activations: 'noclipping' is min/max, 'kl' is KL "
        "divergence (slow), 'mse' MCT's default.",
    )
    gptq_epochs: StrictInt = Field(
        5, ge=1, le=1000, description="Epochs of MCT's gradient-based PTQ (the mct_gptq variant)."
    )
    mixed_precision_weights_ratio: Number = Field(
        0.75,
        gt=0,
        le=1,
        description="Weights-memory budget of the mct_mixed_precision variant, as a share of the all-8-bit weights "
        "memory.",
    )
    max_accuracy_drop: Number = Field(
        0.01,
        ge=0,
        le=1,
        description="Largest drop of the headline score (Top-1, or a detector's mAP@[.5:.95]; absolute, against the "
        "float Keras model) a recommended model may have: 0.01 is one point.",
    )
    objective: Literal["size", "latency"] = Field(
        "size",
        description="What the recommendation minimises among the models within the budget: file size or latency.",
    )
    latency_repeats: StrictInt = Field(
        20, ge=1, le=10000, description="Timed inferences per model and thread setting; the latency is their median."
    )
    ethos_u_accelerator: EthosU = Field(
        "ethos-u55-128", description="Arm Ethos-U configuration Vela compiles the full-integer models for."
    )
    imx500_require_fit: StrictBool = Field(
        False,
        description="Fail the run when the IMX500 converter reports that the model does not fit the chip (otherwise "
        "it is only reported).",
    )
    target_device: TargetDevice | None = Field(
        None,
        description="Restrict the recommendation to one device: 'imx500' keeps only models that fit the sensor; an "
        "Ethos-U name keeps the models Vela compiled, "
        "preferring the highest share of operators on the NPU.",
    )
    allow_unsafe_model_code: StrictBool = Field(
        False,
        description="Load models with Lambda layers, which run Python code stored in the model file. Only for model "
        "files you trust.",
    )
    custom_layers_module: StrictStr | None = Field(
        None,
        min_length=1,
        description="A Python file defining the model's custom layers (its Keras Layer subclasses, and any "
        "'custom_objects' dict it defines), relative to the configuration's folder. Loading it runs its code, so it "
        "needs allow_unsafe_model_code true. Keras's applications' layers and Sony's edge-mdt-cl layers need none.",
    )
    repair: Literal["off", "auto", "always"] = Field(
        "auto",
        description="Search for a repaired model when quantization costs too much accuracy: 'auto' when no integer "
        "model for target_device stays within max_accuracy_drop, 'always' in any case, 'off' never.",
    )
    repair_max_trials: StrictInt = Field(
        6, ge=1, le=50, description="At most this many repair trials (each a re-quantization and an evaluation)."
    )
    repair_time_budget_s: Number = Field(
        1800,
        gt=0,
        le=86_400,
        description="The repair search starts no new trial after this many seconds (trials served from the cache "
        "count for nothing).",
    )
    repair_confidence: Number = Field(
        0.9,
        ge=0.5,
        lt=1,
        description="How sure a repair trial's drop must be to be within max_accuracy_drop: a trial qualifies when "
        "the upper bound of its drop at this confidence (the tuning images' sampling noise accounted for) is within "
        "the budget. 0.5 judges the drop as measured.",
    )

    @model_validator(mode="after")
    def _target_device_agrees(self) -> QuantizeConfig:
        problem = target_for(self.target_device).configuration_problem(
            target_platform=self.target_platform, variants=self.variants
        )
        if problem:
            raise ValueError(problem)
        if self.imx500_require_fit and self.target_platform != "imx500":
            raise ValueError(
                f"imx500_require_fit needs target_platform 'imx500', got {self.target_platform!r}: only a model "
                "quantized for the IMX500 is converted for it"
            )
        accelerator = ethos_u_accelerator_of(self.target_device)
        if accelerator is not None:
            if "ethos_u_accelerator" not in self.model_fields_set:
                self.ethos_u_accelerator = accelerator
            elif self.ethos_u_accelerator != accelerator:
                raise ValueError(
                    f"target_device {self.target_device!r} and ethos_u_accelerator {self.ethos_u_accelerator!r} "
                    "differ: give one, or the same in both"
                )
        return self

    @model_validator(mode="after")
    def _detection_keys_agree(self) -> QuantizeConfig:
        if self.task == "detection":
            if self.evaluate_annotation_file is None:
                raise ValueError(
                    "task 'detection' needs key 'evaluate_annotation_file': the COCO annotations JSON of the "
                    'evaluation images (see README, "Object detectors")'
                )
            if self.preprocessing.resize != "stretch":
                raise ValueError(
                    f"task 'detection' needs preprocessing.resize 'stretch', got {self.preprocessing.resize!r}: a "
                    "crop would cut boxes off the image"
                )
        else:
            if self.evaluate_annotation_file is not None:
                raise ValueError(
                    f"key 'evaluate_annotation_file' is read only with task 'detection' (task is {self.task!r}): "
                    "set task to 'detection' or remove the key"
                )
            if self.detection != DetectionDecoding():  # the defaults, as a dump of the configuration writes them
                raise ValueError(
                    f"key 'detection' is read only with task 'detection' (task is {self.task!r}): set task to "
                    "'detection' or remove the key"
                )
        return self

    @model_validator(mode="after")
    def _calibration_set_fits_in_memory(self) -> QuantizeConfig:
        needed = calibration_bytes(self.batch_size, self.iteration_count, self.input_tensor_size)
        limit, memory = calibration_memory_limit()
        if needed > limit:
            raise ValueError(
                f"keys 'batch_size' = {self.batch_size}, 'iteration_count' = {self.iteration_count} and "
                f"'input_tensor_size' = {self.input_tensor_size}: the calibration set would take {needed / GIB:.1f} "
                "GiB (batch_size x iteration_count x input_tensor_size^2 x 3 x 4 bytes), over the limit of "
                f"{limit / GIB:.1f} GiB (a quarter of this machine's {memory / GIB:.1f} GiB of memory, at most 8 GiB); "
                "lower iteration_count or batch_size"
            )
        return self

    @model_validator(mode="after")
    def _custom_layers_need_unsafe_code(self) -> QuantizeConfig:
        if self.custom_layers_module is not None and not self.allow_unsafe_model_code:
            raise ValueError(
                f"key 'custom_layers_module' = {self.custom_layers_module!r} needs key 'allow_unsafe_model_code' "
                "true: loading the module runs its Python code. If you trust the file, set "
                '"allow_unsafe_model_code": true; otherwise remove custom_layers_module'
            )
        return self

    @model_validator(mode="after")
    def _mixed_precision_needs_imx500(self) -> QuantizeConfig:
        if self.variants and "mct_mixed_precision" in self.variants and self.target_platform != "imx500":
            raise ValueError(
                f"variant 'mct_mixed_precision' needs target_platform 'imx500', got {self.target_platform!r}: "
                "only MCT's imx500 platform offers mixed-precision options; drop the variant or set target_platform "
                "to imx500"
            )
        return self


def calibration_bytes(batch_size: int, iteration_count: int, input_tensor_size: int) -> int:
    """Bytes of the calibration set: batch_size x iteration_count float32 RGB images."""
    return batch_size * iteration_count * input_tensor_size**2 * 3 * 4


def calibration_memory_limit() -> tuple[int, int]:
    """(the calibration set's limit, this machine's memory): a quarter of the memory, at most 8 GiB."""
    memory = machine_memory_bytes()
    return min(memory // 4, CALIBRATION_MEMORY_CAP), memory


def machine_memory_bytes() -> int:
    """Physical memory, or the container's memory limit (cgroup v2 or v1) when that is lower."""
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            limit = Path(limit_file).read_text().strip()
        except OSError:
            continue
        if limit.isdigit():
            memory = min(memory, int(limit))
    return memory


class _JsonObject(dict):
    """A JSON object that remembers which keys its text gave more than once (json keeps only the last)."""

    repeated: list[str]


def _json_object(pairs: list[tuple[str, Any]]) -> _JsonObject:
    obj = _JsonObject(pairs)
    obj.repeated = [key for key, count in Counter(key for key, _ in pairs).items() if count > 1]
    return obj


def loads_json(text: str) -> tuple[Any, list[str]]:
    """Parse JSON text; also return the keys (dotted paths, e.g. 'preprocessing.scale') given more than once."""
    data = json.loads(text, object_pairs_hook=_json_object, parse_int=_read_int)
    return _plain(data), _repeated_keys(data)


def _read_int(digits: str) -> int:
    """A JSON integer. Python refuses to read one of more than 4300 digits (it would take quadratic time); such
    a number is read as the power of ten of its length, which every bound of the configuration refuses."""
    if len(digits) <= sys.get_int_max_str_digits():
        return int(digits)
    return (-1 if digits.startswith("-") else 1) * 10 ** (len(digits.lstrip("-")) - 1)


def _repeated_keys(value: Any, prefix: str = "") -> list[str]:
    found: list[str] = []
    if isinstance(value, _JsonObject):
        found += [prefix + key for key in value.repeated]
        for key, item in value.items():
            found += _repeated_keys(item, f"{prefix}{key}.")
    elif isinstance(value, list):
        for index, item in enumerate(value):
            found += _repeated_keys(item, f"{prefix}{index}.")
    return found


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def load_config_file(path: str | Path) -> tuple[QuantizeConfig, Path]:
    """Read and structurally validate a configuration file; relative paths will resolve against its folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            [
                f"configuration file {str(path)!r} does not exist: expected a JSON file such as "
                "configs/digits/configuration.json"
            ]
        )
    if path.is_dir():
        raise ConfigError([f"configuration file {str(path)!r} is a folder: expected a JSON file"])
    try:
        data, repeated = loads_json(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"configuration file {str(path)!r} is not UTF-8 text: {exc}"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"configuration file {str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"]
        ) from None
    problems = [
        f"key '{key}' appears more than once in {str(path)!r}: JSON would silently keep only the last value; keep one"
        for key in repeated
    ]
    try:
        config = parse_config(data, source=str(path))
    except ConfigError as exc:
        raise ConfigError(problems + exc.problems, str(path)) from None
    if problems:
        raise ConfigError(problems, str(path))
    return config, path.resolve().parent


def parse_config(data: Any, source: str | None = None) -> QuantizeConfig:
    """Validate a configuration object; every problem is reported at once in one ConfigError."""
    if isinstance(data, QuantizeConfig):
        return data
    if not isinstance(data, dict):
        raise ConfigError(
            [f"the configuration must be a JSON object of keys and values, got {type(data).__name__}"], source
        )
    try:
        return QuantizeConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError([describe_error(e) for e in _one_error_per_key(exc.errors())], source) from None


# The branch tags pydantic adds to the location of an error in `Number` (StrictFloat | StrictInt).
_UNION_TAGS = ("float", "int")


def _one_error_per_key(errors: Sequence[Mapping[str, Any]]) -> list[dict]:
    """A `Number` value gets one error per branch of the union ('a valid number', 'a valid integer'): keep the
    most telling one (a bound or 'finite', else the float branch's) under the key's own location."""
    chosen: dict[tuple, dict] = {}
    for error in errors:
        loc = tuple(error["loc"])
        if len(loc) > 1 and loc[-1] in _UNION_TAGS and error["type"] not in ("extra_forbidden", "missing"):
            loc = loc[:-1]
        error = {**error, "loc": loc}
        previous = chosen.get(loc)
        if previous is None or (previous["type"].endswith("_type") and not error["type"].endswith("_type")):
            chosen[loc] = error
    return list(chosen.values())


def describe_error(error: dict) -> str:
    """One pydantic error as a sentence naming the key, the value given and what was expected."""
    loc = ".".join(str(part) for part in error["loc"])
    key = str(error["loc"][0]) if error["loc"] else ""
    kind = error["type"]
    if kind == "missing":
        return f"key '{loc}' is missing: {_expected(loc)}"
    if kind == "extra_forbidden":
        nested: dict[str, type[BaseModel]] = {"preprocessing": Preprocessing, "detection": DetectionDecoding}
        section = nested.get(str(error["loc"][0]), QuantizeConfig) if len(error["loc"]) > 1 else QuantizeConfig
        known = list(section.model_fields)
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
        return f"unknown key '{loc}'{hint}: keys are case sensitive"
    if not error["loc"]:  # a rule across keys: its message names them
        return str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    given_text = _shown(given)
    reason = str(error["msg"]).removeprefix("Value error, ")
    if kind.endswith("_type"):
        reason = "wrong type"
    detail = f"{reason}; {_expected(loc)}" if key in QuantizeConfig.model_fields else reason
    return f"key '{loc}' has value {given_text}: {detail}"


def _expected(loc: str) -> str:
    parts = loc.split(".")
    model: type[BaseModel] | None = QuantizeConfig
    field = None
    for part in parts:
        fields = model.model_fields if model is not None else {}
        field = fields.get(part)
        if field is None:
            return "see the configuration reference in README.md"
        model = (
            field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        )
    return f"expected {_lowercase_first(field.description)}" if field and field.description else "see README.md"


def _shown(value: Any) -> str:
    """The value as the message shows it: a huge integer by its length (its digits can be too many to print)."""
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 64:
        return f"a {int(value.bit_length() * 0.30103) + 1}-digit integer"
    try:
        return f"{value!r} ({_json_type(value)})"
    except ValueError:  # holds an integer too long to print
        return _json_type(value)


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number with a fraction"
    if isinstance(value, str):
        return "a string"
    if value is None:
        return "null"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _lowercase_first(text: str) -> str:
    """'Folder of ...' -> 'folder of ...', but 'JSON file ...' stays as it is."""
    return text if text[1:2].isupper() else text[:1].lower() + text[1:]


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
