"""How a run's results read: the comparison table (terminal, CSV, Prefect table artifact), the markdown
summary with the recommendation, and the Prefect artifact key of a model."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, TypedDict

import pandas as pd

from core.build.variants import REPAIRED_FILE, REPAIRED_KERAS_FILE, REPAIRED_KERAS_MODEL
from core.evaluate.records import REMEASURE_HINT
from core.kinds.registry import kind_of_results
from core.targets.devices import imx500_problem, imx500_verdict


def artifact_key(model_path: str) -> str:
    """Prefect artifact keys allow lowercase letters, digits and dashes; one key per model gives a history
    per model. The model's folder is part of it, since many models are all called model.h5."""
    path = Path(model_path)
    stem = path.stem if path.suffix else path.name
    slug = re.sub(r"[^a-z0-9]+", "-", f"{path.parent.name}-{stem}".lower()).strip("-") or "model"
    return f"quantize-evaluate-{slug}"


def _percent(share: float | None) -> str | None:
    return None if share is None else f"{100 * share:.0f}%"


def _yes_no(value: bool | None) -> str | None:
    return None if value is None else ("yes" if value else "no")


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def results_table(results: dict[str, Any]) -> pd.DataFrame:
    """One row per model: its file, size, the kind's figures (a classifier's Top-1, Top-5, change and agreement),
    latency, types and the devices' verdicts."""
    kind = kind_of_results(results)
    return pd.DataFrame(
        [
            {
                "model": m["model"],
                "description": m["description"],
                "file": Path(m["file"]).name,
                "size_kib": round(m["file_size_bytes"] / 1024, 1),
                **{key: _rounded(value) for key, value in kind.column_values(m).items()},
                "ms_1_thread": _ms(m["latency_ms"]["1_thread"]),
                "ms_all_threads": _ms(m["latency_ms"]["all_threads"]),
                "input": m["input_dtype"],
                "output": m["output_dtype"],
                "npu_ops": _percent((m.get("ethos_u") or {}).get("npu_share")),
                "ethos_u_inf_s": (m.get("ethos_u") or {}).get("inferences_per_second"),
                "imx500_fits": imx500_verdict(m.get("imx500")),
                "images": m["image_count"],
            }
            for m in results["models"]
        ]
    )


UNDER_LOAD_MARK = "*"  # after a latency taken while other work loaded the CPU
_LATENCY_COLUMNS = {"1_thread": "ms_1_thread", "all_threads": "ms_all_threads"}


def latency_under_load(model: dict[str, Any]) -> list[str]:
    """A results.json row's latency figures taken while other work loaded the CPU (latency_ms' names)."""
    return list(model.get("latency_under_load") or [])  # a results.json written before the flag has none


def latency_marked(results: dict[str, Any], frame: pd.DataFrame) -> pd.DataFrame:
    """results_table's `frame` with UNDER_LOAD_MARK after each latency taken under load."""
    marked = frame.copy()
    for row, model in enumerate(results["models"]):
        for figure in latency_under_load(model):
            column = _LATENCY_COLUMNS[figure]
            marked[column] = marked[column].astype(object)
            marked.at[row, column] = f"{marked.at[row, column]}{UNDER_LOAD_MARK}"
    return marked


def under_load_note(models: list[dict[str, Any]], mark: str = UNDER_LOAD_MARK) -> str:
    """The footnote of a table of these results.json rows when it marks a latency, else ''."""
    if not any(latency_under_load(m) for m in models):
        return ""
    return f"{mark} latency taken while other work loaded the CPU: {REMEASURE_HINT}.\n"


def format_table(results: dict[str, Any]) -> str:
    """The comparison for a terminal, then the recommendation."""
    frame = latency_marked(results, results_table(results))
    table = frame.drop(columns=["description", "images"]).fillna("-").to_string(index=False)
    return (
        f"{table}\n{under_load_note(results['models'])}"
        f"{unsupported_text(results)}{failed_text(results)}{device_text(results)}{analysis_text(results)}"
        f"{repair_text(results)}\n"
        f"{recommendation_text(results['recommendation'])}"
    )


WORST_LAYERS_SHOWN = 3


