"""Step 7: record the results and publish the models.

Runs only after every evaluation succeeded, so a failed run never replaces the previous
run's good outputs. Every file is written to a temporary name and renamed into place:
  output_dir/model.tflite, model_quantized.tflite, model_quantized.keras
  evaluate_result_dir/results.json (the SDK's four keys first, then the details), results.csv
and the Prefect artifacts: a table and a markdown summary, keyed per model.
"""
from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import pandas as pd
from prefect import task

from core.files import atomic_copy, atomic_write_json, atomic_write_text
from core.locking import locked_folders
from core.retry import RETRY_OPTIONS
from tasks.validate_config import ValidatedConfig

DISPLAY_NAMES = {
    "keras": "Keras (float)",
    "keras_quantized": "Keras quantized (MCT)",
    "tflite": "TFLite ({kind})",
    "tflite_quantized": "TFLite quantized (MCT, int8)",
}
PUBLISHED_NAMES = {"tflite": "model.tflite", "tflite_quantized": "model_quantized.tflite", "keras_quantized": "model_quantized.keras"}


def artifact_key(model_path: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes; one key per model gives a history
    per model. The model's folder is part of it, since many models are all called model.h5."""
    path = Path(model_path)
    stem = path.stem if path.suffix else path.name
    slug = re.sub(r"[^a-z0-9]+", "-", f"{path.parent.name}-{stem}".lower()).strip("-") or "model"
    return f"quantize-evaluate-{slug}"


def size_bytes(path: str | Path) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def record_results(
    validated: ValidatedConfig,
    calibration: dict,
    quantization: dict,
    float_tflite: dict,
    quantized_tflite: dict,
    evaluation_set: dict,
    evaluations: list[dict],
    lock_timeout: float = 120.0,
) -> dict[str, Any]:
    config = validated.config
    output_dir, result_dir = Path(config.output_dir), Path(config.evaluate_result_dir)
    sources = {"keras": config.source_keras_model, "keras_quantized": quantization["path"], "tflite": float_tflite["path"], "tflite_quantized": quantized_tflite["path"]}
    published = {name: str(output_dir / file) for name, file in PUBLISHED_NAMES.items()}
    published["keras"] = config.source_keras_model

    by_name = {e["model"]: e for e in evaluations}
    baseline = by_name["keras"]["top_1_accuracy"]
    models = []
    for name in ("keras", "keras_quantized", "tflite", "tflite_quantized"):
        e = by_name[name]
        models.append(
            {
                "model": name,
                "description": DISPLAY_NAMES[name].format(kind=float_tflite["kind"]),
                "file": published[name],
                "file_size_bytes": size_bytes(sources[name]),
                "top_1_accuracy": e["top_1_accuracy"],
                "top_1_change_vs_keras": round(e["top_1_accuracy"] - baseline, 6),
                "correct": e["correct"],
                "image_count": e["image_count"],
                "evaluation_seconds": e["seconds"],
            }
        )
    results: dict[str, Any] = {f"top_1_accuracy_{m['model']}": m["top_1_accuracy"] for m in models}
    results.update(
        {
            "image_count": by_name["keras"]["image_count"],
            "class_count": len(validated.class_names),
            "models": models,
            "float_tflite": float_tflite["kind"],
            "quantization": {k: quantization[k] for k in ("target_platform", "tpc_version", "mct_version")},
            "calibration": {k: calibration[k] for k in ("batch_size", "iteration_count", "images_found", "images_used", "seed")},
            "preprocessing": config.preprocessing.model_dump(),
            "labels_without_folder": validated.labels_without_folder,
            "skipped_images": {
                "calibration_count": len(calibration["skipped"]),
                "evaluation_count": len(evaluation_set["skipped"]),
                "files": calibration["skipped"] + evaluation_set["skipped"],
            },
            "configuration": validated.source,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        }
    )
    # Models and results of one run are published together, under the folders' locks.
    with locked_folders([output_dir, result_dir], timeout=lock_timeout):
        for name, file in PUBLISHED_NAMES.items():
            atomic_copy(Path(sources[name]), output_dir / file)
        atomic_write_json(result_dir / "results.json", results)
        atomic_write_text(result_dir / "results.csv", results_table(results).to_csv(index=False))
    return results


def results_table(results: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {
                "model": m["description"],
                "file": Path(m["file"]).name,
                "size_kib": round(m["file_size_bytes"] / 1024, 1),
                "top_1": round(m["top_1_accuracy"], 4),
                "change_vs_keras": round(m["top_1_change_vs_keras"], 4),
                "images": m["image_count"],
            }
            for m in results["models"]
        ]
    )


def format_table(results: dict[str, Any]) -> str:
    return results_table(results).to_string(index=False)


def summary_markdown(results: dict[str, Any]) -> str:
    frame = results_table(results)
    rows = [list(frame.columns)] + frame.astype(str).values.tolist()
    table = "\n".join("| " + " | ".join(map(str, row)) + " |" for row in rows[:1] + [["---"] * len(frame.columns)] + rows[1:])
    return (
        f"# Quantize and evaluate: {Path(results['models'][0]['file']).name}\n\n"
        f"{results['image_count']} evaluation images, {results['class_count']} classes; "
        f"MCT {results['quantization']['mct_version']} for target platform `{results['quantization']['target_platform']}`; "
        f"`model.tflite` is a {results['float_tflite']} conversion.\n\n{table}\n\n"
        f"Configuration: `{results['configuration']}`\n"
    )


@task(name="record-results", persist_result=False, **RETRY_OPTIONS)
def record_results_task(
    validated: ValidatedConfig, calibration: dict, quantization: dict, float_tflite: dict, quantized_tflite: dict, evaluation_set: dict, evaluations: list[dict]
) -> dict[str, Any]:
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.logging import get_run_logger

    results = record_results(validated, calibration, quantization, float_tflite, quantized_tflite, evaluation_set, evaluations)
    key = artifact_key(validated.config.source_keras_model)
    create_table_artifact(key=f"{key}-table", table=results_table(results).to_dict(orient="records"), description="Top-1 accuracy, file size and image count of each model")
    create_markdown_artifact(key=key, markdown=summary_markdown(results), description="Quantize-and-evaluate summary")
    get_run_logger().info("Results written to %s\n%s", Path(validated.config.evaluate_result_dir) / "results.json", format_table(results))
    return results
