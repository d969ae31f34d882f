"""Speed and memory of the quantize-and-evaluate flow on this machine, each figure a ratio against a
baseline measured in the same run. No figure is asserted anywhere: this script prints them.

    .venv/bin/python -m benchmarks.run_benchmarks            # or: make benchmark
    .venv/bin/python -m benchmarks.run_benchmarks --large 10000 --json figures.json

1. evaluation throughput of the project against the old notebook's way (target >= 3x);
2. a cold run of the whole flow against a rerun served from the cache (target: rerun < 15% of cold);
3. the share of the flow's wall time that is orchestration overhead: the time no step was running
   (target < 10% on the sample);
4. peak resident memory of the evaluation at 1k and at --large images (target: growth < 20%).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.scratch import isolated_scratch, scratch_configuration
from core.storage import REPO_ROOT  # reads QUANTIZE_CACHE_DIR only when called, so main() can still set it


def describe_machine() -> str:
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    model = next(
        (
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return (
        f"{os.cpu_count()} cores ({model}), {memory_gib:.0f} GiB, "
        f"Python {platform.python_version()}, {platform.system()}"
    )


def flow_run_figures(state) -> dict:
    """Flow wall time from the API, and the time during which at least one task was running."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    flow_run_id = state.state_details.flow_run_id
    with get_client(sync_client=True) as client:
        run = client.read_flow_run(flow_run_id)
        tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    intervals = sorted((t.start_time, t.end_time) for t in tasks if t.start_time and t.end_time)
    busy = 0.0
    if intervals:  # length of the union of the task intervals
        current_start, current_end = intervals[0]
        for start, end in intervals[1:]:
            if start > current_end:
                busy += (current_end - current_start).total_seconds()
                current_start, current_end = start, end
            else:
                current_end = max(current_end, end)
        busy += (current_end - current_start).total_seconds()
    assert run.start_time and run.end_time, f"flow run {flow_run_id} has not finished"
    wall = (run.end_time - run.start_time).total_seconds()
    return {"flow_seconds": wall, "steps_busy_seconds": busy, "task_runs": len(tasks)}


def timed_flow(config_path: Path):
    from flows.quantize_evaluate import quantize_evaluate

    started = time.perf_counter()
    state = quantize_evaluate(config_path=str(config_path), progress=False, return_state=True)
    seconds = time.perf_counter() - started
    if not state.is_completed():
        raise SystemExit(f"the flow failed: {state.message}")
    return seconds, state


