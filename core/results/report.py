"""A self-contained HTML report of one evaluation's results.

`write_html_report` turns the results dictionary (models, accuracies, confusion matrices,
latencies and the recommendation) into one HTML file whose charts are PNG images embedded
as base64 `data:` URIs, so the file can be mailed or archived on its own.

Charts are drawn on `matplotlib.figure.Figure` objects with the Agg canvas, never through
pyplot: pyplot keeps global state that is unsafe when Prefect runs tasks in threads.
matplotlib is imported inside the functions so that importing this module (and the CLI
that imports it) stays fast.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

from core.files import atomic_write_text
from core.kinds.kind import ModelKind
from core.kinds.registry import kind_of_results
from core.pictures import DPI, figure_png, remembered_png
from core.results.results_text import UNDER_LOAD_MARK, latency_under_load, repair_rows, repair_text, under_load_note
from core.targets.devices import imx500_verdict

_MISSING = "–"
_OBJECTIVES = {"size": "smallest file", "latency": "lowest latency"}

_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em; color: #222; max-width: 75em; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.6em; text-align: right; }
th { background: #f3f3f3; }
td.text, th.text { text-align: left; }
tr.chosen { background: #eaf6ea; font-weight: bold; }
.recommendation { padding: 0.8em 1em; border-left: 4px solid #2a7d2a; background: #f4faf4; }
.recommendation.none { border-left-color: #b03a2e; background: #fbf1f0; }
.model { display: flex; flex-wrap: wrap; gap: 2em; align-items: flex-start; }
"""


def write_html_report(results: dict, path: str | Path) -> Path:
    """Write the report for `results` to `path` atomically and return the path."""
    return atomic_write_text(Path(path), html_report(results))


def html_report(results: dict) -> str:
    """The whole report as one self-contained HTML page."""
    kind = kind_of_results(results)
    class_names = list(results["class_names"])
    models = results["models"]
    recommendation = results["recommendation"]

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>Quantization report</title>",
        f"<style>{_CSS}</style></head><body>",
        "<h1>Quantization report</h1>",
        f"<p>{len(models)} models evaluated on {int(results['image_count'])} images in {len(class_names)} "
        f"{kind.class_word}.</p>",
        _recommendation_html(recommendation, kind),
        "<h2>Comparison</h2>",
        _comparison_table_html(models, recommendation.get("chosen"), kind),
        _not_compared_html(results),
        _analysis_html(results),
        _repair_html(results),
        "<h2>Accuracy vs size</h2>",
        _img(accuracy_size_chart_image(results), f"{kind.score_title} against file size"),
        "<h2>Per model</h2>",
    ]
    for model in models:
        parts += [
            f"<h3>{_e(model['description'])} <small>({_e(model['model'])})</small></h3>",
            '<div class="model">',
            *(_img(picture.png, picture.alt) for picture in kind.pictures(model, class_names)),
            kind.details_html(model, class_names),
            "</div>",
        ]
    parts.append("</body></html>\n")
    return "\n".join(parts)


