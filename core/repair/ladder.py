"""Repairing a model that quantization broke: when a repair is due, the ladder of recipes to try (cheapest
first), and the order the layer analysis' causes give them (each recipe names the causes it cures).

Like the accuracy-aware searches of Intel Neural Compressor, OpenVINO NNCF and AIMET, the search stops at the
first recipe whose model is deployable on the target and within the accuracy budget; unlike them it targets
the IMX500 (MCT, Sony's converter) and Ethos-U (TensorFlow's converter, Vela).
"""

from __future__ import annotations

from itertools import zip_longest

from core.analysis.layer_analysis import SIGNIFICANT_LOSS_DB
from core.analysis.layer_causes import CauseKind
from core.analysis.records import LayerAnalysis
from core.build.records import BuiltModel
from core.build.variants import VARIANTS, model_id
from core.kinds.records import Evaluation
from core.repair.records import RepairRecipe
from core.targets.devices import target_for, within_budget
from core.targets.records import HardwareReports

TUNING_SHARE = 0.5  # of the evaluation images, per class; the rest reports the chosen model
# The equalized float model must keep the float predictions on (nearly) every tuning image.
MIN_EQUALIZATION_AGREEMENT = 0.99
OUTLIER_Z_THRESHOLD = 8.0  # standard deviations: MCT's outlier removal before thresholds are chosen
MORE_CALIBRATION = 4  # times the configured number of calibration batches
REPAIR_GPTQ_EPOCHS = 20
ANALYSIS_METHODS = {"mct": "xquant", "converter": "quantization_debugger"}  # how each builder's models are analysed
# What more bits cure: a spread no equalization reaches, outliers, a layer sensitive whatever its ranges.
PRECISION_CURES: tuple[CauseKind, ...] = (
    "channel_spread_at_join",
    "channel_spread_at_concat",
    "outliers",
    "sensitive_first",
    "sensitive_last",
)
CAUSE_LAYERS = 3  # of each analysed model, worst first: the layers whose causes choose the first recipes


# The inputs whose files' content enters a trial's cache key (core.caching.ContentCachePolicy's dotted names).
TRIAL_FILE_INPUTS = (
    "inputs.build.model_path",
    "inputs.calibration_path",
    "inputs.calibration_source.dataset_image_dir",
    "inputs.tuning_images_path",
    "inputs.tuning_labels_path",
)


def integer_model_names(float_tflite: str, built: list[BuiltModel]) -> list[str]:
    """The models with integer arithmetic inside: what a device's NPU runs."""
    return [model_id(b.variant, float_tflite) for b in built if VARIANTS[b.variant].integer]


def repair_due(
    *,
    mode: str,
    evaluations: dict[str, Evaluation],
    built: list[BuiltModel],
    hardware: HardwareReports,
    float_tflite: str,
    max_accuracy_drop: float,
    target_device: str | None,
) -> tuple[bool, str]:
    """Whether to search, and why: under 'auto', when no integer model the target takes stays within budget."""
    if mode == "off":
        return False, "repair is off"
    baseline = evaluations["keras"].score
    target = target_for(target_device)
    fitting, refused = [], []
    for name in integer_model_names(float_tflite, built):
        row = hardware.reports_of(name, float_tflite)
        if not target.takes(name, float_tflite) or target.problem(row):
            refusal = target.refusal(row) if target.takes(name, float_tflite) else None
            refused += [f"{name}: {refusal}"] if refusal else []
            continue
        drop = baseline - evaluations[name].score
        fitting.append((drop, name))
    best = min(fitting) if fitting else None
    where = f" that {target_device} takes" if target_device else ""
    if best is None and refused:
        return False, (
            f"not searched: {target_device}'s compiler refused the model ({'; '.join(refused)}), and the repair's "
            "recipes change precisions, not the operators it refused"
        )
    if best is not None and within_budget(best[0], max_accuracy_drop):
        state = f"{best[1]} stays within {max_accuracy_drop:.4f} of the float model (drop {best[0]:.4f})"
        if mode == "always":
            return True, f"repair is 'always' ({state})"
        return False, f"not needed: {state}"
    lost = f"the best integer model{where}, {best[1]}, drops {best[0]:.4f}" if best else f"no integer model{where}"
    return True, f"{lost}; the budget is {max_accuracy_drop:.4f}"


