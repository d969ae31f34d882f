"""Pick the model to ship: the best deployable (.tflite) model whose Top-1 stays within
`max_accuracy_drop` of the float Keras model, best meaning smallest file (`size`) or fastest
inference on all threads (`latency`). Every other candidate is listed with why it lost."""
from __future__ import annotations

import math


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


def recommend(models: list[dict], max_accuracy_drop: float, objective: str = "size") -> dict:
    if objective not in ("size", "latency"):
        raise ValueError(f"objective {objective!r}: expected 'size' or 'latency'")
    baseline = next(m for m in models if m["model"] == "keras")["top_1_accuracy"]
    candidates = [m for m in models if str(m["file"]).endswith(".tflite")]
    drop = {m["model"]: round(baseline - m["top_1_accuracy"], 6) for m in candidates}
    within = [m for m in candidates if drop[m["model"]] <= max_accuracy_drop + 1e-9]
    summary = {"objective": objective, "max_accuracy_drop": max_accuracy_drop, "baseline_top_1": baseline}
    if not within:
        closest = min(candidates, key=lambda m: (drop[m["model"]], _measure(m, objective))) if candidates else None
        rejected = [{"model": m["model"], "top_1_drop": drop[m["model"]], "reason": f"Top-1 drop {drop[m['model']]:.4f} exceeds the budget {max_accuracy_drop:.4f}"} for m in candidates]
        reason = f"no TFLite model stays within a Top-1 drop of {max_accuracy_drop:.4f} of the float Keras model ({baseline:.4f})"
        if closest:
            reason += f"; the closest is {closest['model']} (drop {drop[closest['model']]:.4f})"
        return {**summary, "chosen": None, "closest": closest["model"] if closest else None, "reason": reason, "rejected": rejected}
    chosen = min(within, key=lambda m: (_measure(m, objective), -m["top_1_accuracy"]))
    word = "smallest" if objective == "size" else "fastest"
    reason = (
        f"{chosen['model']} is the {word} TFLite model ({_describe(chosen, objective)}) whose Top-1 {chosen['top_1_accuracy']:.4f} "
        f"stays within {max_accuracy_drop:.4f} of the float Keras model's {baseline:.4f} (drop {drop[chosen['model']]:.4f})"
    )
    rejected = []
    for m in candidates:
        if m is chosen:
            continue
        if m in within:
            why = f"{'larger' if objective == 'size' else 'slower'}: {_describe(m, objective)} against {_describe(chosen, objective)}"
        else:
            why = f"Top-1 drop {drop[m['model']]:.4f} exceeds the budget {max_accuracy_drop:.4f}"
        rejected.append({"model": m["model"], "top_1_drop": drop[m["model"]], "reason": why})
    return {**summary, "chosen": chosen["model"], "closest": chosen["model"], "reason": reason, "rejected": rejected}