def accuracy_size_chart_png(results: dict) -> bytes:
    """A scatter of the models' score (a classifier's Top-1 accuracy) against file size (KiB), one marker per
    model, named in the legend (quantized variants cluster: labels on the points would overlap)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter, ScalarFormatter

    kind = kind_of_results(results)
    chosen = results["recommendation"].get("chosen")
    fig = Figure(figsize=(8, 4), dpi=DPI)
    ax = fig.add_subplot()
    markers = "osD^vP<>Xhp*"
    sizes = []
    for index, model in enumerate(results["models"]):
        size_kib = model["file_size_bytes"] / 1024
        sizes.append(size_kib)
        is_chosen = model["model"] == chosen
        ax.scatter(
            [size_kib],
            [model[kind.score_key]],
            s=160 if is_chosen else 45,
            marker="*" if is_chosen else markers[index % len(markers)],
            label=f"{model['model']} (chosen)" if is_chosen else model["model"],
            zorder=3,
            alpha=0.85,
        )
    # Log scale only where sizes span orders of magnitude (and none is zero, which it cannot show).
    if sizes and min(sizes) > 0 and max(sizes) / min(sizes) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(ScalarFormatter())
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.1, y=0.15)
    ax.set_xlabel("File size (KiB)")
    ax.set_ylabel(kind.score_title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center left", bbox_to_anchor=(1.02, 0.5), fontsize=8, frameon=False)
    fig.tight_layout()
    return figure_png(fig)


def _recommendation_html(recommendation: dict, kind: ModelKind) -> str:
    objective = _OBJECTIVES.get(recommendation["objective"], _e(recommendation["objective"]))
    drop = _percent_points(recommendation["max_accuracy_drop"])
    criteria = f"Objective: {objective}, losing at most {drop} of {kind.score_title} vs Keras."
    chosen = recommendation.get("chosen")
    if chosen is not None:
        body = f"<p><strong>Recommended model: {_e(chosen)}</strong></p><p>{_e(recommendation['reason'])}</p>"
        css_class = "recommendation"
    else:
        closest = recommendation.get("closest")
        closest_text = f" The closest is <strong>{_e(closest)}</strong>." if closest is not None else ""
        body = (
            f"<p><strong>None qualifies: no model meets these criteria.</strong>{closest_text}</p>"
            f"<p>{_e(recommendation['reason'])}</p>"
        )
        css_class = "recommendation none"
    rejected = recommendation.get("rejected") or []
    if rejected:
        items = "".join(f"<li>{_e(r['model'])}: {_e(r['reason'])}</li>" for r in rejected)
        body += f"<p>Rejected:</p><ul>{items}</ul>"
    return f'<h2>Recommendation</h2><div class="{css_class}"><p>{criteria}</p>{body}</div>'


def _comparison_table_html(models: list[dict], chosen: str | None, kind: ModelKind) -> str:
    headers = [
        "Model",
        "File",
        "Size (KiB)",
        *kind.columns.values(),
        "Latency 1 thread (ms)",
        "Latency all threads (ms)",
        "Input",
        "Output",
        "Ethos-U NPU ops",
        "Ethos-U inferences/s",
        "Fits IMX500",
    ]
    first_after_kind = 3 + len(kind.columns)
    text_columns = {0, 1, first_after_kind + 2, first_after_kind + 3, first_after_kind + 6}
    head = "".join(
        f'<th class="text">{h}</th>' if i in text_columns else f"<th>{h}</th>" for i, h in enumerate(headers)
    )
    rows = []
    for m in models:
        latency = m["latency_ms"]
        cells = [
            _e(m["description"]),
            _e(Path(m["file"]).name),
            f"{m['file_size_bytes'] / 1024:,.1f}",
            *(
                _percent_points(value, signed=True) if key in kind.signed_columns else _percent(value)
                for key, value in kind.column_values(m).items()
            ),
            _ms(latency.get("1_thread")) + _under_load_mark(m, "1_thread"),
            _ms(latency.get("all_threads")) + _under_load_mark(m, "all_threads"),
            _e(m["input_dtype"]),
            _e(m["output_dtype"]),
            _percent((m.get("ethos_u") or {}).get("npu_share")),
            _e((m.get("ethos_u") or {}).get("inferences_per_second") or "–"),
            _e(imx500_verdict(m.get("imx500")) or _MISSING),
        ]
        row = "".join(
            f'<td class="text">{c}</td>' if i in text_columns else f"<td>{c}</td>" for i, c in enumerate(cells)
        )
        css = ' class="chosen"' if m["model"] == chosen else ""
        rows.append(f"<tr{css}>{row}</tr>")
    note = under_load_note(models)
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
    return f"{table}<p>{_e(note)}</p>" if note else table


def _under_load_mark(model: dict, figure: str) -> str:
    """UNDER_LOAD_MARK after a latency taken while other work loaded the CPU, what it got of the CPU as its tooltip."""
    if figure not in latency_under_load(model):
        return ""
    return f'<span title="{_e(model.get("latency_load") or "")}">{UNDER_LOAD_MARK}</span>'


def accuracy_size_chart_image(results: dict) -> bytes:
    kind = kind_of_results(results)
    shown = [
        results["recommendation"].get("chosen"),
        [[m["model"], m["file_size_bytes"], m[kind.score_key]] for m in results["models"]],
        kind.score_title,
    ]
    return remembered_png("accuracy-size", shown, lambda: accuracy_size_chart_png(results))


def layer_loss_chart_image(analysis: dict) -> bytes:
    return remembered_png("layer-loss", analysis, lambda: layer_loss_chart_png(analysis))


def _img(png: bytes, alt: str) -> str:
    encoded = base64.b64encode(png).decode("ascii")
    return f'<img src="data:image/png;base64,{encoded}" alt="{_e(alt)}">'


MARKDOWN_MODELS = 12  # at most this many models' pictures in the markdown artifact; report.html has them all
_MARKDOWN_COLOURS = 128  # a palette PNG: a third of the bytes of the RGBA one, no visible difference on these charts
_MARKDOWN_MAX_SIDE = 800  # pixels; a larger picture (a matrix of many classes) is scaled down to it


def markdown_figures(results: dict, max_models: int = MARKDOWN_MODELS) -> str:
    """The report's pictures as markdown, each an embedded PNG (a base64 `data:` URI), for the Prefect markdown
    artifact: the accuracy-vs-size chart, the loss per layer of each analysed model, and each model's pictures (a
    classifier's confusion matrix: the recommended model's always, then the others in the table's order, up to
    `max_models` models). The Prefect UI shows them; it cannot open report.html, a file on the machine that ran
    the flow."""
    kind = kind_of_results(results)
    class_names = list(results["class_names"])
    parts = [
        "## Accuracy vs size",
        _markdown_img(accuracy_size_chart_image(results), f"{kind.score_title} against file size"),
    ]
    analyses = results.get("layer_analysis") or {}
    if analyses:
        parts.append("## Loss per layer")
        parts += [_markdown_img(layer_loss_chart_image(a), f"Loss per layer of {name}") for name, a in analyses.items()]
    models = results["models"]
    chosen = results["recommendation"].get("chosen")
    ordered = [m for m in models if m["model"] == chosen] + [m for m in models if m["model"] != chosen]
    shown, left_out = ordered[:max_models], ordered[max_models:]
    parts += [f"## {kind.pictures_heading}", kind.pictures_caption]
    parts += [
        _markdown_img(picture.png, picture.alt)
        for m in sorted(shown, key=models.index)
        for picture in kind.pictures(m, class_names)
    ]
    if left_out:
        names = ", ".join(f"`{m['model']}`" for m in sorted(left_out, key=models.index))
        parts.append(
            f"The {kind.pictures_heading.lower()} of the other {len(left_out)} models ({names}) are in the full "
            f"report, `{results['report']}`."
        )
    return "\n\n".join(parts) + "\n\n"


def _markdown_img(png: bytes, alt: str) -> str:
    text = "".join(c for c in alt if c not in "[]\\\n")
    return f"![{text}](data:image/png;base64,{base64.b64encode(compact_png(png)).decode('ascii')})"


def compact_png(png: bytes, max_side: int = _MARKDOWN_MAX_SIDE) -> bytes:
    """The picture as a palette PNG of at most `max_side` pixels a side, for a page that holds many of them."""
    from PIL import Image

    with Image.open(io.BytesIO(png)) as opened:
        image = opened.convert("RGB")
    if max(image.size) > max_side:
        image.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.quantize(colors=_MARKDOWN_COLOURS, method=Image.Quantize.MEDIANCUT).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


def layer_loss_chart_png(analysis: dict) -> bytes:
    """The loss of every layer, in network order, the worst ones marked: where the accuracy went."""
    from matplotlib.figure import Figure

    layers = sorted(analysis["layers"], key=lambda layer: _network_order(analysis, layer))
    worst = {layer["layer"] for layer in analysis["layers"][:3] if layer["loss_db"] > 0}
    fig = Figure(figsize=(8, 3.2), dpi=DPI)
    ax = fig.add_subplot()
    names = [layer["layer"] for layer in layers]
    ax.bar(
        range(len(layers)),
        [layer["loss_db"] for layer in layers],
        color=["#c0392b" if name in worst else "#7f8c8d" for name in names],
    )
    ax.set_xticks(range(len(layers)), names, rotation=45, ha="right", fontsize=7)
    ax.set_ylabel("loss (dB)")
    ax.set_title(f"{analysis['model']}: loss per layer ({analysis['method']}), worst in red", fontsize=9)
    ax.grid(True, axis="y", alpha=0.3)
    fig.tight_layout()
    return figure_png(fig)


def _network_order(analysis: dict, layer: dict) -> int:
    order = analysis.get("layer_order") or []
    return order.index(layer["layer"]) if layer["layer"] in order else layer["rank"]


def _not_compared_html(results: dict) -> str:
    """The variants with no row: those a builder could not make, and those whose step failed (a crash)."""
    items = [
        f"<li>{_e(name)}: not built: {_e(reason.splitlines()[0])}</li>"
        for name, reason in (results.get("unsupported_variants") or {}).items()
    ]
    items += [
        f"<li>{_e(name)}: {_e(failure['step'])} failed: {_e(failure['reason'])}</li>"
        for name, failure in (results.get("failed_variants") or {}).items()
    ]
    return f"<h3>Not compared</h3><ul>{''.join(items)}</ul>" if items else ""


def _analysis_html(results: dict) -> str:
    """For each model that lost too much: a chart of the loss per layer and the worst layers' causes."""
    parts = []
    for name, analysis in (results.get("layer_analysis") or {}).items():
        causes = "".join(
            f"<li><b>{_e(layer['layer'])}</b> ({_e(layer['type'])}, {layer['loss_db']:.1f} dB): "
            f"{_e('; '.join(layer['causes']) or 'no cause found')}</li>"
            for layer in analysis["layers"][:3]
        )
        parts += [
            f"<h3>Why {_e(name)} lost accuracy</h3><p>{_e(analysis['summary'])}</p>",
            _img(layer_loss_chart_image(analysis), f"Loss per layer of {name}"),
            f"<ol>{causes}</ol>",
        ]
    return "<h2>Where the accuracy went</h2>" + "".join(parts) if parts else ""


def _repair_html(results: dict) -> str:
    """The repair search's trials, when it ran: what each changed, its Top-1 on the tuning images, and the verdict."""
    repair = results.get("repair") or {}
    if not repair.get("ran"):
        return ""
    rows = repair_rows(results)
    header = "".join(f"<th>{_e(c)}</th>" for c in rows[0]) if rows else ""
    body = "".join(
        "<tr>" + "".join(f"<td>{_e('–' if v is None else v)}</td>" for v in r.values()) + "</tr>" for r in rows
    )
    summary = _e(repair_text(results).splitlines()[-1].strip())
    return (
        f"<h2>Repair</h2><p>{_e(repair['why'])}.</p>"
        f"<table><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table><p>{summary}</p>"
    )


def _e(value) -> str:
    return html.escape(str(value))


def _percent(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.2%}"


def _percent_points(value: float | None, signed: bool = False) -> str:
    if value is None:
        return _MISSING
    return f"{value * 100:+.2f} pp" if signed else f"{value * 100:.2f} pp"


def _ms(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.2f}"
