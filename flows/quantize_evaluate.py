"""The quantize-and-evaluate flow: the AITRIOS SDK's model quantization as a Prefect pipeline.

    python -m flows.quantize_evaluate configs/digits/configuration.json

validate config -> load evaluation set, export a SavedModel -> convert the float variants (model.tflite, float16, ...)
                -> load calibration set -> convert the calibrated variants (full_int8, ...)
                                        -> quantize with MCT (PTQ; GPTQ, mixed precision) -> export each to TFLite
                -> evaluate every model in parallel (Top-1, Top-5, confusion matrix)
                   (beside them: the IMX500 converter on the MCT model, Vela on each full-integer model)
                -> measure each model's latency, one at a time
                -> record results (publish models, results.json, results.csv, report.html, artifacts, recommendation)
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":  # the command
    if "--no-progress" in sys.argv[1:]:
        # Before anything imports tqdm, which reads it once: no bars from the libraries either (MCT's).
        os.environ["TQDM_DISABLE"] = "1"
    if not {"-h", "--help"} & set(sys.argv[1:]):  # Prefect's API starts now, while the imports below run
        from core.startup import start_command

        start_command()

import argparse
import json
from contextlib import ExitStack
from typing import Any

from prefect import flow, get_run_logger
from prefect.futures import PrefectFuture, as_completed, wait
from prefect.task_runners import ThreadPoolTaskRunner

import core  # noqa: F401  (quietens TensorFlow before it is imported)
from core import run_progress
from core.analysis.analyse_layers import models_to_analyse
from core.analysis.records import LayerAnalysis
from core.build.recipes import (
    BuildSettings,
    Recipe,
    compiled_by_vela,
    compiled_for_imx500,
    conversion_arguments,
    evaluated_keras_model,
    mct_arguments,
    variant_recipes,
)
from core.build.records import BuiltModel, QuantizedModel, UnsupportedVariant
from core.build.variants import KERAS_MODELS, in_catalogue_order, model_id
from core.config import QuantizeConfig, load_config_file
from core.data.records import CalibrationSource
from core.evaluate.records import Latency
from core.failures import ModelFailure, reason_of
from core.kinds.records import Evaluation
from core.kinds.registry import kind_named
from core.results.records import RunRecords
from core.results.results_text import format_table
from core.run_logging import print_the_outcome_once
from core.runners import RunnerConfig, add_runner_arguments, make_task_runner, runner_from_arguments, shards
from core.startup import FINISHED_WITH_FAILURES, end_command, run_command, start_prefect_api_while_importing
from core.storage import results_storage_dir
from core.targets.records import HardwareReports
from tasks.analyse_layers import analyse_layers_task
from tasks.compile_for_ethos_u import compile_for_ethos_u_task
from tasks.compile_for_imx500 import compile_for_imx500_task
from tasks.convert_to_tflite import convert_to_tflite_task
from tasks.evaluate_model import evaluate_model_task
from tasks.export_quantized_tflite import export_quantized_tflite_task
from tasks.export_saved_model import export_saved_model_task
from tasks.load_calibration_set import load_calibration_set_task
from tasks.load_evaluation_set import load_evaluation_set_task
from tasks.measure_latency import measure_latency_task
from tasks.quantize_with_mct import quantize_with_mct_task
from tasks.record_results import record_results_task
from tasks.search_repair import search_repair_task
from tasks.validate_config import validate_config_task


@flow(
    name="quantize-evaluate",
    description=(
        "Quantize a Keras image classifier or object detector with MCT and TensorFlow's converter, evaluate every "
        "variant (Top-1, or COCO mAP) and recommend one within an accuracy budget."
    ),
    # A step waiting for its inputs holds a thread: enough that none waits for one. The heavy steps bound
    # themselves (evaluations: one per core at a time; conversions: one worker process per core).
    task_runner=ThreadPoolTaskRunner(max_workers=32),  # type: ignore[arg-type]  # Prefect's own generic
    result_storage=results_storage_dir(),
    validate_parameters=True,
)
def quantize_evaluate(
    config_path: str | None = None,
    config: QuantizeConfig | None = None,
    progress: bool = True,
    runner: RunnerConfig = RunnerConfig(),
) -> dict[str, Any]:
    """Quantize and evaluate one model.

    Args:
        config_path: Path of an SDK-format configuration.json (relative paths inside it resolve against its folder).
        config: The configuration inline, instead of a file (relative paths resolve against the working directory).
        progress: Show progress bars on the terminal.
        runner: Where the evaluations run: this process (default), or Dask workers, each model's images split
            into shards.
    """
    validated = validate_config_task(config=config, config_path=config_path)
    c = validated.config
    kind = kind_named(c.task)
    unsafe = c.allow_unsafe_model_code
    settings = BuildSettings.of(c)
    recipes = variant_recipes(c, validated.evaluation_image_count)
    plan = run_progress.plan_of(c, validated.evaluation_image_count)
    run_progress.start(plan, enabled=progress, log=get_run_logger())
    evaluation_set_future = load_evaluation_set_task.submit(
        evaluate_image_dir=c.evaluate_image_dir,
        extension=c.evaluate_image_extension,
        class_names=validated.class_names,
        input_tensor_size=c.input_tensor_size,
        preprocessing=c.preprocessing,
        annotation_file=c.evaluate_annotation_file,
        decoding=c.detection if c.task == "detection" else None,
        progress=progress,
    )

    # Exported once; every converter variant converts it.
    saved_model = export_saved_model_task.submit(
        model_path=settings.model_path, allow_unsafe_code=unsafe, input_size=c.input_tensor_size
    )

    def convert(recipe: Recipe, calibration_path: str | None) -> PrefectFuture:
        arguments = conversion_arguments(recipe, settings, saved_model, calibration_path)
        return convert_to_tflite_task.submit(**arguments)  # type: ignore[call-overload]  # Prefect resolves the future

    # Conversions that need no calibration start while the calibration set loads.
    converting = [convert(r, None) for r in recipes if not r.calibrated]
    calibration = load_calibration_set_task(**CalibrationSource.of(c).arguments(), progress=progress)
    # MCT before the calibrated conversions: PTQ and the IMX500 compile after it are the longest chain of steps.
    quantizing = [
        quantize_with_mct_task.submit(**mct_arguments(r, settings, calibration.path), progress=progress)
        for r in recipes
        if r.builder == "mct"
    ]
    converting += [convert(r, calibration.path) for r in recipes if r.builder == "converter" and r.calibrated]
    evaluation_set = evaluation_set_future.result()
    # The Dask cluster, when the runner asks for one, lives until the evaluations are done.
    with ExitStack() as dask:
        remote = dask.enter_context(make_task_runner(runner)) if runner.distributed else None

        def evaluate(model_name: str, model_path: str) -> list[PrefectFuture]:
            arguments: dict[str, Any] = dict(
                model_name=model_name,
                model_path=model_path,
                images_path=evaluation_set.images_path,
                labels_path=evaluation_set.labels_path,
                batch_size=c.evaluation_batch_size,
                progress=progress,
                allow_unsafe_code=unsafe,
                class_count=len(validated.class_names),
                task=c.task,
            )
            if remote is None:
                return [evaluate_model_task.submit(**arguments)]
            parts = shards(evaluation_set.image_count, runner.evaluation_shards)
            return [
                remote.submit(
                    evaluate_model_task,
                    {**arguments, "start": a, "stop": b, "shard_label": f"-shard-{i + 1}-of-{len(parts)}"},
                )
                for i, (a, b) in enumerate(parts)
            ]

        model_paths = {"keras": c.source_keras_model}
        evaluations = {"keras": evaluate("keras", c.source_keras_model)}
        built: list[BuiltModel] = []
        unsupported: list[UnsupportedVariant] = []
        failures: list[ModelFailure] = []  # a crash costs its model, not the run
        vela: dict[str, PrefectFuture] = {}
        imx500: PrefectFuture | None = None
        # What follows each model (its export, evaluation, compiles) starts as soon as that model exists.
        pending: set[PrefectFuture] = {*converting, *quantizing}
        while pending:
            future = next(as_completed(list(pending)))
            pending.remove(future)
            made = future.result()
            if isinstance(made, UnsupportedVariant):
                unsupported.append(made)
            elif isinstance(made, ModelFailure):  # a conversion names its variant
                failures.append(made.model_copy(update={"model": model_id(made.model, c.float_tflite)}))
            elif isinstance(made, QuantizedModel):
                pending.add(export_quantized_tflite_task.submit(quantized_model=made))
                if compiled_for_imx500(made):
                    imx500 = compile_for_imx500_task.submit(quantized_model=made)
                if keras_name := evaluated_keras_model(made):
                    model_paths[keras_name] = made.path
                    evaluations[keras_name] = evaluate(keras_name, made.path)
            else:
                name = model_id(made.variant, c.float_tflite)
                built.append(made)
                model_paths[name] = made.path
                evaluations[name] = evaluate(name, made.path)
                if compiled_by_vela(made):
                    vela[name] = compile_for_ethos_u_task.submit(model=made, accelerator=c.ethos_u_accelerator)
        # The catalogue's order, whichever finished first.
        built, unsupported = in_catalogue_order(built), in_catalogue_order(unsupported)
        # Let every evaluation and compile finish (and be cached) before a failed one fails the run: a run is
        # marked Failed only once nothing of it is still running.
        wait(
            [part for parts in evaluations.values() for part in parts] + ([imx500] if imx500 else []) + [*vela.values()]
        )
        run_progress.finish()  # what follows (the analysis, the repair) has its own progress
        names = [*(n for n in KERAS_MODELS if n in evaluations), *(model_id(m.variant, c.float_tflite) for m in built)]
        parts = {name: [part.result() for part in evaluations[name]] for name in names}
        failures += [next(p for p in parts[n] if isinstance(p, ModelFailure)) for n in names if failed(parts[n])]
        evaluated = {name: kind.merged(parts[name]) for name in names if not failed(parts[name])}
        # What the analysis and the repair compare: the models that were evaluated (a failed one has no score).
        scored = [m for m in built if model_id(m.variant, c.float_tflite) in evaluated]
        hardware = HardwareReports(
            imx500=imx500.result() if imx500 else None,
            ethos_u={name: future.result() for name, future in vela.items()},
        )
    # When quantization lost too much accuracy: which layers lost it, and the repair search (it decides whether it
    # is due), whose first recipes are the cures of the causes the analysis found.
    analysing = {
        name: analyse_layers_task.submit(
            model_name=name,
            model=model,
            float_model_path=c.source_keras_model,
            calibration_path=calibration.path,
            evaluation_images_path=evaluation_set.images_path,
            allow_unsafe_code=unsafe,
        )
        for name, model in models_to_analyse(
            evaluations=evaluated, built=scored, float_tflite=c.float_tflite, max_accuracy_drop=c.max_accuracy_drop
        ).items()
    }
    finished = {name: future.result(raise_on_failure=False) for name, future in analysing.items()}
    failures += [
        ModelFailure(model=name, step="analyse", reason=reason_of(outcome))
        for name, outcome in finished.items()
        if isinstance(outcome, BaseException)
    ]
    analyses = {name: a for name, a in finished.items() if isinstance(a, LayerAnalysis)}
    repair = search_repair_task(
        config=c,
        class_count=len(validated.class_names),
        calibration=calibration,
        evaluation_set=evaluation_set,
        evaluations=evaluated,
        built=scored,
        hardware=hardware,
        layer_analysis=analyses,  # a failed analysis is recorded as that model's failure
        runner=runner,  # with Dask, independent trials run on the workers
    )
    repaired = repair.repaired
    if repaired is not None:
        model_paths[repaired[0]] = repaired[1]
    # One model at a time, after the evaluations, so each latency is measured on a quiet machine.
    measured = {
        name: measure_latency_task(
            model_name=name,
            model_path=model_paths[name],
            images_path=evaluation_set.images_path,
            repeats=c.latency_repeats,
            allow_unsafe_code=unsafe,
        )
        for name in [*evaluated, *([repaired[0]] if repaired else [])]
    }
    failures += [latency for latency in measured.values() if isinstance(latency, ModelFailure)]
    latencies = {name: latency for name, latency in measured.items() if isinstance(latency, Latency)}
    return record_results_task(
        run=RunRecords(
            validated=validated,
            calibration=calibration,
            built=built,
            unsupported=unsupported,
            evaluation_set=evaluation_set,
            evaluations=evaluated,
            latencies=latencies,
            hardware=hardware,
            repair=repair,
            layer_analysis=analyses,
            failures=failures,
        )
    )


def failed(parts: list[Evaluation | ModelFailure]) -> bool:
    """Whether a model's evaluation (any of its shards) failed."""
    return any(isinstance(part, ModelFailure) for part in parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.quantize_evaluate",
        description=(
            "Quantize a Keras image classifier (or, with 'task': 'detection', an object detector scored in COCO mAP) "
            "with Sony's Model Compression Toolkit and TensorFlow's converter "
            "(every variant the configuration's 'variants' lists: float32, dynamic range, float16, integer, full "
            "integer int8/uint8, 16x8, MCT PTQ, GPTQ, mixed precision), evaluate each on the same images (Top-1, "
            "Top-5, confusion matrix, agreement with the float model, size, latency) and recommend the best model "
            "within 'max_accuracy_drop'. Runs on Prefect's ephemeral API, or records the run on the server "
            "PREFECT_API_URL points at."
        ),
        epilog=(
            "Outputs: OUTPUT_DIR/model.tflite, model_quantized.tflite, model_quantized.keras and "
            "model_<variant>.tflite; "
            "EVALUATE_RESULT_DIR/results.json, results.csv and report.html. Exit status: 0 on success; "
            f"{FINISHED_WITH_FAILURES} when the run finished but some models failed (a converter or interpreter "
            "crashed on them: results.json's failed_variants says which, the others are compared and recommended "
            "as usual); 2 for a problem with the input (configuration, images, labels, model); 1 for any other "
            "failure; 130 when interrupted (Ctrl-C), 143 when terminated (SIGTERM). The configuration keys are "
            "described in README.md."
        ),
    )
    parser.add_argument(
        "config_path",
        metavar="CONFIGURATION_JSON",
        help="SDK-format configuration.json; relative paths in it resolve against its folder",
    )
    parser.add_argument(
        "--no-progress", action="store_true", help="hide the progress bars (also those of MCT and the other libraries)"
    )
    parser.add_argument("--json", action="store_true", help="print results.json's content instead of the table")
    add_runner_arguments(parser)
    args = parser.parse_args(argv)

    def run() -> int:
        load_config_file(args.config_path)  # structural problems are reported before Prefect starts
        start_prefect_api_while_importing("tensorflow")  # what the first step needs
        print_the_outcome_once()
        results = quantize_evaluate(
            config_path=args.config_path, progress=not args.no_progress, runner=runner_from_arguments(args)
        )
        print(json.dumps(results, indent=2) if args.json else "\n" + format_table(results))
        return FINISHED_WITH_FAILURES if results.get("failed_variants") else 0

    return run_command(run)


if __name__ == "__main__":
    end_command(main())
