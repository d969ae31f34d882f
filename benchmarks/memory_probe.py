"""Run the project's evaluation path (decode once, evaluate every model) in this process and print
its peak resident memory, so the benchmark can compare evaluation-set sizes in fresh processes.

    python -m benchmarks.memory_probe EVAL_DIR WORK_DIR NAME=MODEL_PATH ...

`peak_rss_mib` is the process's peak; `evaluation_peak_mib` the peak reached during the evaluation
above the resident memory before it (after TensorFlow's import), the part that would grow with the set.
"""

from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from benchmarks.throughput import project_evaluation


def _status_kib(field: str) -> int:
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def main(argv: list[str]) -> None:
    eval_dir, work_dir, *pairs = argv
    models = dict(pair.split("=", 1) for pair in pairs)
    before = _status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current resident size
    seconds, count = project_evaluation(Path(eval_dir), models, Path(work_dir))
    evaluation_peak = _status_kib("VmHWM") - before
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(
        json.dumps(
            {
                "images": count,
                "seconds": seconds,
                "peak_rss_mib": round(peak_kib / 1024, 1),
                "evaluation_peak_mib": round(evaluation_peak / 1024, 1),
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
