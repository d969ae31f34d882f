"""Step 7: record the results and publish the models.

Runs only after every evaluation succeeded, so a failed run never replaces the previous
run's good outputs. Every file is written to a temporary name and renamed into place:
  output_dir/model.tflite, model_quantized.tflite, model_quantized.keras, model_<variant>.tflite
  evaluate_result_dir/results.json (the SDK's four keys first, then the details), results.csv, report.html
and the Prefect artifacts: a table, a markdown summary with the recommendation and a link to the
report, keyed per model.
"""

from __future__ import annotations

import datetime as dt
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from prefect import task

from core.errors import InputError
from core.files import atomic_copy, atomic_copy_tree, atomic_write_json, atomic_write_text
from core.locking import locked_folders
from core.metrics import agreement, per_class_accuracy
from core.recommend import recommend
from core.report import html_report
from core.retry import RETRY_OPTIONS
from core.variants import PROMISES, SDK_MODELS, variant_file_name
from tasks.compile_for_ethos_u import declined as declined_for_ethos_u
from tasks.validate_config import ValidatedConfig

KERAS_DESCRIPTIONS = {"keras": "Keras (float)", "keras_quantized": "Keras quantized (MCT PTQ)"}


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


EDGE_TPU = "not supported: the Edge TPU compiler is not installable from the package registries this project uses"


def model_row(
    name: str,
    description: str,
    published: str,
    source: str,
    evaluation: dict,
    latency: dict,
    reference: list[int],
    class_names: list[str],
    built: dict | None,
) -> dict:
    matrix = np.asarray(evaluation["confusion_matrix"])
    return {
        "model": name,
        "variant": built["variant"] if built else None,
        "description": description,
        "file": published,
        "file_size_bytes": size_bytes(source),
        "top_1_accuracy": evaluation["top_1_accuracy"],
        "top_5_accuracy": evaluation["top_5_accuracy"],
        "top_1_change_vs_keras": None,  # filled in once the baseline is known
        "agreement_with_keras": agreement(evaluation["predicted"], reference),
        "correct": evaluation["correct"],
        "image_count": evaluation["image_count"],
        "per_class_accuracy": per_class_accuracy(matrix, class_names),
        "confusion_matrix": evaluation["confusion_matrix"],
        "latency_ms": {"1_thread": latency["1_thread"], "all_threads": latency["all_threads"]},
        "input_dtype": built["input_dtype"] if built else "float32",
        "output_dtype": built["output_dtype"] if built else "float32",
        "input_quantization": built.get("input_quantization") if built else None,
        "evaluation_seconds": evaluation["seconds"],
    }