def memory_probe(eval_dir: Path, work_dir: Path, models: dict[str, str]) -> dict:
    command = [
        sys.executable,
        "-m",
        "benchmarks.memory_probe",
        str(eval_dir),
        str(work_dir),
        *(f"{k}={v}" for k, v in models.items()),
    ]
    result = subprocess.run(
        command, cwd=REPO_ROOT, capture_output=True, text=True, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    )
    if result.returncode != 0:
        raise SystemExit(f"memory probe failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.run_benchmarks",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--large",
        type=int,
        default=10_000,
        help="images in the enlarged evaluation set for the memory figure (default 10000)",
    )
    parser.add_argument(
        "--throughput-images",
        type=int,
        default=1_000,
        help="images in the enlarged set for the throughput figure (default 1000)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)

    # A cache and a Prefect database of its own, so the cold run is cold.
    scratch = isolated_scratch("quantize-benchmark-", REPO_ROOT / ".cache" if (REPO_ROOT / ".cache").exists() else None)
    from benchmarks.augment import augmented_set
    from benchmarks.throughput import notebook_evaluation, project_evaluation
    from core.data.sample_data import make_sample

    machine = describe_machine()
    print(f"machine: {machine}\nscratch: {scratch}", flush=True)
    sample = make_sample()
    config_path = scratch_configuration("digits", scratch)
    config = json.loads(config_path.read_text())
    figures: dict = {"machine": machine}

    # Start the ephemeral Prefect API and TensorFlow before timing anything.
    from prefect import flow

    flow(name="warm-up")(lambda: None)()

    print("\n[2] cold run of the whole flow, then a rerun served from the cache", flush=True)
    cold_seconds, cold_state = timed_flow(config_path)
    cached_seconds, _ = timed_flow(config_path)
    figures["cold_seconds"], figures["cached_seconds"] = round(cold_seconds, 2), round(cached_seconds, 2)
    figures["cached_share_of_cold"] = round(cached_seconds / cold_seconds, 4)
    print(
        f"    cold {cold_seconds:.1f} s, cached {cached_seconds:.1f} s: "
        f"the rerun takes {100 * cached_seconds / cold_seconds:.1f}% of the cold run (target < 15%)"
    )

    print("\n[3] orchestration overhead of the cold run", flush=True)
    run = flow_run_figures(cold_state)
    overhead = max(0.0, run["flow_seconds"] - run["steps_busy_seconds"])
    figures["overhead"] = {
        **run,
        "overhead_seconds": round(overhead, 3),
        "overhead_share": round(overhead / run["flow_seconds"], 4),
    }
    print(
        f"    flow {run['flow_seconds']:.2f} s, "
        f"at least one of {run['task_runs']} steps running for {run['steps_busy_seconds']:.2f} s: "
        f"overhead {overhead:.2f} s = {100 * overhead / run['flow_seconds']:.1f}% (target < 10%)"
    )

    models_dir = Path(config["output_dir"])
    models = {
        "keras": config["source_keras_model"],
        "keras_quantized": str(models_dir / "model_quantized.keras"),
        "tflite": str(models_dir / "model.tflite"),
        "tflite_quantized": str(models_dir / "model_quantized.tflite"),
    }
    print("\n[1] evaluation throughput, 4 models: project against the old notebook's way", flush=True)
    figures["throughput"] = []
    enlarged = augmented_set(sample / "validation", scratch / "eval-throughput", args.throughput_images)
    for name, label, eval_dir in [
        ("sample", "sample", sample / "validation"),
        (f"{args.throughput_images} images", "enlarged", enlarged),
    ]:
        project_seconds, count = project_evaluation(eval_dir, models, scratch / f"throughput-{label}")
        notebook_seconds, _ = notebook_evaluation(eval_dir, models)
        row = {
            "set": name,
            "images": count,
            "project_images_per_s": round(4 * count / project_seconds, 1),
            "notebook_images_per_s": round(4 * count / notebook_seconds, 1),
            "speedup": round(notebook_seconds / project_seconds, 2),
        }
        figures["throughput"].append(row)
        print(
            f"    {name}: project {row['project_images_per_s']} images/s, "
            f"notebook {row['notebook_images_per_s']} images/s: {row['speedup']}x (target >= 3x)"
        )

    print(f"\n[4] peak resident memory of the evaluation, 1000 and {args.large} images (fresh processes)", flush=True)
    small = memory_probe(
        augmented_set(sample / "validation", scratch / "eval-1000", 1000), scratch / "memory-1000", models
    )
    large = memory_probe(
        augmented_set(sample / "validation", scratch / f"eval-{args.large}", args.large),
        scratch / f"memory-{args.large}",
        models,
    )
    growth = large["peak_rss_mib"] / small["peak_rss_mib"] - 1
    evaluation_growth = large["evaluation_peak_mib"] / small["evaluation_peak_mib"] - 1
    decoded_mib = large["images"] * 32 * 32 * 3 * 4 / 2**20
    figures["memory"] = {
        "small": small,
        "large": large,
        "growth": round(growth, 4),
        "evaluation_growth": round(evaluation_growth, 4),
        "large_set_decoded_mib": round(decoded_mib, 1),
    }
    print(
        f"    process peak: {small['images']} images {small['peak_rss_mib']} MiB, "
        f"{large['images']} images {large['peak_rss_mib']} MiB: growth {100 * growth:.1f}% (target < 20%)"
    )
    print(
        f"    evaluation's own peak above the process before it: "
        f"{small['evaluation_peak_mib']} MiB and {large['evaluation_peak_mib']} MiB: "
        f"growth {100 * evaluation_growth:.1f}% (the {large['images']} images are {decoded_mib:.0f} MiB decoded)"
    )

    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    print("\n" + json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
