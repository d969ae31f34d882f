"""Step 9: record the results and publish the models.

Runs only after every evaluation succeeded, so a failed run never replaces the previous
run's good outputs. The results are built from the steps' records (core.results.build_results, pure), then
published as one set under the output folders' locks (core.results.publishing: every file staged beside its
destination, the previous set kept until the whole new one is in place, stale outputs removed last;
a failure or a kill leaves the whole previous set or the whole new one, never a mix):
  output_dir/model.tflite, model_quantized.tflite, model_quantized.keras, model_<variant>.tflite,
    model_<variant>_vela.tflite, imx500/
  evaluate_result_dir/results.json (the SDK's four keys first, then the details), results.csv, report.html
and the Prefect artifacts, keyed per model: a table, a markdown summary with the recommendation and the
report's pictures embedded (the UI shows them; it cannot open report.html, a file), and a link to that summary.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from core.build.variants import REPAIRED_IMX500_FOLDER, own_output_file_names
from core.config import QuantizeConfig
from core.errors import InputError
from core.results.build_results import PublicationPlan, build_results
from core.results.publishing import Put, publishing, swap_in
from core.results.records import RunRecords
from core.results.report import html_report
from core.results.results_text import (
    results_table,
)
from core.targets.devices import imx500_problem


def publish(results: dict[str, Any], plan: PublicationPlan, report_html: str, lock_timeout: float = 120.0) -> None:
    """Models and results of one run are published as one set, under the folders' locks: on any failure the
    previous set is left as it was (and a publish interrupted earlier is finished or undone first)."""
    with publishing([plan.output_dir, plan.result_dir], timeout=lock_timeout):
        stale = stale_outputs(plan.output_dir, plan.kept_file_names(), imx500_published=plan.imx500_folder is not None)
        results["removed_stale_outputs"] = stale
        puts = [Put(destination, source=source) for source, destination in plan.files]
        if plan.imx500_folder:
            puts.append(Put(plan.imx500_folder[1], source=plan.imx500_folder[0]))
        puts += [
            Put(plan.result_dir / "results.json", content=(json.dumps(results, indent=2) + "\n").encode()),
            Put(plan.result_dir / "results.csv", content=results_table(results).to_csv(index=False).encode()),
            Put(plan.result_dir / "report.html", content=report_html.encode()),
        ]
        swap_in(puts, [plan.output_dir / name.rstrip("/") for name in stale], primary=plan.result_dir)


def record_results(run: RunRecords, lock_timeout: float = 120.0) -> dict[str, Any]:
    """Build the results and publish them with the models."""
    results, plan = build_results(run)
    report_html = html_report(results)  # drawn before taking the locks: it is the slow part
    publish(results, plan, report_html, lock_timeout)
    return results


def stale_outputs(output_dir: Path, kept: set[str], imx500_published: bool) -> list[str]:
    """Outputs an earlier run made that this run does not (a variant dropped, the IMX500 converter not
    run): left in place they would sit beside models they no longer match. `imx500/` for the folder."""
    stale = [name for name in sorted(own_output_file_names() - kept) if (output_dir / name).is_file()]
    if not imx500_published and (output_dir / "imx500").is_dir():
        stale.append("imx500/")
    if REPAIRED_IMX500_FOLDER not in kept and (output_dir / REPAIRED_IMX500_FOLDER).is_dir():
        stale.append(f"{REPAIRED_IMX500_FOLDER}/")
    return stale


def remove_stale_outputs(output_dir: Path, kept: set[str], imx500_published: bool) -> list[str]:
    """Remove the stale outputs at once (a publish removes them with its set, last: see `publish`)."""
    removed = stale_outputs(output_dir, kept, imx500_published)
    for name in removed:
        if name.endswith("/"):
            shutil.rmtree(output_dir / name.rstrip("/"))
        else:
            (output_dir / name).unlink()
    return removed


def require_imx500_fit(config: QuantizeConfig, results: dict[str, Any]) -> None:
    """With `imx500_require_fit`, a model that does not fit the sensor fails the run (after its results are written)."""
    imx500 = results["hardware"]["imx500"]
    if not config.imx500_require_fit:
        return
    if not imx500 or imx500["skipped"]:
        reason = (imx500 or {}).get("reason", "the IMX500 converter did not run")
        raise InputError(f"imx500_require_fit is set but the fit could not be checked: {reason}")
    problem = imx500_problem(imx500)
    if problem and imx500.get("memory_usage_bytes") is None:  # refused, crashed or timed out: no memory figures
        raise InputError(f"imx500_require_fit is set but the model does not go to the IMX500: {problem}")
    if problem:
        raise InputError(
            f"the model does not fit the IMX500: {imx500['memory_usage_bytes']:,} bytes needed, "
            f"{imx500['memory_available_bytes']:,} available ({imx500['utilization_percent']:.0f}%); "
            "make it smaller (mct_mixed_precision, fewer channels) or set imx500_require_fit to false"
        )
