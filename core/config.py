"""The configuration: the SDK's ten keys, unchanged, plus documented optional keys.

`QuantizeConfig` checks the structure (types, ranges, unknown keys); it never touches the
filesystem, so the Prefect UI can render and validate it as a form. `tasks.validate_config`
then checks it against the files it names.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, Literal

from pydantic import (
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

from core.errors import ConfigError
from core.variants import Variant

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

Number = StrictFloat | StrictInt


class Preprocessing(BaseModel):
    """How an image becomes the model's input; the same for calibration and every evaluation.

    pixel (0..255) -> resize -> x = pixel * scale + offset -> (x - mean) / std (when mean and std are given).
    """

    model_config = ConfigDict(extra="forbid")

    resize: Literal["stretch", "shorter_side_center_crop"] = Field(
        "stretch",
        description="'stretch': resize the whole image to input_tensor_size x input_tensor_size. "
        "'shorter_side_center_crop': resize the shorter side, keeping the aspect ratio, then cut the centre square.",
    )
    crop_fraction: Number = Field(
        1.0,
        gt=0,
        le=1,
        description="With 'shorter_side_center_crop': the share of the resized shorter side kept by the crop (0.875 is the usual ImageNet crop).",
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


class QuantizeConfig(BaseModel):
    """One model's quantize-and-evaluate run. The first ten fields are the AITRIOS SDK's `configuration.json`."""

    model_config = ConfigDict(extra="forbid", title="Quantize and evaluate configuration")

    source_keras_model: StrictStr = Field(
        ...,
        min_length=1,
        description="The Keras model to quantize: an .h5 or .keras file, or a Keras SavedModel folder. Relative to the configuration file's folder.",
    )
    dataset_image_dir: StrictStr = Field(
        ...,
        min_length=1,
        description="Folder of calibration images (JPEG, any folder structure below it; about 300 images of the training set advised).",
    )
    batch_size: StrictInt = Field(
        ...,
        ge=1,
        description="Images per calibration batch: at least 1 and at most the number of calibration images. SDK default 50.",
    )
    input_tensor_size: StrictInt = Field(
        ...,
        ge=1,
        description="Side of the model's square input in pixels; must equal the model's input height and width. SDK default 224.",
    )
    iteration_count: StrictInt = Field(..., ge=1, description="Calibration batches fed to MCT. SDK default 10.")
    output_dir: StrictStr = Field(
        ...,
        min_length=1,
        description="Folder that receives model.tflite and model_quantized.tflite (created if missing).",
    )
    evaluate_image_dir: StrictStr = Field(
        ...,
        min_length=1,
        description="Evaluation images, ImageNet layout: one folder per class, named as in the label file.",
    )
    evaluate_image_extension: StrictStr = Field(
        ...,
        min_length=1,
        pattern=r"^[A-Za-z0-9]+$",
        description="Extension of the evaluation images, without the dot, case sensitive (e.g. 'jpg').",
    )
    evaluate_label_file: StrictStr = Field(
        ..., min_length=1, description='JSON file mapping class names to ids 0..N-1, e.g. {"daisy": 0, "dandelion": 1}.'
    )
    evaluate_result_dir: StrictStr = Field(
        ..., min_length=1, description="Folder that receives results.json and results.csv (created if missing)."
    )

    preprocessing: Preprocessing = Field(
        default_factory=Preprocessing, description="Preprocessing shared by calibration and every evaluation."
    )
    seed: StrictInt = Field(0, ge=0, description="Seed of the calibration sample, so a run can be reproduced.")
    target_platform: Literal["imx500", "tflite", "qnnpack"] = Field(
        "imx500",
        description="MCT target platform capabilities: 'imx500' (Sony's AITRIOS sensor), 'tflite' or 'qnnpack'.",
    )
    float_tflite: Literal["float32", "dynamic_range"] = Field(
        "float32",
        description="What model.tflite is: 'float32', TensorFlow's plain conversion, or 'dynamic_range', the old SDK's Optimize.DEFAULT conversion (int8 weights, float activations).",
    )
    evaluation_batch_size: StrictInt = Field(
        32, ge=1, le=4096, description="Images per inference call during evaluation."
    )
    variants: list[Variant] | None = Field(
        None,
        description="Which quantization variants to build and compare. Default: every TensorFlow-converter variant "
        "(float32, dynamic_range, float16, int8_float_io, full_int8, full_uint8, int16x8) and mct_ptq; "
        "mct_gptq and mct_mixed_precision are slow and built only when listed. The SDK's model.tflite and model_quantized.tflite are always built.",
    )
    mct_error_method: Literal["noclipping", "mse", "mae", "kl", "lp", "hmse"] = Field(
        "mse",
        description="MCT's threshold error method for weights and activations: 'noclipping' is min/max, 'kl' is KL divergence (slow), 'mse' MCT's default.",
    )
    gptq_epochs: StrictInt = Field(
        5, ge=1, le=1000, description="Epochs of MCT's gradient-based PTQ (the mct_gptq variant)."
    )
    mixed_precision_weights_ratio: Number = Field(
        0.75,
        gt=0,
        le=1,
        description="Weights-memory budget of the mct_mixed_precision variant, as a share of the all-8-bit weights memory.",
    )
    max_accuracy_drop: Number = Field(
        0.01,
        ge=0,
        le=1,
        description="Largest Top-1 drop (absolute, against the float Keras model) a recommended model may have: 0.01 is one point.",
    )
    objective: Literal["size", "latency"] = Field(
        "size",
        description="What the recommendation minimises among the models within the budget: file size or latency.",
    )
    latency_repeats: StrictInt = Field(
        20, ge=1, le=10000, description="Timed inferences per model and thread setting; the latency is their median."
    )
    ethos_u_accelerator: Literal["ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u85-256"] = Field(
        "ethos-u55-128", description="Arm Ethos-U configuration Vela compiles the full-integer models for."
    )
    imx500_require_fit: StrictBool = Field(
        False,
        description="Fail the run when the IMX500 converter reports that the model does not fit the chip (otherwise it is only reported).",
    )
    target_device: Literal["imx500", "ethos-u55-128", "ethos-u55-256", "ethos-u65-256", "ethos-u85-256"] | None = Field(
        None,
        description="Restrict the recommendation to one device: 'imx500' keeps only models that fit the sensor; an Ethos-U name keeps the models Vela compiled, "
        "preferring the highest share of operators on the NPU.",
    )
    allow_unsafe_model_code: StrictBool = Field(
        False,
        description="Load models with Lambda layers, which run Python code stored in the model file. Only for model files you trust.",
    )

    @model_validator(mode="after")
    def _target_device_agrees(self) -> QuantizeConfig:
        if self.target_device == "imx500" and self.target_platform != "imx500":
            raise ValueError(
                f"target_device 'imx500' needs target_platform 'imx500', got {self.target_platform!r}: the IMX500 converter takes models quantized for it"
            )
        if self.imx500_require_fit and self.target_platform != "imx500":
            raise ValueError(
                f"imx500_require_fit needs target_platform 'imx500', got {self.target_platform!r}: only a model quantized for the IMX500 is converted for it"
            )
        if (
            self.target_device
            and self.target_device.startswith("ethos-u")
            and self.variants is not None
            and not {"full_int8", "full_uint8"} & set(self.variants)
        ):
            raise ValueError(
                f"target_device {self.target_device!r} needs a full-integer model: add 'full_int8' or 'full_uint8' to variants"
            )
        if self.target_device and self.target_device.startswith("ethos-u"):
            if "ethos_u_accelerator" not in self.model_fields_set:
                self.ethos_u_accelerator = self.target_device
            elif self.ethos_u_accelerator != self.target_device:
                raise ValueError(
                    f"target_device {self.target_device!r} and ethos_u_accelerator {self.ethos_u_accelerator!r} differ: give one, or the same in both"
                )
        return self

    @model_validator(mode="after")
    def _mixed_precision_needs_imx500(self) -> QuantizeConfig:
        if self.variants and "mct_mixed_precision" in self.variants and self.target_platform != "imx500":
            raise ValueError(
                f"variant 'mct_mixed_precision' needs target_platform 'imx500', got {self.target_platform!r}: "
                "only MCT's imx500 platform offers mixed-precision options; drop the variant or set target_platform to imx500"
            )
        return self


def load_config_file(path: str | Path) -> tuple[QuantizeConfig, Path]:
    """Read and structurally validate a configuration file; relative paths will resolve against its folder."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(
            [
                f"configuration file {str(path)!r} does not exist: expected a JSON file such as configs/digits/configuration.json"
            ]
        )
    if path.is_dir():
        raise ConfigError([f"configuration file {str(path)!r} is a folder: expected a JSON file"])
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise ConfigError([f"configuration file {str(path)!r} is not UTF-8 text: {exc}"]) from None
    except json.JSONDecodeError as exc:
        raise ConfigError(
            [f"configuration file {str(path)!r} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"]
        ) from None
    return parse_config(data, source=str(path)), path.resolve().parent


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
        raise ConfigError([describe_error(e) for e in exc.errors()], source) from None


