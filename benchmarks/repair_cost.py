"""The repair search's cost on four models PTQ breaks, each the same function as a model trained on the digits sample:
the sample's CNN given a channel-range imbalance between two consecutive layers (core.data.sample_data.
make_imbalanced), a residual CNN whose residual stream carries outlier channels (make_residual_with_outliers),
the sample's CNN with an unread first-layer channel whose activations spike (make_activation_spikes), and the
sample's CNN giving logits with a common offset of 3000 (make_offset_logits).
For the IMX500 and for an Ethos-U55: the Top-1 PTQ lost, the trials (and why each was chosen) and seconds until one
met the budget, the repaired model's Top-1 on the images the search never saw against the float model's on the same
images, what the repaired model costs in size and latency against the broken one, and a cached rerun's search time.

    .venv/bin/python -m benchmarks.repair_cost          # part of make benchmark
    .venv/bin/python -m benchmarks.repair_cost logits   # only the named models
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from benchmarks.scratch import isolated_scratch
from core.storage import REPO_ROOT

BUDGETS = {
    "imbalanced": 0.01,
    "residual": 0.02,
    "spikes": 0.01,
    "logits": 0.01,
}  # the residual CNN is smaller and less accurate: 2 points


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", metavar="MODEL", help=f"of {', '.join(BUDGETS)} (default: all)")
    only = parser.parse_args().models or list(BUDGETS)
    if unknown := [name for name in only if name not in BUDGETS]:
        parser.error(f"unknown model(s) {', '.join(unknown)}: expected some of {', '.join(BUDGETS)}")
    scratch = isolated_scratch("quantize-repair-benchmark-")
    from core.data.sample_data import (
        make_activation_spikes,
        make_imbalanced,
        make_offset_logits,
        make_residual_with_outliers,
        make_sample,
    )

    sample = make_sample()
    print(f"scratch: {scratch}", flush=True)
    models = {
        "imbalanced": (
            lambda to: make_imbalanced(sample / "model.h5", to),
            "the digits sample's CNN with two of its first layer's channels 500x wider",
        ),
        "residual": (
            lambda to: make_residual_with_outliers(sample, to),
            "a residual CNN whose residual stream carries two channels 300x larger than the rest",
        ),
        "spikes": (
            lambda to: make_activation_spikes(sample / "model.h5", to),
            "the digits sample's CNN with one more first-layer channel spiking 3000x on near-white patches, unread",
        ),
        "logits": (
            lambda to: make_offset_logits(sample / "model.h5", to),
            "the digits sample's CNN giving its logits, each offset by 3000 (the same predictions)",
        ),
    }
    for name in only:
        make, description = models[name]
        model = make(scratch / name / "model.h5")
        print(f"\n== {name}: {description}; budget {100 * BUDGETS[name]:.0f} point(s)", flush=True)
        for device, variants in (("imx500", ["mct_ptq"]), ("ethos-u55-128", ["full_int8"])):
            search(sample, model, scratch / name / device, device, variants, BUDGETS[name])
    return 0


def search(sample: Path, broken: Path, out: Path, device: str, variants: list[str], budget: float) -> None:
    """One cold run and one cached rerun of the flow on `broken` for `device`; prints the figures."""
    from flows.quantize_evaluate import quantize_evaluate

    base = json.loads((REPO_ROOT / "configs" / "digits" / "configuration.json").read_text())
    config = {
        **base,
        "source_keras_model": str(broken),
        "dataset_image_dir": str(sample / "training"),
        "evaluate_image_dir": str(sample / "validation"),
        "evaluate_label_file": str(sample / "labels.json"),
        "output_dir": str(out / "models"),
        "evaluate_result_dir": str(out / "results"),
        "target_device": device,
        "variants": variants,
        "max_accuracy_drop": budget,
    }
    path = out / "configuration.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(config))
    figures = []
    for run in ("cold", "cached"):
        started = time.perf_counter()
        quantize_evaluate(config_path=str(path), progress=False)
        seconds = time.perf_counter() - started
        results = json.loads((out / "results" / "results.json").read_text())
        figures.append((run, seconds, results))
    _, cold_seconds, results = figures[0]
    repair = results["repair"]
    broken_model = "tflite_quantized" if device == "imx500" else "tflite_full_int8"
    lost = (
        results["top_1_accuracy_keras"]
        - next(m for m in results["models"] if m["model"] == broken_model)["top_1_accuracy"]
    )
    print(f"[{device}] PTQ lost {100 * lost:.1f} points of Top-1 ({broken_model})")
    for trial in repair["trials"]:
        print(
            f"  {trial['recipe']} (chosen because {trial['chosen_because']}): tuning Top-1 "
            f"{trial['tuning_top_1']}, {trial['reason']} ({trial['seconds']} s)"
        )
    if repair["chosen"]:
        print(
            f"  chosen {repair['chosen']} after {len(repair['trials'])} trial(s), {repair['seconds']} s of search "
            f"(whole run {cold_seconds:.1f} s): Top-1 {repair['chosen_top_1_reporting']:.4f} on the "
            f"{repair['reporting_image_count']} unseen images against the float model's "
            f"{repair['float_top_1_reporting']:.4f} (drop {100 * repair['chosen_drop_reporting']:.1f} points)"
        )
        rows = {m["model"]: m for m in results["models"]}
        repaired, before = rows[repair["chosen_model"]], rows[broken_model]
        sixteen_bits = next(t for t in repair["trials"] if t["qualifies"])["sixteen_bit_activations"]
        if sixteen_bits:
            print(f"  promoted to 16-bit activations: {', '.join(sixteen_bits)}")
        if repaired["file"].endswith(".tflite"):
            print(
                f"  cost against {broken_model}: {repaired['file_size_bytes'] / before['file_size_bytes']:.2f}x the "
                f"size ({repaired['file_size_bytes'] / 1024:.1f} KiB), "
                f"{_ratio(repaired, before)} the latency on one thread (this CPU)" + _vela(repaired, before)
            )
        print(_imx500_memory(repaired, before), end="")
    else:
        print(f"  no trial qualified: {repair['stopped_because']}")
    cached = figures[1][2]["repair"]
    every = all(t["cached"] for t in cached["trials"] if t["ran"])
    print(f"  cached rerun: search {cached['seconds']} s, every trial cached: {every}", flush=True)


def _imx500_memory(model: dict, baseline: dict) -> str:
    """The IMX500 converter's memory figures against the broken model's, when both were converted."""
    mine, theirs = model.get("imx500") or {}, baseline.get("imx500") or {}
    if not mine.get("memory_usage_bytes") or not theirs.get("memory_usage_bytes"):
        return ""
    return (
        f"  IMX500 memory (Sony's converter): {mine['memory_usage_bytes'] / 1024:.1f} KiB against "
        f"{theirs['memory_usage_bytes'] / 1024:.1f} KiB "
        f"({mine['memory_usage_bytes'] / theirs['memory_usage_bytes']:.2f}x), "
        f"{mine.get('utilization_percent')}% of the sensor's memory\n"
    )


def _vela(model: dict, baseline: dict) -> str:
    mine = (model.get("ethos_u") or {}).get("inferences_per_second")
    theirs = (baseline.get("ethos_u") or {}).get("inferences_per_second")
    return f", {mine / theirs:.2f}x Vela's inferences per second on the NPU" if mine and theirs else ""


def _ratio(model: dict, baseline: dict) -> str:
    mine, theirs = model["latency_ms"]["1_thread"], baseline["latency_ms"]["1_thread"]
    return f"{mine / theirs:.2f}x" if mine and theirs else "(not measured)"


if __name__ == "__main__":
    sys.exit(main())
