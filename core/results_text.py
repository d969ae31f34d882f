"""How a run's results read: the comparison table (terminal, CSV, Prefect table artifact), the markdown
summary with the recommendation, and the Prefect artifact key of a model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pandas as pd


def artifact_key(model_path: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes; one key per model gives a history
    per model. The model's folder is part of it, since many models are all called model.h5."""
    path = Path(model_path)
    stem = path.stem if path.suffix else path.name
    slug = re.sub(r"[^a-z0-9]+", "-", f"{path.parent.name}-{stem}".lower()).strip("-") or "model"
    return f"quantize-evaluate-{slug}"


def _percent(share: float | None) -> str | None:
    return None if share is None else f"{100 * share:.0f}%"


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def results_table(results: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": m["model"],
                "description": m["description"],
                "file": Path(m["file"]).name,
                "size_kib": round(m["file_size_bytes"] / 1024, 1),
                "top_1": round(m["top_1_accuracy"], 4),
                "top_5": round(m["top_5_accuracy"], 4),
                "change_vs_keras": round(m["top_1_change_vs_keras"], 4),
                "agreement": round(m["agreement_with_keras"], 4),
                "ms_1_thread": _ms(m["latency_ms"]["1_thread"]),
                "ms_all_threads": _ms(m["latency_ms"]["all_threads"]),
                "input": m["input_dtype"],
                "output": m["output_dtype"],
                "npu_ops": _percent((m.get("ethos_u") or {}).get("npu_share")),
                "ethos_u_inf_s": (m.get("ethos_u") or {}).get("inferences_per_second"),
                "imx500_fits": _yes_no((m.get("imx500") or {}).get("fits")),
                "images": m["image_count"],
            }
            for m in results["models"]
        ]
    )


def format_table(results: dict[str, Any]) -> str:
    """The comparison for a terminal, then the recommendation."""
    table = results_table(results).drop(columns=["description", "images"]).fillna("-").to_string(index=False)
    return f"{table}\n{unsupported_text(results)}\n{recommendation_text(results['recommendation'])}"


def unsupported_text(results: dict[str, Any]) -> str:
    return "".join(
        f"Not built: {name}: {reason.splitlines()[0]}\n" for name, reason in results["unsupported_variants"].items()
    )


def recommendation_text(recommendation: dict) -> str:
    if recommendation["chosen"]:
        return f"Recommended: {recommendation['reason']}."
    return f"Recommended: none. {recommendation['reason']}."


def summary_markdown(results: dict[str, Any]) -> str:
    frame = results_table(results).fillna("-")
    rows = [list(frame.columns)] + frame.astype(str).values.tolist()
    table = "\n".join(
        "| " + " | ".join(map(str, row)) + " |" for row in rows[:1] + [["---"] * len(frame.columns)] + rows[1:]
    )
    rejected = "\n".join(f"- `{r['model']}`: {r['reason']}" for r in results["recommendation"]["rejected"])
    return (
        f"# Quantize and evaluate: {Path(results['models'][0]['file']).name}\n\n"
        f"**{recommendation_text(results['recommendation'])}**\n\n"
        f"{results['image_count']} evaluation images, {results['class_count']} classes; "
        f"MCT {results['quantization']['mct_version']} for target platform "
        f"`{results['quantization']['target_platform']}`; "
        f"latency per image on {results['latency_machine']}.\n\n{table}\n\n"
        f"Not recommended:\n\n{rejected or '- (no other candidate)'}\n\n{unsupported_text(results)}\n"
        f"Report with confusion matrices and the accuracy-vs-size chart: `{results['report']}`\n\n"
        f"Configuration: `{results['configuration']}`\n"
    )