def describe_error(error: dict) -> str:
    """One pydantic error as a sentence naming the key, the value given and what was expected."""
    loc = ".".join(str(part) for part in error["loc"])
    key = str(error["loc"][0]) if error["loc"] else ""
    kind = error["type"]
    if kind == "missing":
        return f"key '{loc}' is missing: {_expected(loc)}"
    if kind == "extra_forbidden":
        known = list(QuantizeConfig.model_fields) if len(error["loc"]) == 1 else list(Preprocessing.model_fields)
        close = difflib.get_close_matches(str(error["loc"][-1]), known, n=1)
        hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
        return f"unknown key '{loc}'{hint}: keys are case sensitive"
    if not error["loc"]:  # a rule across keys: its message names them
        return str(error["msg"]).removeprefix("Value error, ")
    given = error.get("input")
    given_text = f"{given!r} ({_json_type(given)})"
    reason = error["msg"]
    if kind.endswith("_type"):
        reason = "wrong type"
    detail = f"{reason}; {_expected(loc)}" if key in QuantizeConfig.model_fields else reason
    return f"key '{loc}' has value {given_text}: {detail}"


def _expected(loc: str) -> str:
    parts = loc.split(".")
    model = QuantizeConfig
    field = None
    for part in parts:
        fields = model.model_fields if model else {}
        field = fields.get(part)
        if field is None:
            return "see the configuration reference in README.md"
        model = (
            field.annotation if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel) else None
        )
    return (
        f"expected {field.description[0].lower()}{field.description[1:]}"
        if field and field.description
        else "see README.md"
    )


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