def analysis_text(results: dict[str, Any]) -> str:
    """For each model that lost too much: the per-layer analysis's summary and its worst layers with their causes."""
    lines = []
    for name, analysis in (results.get("layer_analysis") or {}).items():
        lines.append(f"Why {name} lost accuracy ({analysis['method']}): {analysis['summary']}")
        for layer in analysis["layers"][:WORST_LAYERS_SHOWN]:
            causes = "; ".join(layer["causes"]) or "no cause found"
            lines.append(
                f"  {layer['rank']}. {layer['layer']} ({layer['type']}): {layer['loss_db']:.1f} dB lost; {causes}"
            )
    return "\n".join(lines) + "\n" if lines else ""


def repair_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per repair trial, in the order tried."""
    repair = results.get("repair") or {}
    return [
        {
            "trial": i + 1,
            "recipe": t["recipe"],
            "sixteen_bit_layers": ", ".join(t.get("sixteen_bit_activations") or []) or None,
            "changed": t["changed"],
            "tuning_top_1": None if t["tuning_top_1"] is None else round(t["tuning_top_1"], 4),
            "tuning_drop": None if t["tuning_drop"] is None else round(t["tuning_drop"], 4),
            "tuning_drop_bound": None if t.get("tuning_drop_bound") is None else round(t["tuning_drop_bound"], 4),
            "reporting_drop": None if t.get("reporting_drop") is None else round(t["reporting_drop"], 4),
            "size_kib": None if t["size_bytes"] is None else round(t["size_bytes"] / 1024, 1),
            "imx500_fits": _yes_no(t["imx500_fits"]),
            "npu_ops": _percent(t["npu_share"]),
            "seconds": t["seconds"],
            "cached": _yes_no(t["cached"]),
            "qualifies": _yes_no(t["qualifies"]),
            "reason": t["reason"],
        }
        for i, t in enumerate(repair.get("trials", []))
    ]


def repair_text(results: dict[str, Any]) -> str:
    """What the repair search did, when it ran: each trial, then the chosen model's figures on unseen images."""
    repair = results.get("repair") or {}
    if not repair.get("ran"):
        return ""
    label = kind_of_results(results).score_label
    lines = [f"Repair: {repair['why']}."]
    for row in repair_rows(results):
        top_1 = "-" if row["tuning_top_1"] is None else f"{row['tuning_top_1']:.4f}"
        cached = ", cached" if row["cached"] == "yes" else ""
        on = f" (16 bits on {row['sixteen_bit_layers']})" if row["sixteen_bit_layers"] else ""
        lines.append(
            f"  trial {row['trial']} {row['recipe']}{on}: tuning {label} {top_1}; {row['reason']} "
            f"({row['seconds']} s{cached})"
        )
    if repair.get("chosen"):
        file = REPAIRED_KERAS_FILE if repair.get("chosen_model") == REPAIRED_KERAS_MODEL else REPAIRED_FILE
        rejected = repair.get("rejected_on_reporting") or []
        images = (
            f"the {repair['reporting_image_count']} images the search never saw"
            if not rejected
            else f"the {repair['reporting_image_count']} reporting images, which also rejected "
            f"{', '.join(rejected)}: a figure they helped choose, not an unseen one"
        )
        lines.append(
            f"  chosen: {repair['chosen']} -> {file}: {label} {repair['chosen_top_1_reporting']:.4f} "
            f"on {images} (float {repair['float_top_1_reporting']:.4f}, drop {repair['chosen_drop_reporting']:.4f}); "
            f"{repair['chosen_top_1_tuning']:.4f} on the "
            f"{repair['tuning_image_count']} tuning images"
        )
    else:
        closest = f"; the closest was {repair['closest']}" if repair.get("closest") else ""
        held = "held on the images the search never saw" if repair.get("rejected_on_reporting") else "qualified"
        lines.append(f"  no trial {held} ({repair['stopped_because']}){closest}")
    return "\n".join(lines) + "\n"


def failed_text(results: dict[str, Any]) -> str:
    """The models whose step failed (a crash), each with what happened and where the library's output is."""
    lines = []
    for name, failure in (results.get("failed_variants") or {}).items():
        log = f" (its log: {failure['log']})" if failure.get("log") else ""
        lines.append(f"Failed: {name}: {failure['step']} failed: {failure['reason']}{log}\n")
    return "".join(lines)


