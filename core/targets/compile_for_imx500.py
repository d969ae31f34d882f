"""Step 8a: convert the MCT-quantized model for Sony's IMX500 sensor with Sony's converter
(`imxconv-tf`), and read back whether it fits the chip.

The converter takes the MCT model in MCT's Keras format (what the quantize step saves) and writes
`packerOut.zip` (what the AITRIOS packager takes), `dnnParams.xml` and `<name>_MemoryReport.json`.
It cannot share this project's environment (see requirements-imx500.txt), so it runs as a command:
`IMX500_CONVERTER` names it, else `.venv-imx500/bin/imxconv-tf` (`make imx500`), else `imxconv-tf`
on PATH. Without it, or without Java, the step is skipped with a message saying how to install it.

Whatever the converter says of the model is a verdict, `compiled=False` with the reason, never the end of the run:
a refusal (an operator it does not support, a layer over its limits; core/targets/imx500_refusal.py reads which),
a model too large for the chip's memory, its crash or its timeout. Only a failure of this step's own raises.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

from core.build.platforms import IMX500_CONVERTER_ENV, find_imx500_converter
from core.errors import StepError
from core.targets.compiler_output import crashed, timed_out
from core.targets.imx500_refusal import refusal_gist, refused_before_memory_planning
from core.targets.records import Imx500Report

HOW_TO_INSTALL = (
    "run `make imx500` (installs imx500-converter[tf] from requirements-imx500.txt into .venv-imx500), "
    f"or install it in an environment of its own and set {IMX500_CONVERTER_ENV} to its imxconv-tf"
)
COMPILER = "the IMX500 converter"
TIMEOUT_S = 3600


def find_java() -> str | None:
    return shutil.which("java")


def converter_and_java() -> tuple[str | None, str | None]:
    """What this step runs; part of its cache key, so installing either redoes a skipped run."""
    return find_imx500_converter(), find_java()


def skipped(reason: str) -> Imx500Report:
    return Imx500Report(compiled=False, skipped=True, reason=reason)


def _bytes(value: str) -> int:
    """'9874080B' (the converter with --report-size-unit B) -> 9874080."""
    match = re.fullmatch(r"\s*([\d.]+)\s*B\s*", str(value))
    if not match:
        raise ValueError(f"unexpected size {value!r} in the IMX500 memory report")
    return int(float(match.group(1)))


def parse_memory_report(path: Path) -> dict:
    report = json.loads(Path(path).read_text())["Memory Report"]
    return {
        "memory_usage_bytes": _bytes(report["Memory Usage"]),
        "memory_available_bytes": _bytes(report["Total Memory Available On Chip"]),
        "runtime_memory_bytes": _bytes(report["Runtime Memory Physical Size"]),
        "model_memory_bytes": _bytes(report["Model Memory Physical Size"]),
        "utilization_percent": float(str(report["Memory Utilization"]).rstrip("%")),
        "fits": bool(report["Fit In Chip"]),
    }


def parse_input_tensor(dnn_params: Path) -> dict:
    tensor = ET.parse(dnn_params).getroot().find(".//inputTensor")
    if tensor is None:
        raise ValueError(f"{dnn_params} has no inputTensor")
    missing = [name for name in ("scale", "format", "bitsPerElement") if tensor.get(name) is None]
    if missing:
        raise ValueError(f"{dnn_params}: inputTensor has no {', '.join(missing)} attribute")
    return {
        "input_scale": float(tensor.get("scale", "")),
        "input_format": tensor.get("format"),
        "input_bits": int(tensor.get("bitsPerElement", "")),
    }


def compile_for_imx500(
    *, quantized_keras_path: str, out_dir: Path, converter: str | None = None, java: str | None = "java"
) -> Imx500Report:
    """`converter` and `java` as found by find_imx500_converter() and find_java(); None when missing."""
    if converter is None:
        return skipped(f"Sony's IMX500 converter (imxconv-tf) is not installed: {HOW_TO_INSTALL}")
    if not Path(converter).is_file() and shutil.which(converter) is None:
        return skipped(
            f"{IMX500_CONVERTER_ENV} names {converter}, which does not exist: point it at an imxconv-tf, "
            f"or unset it and {HOW_TO_INSTALL.removeprefix('run ')}"
        )
    if java is None:
        return skipped(
            "Sony's IMX500 converter needs Java 17 on PATH (`java -version`); "
            "install a JRE, e.g. apt install openjdk-17-jre-headless"
        )
    target = Path(out_dir) / "imx500"
    try:
        return _convert(converter, Path(quantized_keras_path), target)
    except _NoVerdict as ended:
        return Imx500Report(compiled=False, skipped=False, reason=ended.reason, converter=converter)
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, ET.ParseError, RuntimeError) as exc:
        raise StepError("compile-for-imx500", quantized_keras_path, exc) from exc


class _NoVerdict(Exception):
    """The converter ended without a verdict of its own: killed by a signal, or out of time."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _run(converter: str, model: Path, target: Path, *extra: str) -> subprocess.CompletedProcess:
    command = [converter, "-i", str(model), "-o", str(target), "--overwrite-output", "--report-size-unit", "B", *extra]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise _NoVerdict(timed_out(COMPILER, TIMEOUT_S)) from None
    if result.returncode < 0:
        raise _NoVerdict(crashed(COMPILER, result.returncode, result.stdout + result.stderr))
    return result


def _convert(converter: str, model: Path, target: Path) -> Imx500Report:
    result = _run(converter, model, target)
    output = result.stdout + result.stderr
    report = next(target.glob("*_MemoryReport.json"), None)
    if result.returncode != 0 and report is None and not refused_before_memory_planning(output):
        # A model too large for the chip fails the conversion; the memory report alone says by how much.
        _run(converter, model, target, "--memory-report")
        report = next(target.glob("*_MemoryReport.json"), None)
    if report is None:
        if result.returncode == 0:
            raise RuntimeError(f"imxconv-tf succeeded but wrote no memory report to {target}")
        return _not_compiled(converter, target, f"refused by {COMPILER}: {refusal_gist(output, model)}")
    memory = parse_memory_report(report)
    if result.returncode == 0:
        return Imx500Report(
            compiled=True,
            skipped=False,
            **memory,
            folder=str(target),
            memory_report=str(report),
            converter=converter,
            packer_out=str(target / "packerOut.zip"),
            dnn_params=str(target / "dnnParams.xml"),
            **parse_input_tensor(target / "dnnParams.xml"),
        )
    reason = too_large(memory) if not memory["fits"] else f"refused by {COMPILER}: {refusal_gist(output, model)}"
    return _not_compiled(converter, target, reason, **memory, memory_report=str(report))


def _not_compiled(converter: str, target: Path, reason: str, **found: Any) -> Imx500Report:
    """The converter's verdict against the model; its folder, with whatever it wrote, is published when it has one."""
    folder = str(target) if target.is_dir() else None
    return Imx500Report(compiled=False, skipped=False, reason=reason, converter=converter, folder=folder, **found)


def too_large(memory: dict) -> str:
    return (
        f"does not fit the IMX500: {memory['memory_usage_bytes']:,} bytes needed, "
        f"{memory['memory_available_bytes']:,} available ({memory['utilization_percent']:.0f}%)"
    )
