"""Batch step 3: one row per configuration (model, status, each Top-1, sizes) as a table,
a markdown summary and the keyed Prefect artifacts that give the batch a history."""

from __future__ import annotations

from typing import Any

from prefect import task

from core.batch.summary import SUMMARY_ARTIFACT_KEY, summarize_batch, summary_markdown


@task(name="summarize-batch", retries=0, persist_result=False)
def summarize_batch_task(*, outcomes: list[dict[str, Any]]) -> dict[str, Any]:
    """Summarize the batch: one row per configuration, as a table and a markdown artifact."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact
    from prefect.logging import get_run_logger

    summary = summarize_batch(outcomes)
    create_table_artifact(
        key=f"{SUMMARY_ARTIFACT_KEY}-table",
        table=summary["rows"],
        description="One row per configuration: status, Top-1 of each model, sizes",
    )
    create_markdown_artifact(
        key=SUMMARY_ARTIFACT_KEY, markdown=summary_markdown(summary), description="Batch quantization summary"
    )
    get_run_logger().info(
        "%d of %d configurations completed; failed: %s",
        summary["completed"],
        summary["count"],
        summary["failed"] or "none",
    )
    return summary
