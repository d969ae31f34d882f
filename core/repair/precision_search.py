"""The precision rung's trials: 16-bit activations only where the model needs them, as OpenVINO NNCF's accuracy
control and Intel Neural Compressor fall back layer by layer, but to 16-bit integers (what the IMX500 runs) rather
than float.

The layers that may take 16 bits are MCT's answer for the TPC in use (core/build/precision.py); the layer analysis
ranks them by the loss it measured, worst first (those it did not measure follow, nearest the output first: an
output's error reaches the result directly). The group grows, 1, 1, 2, 4, ... layers at a time; a group whose trial
does not raise the tuning score is dropped again (the promotion is kept only where it helps); the search stops at the
first trial that qualifies, or when the candidates or the search's limits run out.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from core.analysis.records import LayerAnalysis, ScoreSensitivity
from core.analysis.score_sensitivity import MCT_NODE_SUFFIXES
from core.repair.records import RepairRecipe, RepairTrial

# Runs one trial and records it (the search's limits checked first): None when a limit stopped the search.
RunStep = Callable[[RepairRecipe, str], RepairTrial | None]


def ranked_candidates(
    candidates: list[str], analyses: list[LayerAnalysis], by_score: ScoreSensitivity | None = None
) -> list[str]:
    """`candidates` (in the graph's order): those whose output kept in float raised the score (`by_score`,
    core/repair/score_ranking.py) first, most first; then the rest worst first by the analyses' loss; those no
    analysis measured after them, nearest the output first."""
    loss: dict[str, float] = {}
    for analysis in analyses:
        for layer in analysis.layers:
            loss[layer.layer] = max(loss.get(layer.layer, layer.loss_db), layer.loss_db)

    def measured(candidate: str) -> float | None:
        # MCT names a layer's own activation (Conv2D(activation="relu")) `<layer>_post_activation`, and a convolution
        # with a batch normalization folded in `<conv>_bn`; the analysis reports both under the layer's name.
        for name in (candidate, *(candidate.removesuffix(suffix) for suffix in MCT_NODE_SUFFIXES)):
            if name in loss:
                return loss[name]
        return None

    gains = {layer.layer: layer.gain for layer in (by_score.layers if by_score else []) if layer.gain > 0}
    first = sorted((c for c in candidates if c in gains), key=lambda c: -gains[c])
    rest = [c for c in candidates if c not in gains]
    ranked = sorted((c for c in rest if measured(c) is not None), key=lambda c: -(measured(c) or 0.0))
    return first + ranked + [c for c in reversed(rest) if measured(c) is None]


def groups(ranked: list[str]) -> Iterator[tuple[str, ...]]:
    """The next layers to promote: 1, 1, 2, 4, ... at a time, in rank order."""
    start, size = 0, 1
    while start < len(ranked):
        yield tuple(ranked[start : start + size])
        start += size
        size = size if start == 1 else size * 2


def grow_precision(recipe: RepairRecipe, why: str, ranked: list[str], run: RunStep) -> RepairTrial | None:
    """The precision rung's trials, each `recipe` with a group of 16-bit layers: the first that qualifies, or the
    last one run (None when a limit stopped it before any ran)."""
    kept: tuple[str, ...] = ()
    best: float | None = None
    last = None
    for group in groups(ranked):
        layers = kept + group
        step = recipe.model_copy(update={"sixteen_bit_activations": layers})
        trial = run(step, f"{why}; 16 bits on {', '.join(layers)}" + (f" (kept: {', '.join(kept)})" if kept else ""))
        if trial is None:
            return last
        last = trial
        if trial.qualifies:
            return trial
        if trial.tuning_top_1 is not None and (best is None or trial.tuning_top_1 > best):
            kept, best = layers, trial.tuning_top_1
    return last
