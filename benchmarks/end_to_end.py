"""End to end: the command, cold and served from the cache, against the old notebook's way, on a MobileNetV2-class
model. Each figure is a ratio against a baseline measured in the same run; nothing is asserted anywhere.

    python -m benchmarks.end_to_end            # or: make benchmark-e2e (about 15 minutes on 2 cores)
    python -m benchmarks.end_to_end --real-size   # or: make benchmark-real-size (about 40 minutes)

Builds once (in .cache/benchmark-e2e/sample) a MobileNetV2 (alpha 0.35, 64 x 64, 10 classes) trained for two
epochs on scikit-learn's digits upscaled to 64 x 64 RGB JPEGs (1,400 calibration, 397 evaluation images; no
download), then times, each in a fresh process, one after the other:
  (a) the old notebook's way to the SDK's two models (benchmarks/notebook_way.py);
  (b) python -m flows.quantize_evaluate CONFIG, cold, variants ["float32", "mct_ptq"] (target <= 0.5x (a)),
      and (b') the same without the IMX500 compile (the notebook never compiled for the device);
  (c) the same, cold, with the default variants (target <= 0.8x (a));
  (d) (c) again, served from the cache (target <= 8 s and <= 10% of (c));
  (e) (c) and (d) again against a Prefect server already running (make server): no ephemeral API to start and stop;
and, beforehand, one float32 conversion the old way (from_keras_model) against the SavedModel exported once;
and prints, for each command, the time before the flow run started and after it ended, and the critical path:
the chain of steps, read from the flow run's task runs, each of which held the next one back. Also measured: what
starting Prefect's ephemeral API costs a command (a flow that does nothing against the imports alone).

With --real-size: the small model and the IMX500's reference classifier at its real size (MobileNetV2 alpha 1.0,
224 x 224, 3.5 M parameters, trained here briefly on the digits upscaled and jittered: benchmarks/real_size_sample.py;
1,000 calibration and 2,000 evaluation JPEGs), each (a) the notebook's way, (c) the command cold with the default
variants and (d) cached, in one run; for (a) and (c) the peak memory of the command's processes together
(proportional set size, by process), and the critical path of each cold run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

from core.storage import REPO_ROOT

SLACK_SECONDS = 0.25  # a step that starts this soon after another ends was waiting for it


def run_command(command: list[str], env: dict[str, str], log: Path, memory: bool = False) -> dict:
    """Wall seconds of a command in a fresh process, with its start and end on the clock the flow runs use; with
    `memory`, also the peak of its processes' memory together (proportional set size: a page shared by several of
    them counts once), sampled every half second."""
    started_at, started = time.time(), time.perf_counter()
    with log.open("w") as out:
        process = subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak, at_peak = 0, {}
        while process.poll() is None:
            if memory:
                held = tree_pss(process.pid)
                if sum(held.values()) > peak:
                    peak, at_peak = sum(held.values()), held
            try:
                process.wait(0.5)
            except subprocess.TimeoutExpired:
                pass
    seconds = time.perf_counter() - started
    if process.returncode != 0:
        raise SystemExit(f"{' '.join(command)} exited with {process.returncode}; see {log}")
    figures: dict = {"seconds": round(seconds, 2), "started_at": started_at, "ended_at": started_at + seconds}
    if memory:
        figures["peak_memory_gib"] = round(peak / 2**30, 2)
        figures["peak_memory_by_process_gib"] = {k: round(v / 2**30, 2) for k, v in sorted(at_peak.items())}
    return figures


def tree_pss(pid: int) -> dict[str, int]:
    """Bytes of memory the process and its descendants hold, each shared page divided among its holders, by what
    each process is: the command, its worker processes by kind, the others by executable."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return {}
    held: dict[str, int] = {}
    for process in processes:
        try:
            pss = process.memory_full_info().pss
            label = "command" if process.pid == pid else process_label(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        held[label] = held.get(label, 0) + pss
    return held


def process_label(cmdline: list[str]) -> str:
    text = " ".join(cmdline)
    for kind in ("uvicorn", "imx500", "java", "vela"):
        if kind in text:
            return kind
    if "spawn_main" in text or "multiprocessing" in text:
        return "worker processes"
    return Path(cmdline[0]).name if cmdline else "other"


def conversion_figures(model_path: str, work: Path) -> dict:
    """One float32 conversion: `from_keras_model` (which saves a SavedModel inside the call) against the step's way,
    a SavedModel exported once (tasks/export_saved_model.py) and converted."""
    import tensorflow as tf

    from core.build.export_saved_model import export_saved_model
    from core.build.keras_conversion import keras_model_converter
    from core.evaluate.models import load_keras_model

    model = load_keras_model(model_path)
    started = time.perf_counter()
    from_keras = tf.lite.TFLiteConverter.from_keras_model(model).convert()
    keras_seconds = time.perf_counter() - started
    started = time.perf_counter()
    saved_model = export_saved_model(model_path=model_path, out_dir=work)
    export_seconds = time.perf_counter() - started
    started = time.perf_counter()
    from_saved = keras_model_converter(saved_model.path, saved_model.signature_key).convert()
    convert_seconds = time.perf_counter() - started
    return {
        "from_keras_model_seconds": round(keras_seconds, 2),
        "export_once_seconds": round(export_seconds, 2),
        "from_saved_model_seconds": round(convert_seconds, 2),
        "same_bytes": from_keras == from_saved,
    }


def with_running_server(runs: dict[str, tuple[list[str], dict[str, str]]], scratch: Path) -> dict[str, float]:
    """Each command's seconds with PREFECT_API_URL pointing at a server started for them (with a database of its own):
    no ephemeral API to start and stop."""
    import socket

    from deployments import local_stack

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    state_dir = scratch / "server-stack"
    server_env = {"PREFECT_HOME": str(scratch / "server-home")}
    stack = local_stack.start(port, state_dir=state_dir, deploy=False, worker=False, env=server_env)
    try:
        return {
            label: run_command(
                command, {**env, **server_env, "PREFECT_API_URL": stack["api_url"]}, scratch / f"{label}.log"
            )["seconds"]
            for label, (command, env) in runs.items()
        }
    finally:
        local_stack.stop(state_dir)


def flow_runs(name: str) -> list:
    """The flow runs of flow `name` in this PREFECT_HOME, oldest first, each with its task runs."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.sorting import FlowRunSort

    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=[name])), sort=FlowRunSort.START_TIME_ASC
        )
        return [
            (run, client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))))
            for run in runs
        ]


def critical_path(task_runs: list) -> list[dict]:
    """From the step that ended last, back through what held each step back: the step it took as input (Prefect
    records them) when that ended last before it started, else the step that did; each one started earlier."""
    runs = [t for t in task_runs if t.start_time and t.end_time]
    if not runs:
        return []
    by_id = {t.id: t for t in runs}
    chain = [max(runs, key=lambda t: t.end_time)]
    while True:
        current = chain[-1]
        starts = current.start_time.timestamp() + SLACK_SECONDS
        before = [t for t in runs if t.end_time.timestamp() <= starts and t.start_time < current.start_time]
        if not before:
            break
        latest = max(before, key=lambda t: t.end_time)
        inputs = [
            by_id[run.id]
            for runs_of_input in current.task_inputs.values()
            for run in runs_of_input
            if getattr(run, "input_type", None) == "task_run" and run.id in by_id and by_id[run.id] in before
        ]
        upstream = max(inputs, key=lambda t: t.end_time) if inputs else None
        held_by_input = upstream is not None and (latest.end_time - upstream.end_time).total_seconds() <= SLACK_SECONDS
        chain.append(upstream if held_by_input else latest)
    chain.reverse()
    steps = []
    for i, t in enumerate(chain):
        previous_end = chain[i - 1].end_time if i else None
        steps.append(
            {
                "step": t.name,
                "state": t.state.name if t.state else None,
                "seconds": round((t.end_time - t.start_time).total_seconds(), 2),
                "waited_before": round((t.start_time - previous_end).total_seconds(), 2) if previous_end else None,
            }
        )
    return steps


def describe_run(label: str, command: dict, flow_run, task_runs: list) -> dict:
    assert flow_run.start_time and flow_run.end_time, f"flow run {flow_run.id} has not finished"
    flow_seconds = (flow_run.end_time - flow_run.start_time).total_seconds()
    path = critical_path(task_runs)
    first_start = min((t.start_time for t in task_runs if t.start_time), default=flow_run.start_time)
    figures = {
        "label": label,
        "command_seconds": command["seconds"],
        "flow_run_seconds": round(flow_seconds, 2),
        "before_flow_run_seconds": round(flow_run.start_time.timestamp() - command["started_at"], 2),
        "flow_run_to_first_step_seconds": round((first_start - flow_run.start_time).total_seconds(), 2),
        "after_flow_run_seconds": round(command["ended_at"] - flow_run.end_time.timestamp(), 2),
        "task_runs": len(task_runs),
        "critical_path": path,
    }
    print(
        f"\n    {label}: command {command['seconds']:.1f} s = {figures['before_flow_run_seconds']:.1f} s to the "
        f"flow run (process start, imports, Prefect's API) + flow run {flow_seconds:.1f} s "
        f"+ {figures['after_flow_run_seconds']:.1f} s to exit; critical path:"
    )
    print(f"      {'(flow run start to first step)':44} {figures['flow_run_to_first_step_seconds']:7.2f} s")
    for step in path:
        waited = f"  (+{step['waited_before']:.2f} s between)" if step["waited_before"] else ""
        print(f"      {step['step']:44} {step['seconds']:7.2f} s  {step['state']}{waited}")
    return figures


EMPTY_FLOW = "import flows.quantize_evaluate; from prefect import flow; flow(name='empty')(lambda: None)()"


def commands_environment(scratch: Path) -> dict[str, str]:
    """The environment every timed command gets: the same Prefect database (made here, before any timing, and used
    by this process too to read the flow runs), no server, no cache of another run, no injected fault."""
    env = {**os.environ, "PREFECT_HOME": str(scratch / "prefect-home"), "TF_CPP_MIN_LOG_LEVEL": "3"}
    for name in ("PREFECT_API_URL", "QUANTIZE_CACHE_DIR", "QUANTIZE_FAIL_EVALUATION"):
        env.pop(name, None)
    os.environ.update({k: env[k] for k in ("PREFECT_HOME", "TF_CPP_MIN_LOG_LEVEL")})
    os.environ.pop("PREFECT_API_URL", None)
    run_command([sys.executable, "-c", EMPTY_FLOW], env, scratch / "warm-up.log")  # creates the database
    return env


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.end_to_end",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--sample",
        type=Path,
        default=REPO_ROOT / ".cache" / "benchmark-e2e" / "sample",
        help="where the model and images are built, once (default .cache/benchmark-e2e/sample)",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this JSON file")
    parser.add_argument(
        "--real-size",
        action="store_true",
        help="instead: the small model and a 224 px MobileNetV2 alpha 1.0 (1,000 calibration and 2,000 evaluation "
        "images), each the notebook's way, cold with the default variants, and cached, with peak memory "
        "(about an hour on 2 cores)",
    )
    args = parser.parse_args(argv)
    if args.real_size:
        return real_size(args)

    from benchmarks.e2e_sample import make_e2e_sample, write_config
    from benchmarks.run_benchmarks import describe_machine

    args.sample.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="run-", dir=args.sample.parent))
    machine = describe_machine()
    print(f"machine: {machine}\nscratch: {scratch}", flush=True)
    started = time.perf_counter()
    sample = make_e2e_sample(args.sample)
    print(f"sample: {sample} ({time.perf_counter() - started:.0f} s)", flush=True)

    env = commands_environment(scratch)
    python = sys.executable
    figures: dict = {"machine": machine, "sample": str(sample)}

    print("\nstart of a command: the flow module's imports, then the same and a flow that does nothing", flush=True)
    imports = run_command([python, "-c", "import flows.quantize_evaluate"], env, scratch / "imports.log")
    empty = run_command([python, "-c", EMPTY_FLOW], env, scratch / "empty-flow.log")
    figures["start"] = {
        "imports_seconds": imports["seconds"],
        "empty_flow_seconds": empty["seconds"],
        "ephemeral_api_seconds": round(empty["seconds"] - imports["seconds"], 2),
    }
    print(
        f"    imports {imports['seconds']:.1f} s; with an empty flow on the ephemeral API {empty['seconds']:.1f} s: "
        f"the API costs {empty['seconds'] - imports['seconds']:.1f} s"
    )

    print("\none float32 conversion: from_keras_model against the SavedModel exported once", flush=True)
    figures["conversion"] = conversion = conversion_figures(str(sample / "model.h5"), scratch / "conversion")
    print(
        f"    from_keras_model {conversion['from_keras_model_seconds']:.1f} s; exported once in "
        f"{conversion['export_once_seconds']:.1f} s, then converted in {conversion['from_saved_model_seconds']:.1f} s "
        f"per variant: {conversion['from_keras_model_seconds'] / conversion['from_saved_model_seconds']:.1f}x "
        f"(the same bytes: {conversion['same_bytes']})"
    )

    print("\n(a) the old notebook's way, SDK's two models", flush=True)
    notebook_config = write_config(sample, scratch / "notebook", scratch / "notebook.json")
    notebook = run_command(
        [python, "-m", "benchmarks.notebook_way", str(notebook_config), str(scratch / "notebook" / "work")],
        env,
        scratch / "notebook.log",
    )
    notebook["stages"] = json.loads((scratch / "notebook.log").read_text().strip().splitlines()[-1])
    figures["notebook"] = notebook
    print(f"    {notebook['seconds']:.1f} s: {notebook['stages']}")

    commands = {}
    sdk: dict = {"variants": ["float32", "mct_ptq"]}
    no_imx500 = {"IMX500_CONVERTER": str(scratch / "no-imx500-converter")}  # the step is skipped at once
    for label, key, overrides, extra_env in [
        ("(b) the command, cold, SDK's two models", "sdk_cold", sdk, {}),
        (
            "(b') the same without the IMX500 compile, which the notebook never did",
            "sdk_cold_no_imx500",
            sdk,
            no_imx500,
        ),
        ("(c) the command, cold, default variants", "default_cold", {}, {}),
    ]:
        print(f"\n{label}", flush=True)
        config = write_config(sample, scratch / key, scratch / f"{key}.json", **overrides)
        cold_env = {**env, **extra_env, "QUANTIZE_CACHE_DIR": str(scratch / key / "cache")}
        command = [python, "-m", "flows.quantize_evaluate", str(config), "--no-progress"]
        commands[key] = run_command(command, cold_env, scratch / f"{key}.log")
        print(f"    {commands[key]['seconds']:.1f} s", flush=True)
        if key == "default_cold":
            print("\n(d) the same command again, served from the cache", flush=True)
            commands["cached"] = run_command(command, cold_env, scratch / "cached.log")
            print(f"    {commands['cached']['seconds']:.1f} s", flush=True)
            print("\n(e) against a Prefect server already running (make server): (c) and (d) again", flush=True)
            fresh = {**cold_env, "QUANTIZE_CACHE_DIR": str(scratch / "default_cold_server" / "cache")}
            server = with_running_server(
                {"default_cold": (command, fresh), "cached": (command, cold_env), "cached_again": (command, cold_env)},
                scratch,
            )
            figures["with_running_server"] = server
            cold, cached, again = server["default_cold"], server["cached"], server["cached_again"]
            print(f"    cold {cold:.1f} s; cached {cached:.1f} s, {again:.1f} s", flush=True)

    print("\ncritical paths (from the flow runs' task runs)")
    runs = flow_runs("quantize-evaluate")[-len(commands) :]
    for (key, timing), (flow_run, task_runs) in zip(commands.items(), runs, strict=True):
        figures[key] = describe_run(key, timing, flow_run, task_runs)

    a, b, c, d = (
        figures["notebook"]["seconds"],
        *(commands[k]["seconds"] for k in ("sdk_cold", "default_cold", "cached")),
    )
    b_no_imx500 = commands["sdk_cold_no_imx500"]["seconds"]
    figures["ratios"] = {
        "sdk_cold_vs_notebook": round(b / a, 3),
        "sdk_cold_no_imx500_vs_notebook": round(b_no_imx500 / a, 3),
        "default_cold_vs_notebook": round(c / a, 3),
        "cached_seconds": d,
        "cached_vs_default_cold": round(d / c, 3),
    }
    print(
        f"\nfigures against their targets ({datetime.now():%Y-%m-%d %H:%M}, {machine})\n"
        f"    SDK's two models cold: {b:.1f} s = {b / a:.2f}x the notebook's {a:.1f} s (target <= 0.5x); "
        f"without the IMX500 compile {b_no_imx500:.1f} s = {b_no_imx500 / a:.2f}x\n"
        f"    default variants cold: {c:.1f} s = {c / a:.2f}x the notebook's (target <= 0.8x)\n"
        f"    cached rerun: {d:.1f} s (target <= 8 s) = {100 * d / c:.1f}% of the cold default run (target <= 10%); "
        f"against a running server {server['cached']:.1f} s and {server['cached_again']:.1f} s\n"
        f"    against a running server, default variants cold: {server['default_cold']:.1f} s = "
        f"{server['default_cold'] / a:.2f}x the notebook's"
    )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    print("\n" + json.dumps(figures, default=str))
    return 0


def real_size(args: argparse.Namespace) -> int:
    """The small model and the real-size one, in the same run: the notebook's way, the command cold with the default
    variants, and cached; the critical path of each cold run and the peak memory of each command's processes."""
    from benchmarks.e2e_sample import TRAINING, make_e2e_sample, write_config
    from benchmarks.real_size_sample import CALIBRATION, SIZE, make_real_size_sample
    from benchmarks.run_benchmarks import describe_machine

    args.sample.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="real-size-", dir=args.sample.parent))
    machine = describe_machine()
    print(f"machine: {machine}\nscratch: {scratch}", flush=True)
    env = commands_environment(scratch)
    python = sys.executable
    figures: dict = {"machine": machine}
    # At real size the int8 models lose 1.2 points of Top-1 against the default budget of 1: the run would go on to
    # the layer analysis and the repair search, which the notebook never did. Compared like for like, with a budget
    # they meet; what the analysis costs at this size is in the README.
    models = [
        ("small", "MobileNetV2 alpha 0.35, 64 px, 1,400 / 397 images", make_e2e_sample, 64, TRAINING, {}),
        (
            "real_size",
            "MobileNetV2 alpha 1.0, 224 px, 1,000 / 2,000 images",
            make_real_size_sample,
            SIZE,
            CALIBRATION,
            {"max_accuracy_drop": 0.02},
        ),
    ]
    for key, title, make, size, count, overrides in models:
        started = time.perf_counter()
        sample = make(args.sample if key == "small" else REPO_ROOT / ".cache" / "benchmark-real" / "sample")
        print(f"\n{title}: {sample} ({time.perf_counter() - started:.0f} s)", flush=True)
        work = scratch / key

        settings = {"size": size, "calibration_images": count, **overrides}

        def config(name: str, sample: Path = sample, work: Path = work, settings: dict = settings) -> Path:
            return write_config(sample, work / name, work / f"{name}.json", **settings)

        print("  (a) the old notebook's way, SDK's two models", flush=True)
        notebook = run_command(
            [python, "-m", "benchmarks.notebook_way", str(config("notebook")), str(work / "notebook" / "work")],
            env,
            work / "notebook.log",
            memory=True,
        )
        notebook["stages"] = json.loads((work / "notebook.log").read_text().strip().splitlines()[-1])
        print(f"      {notebook['seconds']:.1f} s, peak {notebook['peak_memory_gib']} GiB: {notebook['stages']}")
        command = [python, "-m", "flows.quantize_evaluate", str(config("default")), "--no-progress"]
        cold_env = {**env, "QUANTIZE_CACHE_DIR": str(work / "default" / "cache")}
        print("  (c) the command, cold, default variants", flush=True)
        cold = run_command(command, cold_env, work / "cold.log", memory=True)
        print(
            f"      {cold['seconds']:.1f} s, peak {cold['peak_memory_gib']} GiB ({cold['peak_memory_by_process_gib']})",
            flush=True,
        )
        flow_run, task_runs = flow_runs("quantize-evaluate")[-1]
        cold_figures = describe_run(f"{key} cold", cold, flow_run, task_runs)
        cold_figures["peak_memory_gib"] = cold["peak_memory_gib"]
        cold_figures["peak_memory_by_process_gib"] = cold["peak_memory_by_process_gib"]
        print("  (d) the same command again, served from the cache", flush=True)
        cached = run_command(command, cold_env, work / "cached.log")
        print(f"      {cached['seconds']:.1f} s", flush=True)
        figures[key] = {
            "model": title,
            "notebook": notebook,
            "default_cold": cold_figures,
            "cached_seconds": cached["seconds"],
            "ratios": {
                "default_cold_vs_notebook": round(cold["seconds"] / notebook["seconds"], 3),
                "cached_vs_default_cold": round(cached["seconds"] / cold["seconds"], 3),
            },
        }
    print(f"\nfigures against their targets ({datetime.now():%Y-%m-%d %H:%M}, {machine})")
    for key, title, *_ in models:
        f = figures[key]
        a, c = f["notebook"]["seconds"], f["default_cold"]["command_seconds"]
        print(
            f"    {title}:\n"
            f"      default variants cold {c:.1f} s = {c / a:.2f}x the notebook's {a:.1f} s (target <= 0.8x); "
            f"cached rerun {f['cached_seconds']:.1f} s = {100 * f['cached_seconds'] / c:.1f}% (target <= 10%)\n"
            f"      peak memory: the command {f['default_cold']['peak_memory_gib']} GiB (target < 8 GiB), "
            f"the notebook's way {f['notebook']['peak_memory_gib']} GiB"
        )
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2, default=str))
    print("\n" + json.dumps(figures, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
