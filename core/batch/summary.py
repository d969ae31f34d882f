"""A batch run's summary: what each configuration's quantize-evaluate subflow came to, one row per
configuration (model, status, each headline score (Top-1 or mAP), sizes, the recommended model), and its markdown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from core.build.variants import SDK_MODELS
from core.kinds.registry import CLASSIFICATION, kind_of_results

SUMMARY_ARTIFACT_KEY = "batch-quantize-summary"


def outcome(config_path: str, state) -> dict[str, Any]:
    """What one quantize-evaluate subflow came to, from its final Prefect state: JSON-able."""
    if state.is_completed():
        return {"configuration": config_path, "status": "completed", "results": state.result()}
    try:
        state.result()
        error = state.message or state.name
    except Exception as exc:  # the subflow's own exception: its message is the reason
        error = f"{type(exc).__name__}: {exc}"
    return {"configuration": config_path, "status": state.name.lower(), "error": error}


def _model_name(path: str) -> str:
    return f"{Path(path).parent.name}/{Path(path).name}"


def _row(item: dict[str, Any]) -> dict[str, Any]:
    results = item.get("results") or {}
    models = {m["model"]: m for m in results.get("models", [])}
    row = {
        "configuration": item["configuration"],
        "model": _model_name(models["keras"]["file"]) if models else "",
        "status": item["status"],
    }
    # The headline score of the SDK's models, as the configuration's kind names it (a classifier's Top-1 as
    # top_1_<model>, a detector's mAP@[.5:.95] as map_50_95_<model>); a failed run's are empty.
    kind = kind_of_results(results) if results else CLASSIFICATION
    for name in SDK_MODELS:
        key = f"{kind.score_key}_{name}"
        row[key.replace("top_1_accuracy_", "top_1_")] = round(results[key], 4) if results.get(key) is not None else None
    for name in ("keras", "tflite", "tflite_quantized"):
        row[f"size_kib_{name}"] = round(models[name]["file_size_bytes"] / 1024, 1) if name in models else None
    row["recommended"] = (results.get("recommendation") or {}).get("chosen")
    row["failed_models"] = ", ".join(results.get("failed_variants") or {})  # each crashed model, not the run
    row["error"] = item.get("error", "")
    return row


def summarize_batch(outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    rows = [_row(item) for item in outcomes]
    failed = [r["configuration"] for r in rows if r["status"] != "completed"]
    with_failed_models = [r["configuration"] for r in rows if r["failed_models"]]
    return {
        "count": len(rows),
        "completed": len(rows) - len(failed),
        "failed": failed,
        "with_failed_models": with_failed_models,
        "rows": rows,
    }


def summary_markdown(summary: dict[str, Any]) -> str:
    frame = pd.DataFrame(summary["rows"]).fillna("")
    frame["error"] = frame["error"].str.slice(0, 200).str.replace("|", "/").str.replace("\n", " ")
    header = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns) + "\n"
    body = "".join("| " + " | ".join(map(str, row)) + " |\n" for row in frame.values.tolist())
    return f"# Batch quantization: {summary['completed']} of {summary['count']} completed\n\n{header}{body}"


def outcome_of(config_path: str, future) -> dict[str, Any]:
    """A configuration's outcome from a worker's future, even when the worker died before Prefect could
    record a state."""
    try:
        return future.result()
    except Exception as exc:
        return {"configuration": config_path, "status": "crashed", "error": f"{type(exc).__name__}: {exc}"}
