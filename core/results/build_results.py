"""Building a run's results from its steps' records: a pure function of them (and of the files' sizes).

The result is results.json's content (the kind's opening keys first: for a classifier the SDK's four Top-1s;
then the details) and the plan of
what to publish where; `tasks.record_results` carries the plan out.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.build.records import BuiltModel
from core.build.variants import (
    IMX500_VARIANT,
    KERAS_DESCRIPTIONS,
    PROMISES,
    QUANTIZED_KERAS_FILE,
    REPAIRED_FILE,
    REPAIRED_IMX500_FOLDER,
    REPAIRED_KERAS_FILE,
    REPAIRED_KERAS_MODEL,
    REPAIRED_MODEL,
    SDK_MODELS,
    model_id,
    variant_file_name,
    vela_file_name,
)
from core.evaluate.records import Latency
from core.kinds.kind import ModelKind
from core.kinds.records import Evaluation
from core.kinds.registry import kind_named
from core.results.recommend import recommend
from core.results.records import RunRecords
from core.targets.records import EthosUReport, HardwareReports, Imx500Report

EDGE_TPU = "not supported: the Edge TPU compiler is not installable from the package registries this project uses"


@dataclass(frozen=True)
class PublicationPlan:
    """Where each file a run made goes. Paths are final: results.json names the destinations."""

    output_dir: Path
    result_dir: Path
    files: list[tuple[Path, Path]] = field(default_factory=list)  # (source, destination)
    imx500_folder: tuple[Path, Path] | None = None  # the converter's output folder, published whole

    def kept_file_names(self) -> set[str]:
        """The names in output_dir this run publishes: other outputs of ours there are stale."""
        return {destination.name for _, destination in self.files if destination.parent == self.output_dir}


def size_bytes(path: str | Path) -> int:
    path = Path(path)
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size


def model_row(
    *,
    name: str,
    description: str,
    published: str,
    source: str,
    evaluation: Evaluation,
    latency: Latency | None,
    reference: Evaluation,
    class_names: list[str],
    built: BuiltModel | None,
    kind: ModelKind,
) -> dict[str, Any]:
    """One model's row in results.json; `reference` is the float model on the same images."""
    return {
        "model": name,
        "variant": built.variant if built else None,
        "description": description,
        "file": published,
        "file_size_bytes": size_bytes(source),
        **kind.row_figures(evaluation, reference, class_names),
        "latency_ms": latency.as_results() if latency else {"1_thread": None, "all_threads": None},
        # latency_ms' figures still taken while other work loaded the CPU, and what each timing got of the CPU
        "latency_under_load": list(latency.under_load) if latency else [],
        "latency_load": latency.load if latency else None,
        "input_dtype": built.facts.input_dtype if built else "float32",
        "output_dtype": built.facts.output_dtype if built else "float32",
        "input_quantization": list(built.facts.input_quantization) if built else None,
        "evaluation_seconds": evaluation.seconds,
    }


