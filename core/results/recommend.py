"""Pick the model to ship: the best deployable (.tflite) model whose score (a classifier's Top-1) stays within
`max_accuracy_drop` of the float Keras model, best meaning smallest file (`size`) or fastest
inference on all threads (`latency`). Every other candidate is listed with why it lost.

With a `target_device`, only the models that device can take compete: for `imx500` those that fit the
sensor, for an Ethos-U the ones Vela compiled, the highest share of operators on the NPU first."""

from __future__ import annotations

import math

from core.kinds.kind import ModelKind
from core.kinds.registry import CLASSIFICATION
from core.results.records import Recommendation, Rejection
from core.targets.devices import target_for, within_budget


def _measure(model: dict, objective: str) -> float:
    if objective == "size":
        return float(model["file_size_bytes"])
    latency = (model.get("latency_ms") or {}).get("all_threads")
    return math.inf if latency is None else float(latency)


def _describe(model: dict, objective: str) -> str:
    if objective == "size":
        return f"{model['file_size_bytes'] / 1024:.1f} KiB"
    value = _measure(model, objective)
    return "no latency measured" if math.isinf(value) else f"{value:.3f} ms per image"


def recommend(
    models: list[dict],
    max_accuracy_drop: float,
    objective: str = "size",
    target_device: str | None = None,
    kind: ModelKind = CLASSIFICATION,
) -> Recommendation:
    """`models` are results.json's rows; a row measured on other images than the rest (the repaired model, on the
    images its search never saw) carries the float model's score on those images as its `baseline_top_1`."""
    if objective not in ("size", "latency"):
        raise ValueError(f"objective {objective!r}: expected 'size' or 'latency'")
    target = target_for(target_device)
    score, label = kind.score_key, kind.score_label
    baseline = next(m for m in models if m["model"] == "keras")[score]
    summary = dict(
        objective=objective, max_accuracy_drop=max_accuracy_drop, baseline_top_1=baseline, target_device=target_device
    )
    # A TFLite model, or one Sony's IMX500 converter judged (the repair's MCT model with 16-bit activations)
    deployable = [m for m in models if str(m["file"]).endswith(".tflite") or m.get("imx500")]
    drop = {m["model"]: round(m.get("baseline_top_1", baseline) - m[score], 6) for m in deployable}
    unfit = [
        Rejection(model=m["model"], top_1_drop=drop[m["model"]], reason=target.problem(m))
        for m in deployable
        if target.problem(m)
    ]
    candidates = [m for m in deployable if not target.problem(m)]
    if not candidates and unfit:
        # The device's compiler's verdict on a model it ran on says more than another model's "not for this device".
        rows = {m["model"]: m for m in deployable}
        named = next((r for r in unfit if target.judged(rows[r.model])), unfit[0])
        reason = f"no TFLite model can go to {target_device}: {named.model}: {named.reason}"
        return Recommendation(**summary, chosen=None, closest=None, reason=reason, rejected=unfit)

    def over_budget(m: dict) -> Rejection:
        why = f"{label} drop {drop[m['model']]:.4f} exceeds the budget {max_accuracy_drop:.4f}"
        return Rejection(model=m["model"], top_1_drop=drop[m["model"]], reason=why)

    within = [m for m in candidates if within_budget(drop[m["model"]], max_accuracy_drop)]
    if not within:
        closest = min(candidates, key=lambda m: (drop[m["model"]], _measure(m, objective))) if candidates else None
        where = f" that {target_device} can take" if target_device else ""
        reason = (
            f"no TFLite model{where} stays within a {label} drop of {max_accuracy_drop:.4f} "
            f"of the float Keras model ({baseline:.4f})"
        )
        if closest:
            reason += f"; the closest is {closest['model']} (drop {drop[closest['model']]:.4f})"
        return Recommendation(
            **summary,
            chosen=None,
            closest=closest["model"] if closest else None,
            reason=reason,
            rejected=[over_budget(m) for m in candidates] + unfit,
        )
    npu_first = target.npu_first
    chosen = min(within, key=lambda m: (-npu_share(m) if npu_first else 0, _measure(m, objective), -m[score]))
    adjective = "smallest" if objective == "size" else "fastest"
    among = (" with the most operators on the NPU" if npu_first else "") + (
        f" that {target_device} can take" if target_device else ""
    )
    chosen_baseline = chosen.get("baseline_top_1", baseline)
    same_images = " on the same images" if "baseline_top_1" in chosen else ""
    what = "TFLite model" if str(chosen["file"]).endswith(".tflite") else "model (MCT's Keras format, for the IMX500)"
    reason = (
        f"{chosen['model']} is the {adjective} {what}{among} ({_describe(chosen, objective)}) whose {label} "
        f"{chosen[score]:.4f} stays within {max_accuracy_drop:.4f} of the float Keras model's "
        f"{chosen_baseline:.4f}{same_images} (drop {drop[chosen['model']]:.4f})"
    )
    rejected = []
    for m in candidates:
        if m is chosen:
            continue
        if m not in within:
            rejected.append(over_budget(m))
            continue
        if npu_first and npu_share(m) < npu_share(chosen):
            why = f"fewer operators on the NPU: {100 * npu_share(m):.0f}% against {100 * npu_share(chosen):.0f}%"
        else:
            worse = "larger" if objective == "size" else "slower"
            why = f"{worse}: {_describe(m, objective)} against {_describe(chosen, objective)}"
        rejected.append(Rejection(model=m["model"], top_1_drop=drop[m["model"]], reason=why))
    return Recommendation(
        **summary, chosen=chosen["model"], closest=chosen["model"], reason=reason, rejected=rejected + unfit
    )


def npu_share(model: dict) -> float:
    return float((model.get("ethos_u") or {}).get("npu_share") or 0.0)
