"""How a model is made: a `Recipe` (the variant, which names its builder, and that builder's options), what every
model of a run is made from (`BuildSettings`), the run's recipes (`variant_recipes`), the arguments each recipe gives
the build steps, and what follows a built model (what else is evaluated, what compiles it).

The flow runs the build steps as separate cached tasks (one conversion per variant, MCT, MCT's export); a repair
trial runs them through `build_model.build_model`. Both take their arguments from here, so a recipe is built the
same way by both.
"""

from __future__ import annotations

from typing import Any

from core.build.records import BuiltModel, QuantizedModel, UnsupportedVariant
from core.build.variants import IMX500_VARIANT, MCT_METHODS, VARIANTS, Variant, variants_to_build
from core.config import QuantizeConfig
from core.records import Record


class Recipe(Record):
    """One model's making: its variant and the options of the variant's builder. Only the options the variant uses
    are set, so that changing one (GPTQ's epochs) does not redo the other variants: the recipe enters cache keys."""

    variant: Variant
    error_method: str | None = None  # MCT's threshold error method; None for the converter
    gptq_epochs: int | None = None
    weights_memory_ratio: float | None = None  # mixed precision: of the all-8-bit weights memory
    z_threshold: float | None = None  # MCT's outlier removal
    shift_negative_params_search: bool = False
    sixteen_bit_activations: tuple[str, ...] = ()  # MCT: the layers whose outputs get 16 bits (core/build/precision)

    @property
    def builder(self) -> str:
        return VARIANTS[self.variant].builder

    @property
    def calibrated(self) -> bool:
        """It needs the calibration set: every variant with integer arithmetic inside (MCT's, the converter's
        integer variants) takes its ranges from it."""
        return VARIANTS[self.variant].integer


class BuildSettings(Record):
    """What every model of a run is made from, besides its recipe."""

    model_path: str
    batch_size: int
    target_platform: str
    allow_unsafe_code: bool = False

    @classmethod
    def of(cls, config: QuantizeConfig) -> BuildSettings:
        return cls(
            model_path=config.source_keras_model,
            batch_size=config.batch_size,
            target_platform=config.target_platform,
            allow_unsafe_code=config.allow_unsafe_model_code,
        )


def variant_recipes(config: QuantizeConfig, evaluation_images: int = 0) -> list[Recipe]:
    """The recipes of the variants the configuration asks for (always the SDK's two), in the catalogue's order; by
    default, for `evaluation_images` at the input's size, without those too slow to evaluate that many
    (core/build/variants.py's left_out_by_default)."""
    recipes = []
    pixels = evaluation_images * config.input_tensor_size**2
    for variant in variants_to_build(config.variants, config.float_tflite, pixels):
        if VARIANTS[variant].builder == "mct":
            recipe = Recipe(
                variant=variant,  # type: ignore[arg-type]  # a catalogue name
                error_method=config.mct_error_method,
                gptq_epochs=config.gptq_epochs if variant == "mct_gptq" else None,
                weights_memory_ratio=config.mixed_precision_weights_ratio if variant == "mct_mixed_precision" else None,
            )
        else:
            recipe = Recipe(variant=variant)  # type: ignore[arg-type]
        recipes.append(recipe)
    return recipes


def mct_arguments(recipe: Recipe, settings: BuildSettings, calibration_path: str) -> dict[str, Any]:
    """quantize_with_mct's arguments for the recipe (all but where it writes and whether it shows progress)."""
    options: dict[str, Any] = dict(
        model_path=settings.model_path,
        calibration_path=calibration_path,
        batch_size=settings.batch_size,
        target_platform=settings.target_platform,
        method=MCT_METHODS[recipe.variant],
        error_method=recipe.error_method,
        gptq_epochs=recipe.gptq_epochs,
        weights_memory_ratio=recipe.weights_memory_ratio,
        allow_unsafe_code=settings.allow_unsafe_code,
    )
    # Outlier removal and the shift search only when a recipe asks: only repair rungs do, and the flow's MCT task
    # takes neither.
    if recipe.z_threshold is not None:
        options["z_threshold"] = recipe.z_threshold
    if recipe.shift_negative_params_search:
        options["shift_negative_params_search"] = True
    if recipe.sixteen_bit_activations:
        options["sixteen_bit_activations"] = recipe.sixteen_bit_activations
    return options


def conversion_arguments(
    recipe: Recipe, settings: BuildSettings, saved_model: Any, calibration_path: str | None
) -> dict[str, Any]:
    """convert_to_tflite's arguments for the recipe (`saved_model`: the export, or the flow's future of it)."""
    return dict(
        model_path=settings.model_path,
        saved_model=saved_model,
        variant=recipe.variant,
        calibration_path=calibration_path if recipe.calibrated else None,
    )


class Built(Record):
    """What `build_model` made: the TFLite model and, for MCT, the quantized Keras model it was exported from (only
    that one when some activations have 16 bits: MCT's TFLite export cannot write them); or why the converter could
    not make the variant."""

    model: BuiltModel | None = None
    quantized: QuantizedModel | None = None
    unsupported: UnsupportedVariant | None = None


# What follows a model once it is built: what else is evaluated, what compiles it.


def evaluated_keras_model(quantized: QuantizedModel) -> str | None:
    """The name under which an MCT Keras model is itself evaluated: the SDK's quantized Keras model (PTQ's)."""
    return "keras_quantized" if quantized.variant == IMX500_VARIANT else None


def compiled_for_imx500(quantized: QuantizedModel) -> bool:
    """Sony's converter compiles the MCT PTQ model when it was quantized for the IMX500's platform."""
    return quantized.variant == IMX500_VARIANT and quantized.target_platform == "imx500"


def compiled_by_vela(model: BuiltModel) -> bool:
    """Vela compiles every full-integer model: what an Ethos-U NPU runs whole."""
    return VARIANTS[model.variant].full_integer
