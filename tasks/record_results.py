"""Step 9: record the results and publish the models.

The step's logic: core/results/record_results.py.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from prefect import task

from core.kinds.registry import kind_named
from core.results.record_results import record_results, require_imx500_fit
from core.results.records import RunRecords
from core.results.report import markdown_figures
from core.results.results_text import (
    artifact_key,
    format_table,
    repair_rows,
    report_link,
    results_table,
    summary_markdown,
)
from core.retry import RETRY_OPTIONS
from core.run_logging import PRINTED_AS_THE_OUTCOME


@task(name="record-results", persist_result=False, **RETRY_OPTIONS)
def record_results_task(*, run: RunRecords) -> dict[str, Any]:
    """Publish the models and results.json, results.csv, report.html, and record the Prefect artifacts."""
    from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact
    from prefect.logging import get_run_logger
    from prefect.settings import PREFECT_UI_URL

    results = record_results(run)
    validated = run.validated
    kind = kind_named(validated.config.task)
    key = artifact_key(validated.config.source_keras_model)
    create_table_artifact(
        key=f"{key}-table",
        table=results_table(results).fillna("-").to_dict(orient="records"),
        description=f"Every model: size, {', '.join(kind.columns.values())}, latency, dtypes",
    )
    summary_id = create_markdown_artifact(
        key=key,
        markdown=summary_markdown(results, figures=markdown_figures(results)),
        description=f"Summary, recommendation, charts and {kind.pictures_heading.lower()}",
    )
    if (results.get("repair") or {}).get("ran"):
        create_table_artifact(
            key=f"{key}-repair",
            table=repair_rows(results),
            description=f"Repair trials: what each changed, {kind.score_label} on the tuning images, the target's "
            "verdict",
        )
    ui_url = PREFECT_UI_URL.value()
    summary_url = f"{ui_url.rstrip('/')}/artifacts/artifact/{summary_id}" if ui_url else None
    create_link_artifact(key=f"{key}-report", **report_link(results, key, summary_url, socket.gethostname()))
    get_run_logger().info(
        "Results written to %s\n%s",
        Path(validated.config.evaluate_result_dir) / "results.json",
        format_table(results),
        extra=PRINTED_AS_THE_OUTCOME,  # the command prints the table as its outcome: its terminal shows it once
    )
    require_imx500_fit(validated.config, results)
    return results
