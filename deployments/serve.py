"""Serve the flows without a work pool: runs triggered from the Prefect UI (or API, or the
schedule) execute in this process. The served deployments mirror those in prefect.yaml.

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python -m deployments.serve
"""

from prefect import serve

from core.storage import REPO_ROOT
from flows.batch_quantize import batch_quantize
from flows.quantize_evaluate import quantize_evaluate

SAMPLE_CONFIG = REPO_ROOT / "configs" / "digits" / "configuration.json"
NIGHTLY = "0 2 * * *"  # 02:00 UTC


def deployments() -> list:
    return [
        quantize_evaluate.to_deployment(
            name="quantize-evaluate-served",
            description="Quantize and evaluate one model; fill in a configuration path or an inline configuration.",
            parameters={"config_path": str(SAMPLE_CONFIG), "progress": False},
            tags=["quantization"],
        ),
        batch_quantize.to_deployment(
            name="batch-quantize-nightly-served",
            description="Re-quantize every model with a configs/<model>/configuration.json, nightly.",
            parameters={"config_dir": str(REPO_ROOT / "configs"), "progress": False},
            cron=NIGHTLY,
            tags=["quantization", "batch"],
        ),
    ]


def main() -> None:
    serve(*deployments())


if __name__ == "__main__":
    main()
