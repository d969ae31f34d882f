"""Step: for a model that lost more Top-1 than `max_accuracy_drop`, find which layers lost it and why
(core/analysis/layer_analysis.py): MCT's XQuant for an MCT model, TensorFlow's QuantizationDebugger for an integer model
of the converter; per Keras layer the loss, the output range, the channels' range spread, and the causes in
words, worst layer first.
"""

from __future__ import annotations

import threading
from pathlib import Path

from core.analysis.layer_analysis import analyse_converter_model, analyse_mct_model
from core.analysis.layer_tools import CONVERTER_ANALYSED_VARIANTS
from core.analysis.records import LayerAnalysis
from core.build.records import BuiltModel
from core.build.variants import model_id
from core.kinds.records import Evaluation
from core.targets.devices import within_budget

# The debugger runs TensorFlow's converter in this process (conversions for the models run in worker
# processes); its bindings are not documented as thread-safe, so analyses take turns.
DEBUGGER_LOCK = threading.Lock()


def analyse_layers(
    *,
    model_name: str,
    model: BuiltModel,
    float_model_path: str,
    calibration_path: str,
    evaluation_images_path: str,
    out_dir: Path,
    allow_unsafe_code: bool = False,
) -> LayerAnalysis:
    if model.quantization is not None:
        return analyse_mct_model(
            float_model_path=float_model_path,
            quantized_model_path=model.quantization.path,
            calibration_path=calibration_path,
            evaluation_images_path=evaluation_images_path,
            model_name=model_name,
            report_dir=out_dir,
            allow_unsafe_code=allow_unsafe_code,
        )
    return analyse_converter_model(
        float_model_path=float_model_path,
        calibration_path=calibration_path,
        variant=model.variant,
        evaluation_images_path=evaluation_images_path,
        model_name=model_name,
        allow_unsafe_code=allow_unsafe_code,
        converter_lock=DEBUGGER_LOCK,
    )


def models_to_analyse(
    *, evaluations: dict[str, Evaluation], built: list[BuiltModel], float_tflite: str, max_accuracy_drop: float
) -> dict[str, BuiltModel]:
    """The integer models (MCT's, and the converter's integer variants) that lost more than the budget, by name."""
    baseline = evaluations["keras"].score
    found = {}
    for model in built:
        name = model_id(model.variant, float_tflite)
        analysable = model.quantization is not None or model.variant in CONVERTER_ANALYSED_VARIANTS
        if analysable and not within_budget(baseline - evaluations[name].score, max_accuracy_drop):
            found[name] = model
    return found
