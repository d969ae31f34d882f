"""Step 8b: compile each full-integer TFLite model for an Arm Ethos-U NPU with Vela, and read back how
much of it runs on the NPU, the memory it needs and its estimated speed.

Vela only maps int8/int16 operators to the NPU: a float model would run entirely on the CPU, so it is
declined with a message instead of compiled. The Vela-optimised model is published beside the model
(`model_full_int8_vela.tflite`).

Vela runs as a command (a child process), so its failure on a model (an error, its native compiler crashing, a
timeout) is a verdict, `compiled=False` with the reason, rather than the end of the run.
"""

from __future__ import annotations

import csv
import re
import shutil
import subprocess
import sys
from pathlib import Path

from core.build.variants import ETHOS_U_ACCELERATORS, VARIANTS, vela_file_name
from core.errors import StepError
from core.targets.compiler_output import crashed, last_meaningful_lines, timed_out
from core.targets.records import EthosUReport


def vela_executable() -> str:
    beside = Path(sys.executable).with_name("vela")
    found = str(beside) if beside.exists() else shutil.which("vela")
    if not found:
        raise StepError(
            "compile-for-ethos-u",
            "-",
            FileNotFoundError("vela is not installed: pip install -r requirements.txt (ethos-u-vela)"),
        )
    return found


def parse_summary(stdout: str, summary_csv: Path) -> dict:
    """Operator counts and memory from Vela's printed summary; cycles and speed from its CSV."""

    def number(pattern: str) -> float:
        match = re.search(pattern, stdout)
        if not match:
            raise ValueError(f"Vela's summary has no line matching {pattern!r}")
        return float(match.group(1))

    with open(summary_csv, newline="") as f:
        row = next(csv.DictReader(f))
    npu, cpu = int(number(r"NPU operators = (\d+)")), int(number(r"CPU operators = (\d+)"))
    per_second = float(row["inferences_per_second"])
    return {
        "npu_operators": npu,
        "cpu_operators": cpu,
        "npu_share": npu / (npu + cpu) if npu + cpu else 0.0,
        "sram_kib": number(r"Total SRAM used\s+([\d.]+) KiB"),
        "off_chip_flash_kib": number(r"Total Off-chip Flash used\s+([\d.]+) KiB"),
        "cycles_total": int(float(row["cycles_total"])),
        "cycles_npu": int(float(row["cycles_npu"])),
        "inferences_per_second": None
        if per_second != per_second
        else round(per_second, 1),  # NaN when nothing runs on the NPU
        "system_config": row["system_config"],
    }


def compile_for_ethos_u(*, model_path: str, variant: str | None, accelerator: str, out_dir: Path) -> EthosUReport:
    if accelerator not in ETHOS_U_ACCELERATORS:
        raise ValueError(f"accelerator {accelerator!r}: expected one of {', '.join(ETHOS_U_ACCELERATORS)}")
    if variant is None or not VARIANTS[variant].full_integer:
        return EthosUReport.declined(variant)
    try:
        return _compile(Path(model_path), accelerator, Path(out_dir))
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, StopIteration, RuntimeError) as exc:
        raise StepError(f"compile-for-ethos-u ({variant})", model_path, exc) from exc


COMPILER = "Vela"
TIMEOUT_S = 1800


def _compile(model_path: Path, accelerator: str, out_dir: Path) -> EthosUReport:
    command = [vela_executable(), str(model_path), "--accelerator-config", accelerator, "--output-dir", str(out_dir)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return EthosUReport.failed(accelerator, timed_out(COMPILER, TIMEOUT_S))
    if result.returncode < 0:
        return EthosUReport.failed(accelerator, crashed(COMPILER, result.returncode, result.stderr + result.stdout))
    if result.returncode != 0:
        return EthosUReport.failed(accelerator, f"refused by {COMPILER}: {vela_error(result.stdout, result.stderr)}")
    summary_csv = next(out_dir.glob(f"{model_path.stem}_summary_*.csv"), None)
    if summary_csv is None:
        raise RuntimeError(f"vela wrote no summary CSV to {out_dir}: {result.stdout[-1000:]}")
    summary = parse_summary(result.stdout, summary_csv)
    version = subprocess.run([command[0], "--version"], capture_output=True, text=True).stdout.strip()
    return EthosUReport(
        compiled=True,
        accelerator=accelerator,
        vela_model=str(out_dir / vela_file_name(model_path)),
        vela_version=version,
        **summary,
    )


def vela_error(stdout: str, stderr: str) -> str:
    """Vela prints its own errors ("Error: ...") on stdout, and any other exception as a traceback on stderr."""
    errors = [line.strip() for line in stdout.splitlines() if line.startswith("Error: ")]
    return last_meaningful_lines("\n".join(errors[-1:]) or stderr or stdout)
