"""Detection's costs on this machine, each against a baseline measured in the same run. No figure is asserted
anywhere: this script prints them.

    .venv/bin/python -m benchmarks.detection               # part of make benchmark
    .venv/bin/python -m benchmarks.detection --images 2000 --json figures.json

1. time per step: a cold run of the flow on the detection sample (configs/digits_detection: the sample detector
   for the IMX500, every default variant, the analysis and the repair search), each step's own seconds as
   Prefect recorded them (search-repair's include the try-repair trials it ran), and a rerun served from the
   cache against the cold run (target: rerun < 15% of cold);
2. evaluation throughput: the workflow's evaluation step (the models' outputs decoded into boxes and scored by
   COCOeval) on --images canvases, against calling the same decoder and COCOeval directly on the same images and
   outputs (target >= 0.8x: the step's bookkeeping costs little).
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import defaultdict
from pathlib import Path

from benchmarks.scratch import isolated_scratch, scratch_configuration

MODELS = {  # name in results -> file in output_dir (keras: the source model)
    "keras": None,
    "tflite_quantized": "model_quantized.tflite",
    "tflite_full_int8": "model_full_int8.tflite",
}


def step_seconds(state) -> dict[str, float]:
    """Each step's own seconds (its runs added up, e.g. one per model), from the API."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
    seconds: dict[str, float] = defaultdict(float)
    for run in runs:
        if run.start_time and run.end_time:
            step = re.sub(r"-[0-9a-f]{3}$", "", run.name)
            step = re.sub(r"^(evaluate|measure-latency|analyse-layers|compile-for-ethos-u)-.*", r"\1", step)
            step = re.sub(r"^(convert-to-tflite|quantize-with-mct|export-quantized-tflite|try-repair)-.*", r"\1", step)
            seconds[step] += (run.end_time - run.start_time).total_seconds()
    return dict(sorted(seconds.items(), key=lambda item: -item[1]))


def timed_flow(config_path: Path):
    from flows.quantize_evaluate import quantize_evaluate

    started = time.perf_counter()
    state = quantize_evaluate(config_path=str(config_path), progress=False, return_state=True)
    if not state.is_completed():
        raise SystemExit(f"the flow failed: {state.message}")
    return time.perf_counter() - started, state


def throughput(sample: Path, models_dir: Path, scratch: Path, images: int, batch_size: int) -> list[dict]:
    """Images per second of the workflow's evaluation and of the direct calls, per model, on `images` canvases."""
    import numpy as np

    from core.config import Preprocessing
    from core.data.coco import read_coco_annotations
    from core.data.detection_sample import make_detection_sample
    from core.data.load_detection_set import load_detection_set
    from core.data.sample_detector import DECODING, decode, images_of
    from core.evaluate.coco_metrics import coco_scores
    from core.evaluate.evaluate_model import evaluate_model, scored
    from core.evaluate.models import TFLitePredictor, keras_predictor, load_keras_model

    canvases = make_detection_sample(scratch / "canvases", train_count=1, validation_count=images, seed=1)
    annotations, folder = canvases / "validation.json", canvases / "validation"
    evaluation_set = load_detection_set(
        evaluate_image_dir=str(folder),
        annotation_file=str(annotations),
        class_names=[str(digit) for digit in range(10)],
        input_tensor_size=96,
        preprocessing=Preprocessing(),
        decoding=DECODING,
        out_dir=scratch / "evaluation-set",
        progress=False,
    )
    coco = read_coco_annotations(annotations, folder)
    pixels = images_of(coco, folder)
    ids = [image.id for image in coco.images]
    rows = []
    for name, file in MODELS.items():
        path = str(sample / "model.h5") if file is None else str(models_dir / file)
        started = time.perf_counter()
        workflow = scored(
            evaluate_model(
                model_name="keras" if file is None else name,
                model_path=path,
                images_path=evaluation_set.images_path,
                labels_path=evaluation_set.labels_path,
                batch_size=batch_size,
                progress=False,
                task="detection",
            )
        )
        workflow_seconds = time.perf_counter() - started
        started = time.perf_counter()
        predict = keras_predictor(load_keras_model(path)) if file is None else TFLitePredictor(path, num_threads=1)
        outputs = [predict(pixels[i : i + batch_size]) for i in range(0, len(pixels), batch_size)]
        direct = coco_scores(coco, decode(np.concatenate(outputs), ids))
        direct_seconds = time.perf_counter() - started
        rows.append(
            {
                "model": name,
                "images": len(ids),
                "workflow_images_per_s": round(len(ids) / workflow_seconds, 1),
                "direct_images_per_s": round(len(ids) / direct_seconds, 1),
                "ratio": round(direct_seconds / workflow_seconds, 2),
                "same_map": abs(direct.map_50_95 - workflow.score) < 1e-9,
                "map_50_95": round(workflow.score, 4),
            }
        )
        print(
            f"    {name}: workflow {rows[-1]['workflow_images_per_s']} img/s, direct "
            f"{rows[-1]['direct_images_per_s']} img/s: {rows[-1]['ratio']}x (target >= 0.8x); mAP@[.5:.95] "
            f"{workflow.score:.4f}, {'the same' if rows[-1]['same_map'] else 'NOT the same'} as the direct call's",
            flush=True,
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.detection", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--images", type=int, default=1000, help="canvases for the throughput figure (default 1000)")
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    scratch = isolated_scratch("quantize-detection-benchmark-")  # the cold run is cold
    from benchmarks.run_benchmarks import describe_machine
    from core.data.sample_detector import make_detection_demo

    machine = describe_machine()
    print(f"machine: {machine}\nscratch: {scratch}", flush=True)
    sample = make_detection_demo()
    config_path = scratch_configuration("digits_detection", scratch)
    config = json.loads(config_path.read_text())
    figures: dict = {"machine": machine}

    from prefect import flow

    flow(name="warm-up")(lambda: None)()  # the ephemeral API and TensorFlow start before anything is timed

    print("\n[1] a cold run of the flow on the detection sample, each step's own seconds; then a cached rerun")
    cold_seconds, cold_state = timed_flow(config_path)
    cached_seconds, _ = timed_flow(config_path)
    steps = step_seconds(cold_state)
    for step, seconds in steps.items():
        print(f"    {step:<28} {seconds:7.1f} s")
    print(
        f"    cold {cold_seconds:.1f} s, cached {cached_seconds:.1f} s: the rerun takes "
        f"{100 * cached_seconds / cold_seconds:.1f}% of the cold run (target < 15%)",
        flush=True,
    )
    figures.update(cold_seconds=round(cold_seconds, 2), cached_seconds=round(cached_seconds, 2), steps=steps)

    print(f"\n[2] evaluation throughput on {args.images} canvases: the workflow's step against direct calls")
    figures["throughput"] = throughput(
        sample, Path(config["output_dir"]), scratch, args.images, int(config.get("evaluation_batch_size", 32))
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
