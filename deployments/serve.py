"""Serve the quantize-and-evaluate flow without a work pool: runs triggered from the Prefect UI
(or API) execute in this process.

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python -m deployments.serve
"""
from core.storage import REPO_ROOT
from flows.quantize_evaluate import quantize_evaluate

SAMPLE_CONFIG = REPO_ROOT / "configs" / "digits" / "configuration.json"


def main() -> None:
    quantize_evaluate.serve(
        name="quantize-evaluate-served",
        description="Quantize and evaluate one model; fill in a configuration path or an inline configuration.",
        parameters={"config_path": str(SAMPLE_CONFIG), "progress": False},
        tags=["quantization"],
    )


if __name__ == "__main__":
    main()