def record_results(
    validated: ValidatedConfig,
    calibration: dict,
    tflite_models: dict[str, dict],
    evaluation_set: dict,
    evaluations: dict[str, dict],
    latencies: dict[str, dict],
    unsupported: dict[str, str] | None = None,
    hardware: dict | None = None,
    lock_timeout: float = 120.0,
) -> dict[str, Any]:
    """`tflite_models`: what each TFLite step built, by model name; `evaluations` and `latencies` by model name;
    `unsupported`: the variants the converter could not make, with its message; `hardware`: what the
    IMX500 converter ({"imx500": ...}) and Vela ({"ethos_u": {model name: ...}}) said."""
    hardware = hardware or {"imx500": None, "ethos_u": {}}
    config = validated.config
    output_dir, result_dir = Path(config.output_dir), Path(config.evaluate_result_dir)
    ptq = tflite_models["tflite_quantized"]["quantization"]
    sources = {"keras": config.source_keras_model, "keras_quantized": ptq["path"]}
    published = {"keras": config.source_keras_model, "keras_quantized": str(output_dir / "model_quantized.keras")}
    descriptions = dict(KERAS_DESCRIPTIONS)
    for name, built in tflite_models.items():
        sources[name] = built["path"]
        published[name] = str(output_dir / variant_file_name(built["variant"], config.float_tflite))
        descriptions[name] = PROMISES[built["variant"]].description
    order = ["keras", "keras_quantized", "tflite", "tflite_quantized"] + [
        n for n in tflite_models if n not in SDK_MODELS
    ]
    reference = evaluations["keras"]["predicted"]
    models = [
        model_row(
            name,
            descriptions[name],
            published[name],
            sources[name],
            evaluations[name],
            latencies[name],
            reference,
            validated.class_names,
            tflite_models.get(name),
        )
        for name in order
    ]
    baseline = evaluations["keras"]["top_1_accuracy"]
    for m in models:
        m["top_1_change_vs_keras"] = round(m["top_1_accuracy"] - baseline, 6)
        if m["model"].startswith("tflite"):
            m["ethos_u"] = hardware["ethos_u"].get(m["model"]) or declined_for_ethos_u(m["variant"])
    # One record, shared by the model row and results["hardware"], updated in place once published.
    imx500 = dict(hardware["imx500"]) if hardware["imx500"] else None
    imx500_ran = bool(imx500 and not imx500["skipped"])
    if imx500:  # the converter's input is the MCT PTQ model, published as model_quantized.tflite
        next(m for m in models if m["model"] == "tflite_quantized")["imx500"] = imx500
    results: dict[str, Any] = {f"top_1_accuracy_{name}": evaluations[name]["top_1_accuracy"] for name in SDK_MODELS}
    results.update(
        {
            "image_count": evaluations["keras"]["image_count"],
            "class_count": len(validated.class_names),
            "class_names": validated.class_names,
            "recommendation": recommend(models, config.max_accuracy_drop, config.objective, config.target_device),
            "models": models,
            "float_tflite": config.float_tflite,
            "quantization": {
                k: ptq[k] for k in ("method", "error_method", "target_platform", "tpc_version", "mct_version")
            },
            "unsupported_variants": unsupported or {},
            "mct_variants": {
                name: built["quantization"] for name, built in tflite_models.items() if "quantization" in built
            },
            "calibration": {
                k: calibration[k] for k in ("batch_size", "iteration_count", "images_found", "images_used", "seed")
            },
            "preprocessing": config.preprocessing.model_dump(),
            "labels_without_folder": validated.labels_without_folder,
            "skipped_images": {
                "calibration_count": len(calibration["skipped"]),
                "evaluation_count": len(evaluation_set["skipped"]),
                "files": calibration["skipped"] + evaluation_set["skipped"],
            },
            "latency_machine": latencies["keras"].get("machine"),
            "hardware": {"imx500": imx500, "ethos_u_accelerator": config.ethos_u_accelerator, "edge_tpu": EDGE_TPU},
            "report": str(result_dir / "report.html"),
            "configuration": validated.source,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    )
    report = html_report(results)  # drawn before taking the locks: it is the slow part
    # Models and results of one run are published together, under the folders' locks.
    with locked_folders([output_dir, result_dir], timeout=lock_timeout):
        vela_models = {m["model"]: vela_file_name(m) for m in models if (m.get("ethos_u") or {}).get("compiled")}
        kept = {Path(published[name]).name for name in order} | set(vela_models.values())
        results["removed_stale_outputs"] = remove_stale_outputs(output_dir, kept, imx500_published=imx500_ran)
        for name in order:
            if name != "keras":
                atomic_copy(Path(sources[name]), Path(published[name]))
        for m in models:
            if m["model"] in vela_models:
                m["ethos_u"] = {
                    **m["ethos_u"],
                    "vela_model": str(
                        atomic_copy(Path(m["ethos_u"]["vela_model"]), output_dir / vela_models[m["model"]])
                    ),
                }
        if imx500_ran:
            folder = atomic_copy_tree(Path(imx500["folder"]), output_dir / "imx500")
            imx500.update(
                {
                    k: str(folder / Path(imx500[k]).name)
                    for k in ("memory_report", "packer_out", "dnn_params")
                    if k in imx500
                },
                folder=str(folder),
            )
        atomic_write_json(result_dir / "results.json", results)
        atomic_write_text(result_dir / "results.csv", results_table(results).to_csv(index=False))
        atomic_write_text(result_dir / "report.html", report)
    return results


def vela_file_name(model: dict) -> str:
    """Vela's model is published beside the model it compiled: model_full_int8_vela.tflite."""
    return f"{Path(model['file']).stem}_vela.tflite"


def remove_stale_outputs(output_dir: Path, kept: set[str], imx500_published: bool) -> list[str]:
    """Outputs an earlier run made that this run does not (a variant dropped, the IMX500 converter not
    run): left in place they would sit beside models they no longer match."""
    import shutil

    ours = {f"model_{variant}.tflite" for variant in PROMISES} | {
        f"model_{variant}_vela.tflite" for variant in PROMISES
    }
    removed = [name for name in sorted(ours - kept) if (output_dir / name).is_file()]
    for name in removed:
        (output_dir / name).unlink()
    if not imx500_published and (output_dir / "imx500").is_dir():
        shutil.rmtree(output_dir / "imx500")
        removed.append("imx500/")
    return removed


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
        f"MCT {results['quantization']['mct_version']} for target platform `{results['quantization']['target_platform']}`; "
        f"latency per image on {results['latency_machine']}.\n\n{table}\n\n"
        f"Not recommended:\n\n{rejected or '- (no other candidate)'}\n\n{unsupported_text(results)}\n"
        f"Report with confusion matrices and the accuracy-vs-size chart: `{results['report']}`\n\n"
        f"Configuration: `{results['configuration']}`\n"
    )


