"""The repair search's cost on a model PTQ breaks: the digits sample given a function-preserving channel-range
imbalance (core.data.sample_data.make_imbalanced). For the IMX500 and for an Ethos-U55: the Top-1 PTQ lost, the
trials and seconds until a trial met the budget, the repaired model's Top-1 on the images the search never saw
against the float model's on the same images, and a cached rerun's search time.

    .venv/bin/python -m benchmarks.repair_cost          # part of make benchmark
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from core.storage import REPO_ROOT

BUDGET = 0.01


def main() -> int:
    scratch = Path(tempfile.mkdtemp(prefix="quantize-repair-benchmark-"))
    os.environ.update(
        {
            "QUANTIZE_CACHE_DIR": str(scratch / "cache"),
            "PREFECT_HOME": str(scratch / "prefect-home"),
            "TF_CPP_MIN_LOG_LEVEL": "3",
        }
    )
    os.environ.pop("PREFECT_API_URL", None)
    from core.data.sample_data import make_imbalanced, make_sample
    from flows.quantize_evaluate import quantize_evaluate

    sample = make_sample()
    broken = make_imbalanced(sample / "model.h5", scratch / "broken" / "model.h5")
    base = json.loads((REPO_ROOT / "configs" / "digits" / "configuration.json").read_text())
    print(f"scratch: {scratch}\nmodel: the digits sample with two of its first layer's channels 500x wider", flush=True)
    for device, variants in (("imx500", ["mct_ptq"]), ("ethos-u55-128", ["full_int8"])):
        out = scratch / device
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
            "max_accuracy_drop": BUDGET,
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
        print(f"\n[{device}] PTQ lost {100 * lost:.1f} points of Top-1 ({broken_model}); budget {100 * BUDGET:.0f}")
        for trial in repair["trials"]:
            print(
                f"  {trial['recipe']}: tuning Top-1 {trial['tuning_top_1']}, {trial['reason']} ({trial['seconds']} s)"
            )
        if repair["chosen"]:
            print(
                f"  chosen {repair['chosen']} after {len(repair['trials'])} trial(s), {repair['seconds']} s of search "
                f"(whole run {cold_seconds:.1f} s): Top-1 {repair['chosen_top_1_reporting']:.4f} on the "
                f"{repair['reporting_image_count']} unseen images against the float model's "
                f"{repair['float_top_1_reporting']:.4f} (drop {100 * repair['chosen_drop_reporting']:.1f} points)"
            )
        else:
            print(f"  no trial qualified: {repair['stopped_because']}")
        cached = figures[1][2]["repair"]
        every = all(t["cached"] for t in cached["trials"])
        print(f"  cached rerun: search {cached['seconds']} s, every trial cached: {every}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