def device_text(results: dict[str, Any]) -> str:
    """The models a device's compiler judged and would not take (refused, crashed, timed out, too large), with why.
    A model Vela declined without running (not full-integer) has no accelerator in its report and is not listed.
    First, the layers the IMX500's model has in place of those its converter refuses."""
    lines = [
        f"For the IMX500, whose converter has no Rescaling or Normalization: {substitution}\n"
        for substitution in _substitutions(results)
    ]
    for m in results["models"]:
        imx500 = m.get("imx500")
        if imx500 and not imx500.get("skipped") and imx500_problem(imx500):
            lines.append(f"Not for the IMX500: {m['model']}: {imx500_problem(imx500)}\n")
        ethos_u = m.get("ethos_u") or {}
        if ethos_u.get("accelerator") and not ethos_u.get("compiled"):
            lines.append(f"Not for {ethos_u['accelerator']}: {m['model']}: {ethos_u.get('reason')}\n")
    return "".join(lines)


def _substitutions(results: dict[str, Any]) -> list[str]:
    """Each MCT model's substituted layers (core/build/substitute_layers.py), once: every variant has the same."""
    variants = (results.get("mct_variants") or {}).values()
    return list(dict.fromkeys(s for variant in variants for s in variant.get("substituted_layers") or []))


def unsupported_text(results: dict[str, Any]) -> str:
    return "".join(
        f"Not built: {name}: {reason.splitlines()[0]}\n" for name, reason in results["unsupported_variants"].items()
    )


def recommendation_text(recommendation: dict) -> str:
    if recommendation["chosen"]:
        return f"Recommended: {recommendation['reason']}."
    return f"Recommended: none. {recommendation['reason']}."


def summary_markdown(results: dict[str, Any], figures: str = "") -> str:
    """The run's summary for the Prefect markdown artifact; `figures` (markdown: report.markdown_figures)
    goes after the analysis, before the paths of the report and the configuration."""
    frame = latency_marked(results, results_table(results)).fillna("-")
    note = under_load_note(results["models"], mark="\\*")  # a line that starts with "* " is a list item
    note = f"{note}\n" if note else ""
    rows = [list(frame.columns)] + frame.astype(str).values.tolist()
    table = "\n".join(
        "| " + " | ".join(map(str, row)) + " |" for row in rows[:1] + [["---"] * len(frame.columns)] + rows[1:]
    )
    rejected = "\n".join(f"- `{r['model']}`: {r['reason']}" for r in results["recommendation"]["rejected"])
    kind = kind_of_results(results)
    quantization = results["quantization"] or {"mct_version": "-", "target_platform": "- (MCT could not quantize)"}
    return (
        f"# Quantize and evaluate: {Path(results['models'][0]['file']).name}\n\n"
        f"**{recommendation_text(results['recommendation'])}**\n\n"
        f"{results['image_count']} evaluation images, {results['class_count']} {kind.class_word}; "
        f"MCT {quantization['mct_version']} for target platform "
        f"`{quantization['target_platform']}`; "
        f"latency per image on {results['latency_machine']}.\n\n{table}\n\n{note}"
        f"Not recommended:\n\n{rejected or '- (no other candidate)'}\n\n"
        f"{unsupported_text(results)}{failed_text(results)}{device_text(results)}\n"
        f"{_code_block(analysis_text(results) + repair_text(results))}{figures}"
        f"Full report, with {kind.report_holds}: `{results['report']}` on the "
        "machine that ran the flow (the UI cannot link to it, as a browser opens no file: link from a web page; "
        "paste the path into the address bar)\n\n"
        f"Configuration: `{results['configuration']}`\n"
    )


def _code_block(text: str) -> str:
    return f"```\n{text}```\n\n" if text else ""


class ReportLink(TypedDict):
    link: str
    link_text: str
    description: str


def report_link(results: dict[str, Any], summary_key: str, summary_url: str | None, host: str) -> ReportLink:
    """The `...-report` link artifact: to the summary artifact's page in the UI, which shows the report's pictures
    (a browser opens no file: link from a web page, so a link to report.html leads nowhere), with the report's path
    in the description; without a UI (no Prefect server), to the file itself."""
    where = f"{results['report']} on {host}"
    pictures = kind_of_results(results).pictures_heading.lower()
    if summary_url is None:
        return {"link": Path(results["report"]).resolve().as_uri(), "link_text": "report.html", "description": where}
    return {
        "link": summary_url,
        "link_text": f"Charts and {pictures}: the summary artifact {summary_key}",
        "description": f"The report's pictures are in the summary; the HTML report is {where}",
    }
