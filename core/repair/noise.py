"""How sure a trial's drop is. The tuning images are a sample: a recipe whose model scores within the budget on them
may owe it to which images they happen to be (a model at the edge of its budget passes on one half of the
evaluation set and fails on the other). The drop is therefore taken with its sampling noise: a one-sided upper
confidence bound, and a trial qualifies only when that bound is within the budget.

The noise is measured by half-sampling, which needs nothing of the score but the ability to compute it on a subset
of the images (COCO's mAP is no mean over images, so a formula would not do): the drop, float score minus the
trial's, is computed on many random halves of the tuning images, each drawn without replacement, and the spread of
those drops estimates the standard error of the drop on all of them (for a mean, a half drawn without replacement
has exactly the variance the whole has as a sample: s^2/n; McCarthy's half-samples).
"""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

from core.kinds.kind import ModelKind
from core.kinds.records import Evaluation
from core.records import Record

HALF_SAMPLES = 200


class DropEstimate(Record):
    """A drop on a sample of images, with how far the sample alone could have moved it."""

    drop: float  # float score minus the model's, on every image of the sample
    spread: float  # its standard error, from the half-samples
    bound: float  # the upper bound: the drop is below it with `confidence`
    confidence: float
    image_count: int


class DropNoise:
    """The drops of models from one reference (the float model) on one sample of images, with their noise: the
    half-samples are drawn once, and the reference scored on them once."""

    def __init__(self, kind: ModelKind, reference: Evaluation, labels_path: str, *, seed: int) -> None:
        self.kind, self.reference, self.labels_path = kind, reference, labels_path
        count = reference.image_count
        rng = np.random.default_rng(seed)
        self.halves = [rng.choice(count, count // 2, replace=False) for _ in range(HALF_SAMPLES)] if count >= 4 else []
        self._reference_scores: np.ndarray | None = None

    def estimate(self, evaluation: Evaluation, confidence: float) -> DropEstimate:
        """The drop from the reference to `evaluation` (on the same images) and its one-sided upper `confidence`
        bound. Paired: both models are scored on the same halves, so what moves both alike (an easy half, a hard
        half) cancels."""
        drop = self.reference.score - evaluation.score
        count = evaluation.image_count
        if not self.halves:  # too few images to halve: the bound is the drop, and image_count says why
            return DropEstimate(drop=drop, spread=0.0, bound=drop, confidence=confidence, image_count=count)
        if self._reference_scores is None:
            self._reference_scores = np.asarray(self.kind.subset_scores(self.reference, self.labels_path, self.halves))
        scores = np.asarray(self.kind.subset_scores(evaluation, self.labels_path, self.halves))
        spread = float((self._reference_scores - scores).std(ddof=1))
        bound = drop + NormalDist().inv_cdf(confidence) * spread
        return DropEstimate(drop=drop, spread=spread, bound=bound, confidence=confidence, image_count=count)
