"""Run the project's evaluation path (decode once, evaluate every model) in this process and print
its peak resident memory, so the benchmark can compare evaluation-set sizes in fresh processes.

    python -m benchmarks.memory_probe EVAL_DIR WORK_DIR NAME=MODEL_PATH ...
"""
from __future__ import annotations

import json
import resource
import sys
from pathlib import Path

from benchmarks.throughput import project_evaluation


def main(argv: list[str]) -> None:
    eval_dir, work_dir, *pairs = argv
    models = dict(pair.split("=", 1) for pair in pairs)
    seconds, count = project_evaluation(Path(eval_dir), models, Path(work_dir))
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    print(json.dumps({"images": count, "seconds": seconds, "peak_rss_mib": round(peak_kib / 1024, 1)}))


if __name__ == "__main__":
    main(sys.argv[1:])