@task(name="record-results", persist_result=False, **RETRY_OPTIONS)
def record_results_task(
    validated: ValidatedConfig,
    calibration: dict,
    tflite_models: dict,
    evaluation_set: dict,
    evaluations: dict,
    latencies: dict,
    unsupported: dict | None = None,
    hardware: dict | None = None,
) -> dict[str, Any]:
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
    from prefect.logging import get_run_logger

    results = record_results(
        validated, calibration, tflite_models, evaluation_set, evaluations, latencies, unsupported, hardware
    )
    key = artifact_key(validated.config.source_keras_model)
    create_table_artifact(
        key=f"{key}-table",
        table=results_table(results).fillna("-").to_dict(orient="records"),
        description="Every model: size, Top-1, Top-5, agreement, latency, dtypes",
    )
    create_markdown_artifact(
        key=key, markdown=summary_markdown(results), description="Quantize-and-evaluate summary and recommendation"
    )
    create_link_artifact(
        key=f"{key}-report",
        link=Path(results["report"]).resolve().as_uri(),
        link_text="report.html",
        description="HTML report: confusion matrices, accuracy vs size",
    )
    get_run_logger().info(
        "Results written to %s\n%s", Path(validated.config.evaluate_result_dir) / "results.json", format_table(results)
    )
    require_imx500_fit(validated.config, results)
    return results


def require_imx500_fit(config, results: dict[str, Any]) -> None:
    """With `imx500_require_fit`, a model that does not fit the sensor fails the run (after its results are written)."""
    imx500 = results["hardware"]["imx500"]
    if not config.imx500_require_fit:
        return
    if not imx500 or imx500["skipped"]:
        raise InputError(
            f"imx500_require_fit is set but the fit could not be checked: {(imx500 or {}).get('reason', 'the IMX500 converter did not run')}"
        )
    if not (imx500["compiled"] and imx500["fits"]):
        raise InputError(
            f"the model does not fit the IMX500: {imx500['memory_usage_bytes']:,} bytes needed, {imx500['memory_available_bytes']:,} available "
            f"({imx500['utilization_percent']:.0f}%); make it smaller (mct_mixed_precision, fewer channels) or set imx500_require_fit to false"
        )
