"""The precision rung's ranking by the model's own score, where the signal-to-noise ratio misleads.

The per-layer analysis ranks layers by the SQNR each loses. On a detector that misleads: the error that costs mAP
at IoU 0.75 and above (a box edge a few pixels off) is small as noise power, so a convolution that loses 7 dB can
matter less than a head that loses 2. For a detector, and for a classifier whose SQNR ranking found no significant
loss, the search therefore measures each candidate layer's effect on the headline score itself, as NNCF's accuracy
control ranks its groups by the metric: MCT's PTQ model scored on tuning images with that one layer's output kept in
float (core/analysis/score_sensitivity.py). A layer that alone wins back a good share of what quantization lost leads
the search: the 16-bit rung is tried first, on that layer first.
"""

from __future__ import annotations

import logging

import numpy as np

from core.analysis.layer_analysis import SIGNIFICANT_LOSS_DB
from core.analysis.records import LayerAnalysis, ScoreSensitivity
from core.analysis.score_sensitivity import kind_score, score_sensitivity
from core.build.records import BuiltModel
from core.kinds.registry import kind_named

SCORING_IMAGES = 100  # of the tuning images: the first ones score each candidate
# A layer leads the search when keeping it in float alone wins back this share of the drop over the budget.
LEADING_SHARE = 0.5

log = logging.getLogger(__name__)


def why_rank_by_score(task: str, analyses: list[LayerAnalysis]) -> str | None:
    """Why the search ranks the layers by the score itself, or None when the analysis' ranking is trusted."""
    if task == "detection":
        return "a detector's box error at high IoU is small as signal-to-noise, so the score itself ranks the layers"
    if not any(layer.loss_db >= SIGNIFICANT_LOSS_DB for analysis in analyses for layer in analysis.layers):
        return "the signal-to-noise analysis found no layer that lost much, so the score itself ranks the layers"
    return None


def ptq_model_path(built: list[BuiltModel]) -> str | None:
    """MCT's PTQ Keras model, which the ranking bypasses layer by layer, when the run made one."""
    return next((b.quantization.path for b in built if b.quantization is not None and b.variant == "mct_ptq"), None)


def rank_by_score(
    *,
    task: str,
    quantized_model_path: str,
    candidates: list[str],
    images_path: str,
    labels_path: str,
    batch_size: int,
    class_count: int,
) -> ScoreSensitivity | None:
    """Each candidate's gain in score when its output stays in float, on the first SCORING_IMAGES tuning images;
    None when the measurement fails (the ranking is a hint: the search goes on with the analysis')."""
    images = min(SCORING_IMAGES, len(np.load(images_path, mmap_mode="r")))
    score = kind_score(
        task,
        images_path=images_path,
        labels_path=labels_path,
        batch_size=batch_size,
        class_count=class_count,
        stop=images,
    )
    try:
        ranking = score_sensitivity(quantized_model_path=quantized_model_path, candidates=candidates, score=score)
        return ranking.model_copy(update={"image_count": images})
    except Exception as exc:  # a model MCT's loader or the bypass cannot handle: ranked as before
        log.warning("Ranking the layers by %s failed: %s", kind_named(task).score_label, exc, exc_info=exc)
        return None


def leading_layer(ranking: ScoreSensitivity | None, drop: float, budget: float, task: str) -> tuple[str, str] | None:
    """(the layer whose precision looks like the cure, why) when one alone wins back LEADING_SHARE of the excess
    drop `drop` - `budget` of the PTQ model on the scoring images."""
    if ranking is None or not ranking.layers:
        return None
    best = ranking.layers[0]
    if best.gain <= 0 or best.gain < LEADING_SHARE * max(drop - budget, 0.0):
        return None
    label = kind_named(task).score_label
    return best.layer, (
        f"the score ranking: keeping {best.layer}'s output in float alone raises {label} from "
        f"{ranking.quantized_score:.4f} to {best.score:.4f} on {ranking.image_count} tuning images, the most of any "
        "layer"
    )
