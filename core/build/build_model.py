"""Making a model from a recipe (core/build/recipes.py) with the build steps' functions: what a repair trial
calls. The flow runs the same steps as cached tasks, with the same arguments."""

from __future__ import annotations

from pathlib import Path

from core.build.convert_to_tflite import convert_to_tflite
from core.build.export_quantized_tflite import export_quantized_tflite
from core.build.export_saved_model import calibration_image_size, export_saved_model
from core.build.quantize_with_mct import quantize_with_mct
from core.build.recipes import BuildSettings, Built, Recipe, conversion_arguments, mct_arguments
from core.build.records import SavedModelExport, UnsupportedVariant
from core.failures import ModelFailed, ModelFailure


def build_model(
    recipe: Recipe,
    settings: BuildSettings,
    *,
    calibration_path: str,
    out_dir: Path,
    saved_model: SavedModelExport | None = None,
) -> Built:
    """The recipe's model in `out_dir`, made by the steps the flow runs as tasks. Raises StepError when a step fails,
    ModelFailed when the converter crashed on the model."""
    if recipe.builder == "mct":
        quantized = quantize_with_mct(
            **mct_arguments(recipe, settings, calibration_path), out_dir=out_dir, progress=False
        )
        if quantized.sixteen_bit_activations:
            return Built(quantized=quantized)  # what Sony's IMX500 converter takes; no TFLite (precision.py says why)
        return Built(model=export_quantized_tflite(quantized_model=quantized, out_dir=out_dir), quantized=quantized)
    if saved_model is None:
        saved_model = export_saved_model(
            model_path=settings.model_path,
            out_dir=out_dir,
            allow_unsafe_code=settings.allow_unsafe_code,
            input_size=calibration_image_size(calibration_path),
        )
    made = convert_to_tflite(**conversion_arguments(recipe, settings, saved_model, calibration_path), out_dir=out_dir)
    if isinstance(made, UnsupportedVariant):
        return Built(unsupported=made)
    if isinstance(made, ModelFailure):
        raise ModelFailed(made)
    return Built(model=made)