def ladder(*, target_device: str | None, error_method: str) -> list[RepairRecipe]:
    """The recipes, cheapest first, for the target: with the builders it takes (MCT models for the IMX500,
    full-integer converter models for an Ethos-U), taking turns when it takes both."""
    builders = target_for(target_device).builders
    converter_variant = "full_int8"
    other_error = "noclipping" if error_method != "noclipping" else "mse"
    mct_rungs = [
        RepairRecipe(
            name="mct_cle",
            cures=("channel_spread",),
            description="cross-layer equalization of the float model, then MCT PTQ",
            builder="mct",
            equalize=True,
        ),
        RepairRecipe(
            name="mct_residual_cle",
            cures=("channel_spread_at_join",),
            description="equalization that follows the residual streams (every layer writing and reading a "
            "stream rescaled together), then MCT PTQ",
            builder="mct",
            equalize=True,
            residual=True,
        ),
        RepairRecipe(
            name="mct_cle_outliers",
            cures=("outliers", "negative_into_unsigned"),
            description=f"equalization, MCT outlier removal (z-threshold {OUTLIER_Z_THRESHOLD:g}) "
            "and a searched negative-activation shift",
            builder="mct",
            equalize=True,
            z_threshold=OUTLIER_Z_THRESHOLD,
            shift_negative_params_search=True,
        ),
        RepairRecipe(
            name="mct_16bit",
            cures=PRECISION_CURES,
            description="equalization and 16-bit activations on the layers the analysis ranks worst, where the TPC "
            "allows them, the group grown until the budget holds (MCT's Keras model, which Sony's converter takes)",
            builder="mct",
            equalize=True,
            precision=True,
        ),
        RepairRecipe(
            name="mct_cle_error_method",
            description=f"equalization and MCT's '{other_error}' threshold error method",
            builder="mct",
            equalize=True,
            error_method=other_error,
        ),
        RepairRecipe(
            name="mct_cle_more_calibration",
            description=f"equalization and {MORE_CALIBRATION}x the calibration batches",
            builder="mct",
            equalize=True,
            calibration_factor=MORE_CALIBRATION,
        ),
        RepairRecipe(
            name="mct_cle_gptq",
            description=f"equalization and MCT GPTQ ({REPAIR_GPTQ_EPOCHS} epochs)",
            builder="mct",
            equalize=True,
            gptq_epochs=REPAIR_GPTQ_EPOCHS,
        ),
    ]
    converter_rungs = [
        RepairRecipe(
            name="converter_cle",
            cures=("channel_spread",),
            description=f"cross-layer equalization of the float model, then the converter's {converter_variant}",
            builder="converter",
            equalize=True,
            converter_variant=converter_variant,
        ),
        RepairRecipe(
            name="converter_residual_cle",
            cures=("channel_spread_at_join",),
            description=f"equalization that follows the residual streams, then the converter's {converter_variant}",
            builder="converter",
            equalize=True,
            residual=True,
            converter_variant=converter_variant,
        ),
        RepairRecipe(
            name="converter_16x8",
            cures=PRECISION_CURES,
            description="equalization and 16-bit activations throughout (the converter's 16x8 mode, int16 "
            "input/output, int8 weights), which Vela runs on the NPU",
            builder="converter",
            equalize=True,
            converter_variant="full_int16x8",
        ),
        RepairRecipe(
            name="converter_cle_more_calibration",
            description=f"equalization and {MORE_CALIBRATION}x the calibration images, the converter's "
            f"{converter_variant}",
            builder="converter",
            equalize=True,
            calibration_factor=MORE_CALIBRATION,
            converter_variant=converter_variant,
        ),
    ]
    by_builder = {"mct": mct_rungs, "converter": converter_rungs}
    # Cheapest first within each builder; the builders take turns, one rung each.
    taking_turns = zip_longest(*(by_builder[builder] for builder in builders))
    return [rung for turn in taking_turns for rung in turn if rung]


def by_causes(
    recipes: list[RepairRecipe], analyses: list[LayerAnalysis], precision_leads: str | None = None
) -> list[tuple[RepairRecipe, str]]:
    """The recipes in the order to try them, each with why: the precision rungs first when the score ranking found
    a layer whose precision looks like the cure (`precision_leads`: why, core/repair/score_ranking.py); then the
    cures of each cause the layer analysis found on the layers that lost the most (worst first; a cause's cures in
    the ladder's order), then the rest of the ladder in its order."""
    layers = sorted(
        (layer for analysis in analyses for layer in analysis.layers[:CAUSE_LAYERS]),
        key=lambda layer: -layer.loss_db,
    )
    ordered: list[tuple[RepairRecipe, str]] = []
    if precision_leads:
        ordered = [(r, precision_leads) for r in recipes if r.precision]
    for layer in layers:
        if layer.loss_db < SIGNIFICANT_LOSS_DB:
            break
        for kind, text in zip(layer.cause_kinds, layer.causes, strict=False):
            for cure in [r for r in recipes if kind in r.cures and all(r is not o for o, _ in ordered)]:
                ordered.append((cure, f"the analysis: {layer.layer} lost {layer.loss_db:.1f} dB; {text}"))
    rest = [(r, "the ladder's next rung") for r in recipes if all(r is not o for o, _ in ordered)]
    return ordered + rest
