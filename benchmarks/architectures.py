"""The sweep of the family: `keras.applications` architectures, none built by this project, through the command.

    python -m benchmarks.architectures                      # the default set, with target_device imx500
    python -m benchmarks.architectures EfficientNetB0 ConvNeXtTiny --size 96 --target ethos-u55-128

Each architecture is built here untrained (weights=None: nothing is downloaded), small (96 px by default, 10
classes), saved as .h5 by Keras as a user would, and run through `python -m flows.quantize_evaluate` on the digits
sample with the default variants, the IMX500 converter and Vela. Each must end in a result (exit 0), or finish with
its failed models named (exit 3); anything else is the sweep's finding. It prints one row per architecture:
seconds, exit status, the variants built / failed / unsupported (with why), the IMX500's verdict, Vela's NPU share of
full_int8, and the recommendation; and writes them to <scratch>/architectures.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from benchmarks.scratch import isolated_scratch
from core.storage import REPO_ROOT

# Small enough for a 2-core machine, and together the family's shapes: depthwise separable convolutions,
# squeeze-and-excitation with swish, hard-swish with its input Rescaling, residual and dense connections,
# inception branches, LayerNorm with LayerScale, grouped convolutions.
DEFAULT_ARCHITECTURES = (
    "MobileNetV2",
    "MobileNetV3Small",
    "EfficientNetB0",
    "ResNet50",
    "DenseNet121",
    "InceptionV3",
    "ConvNeXtTiny",
    "RegNetX002",
)
SAMPLE = REPO_ROOT / "sample_data" / "digits"


def build(name: str, size: int, path: Path) -> int:
    """The architecture, untrained, saved as .h5 at `path` (the format users have most); its parameter count."""
    import warnings

    import tensorflow as tf

    model = getattr(tf.keras.applications, name)(weights=None, input_shape=(size, size, 3), classes=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Keras calls .h5 legacy
        model.save(path)
    return int(model.count_params())


def configuration(name: str, size: int, target: str, model: Path, out: Path, repair: str) -> Path:
    config = {
        "source_keras_model": str(model),
        "dataset_image_dir": str(SAMPLE / "training"),
        "batch_size": 10,
        "input_tensor_size": size,
        "iteration_count": 2,
        "output_dir": str(out / "models"),
        "evaluate_image_dir": str(SAMPLE / "validation"),
        "evaluate_image_extension": "jpg",
        "evaluate_label_file": str(SAMPLE / "labels.json"),
        "evaluate_result_dir": str(out / "results"),
        "target_device": target,
        "latency_repeats": 3,
        # An untrained model's drop decides nothing; one trial still runs the repair's code on the architecture.
        "max_accuracy_drop": 0.0,
        "repair": repair,
        "repair_max_trials": 1,
        "repair_time_budget_s": 300,
    }
    path = out / "configuration.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config, indent=2))
    return path


def run_one(name: str, size: int, target: str, repair: str, scratch: Path, timeout_s: int) -> dict[str, Any]:
    out = scratch / name
    parameters = build(name, size, out / "model.h5")
    config = configuration(name, size, target, out / "model.h5", out, repair)
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "flows.quantize_evaluate", str(config), "--no-progress"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        status, said = done.returncode, (done.stdout + done.stderr)
    except subprocess.TimeoutExpired:
        status, said = None, f"timed out after {timeout_s} s"
    (out / "command.log").write_text(said)
    row: dict[str, Any] = {
        "architecture": name,
        "parameters": parameters,
        "seconds": round(time.perf_counter() - started),
        "exit": status,
    }
    results_path = out / "results" / "results.json"
    if status in (0, 3) and results_path.is_file():
        row.update(summarise(json.loads(results_path.read_text())))
    else:
        lines = [line for line in said.strip().splitlines() if line.strip()]
        row["error"] = lines[-1] if lines else "(nothing printed)"
    return row


def summarise(results: dict[str, Any]) -> dict[str, Any]:
    models = {m["model"]: m for m in results["models"]}
    imx500 = (results.get("hardware") or {}).get("imx500") or {}
    if imx500.get("skipped"):
        imx500_verdict = "skipped"
    elif imx500.get("compiled") and imx500.get("fits"):
        imx500_verdict = f"fits ({imx500.get('utilization_percent')}%)"
    elif imx500.get("fits") is False:
        imx500_verdict = f"does not fit ({imx500.get('utilization_percent')}%)"
    elif imx500:
        imx500_verdict = (imx500.get("reason") or "refused").splitlines()[0][:120]
    else:
        imx500_verdict = "not compiled"
    ethos_u = (models.get("tflite_full_int8") or {}).get("ethos_u") or {}
    return {
        "built": sorted(name for name in models if name.startswith("tflite")),
        "failed": {name: f"{f['step']}: {f['reason'][:160]}" for name, f in results.get("failed_variants", {}).items()},
        "unsupported": {name: reason.splitlines()[0][:160] for name, reason in results["unsupported_variants"].items()},
        "imx500": imx500_verdict,
        "vela_npu_share": ethos_u.get("npu_share"),
        "recommended": results["recommendation"]["chosen"],
        "repair_trials": len(((results.get("repair") or {}).get("trials")) or []),
    }


def markdown(rows: list[dict[str, Any]]) -> str:
    lines = [
        "| architecture | parameters | seconds | exit | built | failed | unsupported | IMX500 | Vela NPU share |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['architecture']} | {r['parameters']:,} | {r['seconds']} | {r['exit']} | {r['error']} |")
            continue
        failed = "; ".join(f"{k} ({v})" for k, v in r["failed"].items()) or "-"
        unsupported = "; ".join(f"{k} ({v})" for k, v in r["unsupported"].items()) or "-"
        share = "-" if r["vela_npu_share"] is None else f"{r['vela_npu_share']:.0%}"
        lines.append(
            f"| {r['architecture']} | {r['parameters']:,} | {r['seconds']} | {r['exit']} | {len(r['built'])} | "
            f"{failed} | {unsupported} | {r['imx500']} | {share} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.architectures", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("architectures", nargs="*", help=f"keras.applications names (default: {DEFAULT_ARCHITECTURES})")
    parser.add_argument("--size", type=int, default=96, help="input side in pixels (default 96)")
    parser.add_argument("--target", default="imx500", help="target_device of every run (default imx500)")
    parser.add_argument(
        "--repair", choices=("auto", "off"), default="auto", help="'off' skips the repair's one trial (faster)"
    )
    parser.add_argument("--timeout", type=int, default=1800, help="seconds one architecture may take (default 1800)")
    args = parser.parse_args(argv)
    if not (SAMPLE / "labels.json").is_file():
        print("the digits sample is missing: run `make sample` first", file=sys.stderr)
        return 2
    scratch = isolated_scratch("architectures-")
    rows = []
    for name in args.architectures or DEFAULT_ARCHITECTURES:
        rows.append(run_one(name, args.size, args.target, args.repair, scratch, args.timeout))
        print(json.dumps(rows[-1]), flush=True)
    (scratch / "architectures.json").write_text(json.dumps(rows, indent=2))
    print(f"\n{markdown(rows)}\n\n(every run's output: {scratch}/<architecture>/command.log)")
    return 0 if all(r["exit"] in (0, 3) for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