def build_results(run: RunRecords) -> tuple[dict[str, Any], PublicationPlan]:
    """results.json's content and what to publish."""
    validated, calibration, evaluations, latencies = run.validated, run.calibration, run.evaluations, run.latencies
    hardware = run.hardware
    config = validated.config
    output_dir, result_dir = Path(config.output_dir), Path(config.evaluate_result_dir)
    # A model whose conversion or evaluation failed has no row: the failures say what happened to it.
    tflite_models = {model_id(b.variant, config.float_tflite): b for b in run.built}
    tflite_models = {name: model for name, model in tflite_models.items() if name in evaluations}
    ptq = next((b.quantization for b in run.built if b.variant == IMX500_VARIANT), None)  # None: MCT could not
    sources = {"keras": config.source_keras_model}
    published = {"keras": config.source_keras_model}
    if ptq is not None:
        sources["keras_quantized"], published["keras_quantized"] = ptq.path, str(output_dir / QUANTIZED_KERAS_FILE)
    descriptions = dict(KERAS_DESCRIPTIONS)
    for name, model in tflite_models.items():
        sources[name] = model.path
        published[name] = str(output_dir / variant_file_name(model.variant, config.float_tflite))
        descriptions[name] = PROMISES[model.variant].description
    order = [n for n in SDK_MODELS if n in evaluations and n in sources] + [
        n for n in tflite_models if n not in SDK_MODELS
    ]
    kind = kind_named(config.task)
    reference = evaluations["keras"]
    models = [
        model_row(
            name=name,
            description=descriptions[name],
            published=published[name],
            source=sources[name],
            evaluation=evaluations[name],
            latency=latencies.get(name),
            reference=reference,
            class_names=validated.class_names,
            built=tflite_models.get(name),
            kind=kind,
        )
        for name in order
    ]
    files = [(Path(sources[name]), Path(published[name])) for name in order if name != "keras"]
    repaired = _repaired_row(run, output_dir)
    if repaired is not None:
        row, repaired_files = repaired
        models.append(row)
        files += repaired_files
    baseline = evaluations["keras"].score
    for m in models:
        m["top_1_change_vs_keras"] = round(m[kind.score_key] - m.get("baseline_top_1", baseline), 6)
        if m["model"] in (REPAIRED_MODEL, REPAIRED_KERAS_MODEL):
            continue
        if m["model"].startswith("tflite"):
            m["ethos_u"], vela_file = _ethos_u(m, hardware.ethos_u.get(m["model"]), output_dir)
            files += [vela_file] if vela_file else []
    imx500, imx500_folder = _imx500(hardware, output_dir)
    ptq_row = next((m for m in models if m["model"] == model_id(IMX500_VARIANT, config.float_tflite)), None)
    if imx500 and ptq_row:  # the converter's input is the MCT PTQ model, published as model_quantized.tflite
        ptq_row["imx500"] = imx500
    plan = PublicationPlan(output_dir=output_dir, result_dir=result_dir, files=files, imx500_folder=imx500_folder)
    recommendation = recommend(models, config.max_accuracy_drop, config.objective, config.target_device, kind)
    results: dict[str, Any] = kind.sdk_results(evaluations)
    results.update(
        {
            "task": kind.name,
            "image_count": evaluations["keras"].image_count,
            "class_count": len(validated.class_names),
            "class_names": validated.class_names,
            "recommendation": recommendation.model_dump(),
            "models": models,
            "float_tflite": config.float_tflite,
            "quantization": None
            if ptq is None
            else {
                k: getattr(ptq, k)
                for k in (
                    "method",
                    "error_method",
                    "target_platform",
                    "tpc_version",
                    "tpc_reason",
                    "imx500_converter_version",
                    "mct_version",
                )
            },
            "unsupported_variants": {model_id(u.variant, config.float_tflite): u.reason for u in run.unsupported},
            "failed_variants": {f.model: f.model_dump(exclude={"model"}) for f in run.failures},
            "mct_variants": {name: b.quantization.details() for name, b in tflite_models.items() if b.quantization},
            "calibration": calibration.model_dump(
                include={"batch_size", "iteration_count", "images_found", "images_used", "seed"}
            ),
            "preprocessing": config.preprocessing.model_dump(),
            "labels_without_folder": validated.labels_without_folder,
            "skipped_images": {
                "calibration_count": len(calibration.skipped),
                "evaluation_count": len(run.evaluation_set.skipped),
                "files": [s.model_dump() for s in calibration.skipped + run.evaluation_set.skipped],
            },
            "latency_machine": latencies["keras"].machine,
            "repair": run.repair.summary() if run.repair else None,
            "layer_analysis": {name: analysis.model_dump() for name, analysis in run.layer_analysis.items()},
            "hardware": {"imx500": imx500, "ethos_u_accelerator": config.ethos_u_accelerator, "edge_tpu": EDGE_TPU},
            "report": str(result_dir / "report.html"),
            "configuration": validated.source,
            "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        }
    )
    return results, plan


def _repaired_row(run: RunRecords, output_dir: Path) -> tuple[dict[str, Any], list[tuple[Path, Path]]] | None:
    """The repair search's chosen model as a row, measured on the reporting images (which the search never saw),
    against the float model's Top-1 on the same images; and its files to publish."""
    repair = run.repair
    chosen = repair.chosen_trial if repair else None
    if repair is None or chosen is None or chosen.deliverable is None or repair.reporting is None:
        return None
    assert repair.baseline_reporting is not None
    name, source = chosen.deliverable
    published = output_dir / (REPAIRED_FILE if chosen.model else REPAIRED_KERAS_FILE)
    sixteen_bits = chosen.recipe.sixteen_bit_activations
    on = f" (16 bits on {', '.join(sixteen_bits)})" if sixteen_bits else ""
    row = model_row(
        name=name,
        description=f"Repaired ({chosen.recipe.name}{on}): {chosen.recipe.description}",
        published=str(published),
        source=source,
        evaluation=repair.reporting,
        latency=run.latencies.get(name),
        reference=repair.baseline_reporting,
        class_names=run.validated.class_names,
        built=chosen.model,
        kind=kind_named(run.validated.config.task),
    )
    row["baseline_top_1"] = repair.baseline_reporting.score
    row["tuning_top_1"] = chosen.tuning_top_1
    files = [(Path(source), published)]
    if chosen.model is not None and chosen.quantized is not None:
        files.append((Path(chosen.quantized.path), output_dir / REPAIRED_KERAS_FILE))
    variant = chosen.model.variant if chosen.model else None
    row["ethos_u"] = chosen.ethos_u.as_results() if chosen.ethos_u else EthosUReport.declined(variant).as_results()
    if chosen.ethos_u and chosen.ethos_u.compiled and chosen.ethos_u.vela_model:
        destination = output_dir / vela_file_name(published)
        row["ethos_u"]["vela_model"] = str(destination)
        files.append((Path(chosen.ethos_u.vela_model), destination))
    if chosen.imx500 is not None:  # Sony's converter's output, for the device, beside the PTQ model's imx500/
        row["imx500"], folder = _published_imx500(chosen.imx500, output_dir / REPAIRED_IMX500_FOLDER)
        files += [folder] if folder else []
    return row, files


def _ethos_u(
    model: dict[str, Any], report: EthosUReport | None, output_dir: Path
) -> tuple[dict[str, Any], tuple[Path, Path] | None]:
    """Vela's verdict on the model, and the Vela model to publish beside it when it compiled."""
    if report is None:
        return EthosUReport.declined(model["variant"]).as_results(), None
    found = report.as_results()
    if not report.compiled or report.vela_model is None:
        return found, None
    destination = output_dir / vela_file_name(model["file"])
    found["vela_model"] = str(destination)
    return found, (Path(report.vela_model), destination)


def _imx500(hardware: HardwareReports, output_dir: Path) -> tuple[dict[str, Any] | None, tuple[Path, Path] | None]:
    """The IMX500 converter's verdict, and its folder to publish as output_dir/imx500 when it ran."""
    return (None, None) if hardware.imx500 is None else _published_imx500(hardware.imx500, output_dir / "imx500")


def _published_imx500(report: Imx500Report, folder: Path) -> tuple[dict[str, Any], tuple[Path, Path] | None]:
    """The converter's verdict with its files where they are published (`folder`), and the folder's move."""
    found = report.as_results()
    if report.skipped or report.folder is None:
        return found, None
    for key in ("memory_report", "packer_out", "dnn_params"):
        if key in found:
            found[key] = str(folder / Path(found[key]).name)
    found["folder"] = str(folder)
    return found, (Path(report.folder), folder)
